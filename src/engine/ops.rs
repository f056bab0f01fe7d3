//! The engine's ops and their dispatch: one op's forward (evaluation or training) and backward
//! over NHWC activations, and the buffers they reuse between calls.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::params::ParamBuf;
use crate::dist::Collective;
use crate::kernels::conv::ConvAlgos;
use crate::kernels::{conv, dense, norm, pool};

/// What an op reads besides its input: the parameters and the network's settings.
pub(super) struct OpEnv<'a> {
    pub(super) params: &'a [ParamBuf],
    /// BatchNorm's ε.
    pub(super) eps: f64,
    /// The head's dropout probability.
    pub(super) dropout: f64,
    pub(super) conv_algos: ConvAlgos,
    /// The processes whose batches BatchNorm's training statistics span (synchronised BatchNorm).
    pub(super) sync_bn: Option<&'a dyn Collective>,
}

/// What an op's backward writes: the parameters' gradients, and the pool its input gradient is
/// taken from and its output gradient given back to.
pub(super) struct OpGrads<'a> {
    pub(super) params: &'a mut [ParamBuf],
    pub(super) spare: &'a mut BufPool,
    pub(super) eps: f64,
    pub(super) conv_algos: ConvAlgos,
    /// As [`OpEnv::sync_bn`].
    pub(super) sync_bn: Option<&'a dyn Collective>,
}

/// A convolution's transformed filters for the forward and input-gradient passes (filled on first
/// use; `Arc` so that cloning an op or an engine shares instead of copying them).
#[derive(Debug, Default)]
pub(super) struct ConvCache {
    pub(super) forward: conv::FilterCache,
    pub(super) input_grad: conv::FilterCache,
}

/// BatchNorm buffers.
#[derive(Debug, Clone)]
pub(super) struct Running {
    pub(super) key: String,
    pub(super) mean: Vec<f32>,
    pub(super) var: Vec<f32>,
    pub(super) tracked: f32,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Indices of weight and bias in `params`.
    Conv {
        w: usize,
        b: usize,
        ci: usize,
        co: usize,
        k: usize,
        /// Winograd-transformed filters of the current weights, replaced when they change.
        cache: Arc<ConvCache>,
    },
    /// BatchNorm followed by ReLU: γ and β indices, and the running statistics.
    BnRelu {
        g: usize,
        b: usize,
        running: Running,
    },
    Relu,
    MaxPool,
    /// 2x2/2 average pooling in place of max-pooling (Gatys et al.'s option for style transfer).
    AvgPool2,
    AvgPool {
        out: [usize; 2],
    },
    /// NHWC map → PyTorch's (c, h, w) flat vector.
    Flatten,
    Linear {
        w: usize,
        b: usize,
        inp: usize,
        out: usize,
    },
    Dropout,
}

/// Shape of an activation: a `[n, h, w, c]` map or an `[n, f]` vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Map([usize; 4]),
    Flat([usize; 2]),
}

impl Shape {
    pub(super) fn len(&self) -> usize {
        match self {
            Shape::Map(s) => s.iter().product(),
            Shape::Flat(s) => s.iter().product(),
        }
    }
}

/// What a training forward keeps for the backward pass of one op.
pub(super) enum Saved {
    None,
    Stats {
        mean: Vec<f64>,
        var: Vec<f64>,
        affine: norm::Affine,
        /// Values per channel the statistics are over (over every process's batch when synchronised).
        count: usize,
    },
    /// Evaluation-mode BatchNorm: the affine map of the running statistics.
    Eval(norm::Affine),
    Arg(Vec<u8>),
    Mask(Vec<f32>),
}

/// `len` floats in `v`'s allocation, not zeroed where `v` already holds that many: every kernel
/// that writes into such a buffer overwrites all of it (zeroing fresh buffers was ~7% of a small
/// model's training step). Debug builds fill a reused buffer with NaN instead, so that the tests
/// catch a kernel that does not.
pub(super) fn reuse(mut v: Vec<f32>, len: usize) -> Vec<f32> {
    if v.len() >= len {
        v.truncate(len);
        if cfg!(debug_assertions) {
            v.fill(f32::NAN);
        }
    } else {
        v.clear();
        v.resize(len, 0.0);
    }
    v
}

