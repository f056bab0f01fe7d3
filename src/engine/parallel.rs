//! Data-parallel training steps, as PyTorch's DistributedDataParallel takes them: each process
//! steps its shard of the global batch, the loss is the mean over the *global* batch (so every
//! gradient is a share of the one-process gradient and their sum is it exactly, whatever the shard
//! sizes), parameter gradients are summed across processes in buckets of about `bucket_bytes` as
//! the backward pass finishes them (last layer first), and BatchNorm either keeps per-process
//! statistics with rank 0's running buffers broadcast before each step (DDP's default) or, with
//! `sync_bn`, computes them over the global batch forward and backward (SyncBatchNorm).

use super::Engine;
use super::ops::Op;
use crate::dist::{Collective, Group};

/// How an engine's training steps span processes.
#[derive(Clone)]
pub struct DataParallel {
    /// The processes.
    pub group: Group,
    /// BatchNorm statistics over the global batch.
    pub sync_bn: bool,
    /// Gradient bytes per all-reduce (DDP's `bucket_cap_mb`: 25 MB).
    pub bucket_bytes: usize,
    /// A second communicator on which a thread sums the gradient buckets while the backward pass
    /// continues ([`DataParallel::with_overlap`]); `None`: buckets are summed between layers.
    pub overlap: Option<Group>,
}

impl DataParallel {
    /// Gradients summed while the backward pass goes on, where the group can run operations on a
    /// second thread (MPI with `MPI_THREAD_MULTIPLE`); every process must call this at the same
    /// point.
    pub fn with_overlap(mut self) -> Self {
        self.overlap = self.group.split();
        self
    }
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("rank", &self.group.rank())
            .field("size", &self.group.size())
            .field("sync_bn", &self.sync_bn)
            .field("bucket_bytes", &self.bucket_bytes)
            .field("overlap", &self.overlap.is_some())
            .finish()
    }
}

/// Gradients waiting to be summed across processes: parameter indices in the order the backward
/// pass finished them, and the buckets handed to the communication thread, in order.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    params: Vec<usize>,
    bytes: usize,
    sent: Vec<Vec<usize>>,
}

impl Engine {
    /// Makes the training steps data-parallel over `parallel.group` (or single-process with `None`).
    /// Every process must hold the same weights: see [`Engine::broadcast_weights`].
    pub fn set_data_parallel(&mut self, parallel: Option<DataParallel>) {
        self.parallel = parallel.filter(|p| p.group.size() > 1);
    }

    /// The data-parallel setting, if the steps span processes.
    pub fn data_parallel(&self) -> Option<&DataParallel> {
        self.parallel.as_ref()
    }

    /// Copies `root`'s parameters and BatchNorm buffers into every process of `group`.
    pub fn broadcast_weights(&mut self, group: &dyn Collective, root: usize) {
        self.store_f32();
        for p in self.params_mut() {
            group.broadcast_f32(root, &mut p.value);
        }
        self.broadcast_running(group, root);
    }

    /// Copies `root`'s BatchNorm running statistics into every process.
    pub(super) fn broadcast_running(&mut self, group: &dyn Collective, root: usize) {
        for op in &mut self.ops {
            if let Op::BnRelu { running, .. } = op {
                let mut packed: Vec<f32> = running.mean.iter().chain(&running.var).copied().collect();
                packed.push(running.tracked);
                group.broadcast_f32(root, &mut packed);
                let c = running.mean.len();
                running.mean.copy_from_slice(&packed[..c]);
                running.var.copy_from_slice(&packed[c..2 * c]);
                running.tracked = packed[2 * c];
            }
        }
    }

    /// Adds the gradients of `params` (just finished by the backward pass) to the bucket, and sums
    /// the bucket across processes once it holds `bucket_bytes`, or with `flush`: here, or by
    /// handing it to the communication thread `to_comm` ([`Engine::collect_gradients`] takes the
    /// sums back).
    pub(super) fn reduce_gradients(
        &mut self,
        bucket: &mut Bucket,
        params: &[usize],
        flush: bool,
        to_comm: Option<&std::sync::mpsc::Sender<Vec<f32>>>,
    ) {
        let Some(parallel) = &self.parallel else { return };
        for &p in params {
            if !self.params[p].grad.is_empty() {
                bucket.params.push(p);
                bucket.bytes += 4 * self.params[p].grad.len();
            }
        }
        if bucket.params.is_empty() || !(flush || bucket.bytes >= parallel.bucket_bytes) {
            return;
        }
        let mut flat = Vec::with_capacity(bucket.bytes / 4);
        for &p in &bucket.params {
            flat.extend_from_slice(&self.params[p].grad);
        }
        let params = std::mem::take(&mut bucket.params);
        bucket.bytes = 0;
        if let Some(to_comm) = to_comm {
            match to_comm.send(flat) {
                Ok(()) => return bucket.sent.push(params),
                // The thread is gone: sum here instead.
                Err(back) => flat = back.0,
            }
        }
        parallel.group.all_reduce_f32(&mut flat);
        self.scatter_gradients(&params, &flat);
    }

    /// Waits for the communication thread's sums of the buckets sent to it, in order, and puts
    /// them in place of the gradients.
    pub(super) fn collect_gradients(&mut self, bucket: &mut Bucket, from_comm: &std::sync::mpsc::Receiver<Vec<f32>>) {
        for params in std::mem::take(&mut bucket.sent) {
            let flat = from_comm.recv().expect("the communication thread sums every bucket it is sent");
            self.scatter_gradients(&params, &flat);
        }
    }

    fn scatter_gradients(&mut self, params: &[usize], flat: &[f32]) {
        let mut at = 0;
        for &p in params {
            let g = &mut self.params[p].grad;
            let len = g.len();
            g.copy_from_slice(&flat[at..at + len]);
            at += len;
        }
    }
}
