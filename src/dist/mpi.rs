//! The MPI job this process is part of (rsmpi over Open MPI), as a [`Collective`].
//!
//! MPI's collectives wait for every rank. A rank that died or hangs would leave the others waiting
//! for ever, so each operation is watched: one that has not completed after the timeout ends this
//! process with an error naming the operation and the rank, and `mpirun` then stops the job.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator, SimpleCommunicator};

use super::{Collective, DistError};

/// The operation in progress, for the watchdog.
type InFlight = Arc<Mutex<Option<(&'static str, Instant)>>>;

/// `MPI_COMM_WORLD` (or a duplicate of it) and a watchdog on its operations.
pub struct MpiWorld {
    /// Keeps MPI initialised while the world is used; finalises it when dropped. `None` in a
    /// duplicate, which the original outlives.
    _universe: Option<Universe>,
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    in_flight: InFlight,
    timeout: Duration,
    /// Whether MPI lets threads call it at the same time (`MPI_THREAD_MULTIPLE`).
    multiple: bool,
}

// SAFETY: every call on a communicator goes through its mutex, so calls on one communicator never
// overlap; calls on two (the world and a duplicate) overlap only when MPI was initialised with
// `MPI_THREAD_MULTIPLE` ([`MpiWorld::split`] refuses otherwise).
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

impl MpiWorld {
    /// Initialises MPI (once per process) and starts the watchdog.
    pub fn init(timeout: Duration) -> Result<Self, DistError> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| DistError::Init("MPI was already initialised in this process".into()))?;
        if provided < Threading::Serialized {
            return Err(DistError::Init(format!("this MPI gives threads {provided:?} access only")));
        }
        let world = universe.world();
        Self::watch(Some(universe), world, timeout, provided == Threading::Multiple)
    }

    fn watch(
        universe: Option<Universe>,
        world: SimpleCommunicator,
        timeout: Duration,
        multiple: bool,
    ) -> Result<Self, DistError> {
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let in_flight: InFlight = Arc::new(Mutex::new(None));
        let watched = in_flight.clone();
        std::thread::Builder::new()
            .name("vgg-mpi-watchdog".into())
            .spawn(move || watchdog(watched, timeout, rank, size))
            .map_err(|e| DistError::Init(format!("starting the watchdog: {e}")))?;
        Ok(MpiWorld { _universe: universe, world: Mutex::new(world), rank, size, in_flight, timeout, multiple })
    }

    /// Runs `op` (named `what`) on the world under the watchdog.
    fn watched<T>(&self, what: &'static str, op: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some((what, Instant::now()));
        let out = op(&world);
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
        out
    }
}

/// Ends the process when an operation has waited longer than `timeout`.
fn watchdog(in_flight: InFlight, timeout: Duration, rank: usize, size: usize) {
    loop {
        std::thread::sleep(Duration::from_millis(200).min(timeout));
        let stuck = *in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((what, since)) = stuck
            && since.elapsed() > timeout
        {
            eprintln!(
                "error: rank {rank} of {size} waited {:.0} s for the other ranks in {what}: a rank has died or hangs; \
                 stopping (the limit is --mpi-timeout)",
                since.elapsed().as_secs_f64()
            );
            // Straight out: the main thread is inside MPI, and exit handlers could wait on it.
            // SAFETY: `_exit` ends the process without running anything else.
            unsafe { libc::_exit(3) };
        }
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.watched("an all-reduce", |w| w.all_reduce_into(&send[..], values, SystemOperation::sum()));
    }
    fn all_reduce_f32(&self, values: &mut [f32]) {
        let send = values.to_vec();
        self.watched("a gradient all-reduce", |w| w.all_reduce_into(&send[..], values, SystemOperation::sum()));
    }
    fn broadcast_f32(&self, root: usize, values: &mut [f32]) {
        self.watched("a broadcast", |w| w.process_at_rank(root as i32).broadcast_into(values));
    }
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) {
        self.watched("a broadcast", |w| {
            let mut len = bytes.len() as u64;
            let root = w.process_at_rank(root as i32);
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            if len > 0 {
                root.broadcast_into(&mut bytes[..]);
            }
        })
    }
    fn split(&self) -> Option<super::Group> {
        if !self.multiple {
            return None;
        }
        let dup = self.watched("duplicating the communicator", |w| w.duplicate());
        Self::watch(None, dup, self.timeout, true).ok().map(|w| Arc::new(w) as super::Group)
    }
    fn gather_bytes(&self, root: usize, bytes: &[u8]) -> Vec<Vec<u8>> {
        let me = self.rank;
        // An empty slice's dangling pointer is 0x1, which is Open MPI's MPI_IN_PLACE: point an
        // empty send at a real byte instead.
        let anchor = [0u8; 1];
        let bytes = if bytes.is_empty() { &anchor[..0] } else { bytes };
        self.watched("a gather", |w| {
            let root_process = w.process_at_rank(root as i32);
            let len = bytes.len() as i32;
            if me != root {
                root_process.gather_into(&len);
                root_process.gather_varcount_into(bytes);
                return vec![];
            }
            let mut counts = vec![0i32; self.size];
            root_process.gather_into_root(&len, &mut counts[..]);
            let displs: Vec<i32> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut all = vec![0u8; total];
            root_process
                .gather_varcount_into_root(bytes, &mut PartitionMut::new(&mut all[..], &counts[..], &displs[..]));
            let mut at = 0;
            counts
                .iter()
                .map(|&c| {
                    let part = all[at..at + c as usize].to_vec();
                    at += c as usize;
                    part
                })
                .collect()
        })
    }
}
