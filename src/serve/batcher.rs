//! Dynamic batching, as Triton's dynamic batcher does it: requests for a model wait in a bounded
//! queue; its worker thread takes the first, waits up to the queue delay for more (from any
//! client), and runs every request of the same image size in one forward pass of at most the
//! maximum batch size. A full queue refuses at once (the caller answers 503), so memory stays
//! bounded under any load; the HTTP side only ever waits on a channel, never on compute. With a
//! latency budget, a request that the [`Backlog`] predicts would be answered past it is refused at
//! once too (admission by predicted wait).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::admission::{Backlog, OverBudget};
use super::metrics::Metrics;
use super::stats::ModelStats;
use crate::net::Network;

/// Triton's batching knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Images in one forward pass at most (also the most one request may carry).
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others.
    pub max_queue_delay: Duration,
    /// Requests waiting per model at most; more are refused.
    pub max_queue_size: usize,
    /// Refuse a request, when the model is busy, if its answer is predicted later than this.
    pub latency_budget: Option<Duration>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch_size: 8,
            max_queue_delay: Duration::from_micros(2000),
            max_queue_size: 16,
            latency_budget: None,
        }
    }
}

/// The logits of one request, and what it waited for.
#[derive(Debug)]
pub struct Done {
    /// `[n, classes]`, row-major.
    pub logits: Vec<f32>,
    /// Time in the queue.
    pub queued: Duration,
    /// Time of the forward pass it was part of.
    pub compute: Duration,
    /// Images in that forward pass.
    pub batch: usize,
}

/// One request's work for the network.
pub struct Job {
    /// What to do.
    pub work: Work,
    /// When it was queued.
    pub enqueued: Instant,
}

/// Work on the network itself, handed to the worker that owns it.
pub type NetCall = Box<dyn FnOnce(&dyn Network) + Send>;

/// What a job asks of the network.
pub enum Work {
    /// Logits of NCHW images, batched with other requests' images of the same size.
    Logits {
        /// The images.
        x: Vec<f32>,
        /// `[n, c, h, w]`.
        dims: [usize; 4],
        /// Where the logits (or why there are none) go.
        reply: oneshot::Sender<Result<Done, String>>,
    },
    /// Anything else that needs the network (an explanation), run alone between batches; it
    /// answers through its own channel.
    Call(NetCall),
}

impl Job {
    /// Images of a logits job (0 for a call, which is never batched).
    fn images(&self) -> usize {
        match &self.work {
            Work::Logits { dims, .. } => dims[0],
            Work::Call(_) => 0,
        }
    }
}

/// What `n` images of `h` x `w` cost, in images of the model's own size (`pixels` each): the
/// backlog's unit of work.
fn units(dims: [usize; 4], pixels: usize) -> f64 {
    (dims[0] * dims[2] * dims[3]) as f64 / pixels.max(1) as f64
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds `max_queue_size` requests already.
    #[error("the queue is full ({0} requests waiting); retry later")]
    Full(usize),
    /// The work ahead would answer the request past the latency budget.
    #[error(
        "the model's backlog would answer in {} ms, past the latency budget of {} ms; retry later",
        .0.predicted.as_millis(),
        .0.budget.as_millis()
    )]
    Late(OverBudget),
    /// The worker has stopped (the server is shutting down).
    #[error("the model is shutting down")]
    Stopped,
}

/// The queue and worker of one model.
pub struct Batcher {
    queue: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
    backlog: Arc<Backlog>,
    /// Pixels of one of the model's own images (`h * w` of the warm-up).
    pixels: usize,
    options: BatchOptions,
}

