//! Work across processes: the collective operations that data-parallel training and sharded
//! evaluation need, behind one trait, so that the engine, the learner and the loop never ask how
//! the processes talk. [`Single`] is one process (every collective is the identity); with the
//! `mpi` feature, [`mpi::MpiWorld`] is a real MPI job (`mpirun -n N vgg …`, `srun vgg …`).
//!
//! The split of a batch is fixed by [`shard`]: contiguous parts in rank order, so that the ranks'
//! shards concatenate to exactly the batch one process would take.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::ops::Range;
use std::sync::Arc;

/// The collective operations of a group of processes, each of which calls every operation in the
/// same order (as MPI requires). A peer that never arrives is the implementation's to report: MPI's
/// waits end in a clear error after a timeout instead of hanging.
pub trait Collective: Send + Sync {
    /// This process's index, 0-based.
    fn rank(&self) -> usize;
    /// How many processes.
    fn size(&self) -> usize;
    /// Element-wise sum over all processes, in place.
    fn all_reduce_f64(&self, values: &mut [f64]);
    /// Element-wise sum over all processes, in place (gradient buckets).
    fn all_reduce_f32(&self, values: &mut [f32]);
    /// `root`'s values copied into every process's `values` (same length everywhere).
    fn broadcast_f32(&self, root: usize, values: &mut [f32]);
    /// `root`'s bytes copied to every process (any length).
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>);
    /// Every process's bytes, in rank order, at `root` (empty elsewhere).
    fn gather_bytes(&self, root: usize, bytes: &[u8]) -> Vec<Vec<u8>>;

    /// A second handle on the same processes whose operations may run on another thread while
    /// this one's run (a duplicated communicator), or `None` where that is not possible. Every
    /// process must ask at the same point.
    fn split(&self) -> Option<Group> {
        None
    }

    /// Whether this process writes what the job writes once (files, progress, reports).
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// One process alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_f64(&self, _: &mut [f64]) {}
    fn all_reduce_f32(&self, _: &mut [f32]) {}
    fn broadcast_f32(&self, _: usize, _: &mut [f32]) {}
    fn broadcast_bytes(&self, _: usize, _: &mut Vec<u8>) {}
    fn gather_bytes(&self, _: usize, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }
}

/// A shared handle on the group a process belongs to.
pub type Group = Arc<dyn Collective>;

/// One process alone, as a [`Group`].
pub fn single() -> Group {
    Arc::new(Single)
}

/// The part of `0..n` that `rank` of `size` takes: contiguous parts in rank order, the first
/// `n % size` one longer, so that the parts concatenate to `0..n` (a part may be empty).
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The indices of `0..n` in the batches of `batch` that `rank` of `size` takes: every `size`-th
/// batch from the `rank`-th, so that each item is in the same batch as in one process.
pub fn batches_of(n: usize, batch: usize, rank: usize, size: usize) -> Vec<usize> {
    let batch = batch.max(1);
    (0..n.div_ceil(batch)).skip(rank).step_by(size).flat_map(|b| b * batch..((b + 1) * batch).min(n)).collect()
}

/// Every process's `items` (each with its index in the whole) at `root`, in index order; empty
/// elsewhere.
pub fn gather_ordered<T: serde::Serialize + serde::de::DeserializeOwned>(
    group: &dyn Collective,
    root: usize,
    items: Vec<(usize, T)>,
) -> Vec<T> {
    if group.size() == 1 {
        return items.into_iter().map(|(_, item)| item).collect();
    }
    let bytes = serde_json::to_vec(&items).expect("items serialise");
    let mut all: Vec<(usize, T)> = group
        .gather_bytes(root, &bytes)
        .iter()
        .flat_map(|part| serde_json::from_slice::<Vec<(usize, T)>>(part).expect("a process's items"))
        .collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, item)| item).collect()
}

/// The group this process was started in: the MPI job when the `mpi` feature is built and the
/// process was launched by `mpirun`/`srun` (MPI is then initialised, once), otherwise one process.
/// `timeout` bounds every wait on the other ranks.
pub fn world(timeout: std::time::Duration) -> Result<Group, DistError> {
    #[cfg(feature = "mpi")]
    if launched_by_mpi() {
        return Ok(Arc::new(mpi::MpiWorld::init(timeout)?));
    }
    let _ = timeout;
    // Without MPI, copies started by mpirun would each run the whole job and write the same files.
    #[cfg(not(feature = "mpi"))]
    if let Some(n) = job_size().filter(|&n| n > 1) {
        return Err(DistError::Init(format!(
            "mpirun started {n} copies of a vgg built without the `mpi` feature; build it with \
             `cargo build --release --features mpi` (Debian: openmpi-bin libopenmpi-dev libclang-dev)"
        )));
    }
    Ok(single())
}

/// What `mpirun`, `mpiexec` and Slurm's `srun` put in a process's environment: Open MPI's and
/// PMI's sizes, then the ranks of PMIx and PMI.
const LAUNCHER_SIZES: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const LAUNCHER_RANKS: [&str; 2] = ["PMIX_RANK", "PMI_RANK"];

/// Whether an MPI launcher started this process, so that a plain `vgg …` never initialises MPI.
pub fn launched_by_mpi() -> bool {
    LAUNCHER_SIZES.iter().chain(&LAUNCHER_RANKS).any(|k| std::env::var_os(k).is_some())
}

/// The number of processes an MPI launcher says it started.
pub fn job_size() -> Option<usize> {
    LAUNCHER_SIZES.iter().find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// Why the processes could not work together.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// MPI could not be initialised (or was already).
    #[error("MPI: {0}")]
    Init(String),
    /// The run asks for something a multi-process run does not do.
    #[error("{0}")]
    Unsupported(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches of the ranks together are every index once, and each rank's are whole batches.
    #[test]
    fn batches_cover_every_index_once() {
        for n in 0..30 {
            for size in 1..5 {
                let mut all: Vec<usize> = (0..size).flat_map(|r| batches_of(n, 4, r, size)).collect();
                all.sort();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
                let first = batches_of(n, 4, 0, size);
                assert!(first.chunks(4).all(|c| c[0] % 4 == 0 && (c[0] / 4) % size == 0), "{first:?}");
            }
        }
    }

    /// The shards of every split concatenate to the whole range, in rank order, and differ in
    /// length by at most one.
    #[test]
    fn shards_concatenate_to_the_batch() {
        for n in 0..20 {
            for size in 1..6 {
                let parts: Vec<Range<usize>> = (0..size).map(|r| shard(n, r, size)).collect();
                let joined: Vec<usize> = parts.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(joined, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
                let lens: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            }
        }
    }
}
