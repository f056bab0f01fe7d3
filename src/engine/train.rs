//! The training step (forward with batch statistics, loss, backward into each parameter's
//! gradient) and the recalibration of BatchNorm statistics (`update_bn`).

use super::ops::{Op, OpGrads, Saved, Shape};
use super::parallel::Bucket;
use super::{Engine, to_nhwc};
use crate::kernels::dense;

/// Result of [`Engine::train_step`].
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    /// Mean loss of the batch (of the global batch when data-parallel).
    pub loss: f64,
    /// Correct top-1 predictions in the batch (in the global batch when data-parallel).
    pub hits: usize,
}

/// The dropout seed of each op for image `r`: the image's seed mixed with the op's index, so that
/// the head's two dropout layers draw different masks.
fn op_seed(sample_seed: u64, op: usize) -> u64 {
    (sample_seed ^ (op as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

impl Engine {
    /// One training forward and backward on `x` (`[n, c, h, w]`): leaves each parameter's gradient
    /// in [`ParamBuf::grad`] and updates the BatchNorm running statistics as PyTorch does. Ops before
    /// `first_trainable` get no gradients (frozen layers); image `r`'s dropout masks draw from
    /// `sample_seeds[r]`. Data-parallel ([`Engine::set_data_parallel`]), `x` is this process's shard
    /// and the gradients left are those of the global batch's mean loss, identical everywhere.
    pub fn train_step(
        &mut self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[usize],
        smoothing: f64,
        sample_seeds: &[u64],
        frozen: &dyn Fn(&str) -> bool,
    ) -> StepResult {
        self.train_step_timed(x, dims, labels, smoothing, sample_seeds, frozen, None)
    }

    /// [`Engine::train_step`] that also times each op's forward and backward: (`"<name> fwd"` or
    /// `"<name> bwd"`, seconds), forward ops in order, then the loss, then the backward ops in the
    /// order they run. The per-layer view of `vgg bench --train --layers`.
    pub fn profile_train_step(&mut self, x: &[f32], dims: [usize; 4], labels: &[usize]) -> Vec<(String, f64)> {
        let mut times = Vec::with_capacity(2 * self.ops.len() + 1);
        self.train_step_timed(x, dims, labels, 0.0, &vec![0; dims[0]], &|_| false, Some(&mut times));
        times
    }

    #[allow(clippy::too_many_arguments)]
    fn train_step_timed(
        &mut self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[usize],
        smoothing: f64,
        sample_seeds: &[u64],
        frozen: &dyn Fn(&str) -> bool,
        mut times: Option<&mut Vec<(String, f64)>>,
    ) -> StepResult {
        let mut lap = |name: &str, suffix: &str, t: std::time::Instant| {
            if let Some(times) = times.as_deref_mut() {
                times.push((format!("{name} {suffix}").trim_end().to_string(), t.elapsed().as_secs_f64()));
            }
        };
        let [n, c, h, w] = dims;
        // Gradients and optimizer updates need f32 weights.
        self.store_f32();
        assert_eq!(sample_seeds.len(), n, "one dropout seed per image");
        // Data-parallel (DDP's broadcast_buffers): rank 0's running statistics where each process's
        // BatchNorm keeps its own.
        if let Some(group) = self.parallel.as_ref().filter(|p| !p.sync_bn).map(|p| p.group.clone()) {
            self.broadcast_running(&*group, 0);
        }
        let mut acts = vec![to_nhwc(x, dims)];
        let mut shapes = vec![Shape::Map([n, h, w, c])];
        let mut saved = Vec::with_capacity(self.ops.len());
        let mut spare = std::mem::take(&mut self.spare_acts);
        for i in 0..self.ops.len() {
            let t = std::time::Instant::now();
            let mut buf = spare.get_mut(i + 1).map(std::mem::take).unwrap_or_default();
            let seeds: Vec<u64> = match self.ops[i] {
                Op::Dropout => sample_seeds.iter().map(|&s| op_seed(s, i)).collect(),
                _ => vec![],
            };
            let (out, shape, s) = self.ops[i].forward_into(&self.env(), &acts[i], shapes[i], true, &seeds, &mut buf);
            if let Saved::Stats { mean, var, count, .. } = &s {
                self.update_running(i, mean, var, *count);
            }
            acts.push(out);
            shapes.push(shape);
            saved.push(s);
            lap(&self.names[i], "fwd", t);
        }
        let t = std::time::Instant::now();
        let classes = self.config.num_classes;
        let (mut loss, mut grad, mut hits) =
            dense::cross_entropy(acts.last().expect("output"), labels, classes, smoothing);
        if let Some(p) = &self.parallel {
            // One all-reduce gives the global batch size, loss and hits; this shard's loss gradient
            // is then scaled to its share of the global mean, so that the processes' gradients
            // sum to the one-process gradient.
            let mut sums = [n as f64, loss * n as f64, hits as f64];
            p.group.all_reduce_f64(&mut sums);
            let global_n = sums[0];
            let share = n as f64 / global_n;
            grad.iter_mut().for_each(|g| *g = (*g as f64 * share) as f32);
            (loss, hits) = (sums[1] / global_n, sums[2] as usize);
        }
        lap("loss", "", t);
        // Backward stops below the lowest op that has a trainable parameter.
        let lowest = (0..self.ops.len())
            .find(|&i| self.op_params(i).iter().any(|&p| !frozen(&self.params[p].key)))
            .unwrap_or(self.ops.len());
        for p in &mut self.params {
            p.grad.clear();
        }
        // Data-parallel with a second communicator: a thread sums each bucket across processes
        // while the backward pass goes on to the layers below (DDP's overlap); otherwise buckets
        // are summed here, between layers.
        let comm = self.parallel.as_ref().and_then(|p| p.overlap.clone());
        let grad = std::thread::scope(|scope| {
            let mut bucket = Bucket::default();
            let (to_comm, from_comm) = match &comm {
                Some(group) => {
                    let (to_comm, jobs) = std::sync::mpsc::channel::<Vec<f32>>();
                    let (done, from_comm) = std::sync::mpsc::channel::<Vec<f32>>();
                    scope.spawn(move || {
                        for mut flat in jobs {
                            group.all_reduce_f32(&mut flat);
                            if done.send(flat).is_err() {
                                return;
                            }
                        }
                    });
                    (Some(to_comm), Some(from_comm))
                }
                None => (None, None),
            };
            for i in (lowest..self.ops.len()).rev() {
                let t = std::time::Instant::now();
                let need_dx = i > lowest;
                // Field by field, so that the op is read while the parameters' gradients are written.
                let grads = OpGrads {
                    params: &mut self.params,
                    spare: &mut self.spare_grads,
                    eps: self.eps,
                    conv_algos: self.conv_algos,
                    sync_bn: self.parallel.as_ref().filter(|p| p.sync_bn).map(|p| &*p.group),
                };
                grad = self.ops[i].backward(grads, &acts[i], shapes[i], &saved[i], grad, need_dx);
                // Frozen parameters' gradients are cleared here, before they could be summed.
                let params = self.op_params(i);
                for &p in &params {
                    if frozen(&self.params[p].key) {
                        self.params[p].grad.clear();
                    }
                }
                self.reduce_gradients(&mut bucket, &params, i == lowest, to_comm.as_ref());
                lap(&self.names[i], "bwd", t);
            }
            drop(to_comm);
            if let Some(from_comm) = from_comm {
                self.collect_gradients(&mut bucket, &from_comm);
            }
            grad
        });
        self.spare_grads.give(grad);
        self.spare_acts = acts;
        StepResult { loss, hits }
    }

    /// Recomputes every BatchNorm's running statistics from `batches` (NCHW, with their dims), as
    /// `torch.optim.swa_utils.update_bn` does: statistics reset, then the equally weighted mean of
    /// each batch's mean and unbiased variance (BatchNorm with `momentum=None`), and
    /// `num_batches_tracked` the number of batches. Weights averaged over training (SWA) need this
    /// because no forward pass ever produced statistics for them; it also refreshes statistics that a
    /// momentum average took from the last few hundred augmented batches only. Returns the number
    /// of batches seen; with none, the statistics are left as they were.
    pub fn update_bn(&mut self, batches: &mut dyn Iterator<Item = (Vec<f32>, [usize; 4])>) -> usize {
        self.store_f32();
        let Some(last_bn) = self.ops.iter().rposition(|op| matches!(op, Op::BnRelu { .. })) else {
            return 0;
        };
        let mut sums: Vec<Option<(Vec<f64>, Vec<f64>)>> = vec![None; self.ops.len()];
        let mut count = 0usize;
        for (x, dims) in batches {
            let [n, c, h, w] = dims;
            let mut act = to_nhwc(&x, dims);
            let mut shape = Shape::Map([n, h, w, c]);
            for (i, sum) in sums.iter_mut().enumerate().take(last_bn + 1) {
                let (out, next, saved) = self.ops[i].forward(&self.env(), &act, shape, true, &[]);
                if let Saved::Stats { mean, var, .. } = saved {
                    let unbias = unbias_factor(shape.len() / c_of(shape));
                    let (m, v) = sum.get_or_insert_with(|| (vec![0.0; mean.len()], vec![0.0; var.len()]));
                    m.iter_mut().zip(&mean).for_each(|(a, b)| *a += b);
                    v.iter_mut().zip(&var).for_each(|(a, b)| *a += b * unbias);
                }
                act = out;
                shape = next;
            }
            count += 1;
        }
        if count == 0 {
            return 0;
        }
        for (op, sum) in self.ops.iter_mut().zip(sums) {
            if let (Op::BnRelu { running: r, .. }, Some((m, v))) = (op, sum) {
                r.mean = m.iter().map(|s| (s / count as f64) as f32).collect();
                r.var = v.iter().map(|s| (s / count as f64) as f32).collect();
                r.tracked = count as f32;
            }
        }
        count
    }

    fn op_params(&self, i: usize) -> Vec<usize> {
        match self.ops[i] {
            Op::Conv { w, b, .. } | Op::Linear { w, b, .. } => vec![w, b],
            Op::BnRelu { g, b, .. } => vec![g, b],
            _ => vec![],
        }
    }

    fn update_running(&mut self, i: usize, mean: &[f64], var: &[f64], count: usize) {
        let m = self.momentum;
        let Op::BnRelu { running: r, .. } = &mut self.ops[i] else { return };
        let unbias = unbias_factor(count);
        for ch in 0..mean.len() {
            r.mean[ch] = ((1.0 - m) * r.mean[ch] as f64 + m * mean[ch]) as f32;
            r.var[ch] = ((1.0 - m) * r.var[ch] as f64 + m * var[ch] * unbias) as f32;
        }
        r.tracked += 1.0;
    }
}

/// n / (n - 1): turns a batch's biased variance over `n` values into the unbiased one that
/// PyTorch's running variance takes.
fn unbias_factor(n: usize) -> f64 {
    if n > 1 { n as f64 / (n - 1) as f64 } else { 1.0 }
}

fn c_of(s: Shape) -> usize {
    match s {
        Shape::Map([_, _, _, c]) => c,
        Shape::Flat([_, f]) => f,
    }
}
