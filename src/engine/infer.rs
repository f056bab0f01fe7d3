//! Evaluation passes: logits, the per-op profile of `vgg bench --layers`, and the paper's dense
//! evaluation.

use super::ops::{Op, Shape};
use std::sync::Mutex;

use super::{Engine, nhwc, to_nhwc, to_nhwc_into};
use crate::config::Head;
use crate::kernels::norm;

/// The two activation buffers an inference pass writes its layers into by turns, kept between
/// passes. A pass that allocates them anew pays page faults and zeroing on its two largest maps:
/// VGG-16's conv1_1 and conv1_2 at batch 8 (102 MB each) took 67 and 128 ms of a 0.86 s pass;
/// with the buffers kept, 13 and 68 ms of a 0.55 s pass (AMD EPYC Zen 4, `vgg bench --layers`).
/// Concurrent passes (the server's) each take what is there and allocate the rest; at most two
/// are kept.
#[derive(Debug, Default)]
pub(super) struct Scratch(Mutex<Vec<Vec<f32>>>);

impl Clone for Scratch {
    /// A copy of an engine starts with no buffers of its own.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Scratch {
    fn take(&self) -> Vec<f32> {
        self.0.lock().map(|mut kept| kept.pop()).ok().flatten().unwrap_or_default()
    }

    /// Keeps the two largest of `buffers` (by allocation) for the next pass.
    fn keep(&self, mut buffers: Vec<Vec<f32>>) {
        buffers.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        if let Ok(mut kept) = self.0.lock() {
            for buffer in buffers.into_iter().filter(|b| b.capacity() > 0) {
                if kept.len() < 2 {
                    kept.push(buffer);
                }
            }
        }
    }
}

/// What [`Engine::run_ops_timed`] shows each op's output to: its index, output and shape.
type Visit<'a> = dyn FnMut(usize, &[f32], Shape) + 'a;

impl Engine {
    /// Evaluation-mode logits `[n, classes]` of `x`, `[n, c, h, w]` (NCHW, as everywhere else).
    pub fn forward(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        self.pass(x, dims, None)
    }

    /// Evaluation-mode forward of `x` that times each op: (output name, seconds), in order. The
    /// per-layer view of `vgg bench --layers`; runs exactly the code of [`Engine::forward`].
    pub fn profile(&self, x: &[f32], dims: [usize; 4]) -> Vec<(String, f64)> {
        let mut times = Vec::with_capacity(self.ops.len());
        self.pass(x, dims, Some(&mut times));
        times
    }

    /// The pass of [`Engine::forward`] and [`Engine::profile`]: the input and the first op's output
    /// go into kept buffers, and every large buffer goes back to the scratch afterwards.
    fn pass(&self, x: &[f32], dims: [usize; 4], times: Option<&mut Vec<(String, f64)>>) -> Vec<f32> {
        let input = to_nhwc_into(x, dims, self.scratch.take());
        let spare = self.scratch.take();
        let ops = 0..self.ops.len();
        let (logits, _, mut left) = self.run_ops_inner(ops, input, Shape::Map(nhwc(dims)), spare, times, None);
        // The logits may be a few floats in one of the large buffers: copied out, the buffer kept.
        let result = logits.clone();
        left.push(logits);
        self.scratch.keep(left);
        result
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
        act: Vec<f32>,
        shape: Shape,
        times: Option<&mut Vec<(String, f64)>>,
        visit: &mut dyn FnMut(usize, &[f32], Shape),
    ) -> (Vec<f32>, Shape) {
        let (act, shape, _) = self.run_ops_inner(range, act, shape, Vec::new(), times, Some(visit));
        (act, shape)
    }

    /// The loop of [`Engine::run_ops_timed`], with `spare` as the first op's output buffer; returns
    /// the output, its shape and the buffers left over. Without a `visit`, which would see a
    /// convolution's output before its ReLU, each convolution followed by a ReLU runs with the
    /// ReLU fused into it, and the ReLU's time is 0.
    fn run_ops_inner(
        &self,
        range: std::ops::Range<usize>,
        mut act: Vec<f32>,
        mut shape: Shape,
        mut spare: Vec<f32>,
        mut times: Option<&mut Vec<(String, f64)>>,
        mut visit: Option<&mut Visit>,
    ) -> (Vec<f32>, Shape, Vec<Vec<f32>>) {
        // Each op writes into the buffer its input's input had (the largest maps are tens of
        // megabytes: fresh allocations cost page faults and zeroing every layer).
        let mut reserve = Vec::new();
        let mut relu_done = false;
        for i in range.clone() {
            let t = std::time::Instant::now();
            let fuse = visit.is_none() && range.contains(&(i + 1)) && matches!(self.ops.get(i + 1), Some(Op::Relu));
            let fused = if fuse {
                self.ops[i].forward_conv_into(&self.env(), &act, shape, false, true, &mut spare)
            } else {
                None
            };
            match &self.ops[i] {
                Op::Relu if std::mem::take(&mut relu_done) => {}
                Op::Relu => norm::relu_inplace(&mut act),
                Op::Dropout => {}
                op => {
                    relu_done = fused.is_some();
                    let (out, s) = fused.unwrap_or_else(|| {
                        let (out, s, _) = op.forward_into(&self.env(), &act, shape, false, &[], &mut spare);
                        (out, s)
                    });
                    let input = std::mem::replace(&mut act, out);
                    if spare.capacity() == 0 {
                        spare = input;
                    } else if input.capacity() > reserve.capacity() {
                        // The op allocated its own output (the fully connected layers do) and left
                        // `spare` as it was: the input's buffer is set aside rather than dropped,
                        // so that both buffers of the largest maps outlive the head.
                        reserve = input;
                    }
                    shape = s;
                }
            }
            if let Some(times) = times.as_deref_mut() {
                times.push((self.names[i].clone(), t.elapsed().as_secs_f64()));
            }
            if let Some(visit) = visit.as_deref_mut() {
                visit(i, &act, shape);
            }
        }
        (act, shape, vec![spare, reserve])
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