/// Gradient buffers kept by length for [`reuse`].
#[derive(Debug, Clone, Default)]
pub(super) struct BufPool(std::collections::HashMap<usize, Vec<Vec<f32>>>);

impl BufPool {
    pub(super) fn take(&mut self, len: usize) -> Vec<f32> {
        reuse(self.0.get_mut(&len).and_then(Vec::pop).unwrap_or_default(), len)
    }

    pub(super) fn give(&mut self, v: Vec<f32>) {
        if !v.is_empty() {
            self.0.entry(v.len()).or_default().push(v);
        }
    }
}

impl Op {
    /// Runs the op. In training, BatchNorm uses the batch statistics (returned in [`Saved::Stats`])
    /// and dropout is applied, row `r` drawing its mask from `dropout_seeds[r]`.
    pub(super) fn forward(
        &self,
        env: &OpEnv,
        x: &[f32],
        shape: Shape,
        train: bool,
        dropout_seeds: &[u64],
    ) -> (Vec<f32>, Shape, Saved) {
        self.forward_into(env, x, shape, train, dropout_seeds, &mut Vec::new())
    }

    /// Forward of a convolution, into `spare`'s allocation where it has one, followed by its ReLU
    /// when `relu` (evaluation only: fused into the convolution's output pass, see
    /// [`conv::forward_cached`]); `None`, touching nothing, when this op is not a convolution.
    pub(super) fn forward_conv_into(
        &self,
        env: &OpEnv,
        x: &[f32],
        shape: Shape,
        train: bool,
        relu: bool,
        spare: &mut Vec<f32>,
    ) -> Option<(Vec<f32>, Shape)> {
        let (&Op::Conv { w, b, ci, co, k, ref cache }, Shape::Map([n, h, wd, c])) = (self, shape) else {
            return None;
        };
        debug_assert_eq!(c, ci);
        debug_assert!(!(train && relu), "the training forward keeps the ReLU an op of its own");
        let sh = conv::ConvShape { n, h, w: wd, ci, co, k };
        let mut out = reuse(std::mem::take(spare), n * h * wd * co);
        let (filter, bias) = (env.params[w].filter(), &env.params[b].value);
        if train {
            // Winograd's rounding error (~3e-6 relative, 30x direct f32's) is amplified by
            // train-mode BatchNorm over small batches past the fixture tolerances; the input
            // gradients and evaluation stay within them and take the Winograd path.
            conv::forward_exact(x, filter, &cache.forward, bias, &sh, &mut out, env.conv_algos);
        } else {
            conv::forward_cached(x, filter, &cache.forward, bias, relu, &sh, &mut out, env.conv_algos);
        }
        Some((out, Shape::Map([n, h, wd, co])))
    }