impl Batcher {
    /// Starts the worker thread of `net`, which first runs one batch of `warmup` (`[c, h, w]`) so
    /// that the first request does not pay for allocations and filter transforms, then a second to
    /// measure a pass for the backlog's cost model; [`Batcher::ready`] turns true after them.
    pub fn start(
        name: &str,
        net: Box<dyn Network + Send>,
        warmup: [usize; 3],
        options: BatchOptions,
        stats: Arc<Mutex<ModelStats>>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel(options.max_queue_size.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let backlog = Arc::new(Backlog::new(options.max_batch_size, options.max_queue_delay, options.latency_budget));
        let [c, h, w] = warmup;
        let pixels = h * w;
        let worker = Worker {
            name: name.to_string(),
            net: Some(net),
            jobs,
            depth: depth.clone(),
            options,
            stats,
            metrics,
            backlog: backlog.clone(),
            pixels,
            carried: VecDeque::new(),
        };
        let ready_flag = ready.clone();
        std::thread::Builder::new().name(format!("vgg-serve-{name}")).spawn(move || {
            let mut worker = worker;
            for _ in 0..2 {
                let image = vec![0.0; c * h * w];
                let started = Instant::now();
                let _ = worker.in_pool(move |net| net.logits(&image, [1, c, h, w]));
                worker.backlog.measured(1.0, started.elapsed());
            }
            ready_flag.store(true, Ordering::Release);
            worker.run();
        })?;
        Ok(Batcher { queue, depth, ready, backlog, pixels, options })
    }

    /// Queues `job`, or refuses at once when the queue is full or the work ahead would answer it
    /// past the latency budget.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let units = match &job.work {
            Work::Logits { dims, .. } => units(*dims, self.pixels),
            Work::Call(_) => 0.0,
        };
        self.backlog.admit(units).map_err(SubmitError::Late)?;
        // Counted before sending so that the worker's decrement never comes first.
        self.depth.fetch_add(1, Ordering::AcqRel);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                self.backlog.withdraw(units);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::Full(self.options.max_queue_size)),
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }

    /// Whether [`Batcher::submit`] would refuse any request now (the queue full, or the work ahead
    /// already past the latency budget), admitting nothing: asked before a request's body is
    /// parsed, so that under overload a refusal costs neither the buffering nor the parse (the
    /// body is only read and dropped). A request that passes is judged again, by its size, when
    /// submitted.
    pub fn check(&self) -> Result<(), SubmitError> {
        if self.depth.load(Ordering::Acquire) >= self.options.max_queue_size {
            return Err(SubmitError::Full(self.options.max_queue_size));
        }
        self.backlog.check(0.0).map_err(SubmitError::Late)
    }

    /// Whether the model is loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Requests waiting.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// The batching settings.
    pub fn options(&self) -> BatchOptions {
        self.options
    }

    /// When a request of one image arriving now would be answered (for `Retry-After`).
    pub fn predicted_wait(&self) -> Duration {
        self.backlog.predicted(1.0)
    }
}

/// A logits job taken apart.
struct Logits {
    x: Vec<f32>,
    dims: [usize; 4],
    reply: oneshot::Sender<Result<Done, String>>,
    enqueued: Instant,
}

struct Worker {
    name: String,
    /// Always there but while [`Worker::in_pool`] lends it to the compute pool.
    net: Option<Box<dyn Network + Send>>,
    jobs: Receiver<Job>,
    depth: Arc<AtomicUsize>,
    options: BatchOptions,
    stats: Arc<Mutex<ModelStats>>,
    metrics: Arc<Metrics>,
    backlog: Arc<Backlog>,
    pixels: usize,
    /// Jobs taken from the queue that did not fit the last batch.
    carried: VecDeque<Job>,
}

impl Worker {
    /// Runs `f` on the network inside the compute pool (rayon's): the pass's parallel loops then
    /// start on a pool thread instead of each waking one from this thread (perf, a one-core server
    /// of the built-in model under 16 clients: 12.7% of its core in context switches before, 3.9%
    /// after). A panic in `f` comes back as an `Err`, with the network kept.
    fn in_pool<R: Send>(&mut self, f: impl FnOnce(&dyn Network) -> R + Send) -> std::thread::Result<R> {
        let net = self.net.take().expect("the network is put back after every call");
        let (net, out) = rayon::scope(move |_| {
            let out = catch_unwind(AssertUnwindSafe(|| f(&*net)));
            (net, out)
        });
        self.net = Some(net);
        out
    }

