//! Tracing for explain and style: an evaluation pass that keeps every activation, and gradients
//! of a scalar with respect to activations and the input.

use super::ops::{BufPool, Op, Saved, Shape, passive_backward};
use super::{Engine, EngineError, nhwc, to_nhwc};
use crate::kernels::{conv, dense, pool};

/// An evaluation-mode forward pass that keeps every activation, for gradients with respect to
/// activations and the input ([`Engine::trace`], [`Engine::gradient`]).
pub struct Trace {
    acts: Vec<Vec<f32>>,
    shapes: Vec<Shape>,
    saved: Vec<Saved>,
}

impl Trace {
    /// How many activations it holds (the input and each op's output run).
    pub fn len(&self) -> usize {
        self.acts.len()
    }

    /// Whether it holds nothing (never: the input is always there).
    pub fn is_empty(&self) -> bool {
        self.acts.is_empty()
    }

    /// Activation `i` (0: the input) in PyTorch's layout: `[n, c, h, w]` or `[n, f]`.
    pub fn activation(&self, i: usize) -> (Vec<f32>, Vec<usize>) {
        match self.shapes[i] {
            Shape::Map([n, h, w, c]) => {
                let mut out = vec![0f32; self.acts[i].len()];
                pool::nhwc_to_nchw(&self.acts[i], [n, h, w, c], &mut out, false);
                (out, vec![n, c, h, w])
            }
            Shape::Flat([n, f]) => (self.acts[i].clone(), vec![n, f]),
        }
    }

    /// Whether activation `i` is a spatial map (not a vector of the head).
    pub fn is_map(&self, i: usize) -> bool {
        matches!(self.shapes[i], Shape::Map(_))
    }

    /// Activation `i` as the engine holds it: NHWC maps, and the dims `[n, h, w, c]` (`[n, 1, 1, f]`
    /// for vectors).
    pub fn activation_nhwc(&self, i: usize) -> (&[f32], [usize; 4]) {
        let dims = match self.shapes[i] {
            Shape::Map(s) => s,
            Shape::Flat([n, f]) => [n, 1, 1, f],
        };
        (&self.acts[i], dims)
    }
}

impl Engine {
    /// The names of the activations a [`Trace`] holds, by index: `input`, then each op's output
    /// (`conv1_1`, `relu1_1`, `pool1`, ..., `fc8`). With BatchNorm, `bnX_Y` is fused into `reluX_Y`
    /// and not available on its own.
    pub fn activation_names(&self) -> Vec<&str> {
        std::iter::once("input").chain(self.names.iter().map(String::as_str)).collect()
    }