    /// [`Op::forward`] writing its output into `spare`'s allocation where it has one.
    pub(super) fn forward_into(
        &self,
        env: &OpEnv,
        x: &[f32],
        shape: Shape,
        train: bool,
        dropout_seeds: &[u64],
        spare: &mut Vec<f32>,
    ) -> (Vec<f32>, Shape, Saved) {
        let mut buffer = |len: usize| reuse(std::mem::take(spare), len);
        match (self, shape) {
            (Op::Conv { .. }, Shape::Map(_)) => {
                let (out, shape) = self.forward_conv_into(env, x, shape, train, false, spare).expect("a convolution");
                (out, shape, Saved::None)
            }
            (Op::BnRelu { g, b, running }, Shape::Map([_, _, _, c])) => {
                let (gamma, beta) = (&env.params[*g].value, &env.params[*b].value);
                let mut out = buffer(x.len());
                if train {
                    let (mut mean, mut var) = norm::batch_stats(x, c);
                    let mut count = x.len() / c;
                    if let Some(group) = env.sync_bn {
                        count = global_stats(group, count, &mut mean, &mut var);
                    }
                    let affine = norm::Affine::new(&mean, &var, gamma, beta, env.eps);
                    norm::affine_relu(x, &affine, &mut out);
                    (out, shape, Saved::Stats { mean, var, affine, count })
                } else {
                    let mean: Vec<f64> = running.mean.iter().map(|&v| v as f64).collect();
                    let var: Vec<f64> = running.var.iter().map(|&v| v as f64).collect();
                    let affine = norm::Affine::new(&mean, &var, gamma, beta, env.eps);
                    norm::affine_relu(x, &affine, &mut out);
                    (out, shape, Saved::Eval(affine))
                }
            }
            (Op::Relu, _) => {
                let mut out = buffer(x.len());
                norm::relu(x, &mut out);
                (out, shape, Saved::None)
            }
            (Op::MaxPool, Shape::Map([n, h, w, c])) => {
                let os = [n, h / 2, w / 2, c];
                let mut out = buffer(os.iter().product());
                let mut arg = vec![0u8; out.len()];
                pool::max2_forward(x, [n, h, w, c], &mut out, &mut arg);
                (out, Shape::Map(os), Saved::Arg(arg))
            }
            (Op::AvgPool2, Shape::Map([n, h, w, c])) => {
                let os = [n, h / 2, w / 2, c];
                let mut out = buffer(os.iter().product());
                pool::avg2_forward(x, [n, h, w, c], &mut out);
                (out, Shape::Map(os), Saved::None)
            }
            (&Op::AvgPool { out: [oh, ow] }, Shape::Map([n, h, w, c])) => {
                if [h, w] == [oh, ow] {
                    return (x.to_vec(), shape, Saved::None);
                }
                let mut out = buffer(n * oh * ow * c);
                pool::adaptive_avg_forward(x, [n, h, w, c], [oh, ow], &mut out);
                (out, Shape::Map([n, oh, ow, c]), Saved::None)
            }
            (Op::Flatten, Shape::Map([n, h, w, c])) => {
                let mut out = buffer(x.len());
                if h * w == 1 {
                    out.copy_from_slice(x);
                } else {
                    pool::nhwc_to_nchw(x, [n, h, w, c], &mut out, false);
                }
                (out, Shape::Flat([n, h * w * c]), Saved::None)
            }
            (&Op::Linear { w, b, inp, out }, Shape::Flat([n, f])) => {
                assert_eq!(f, inp, "the head expects {inp} features, got {f}");
                let mut y = buffer(n * out);
                match &env.params[w].half {
                    Some(h) => crate::kernels::half::linear_forward(x, h, &env.params[b].value, n, &mut y),
                    None => dense::linear_forward(x, &env.params[w].value, &env.params[b].value, n, &mut y),
                }
                (y, Shape::Flat([n, out]), Saved::None)
            }
            (Op::Dropout, _) => {
                let mut out = x.to_vec();
                if train && env.dropout > 0.0 {
                    // Each image's mask from its own seed, so that it does not depend on which
                    // batch or process the image is in.
                    let row = out.len() / dropout_seeds.len().max(1);
                    let mut mask = Vec::with_capacity(out.len());
                    for (r, part) in out.chunks_mut(row.max(1)).enumerate() {
                        let mut rng = StdRng::seed_from_u64(dropout_seeds.get(r).copied().unwrap_or(0));
                        mask.extend(dense::dropout(part, env.dropout, &mut rng));
                    }
                    (out, shape, Saved::Mask(mask))
                } else {
                    (out, shape, Saved::None)
                }
            }
            (op, shape) => unreachable!("{op:?} on {shape:?}"),
        }
    }

