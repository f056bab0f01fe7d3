//! Evaluation passes: logits, the per-op profile of `vgg bench --layers`, and the paper's dense
//! evaluation.

use super::ops::{Op, Shape};
use super::{Engine, nhwc, to_nhwc};
use crate::config::Head;
use crate::kernels::norm;

impl Engine {
    /// Evaluation-mode logits `[n, classes]` of `x`, `[n, c, h, w]` (NCHW, as everywhere else).
    pub fn forward(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        self.run_ops(0..self.ops.len(), to_nhwc(x, dims), Shape::Map(nhwc(dims))).0
    }

    /// Evaluation-mode forward of `x` that times each op: (output name, seconds), in order. The
    /// per-layer view of `vgg bench --layers`; runs exactly the code of [`Engine::forward`].
    pub fn profile(&self, x: &[f32], dims: [usize; 4]) -> Vec<(String, f64)> {
        let mut times = Vec::with_capacity(self.ops.len());
        self.run_ops_timed(
            0..self.ops.len(),
            to_nhwc(x, dims),
            Shape::Map(nhwc(dims)),
            Some(&mut times),
            &mut |_, _, _| {},
        );
        times
    }

    /// Evaluation-mode forward of `x` (`[n, c, h, w]`) up to the last of `taps` (activation indices
    /// as [`Engine::activation_index`] gives them), keeping only those: each tap's activation in
    /// the engine's NHWC layout with its dims `[n, h, w, c]` (`[n, 1, 1, f]` for vectors), in the
    /// order of `taps`. The inference path's buffers and in-place ReLUs, unlike a [`super::Trace`],
    /// which keeps everything a backward pass needs.
    pub fn activations(&self, x: &[f32], dims: [usize; 4], taps: &[usize]) -> Vec<(Vec<f32>, [usize; 4])> {
        let top = taps.iter().copied().max().unwrap_or(0).min(self.ops.len());
        let as_dims = |shape: Shape| match shape {
            Shape::Map(s) => s,
            Shape::Flat([n, f]) => [n, 1, 1, f],
        };
        let mut kept: Vec<Option<(Vec<f32>, [usize; 4])>> = vec![None; taps.len()];
        let keep = |kept: &mut Vec<Option<(Vec<f32>, [usize; 4])>>, index: usize, act: &[f32], shape: Shape| {
            for (slot, _) in kept.iter_mut().zip(taps).filter(|(_, t)| **t == index) {
                *slot = Some((act.to_vec(), as_dims(shape)));
            }
        };
        let (act, shape) = (to_nhwc(x, dims), Shape::Map(nhwc(dims)));
        keep(&mut kept, 0, &act, shape);
        self.run_ops_timed(0..top, act, shape, None, &mut |i, act, shape| keep(&mut kept, i + 1, act, shape));
        kept.into_iter().map(|k| k.expect("every tap is at most the last op")).collect()
    }

    pub(super) fn run_ops(&self, range: std::ops::Range<usize>, act: Vec<f32>, shape: Shape) -> (Vec<f32>, Shape) {
        self.run_ops_timed(range, act, shape, None, &mut |_, _, _| {})
    }

    /// [`Engine::run_ops`], pushing each op's name and wall time onto `times` when given and showing
    /// `visit` each op's index and output.
    fn run_ops_timed(
        &self,
        range: std::ops::Range<usize>,
        mut act: Vec<f32>,
        mut shape: Shape,
        mut times: Option<&mut Vec<(String, f64)>>,
        visit: &mut dyn FnMut(usize, &[f32], Shape),
    ) -> (Vec<f32>, Shape) {
        // Each op writes into the buffer its input's input had (the largest maps are tens of
        // megabytes: fresh allocations cost page faults and zeroing every layer).
        let mut spare = Vec::new();
        for i in range {
            let t = std::time::Instant::now();
            match &self.ops[i] {
                Op::Relu => norm::relu_inplace(&mut act),
                Op::Dropout => {}
                op => {
                    let (out, s, _) = op.forward_into(&self.env(), &act, shape, false, &[], &mut spare);
                    spare = std::mem::replace(&mut act, out);
                    shape = s;
                }
            }
            if let Some(times) = times.as_deref_mut() {
                times.push((self.names[i].clone(), t.elapsed().as_secs_f64()));
            }
            visit(i, &act, shape);
        }
        (act, shape)
    }

    /// The paper's dense evaluation: the classifier applied as convolutions over the whole trunk map
    /// (fc6 as a convolution with the head's pooled size as kernel, fc7 and fc8 as 1x1; a CIFAR head
    /// at every position), class scores averaged over the positions. Returns logits `[n, classes]`.
    /// A map smaller than the kernel falls back to [`Engine::forward`].
    pub fn dense_forward(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        let (map, shape) = self.run_ops(0..self.head_start, to_nhwc(x, dims), Shape::Map(nhwc(dims)));
        let Shape::Map([n, h, w, c]) = shape else { unreachable!("the trunk ends in a map") };
        let [kh, kw] = match self.config.head {
            Head::Imagenet { pool, .. } => pool,
            _ => [1, 1],
        };
        let first_fc = (self.head_start..self.ops.len())
            .find(|&i| matches!(self.ops[i], Op::Linear { .. }))
            .expect("a head has a linear layer");
        if h < kh || w < kw {
            return self.forward(x, dims);
        }
        let (ph, pw) = (h - kh + 1, w - kw + 1);
        let positions = ph * pw;
        // Each position's receptive window, flattened in PyTorch's (c, y, x) order so that fc6's
        // weights apply unchanged.
        let f = c * kh * kw;
        let mut rows = vec![0f32; n * positions * f];
        for s in 0..n {
            for py in 0..ph {
                for px in 0..pw {
                    let row = &mut rows[((s * ph + py) * pw + px) * f..][..f];
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let src = &map[((s * h + py + ky) * w + px + kx) * c..][..c];
                            for (ch, v) in src.iter().enumerate() {
                                row[(ch * kh + ky) * kw + kx] = *v;
                            }
                        }
                    }
                }
            }
        }
        let (scores, _) = self.run_ops(first_fc..self.ops.len(), rows, Shape::Flat([n * positions, f]));
        let classes = self.config.num_classes;
        let mut out = vec![0f32; n * classes];
        for s in 0..n {
            for p in 0..positions {
                for k in 0..classes {
                    out[s * classes + k] += scores[(s * positions + p) * classes + k] / positions as f32;
                }
            }
        }
        out
    }
}