    /// Index in a [`Trace`] of the activation called `name` (a paper name, or `logits` for the last).
    pub fn activation_index(&self, name: &str) -> Result<usize, EngineError> {
        if name == "logits" && self.head_start < self.ops.len() {
            return Ok(self.ops.len());
        }
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i + 1);
        }
        let hint = if name.starts_with("bn") {
            " (a BatchNorm's output is fused with its ReLU here: ask for the relu)"
        } else {
            ""
        };
        Err(EngineError::Unsupported(format!(
            "a layer named '{name}'{hint}; the layers are: {}",
            self.names.join(", ")
        )))
    }

    /// The last ReLU of the trunk (`relu5_3` of VGG-16): where Grad-CAM looks by default.
    pub fn last_trunk_relu(&self) -> Option<&str> {
        self.names[..self.head_start].iter().rev().find(|n| n.starts_with("relu")).map(String::as_str)
    }

    /// Replaces every max-pooling with 2x2 average pooling (Gatys et al. found it gives slightly
    /// smoother style transfer results).
    pub fn use_average_pooling(&mut self) {
        for op in &mut self.ops {
            if matches!(op, Op::MaxPool) {
                *op = Op::AvgPool2;
            }
        }
    }

    /// Evaluation-mode forward of `x` (`[n, c, h, w]`) up to activation `upto` (see
    /// [`Engine::activation_index`]), keeping everything [`Engine::gradient`] needs.
    pub fn trace(&self, x: &[f32], dims: [usize; 4], upto: usize) -> Trace {
        let mut acts = vec![to_nhwc(x, dims)];
        let mut shapes = vec![Shape::Map(nhwc(dims))];
        let mut saved = Vec::new();
        for op in &self.ops[..upto.min(self.ops.len())] {
            let (out, shape, s) =
                op.forward(&self.env(), acts.last().expect("input"), *shapes.last().expect("input"), false, &[]);
            acts.push(out);
            shapes.push(shape);
            saved.push(s);
        }
        Trace { acts, shapes, saved }
    }

    /// Evaluation-mode forward from activation `i` of `trace`'s shape, replaced by `act` (NHWC, as
    /// [`Trace::activation_nhwc`] holds it), to the network's output: what-if experiments on an
    /// intermediate map (and a finite-difference check of [`Engine::gradient`]).
    pub fn forward_from(&self, trace: &Trace, i: usize, act: Vec<f32>) -> Vec<f32> {
        assert_eq!(act.len(), trace.acts[i].len(), "activation {i} has another size");
        self.run_ops(i..self.ops.len(), act, trace.shapes[i]).0
    }

    /// Gradient of a scalar with respect to activation `down_to` of `trace`, given the scalar's
    /// gradients with respect to later activations: `seeds` pairs an activation index with a
    /// gradient in the engine's NHWC layout (as [`Trace::activation_nhwc`] holds them); several seeds
    /// add up (a style loss over several layers). Returns NHWC, like the seeds. Parameters get no
    /// gradients (evaluation mode: BatchNorm uses its running statistics).
    pub fn gradient(&self, trace: &Trace, seeds: Vec<(usize, Vec<f32>)>, down_to: usize) -> Vec<f32> {
        let top = seeds.iter().map(|(i, _)| *i).max().unwrap_or(down_to).max(down_to);
        assert!(top < trace.acts.len(), "seed beyond the trace");
        let mut seeds = seeds;
        let mut g = vec![0f32; trace.acts[top].len()];
        for i in (down_to..=top).rev() {
            for (j, s) in seeds.iter_mut().filter(|(j, _)| *j == i) {
                let _ = j;
                assert_eq!(s.len(), g.len(), "seed for activation {i} of the wrong size");
                for (a, b) in g.iter_mut().zip(s.iter()) {
                    *a += b;
                }
            }
            if i == down_to {
                break;
            }
            g = self.input_backward(i - 1, &trace.acts[i - 1], trace.shapes[i - 1], &trace.saved[i - 1], g);
        }
        g
    }

    /// Backward of op `i` to its input only.
    fn input_backward(&self, i: usize, x: &[f32], shape: Shape, saved: &Saved, mut g: Vec<f32>) -> Vec<f32> {
        match (&self.ops[i], shape) {
            (&Op::Conv { w, ci, co, k, ref cache, .. }, Shape::Map([n, h, wd, _])) => {
                let sh = conv::ConvShape { n, h, w: wd, ci, co, k };
                let mut dx = vec![0f32; x.len()];
                conv::backward_input_cached(
                    self.params[w].filter(),
                    &cache.input_grad,
                    &g,
                    &sh,
                    &mut dx,
                    self.conv_algos,
                );
                dx
            }
            (Op::BnRelu { .. }, _) => {
                let Saved::Eval(a) = saved else { unreachable!("an evaluation trace keeps BatchNorm's affine map") };
                let c = a.scale.len();
                for (gr, zr) in g.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for ch in 0..c {
                        let on = (zr[ch] - a.mean[ch]) * a.scale[ch] + a.shift[ch] > 0.0;
                        gr[ch] = if on { gr[ch] * a.scale[ch] } else { 0.0 };
                    }
                }
                g
            }
            (&Op::Linear { w, inp, out, .. }, Shape::Flat([n, _])) => {
                let mut dx = vec![0f32; n * inp];
                dense::linear_backward_input(&self.params[w].values(), &g, n, out, &mut dx);
                dx
            }
            (Op::Dropout, _) => g,
            (op, _) => passive_backward(op, x, shape, saved, g, &mut BufPool::default()),
        }
    }
}
