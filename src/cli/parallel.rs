//! The options of a run over several processes (`mpirun -n N vgg train|eval …`).

use anyhow::{Context, Result};
use clap::Args;

use vgg::dist::{self, Group};
use vgg::engine::DataParallel;

/// How a process joins the others started with it.
#[derive(Args, Debug, Clone)]
pub struct MpiArgs {
    /// Under mpirun: seconds a process waits for the others in one collective operation before it
    /// stops with an error (a rank that died or hangs).
    #[arg(long, default_value_t = 300.0)]
    mpi_timeout: f64,
}

impl MpiArgs {
    /// The processes this one was started with (itself alone without mpirun or the `mpi` feature).
    pub fn group(&self) -> Result<Group> {
        if !(self.mpi_timeout.is_finite() && self.mpi_timeout > 0.0) {
            anyhow::bail!("--mpi-timeout must be a positive number of seconds, not {}", self.mpi_timeout);
        }
        dist::world(std::time::Duration::from_secs_f64(self.mpi_timeout)).context("joining the MPI job")
    }
}

/// Data-parallel training's options.
#[derive(Args, Debug, Clone)]
pub struct ParallelArgs {
    #[command(flatten)]
    pub mpi: MpiArgs,
    /// Under mpirun: BatchNorm statistics over the global batch (SyncBatchNorm), forward and
    /// backward, instead of each process's shard.
    #[arg(long)]
    sync_bn: bool,
    /// Under mpirun: megabytes of gradients summed per all-reduce (DDP's bucket_cap_mb).
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// Under mpirun: sum each bucket between layers of the backward pass, instead of on a second
    /// thread while the backward pass goes on.
    #[arg(long)]
    no_overlap: bool,
}

impl ParallelArgs {
    /// Data-parallel training over `group`, or `None` for one process.
    pub fn data_parallel(&self, group: &Group) -> Result<Option<DataParallel>> {
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0) {
            anyhow::bail!("--bucket-mb must be a positive number of megabytes, not {}", self.bucket_mb);
        }
        Ok((group.size() > 1).then(|| {
            let parallel = DataParallel {
                group: group.clone(),
                sync_bn: self.sync_bn,
                bucket_bytes: (self.bucket_mb * 1e6) as usize,
                overlap: None,
            };
            if self.no_overlap { parallel } else { parallel.with_overlap() }
        }))
    }
}