    /// Backward with input `x`: stores parameter gradients and returns the input gradient (empty
    /// when `need_dx` is false).
    pub(super) fn backward(
        &self,
        grads: OpGrads,
        x: &[f32],
        shape: Shape,
        saved: &Saved,
        mut g: Vec<f32>,
        need_dx: bool,
    ) -> Vec<f32> {
        match (self, shape) {
            (&Op::Conv { w, b, ci, co, k, ref cache }, Shape::Map([n, h, wd, _])) => {
                let sh = conv::ConvShape { n, h, w: wd, ci, co, k };
                let mut dx = if need_dx { grads.spare.take(x.len()) } else { vec![] };
                let wk = &grads.params[w].value;
                let dx_out = need_dx.then_some(dx.as_mut_slice());
                let (dw, db) = conv::backward_cached(x, wk, &cache.input_grad, &g, &sh, dx_out, grads.conv_algos);
                grads.params[w].grad = dw;
                grads.params[b].grad = db;
                grads.spare.give(g);
                dx
            }
            (Op::BnRelu { g: gi, b, .. }, _) => {
                let Saved::Stats { mean, var, affine, count } = saved else {
                    unreachable!("BatchNorm saved its statistics")
                };
                // Synchronised: the sums of the output gradient (and of its product with x̂) over
                // every process's batch, as the statistics were.
                let reduce = |sums: &mut [f64]| {
                    if let Some(group) = grads.sync_bn {
                        group.all_reduce_f64(sums);
                    }
                };
                let (dg, dbeta) = norm::bn_relu_backward(
                    x,
                    &mut g,
                    mean,
                    var,
                    &grads.params[*gi].value,
                    affine,
                    grads.eps,
                    (*count, &reduce as norm::SumAcross),
                );
                grads.params[*gi].grad = dg;
                grads.params[*b].grad = dbeta;
                g
            }
            (&Op::Linear { w, b, out, .. }, Shape::Flat([n, _])) => {
                let mut dx = if need_dx { grads.spare.take(x.len()) } else { vec![] };
                let (dw, db) =
                    dense::linear_backward(x, &grads.params[w].value, &g, n, out, need_dx.then_some(dx.as_mut_slice()));
                grads.params[w].grad = dw;
                grads.params[b].grad = db;
                grads.spare.give(g);
                dx
            }
            (op, _) => passive_backward(op, x, shape, saved, g, grads.spare),
        }
    }
}

/// The mean and biased variance over every process's batch from this one's (`count` values per
/// channel): the counts and the per-channel sums of x and x² are summed across processes, in f64.
/// Returns the total count.
fn global_stats(group: &dyn Collective, count: usize, mean: &mut [f64], var: &mut [f64]) -> usize {
    let c = mean.len();
    let n = count as f64;
    let mut sums = Vec::with_capacity(2 * c + 1);
    sums.push(n);
    sums.extend(mean.iter().map(|m| n * m));
    sums.extend(mean.iter().zip(var.iter()).map(|(m, v)| n * (v + m * m)));
    group.all_reduce_f64(&mut sums);
    let total = sums[0];
    for ch in 0..c {
        let m = sums[1 + ch] / total;
        mean[ch] = m;
        var[ch] = (sums[1 + c + ch] / total - m * m).max(0.0);
    }
    total as usize
}

/// Backward of an op without parameters (ReLU, pooling, flatten, dropout) to its input.
pub(super) fn passive_backward(
    op: &Op,
    x: &[f32],
    shape: Shape,
    saved: &Saved,
    mut g: Vec<f32>,
    bufs: &mut BufPool,
) -> Vec<f32> {
    match (op, shape) {
        (Op::Relu, _) => {
            // The forward output is relu(x): positive exactly where x is.
            norm::relu_backward(x, &mut g);
            g
        }
        (Op::MaxPool, Shape::Map(s)) => {
            let Saved::Arg(arg) = saved else { unreachable!("max-pool saved its arguments") };
            let mut dx = bufs.take(x.len());
            pool::max2_backward(&g, arg, s, &mut dx);
            bufs.give(g);
            dx
        }
        (Op::AvgPool2, Shape::Map(s)) => {
            let mut dx = bufs.take(x.len());
            pool::avg2_backward(&g, s, &mut dx);
            bufs.give(g);
            dx
        }
        (&Op::AvgPool { out }, Shape::Map(s)) => {
            if [s[1], s[2]] == out {
                return g;
            }
            let mut dx = bufs.take(x.len());
            pool::adaptive_avg_backward(&g, s, out, &mut dx);
            bufs.give(g);
            dx
        }
        (Op::Flatten, Shape::Map([n, h, w, c])) => {
            if h * w == 1 {
                return g;
            }
            let mut dx = bufs.take(x.len());
            pool::nhwc_to_nchw(&g, [n, h, w, c], &mut dx, true);
            bufs.give(g);
            dx
        }
        (Op::Dropout, _) => {
            if let Saved::Mask(mask) = saved {
                for (v, m) in g.iter_mut().zip(mask) {
                    *v *= m;
                }
            }
            g
        }
        (op, shape) => unreachable!("{op:?} on {shape:?}"),
    }
}