    fn take(&self, job: Job) -> Job {
        self.depth.fetch_sub(1, Ordering::AcqRel);
        job
    }

    /// Until every sender is gone (the server dropped the batcher) and the queue is empty.
    fn run(mut self) {
        loop {
            let first = match self.carried.pop_front() {
                Some(job) => job,
                None => match self.jobs.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return,
                },
            };
            let first = match first.work {
                Work::Call(call) => {
                    let _ = self.in_pool(call);
                    continue;
                }
                work => Job { work, ..first },
            };
            let deadline = first.enqueued + self.options.max_queue_delay;
            let mut images = first.images();
            let mut batch = vec![first];
            // Jobs already carried over join first, then new ones until the deadline.
            while images < self.options.max_batch_size {
                let next = match self.carried.pop_front() {
                    Some(job) => Some(job),
                    None => {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        let got = if wait.is_zero() {
                            self.jobs.try_recv().map_err(|e| matches!(e, TryRecvError::Disconnected))
                        } else {
                            self.jobs.recv_timeout(wait).map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
                        };
                        got.ok().map(|job| self.take(job))
                    }
                };
                let Some(job) = next else { break };
                if matches!(job.work, Work::Call(_)) || images + job.images() > self.options.max_batch_size {
                    self.carried.push_front(job);
                    break;
                }
                images += job.images();
                batch.push(job);
            }
            self.run_batch(batch);
        }
    }

    /// Runs the jobs of each image size as one forward pass and answers each job.
    fn run_batch(&mut self, jobs: Vec<Job>) {
        // A client that gave up (its request timed out, its connection closed) costs no compute.
        let mut jobs: Vec<Logits> = jobs
            .into_iter()
            .filter_map(|j| match j.work {
                Work::Logits { x, dims, reply } if !reply.is_closed() => {
                    Some(Logits { x, dims, reply, enqueued: j.enqueued })
                }
                Work::Logits { dims, .. } => {
                    self.backlog.withdraw(units(dims, self.pixels));
                    None
                }
                Work::Call(_) => None,
            })
            .collect();
        while !jobs.is_empty() {
            let chw = jobs[0].dims[1..].to_vec();
            let (same, rest): (Vec<Logits>, Vec<Logits>) = jobs.into_iter().partition(|j| j.dims[1..] == chw[..]);
            jobs = rest;
            self.forward(same);
        }
    }

    fn forward(&mut self, jobs: Vec<Logits>) {
        let [_, c, h, w] = jobs[0].dims;
        let n: usize = jobs.iter().map(|j| j.dims[0]).sum();
        let mut x = Vec::with_capacity(n * c * h * w);
        for j in &jobs {
            x.extend_from_slice(&j.x);
        }
        let pass_units = units([n, c, h, w], self.pixels);
        self.backlog.pass_started(pass_units);
        let started = Instant::now();
        let classes = self.net.as_ref().expect("put back after every call").config().num_classes;
        let result = self.in_pool(move |net| net.logits(&x, [n, c, h, w]));
        let compute = started.elapsed();
        self.backlog.pass_ended(pass_units, compute);
        if let Ok(mut s) = self.stats.lock() {
            s.record_batch(n, compute);
        }
        self.metrics.forward(&self.name, n, compute);
        match result {
            Ok(logits) if logits.len() == n * classes => {
                let mut rows = logits.chunks_exact(classes);
                for j in jobs {
                    let mine: Vec<f32> = rows.by_ref().take(j.dims[0]).flatten().copied().collect();
                    let queued = started.saturating_duration_since(j.enqueued);
                    let _ = j.reply.send(Ok(Done { logits: mine, queued, compute, batch: n }));
                }
            }
            _ => {
                for j in jobs {
                    let _ = j.reply.send(Err("the forward pass failed".into()));
                }
            }
        }
    }
}
