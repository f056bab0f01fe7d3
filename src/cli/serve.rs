//! `vgg serve`

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use vgg::engine::HalfKind;
use vgg::net::BuildOptions;
use vgg::serve::affinity::{self, CpuSet};
use vgg::serve::{BatchOptions, Model, ServeOptions, Server};
use vgg::weights::Strict;

use super::ArchArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// A model to serve as NAME=WEIGHTS (any weights --weights takes); repeatable. Default: the
    /// built-in Fashion-MNIST model as `fashion-mnist`.
    #[arg(long = "model", value_name = "NAME=WEIGHTS")]
    models: Vec<String>,
    #[command(flatten)]
    arch: ArchArgs,
    /// Keep the weights in 16 bits (half the memory; f32 arithmetic).
    #[arg(long)]
    half: Option<HalfKind>,
    /// Images in one forward pass at most, and per request.
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
    /// How long the first request of a batch waits for others, in microseconds.
    #[arg(long, default_value_t = 2000)]
    max_queue_delay_us: u64,
    /// Requests waiting per model at most; more get 503 with Retry-After at once (default: twice
    /// --max-batch-size, so that an accepted request waits at most about two forward passes).
    #[arg(long)]
    max_queue_size: Option<usize>,
    /// When the model is busy, refuse (503 with Retry-After, at once) a request whose answer the
    /// work ahead of it predicts later than this many microseconds: under overload, accepted
    /// requests keep their latency. Default: no budget (throughput first).
    #[arg(long)]
    latency_budget_us: Option<u64>,
    /// How long a request may wait for its answer, in milliseconds (504 beyond).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Threads for the forward passes (default: one per core, or per CPU of --compute-cpus).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the forward passes on these CPUs only (`0-3,6`, as `taskset -c` writes them) and the
    /// HTTP side on the process's other CPUs, so that parsing and refusing requests under
    /// overload never preempts compute.
    #[arg(long, value_name = "LIST")]
    compute_cpus: Option<CpuSet>,
    /// Require `Authorization: Bearer KEY` on every route but the health probes.
    #[arg(long, env = "VGG_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Allow browsers on this origin to call the server (no CORS otherwise).
    #[arg(long)]
    cors: Option<String>,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    /// Access log lines: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn load(spec: &str, arch: &ArchArgs, half: Option<HalfKind>) -> Result<Model> {
    let (name, weights) = spec.split_once('=').unwrap_or((spec, spec));
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("model name '{name}': letters, digits, '-', '_' and '.' only (it goes into URLs)");
    }
    let w = super::read_weights_for(weights, arch.config()?)?;
    let labels = super::class_names(&w.config, None)?;
    let strict = if w.partial { Strict::No } else { Strict::Yes };
    let net = vgg::net::build(&w.config, w.state_dict, BuildOptions { strict, half, burn: false })
        .with_context(|| format!("loading {}", w.source))?;
    eprintln!("model {name}: {} from {}, on {}", w.config, w.source, net.runs_on());
    Ok(Model { name: name.to_string(), net, preprocess: w.preprocess, labels })
}

pub fn run(a: ServeArgs) -> Result<()> {
    let log_json = match a.log_format.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("unknown log format '{other}' (expected text or json)"),
    };
    let max_queue_size = a.max_queue_size.unwrap_or(2 * a.max_batch_size);
    if a.max_batch_size == 0 || max_queue_size == 0 {
        bail!("--max-batch-size and --max-queue-size must be at least 1");
    }
    // Threads inherit their starter's CPUs: the compute pool and the model workers start while
    // this thread is on the compute CPUs, the HTTP runtime after it moved to the others.
    let http_cpus = match &a.compute_cpus {
        Some(compute) => Some(split_cpus(compute)?),
        None => None,
    };
    let threads = a.threads.or(a.compute_cpus.as_ref().map(CpuSet::len));
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("setting --threads")?;
    }
    let specs = if a.models.is_empty() { vec!["fashion-mnist=fashion-mnist".to_string()] } else { a.models.clone() };
    let mut models = Vec::with_capacity(specs.len());
    for spec in &specs {
        let model = load(spec, &a.arch, a.half)?;
        if models.iter().any(|m: &Model| m.name == model.name) {
            bail!("two models are called '{}'", model.name);
        }
        models.push(model);
    }
    let options = ServeOptions {
        batch: BatchOptions {
            max_batch_size: a.max_batch_size,
            max_queue_delay: Duration::from_micros(a.max_queue_delay_us),
            max_queue_size,
            latency_budget: a.latency_budget_us.map(Duration::from_micros),
        },
        request_timeout: Duration::from_millis(a.timeout_ms.max(1)),
        api_key: a.api_key.filter(|k| !k.is_empty()),
        cors_origin: a.cors,
        max_body_bytes: a.max_body_mib.max(1) << 20,
        log_json,
    };
    let server = Server::new(models, options).context("starting the model workers")?;
    if let (Some(compute), Some(http)) = (&a.compute_cpus, &http_cpus) {
        affinity::pin_current_thread(http).context("moving the HTTP side to its CPUs")?;
        eprintln!("vgg serve: compute on CPUs {compute}, HTTP on CPUs {http}");
    }
    // The HTTP side only parses, queues and answers: two threads are plenty, and leave the cores
    // to the forward passes. On CPUs of its own, one per CPU (two on one CPU only switch).
    let http_threads = http_cpus.as_ref().map_or(2, CpuSet::len);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_threads)
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        println!("vgg serve: listening on http://{addr}");
        std::io::stdout().flush()?;
        vgg::serve::serve(listener, server, shutdown_signal()).await.context("serving")?;
        eprintln!("vgg serve: stopped");
        Ok(())
    })
}

/// Pins this thread to the `compute` CPUs and answers the CPUs left for the HTTP side: those of
/// the process that `compute` does not hold.
fn split_cpus(compute: &CpuSet) -> Result<CpuSet> {
    let allowed = affinity::current().context("reading this process's CPUs")?;
    let outside = compute.without(&allowed);
    if !outside.is_empty() {
        bail!("--compute-cpus {compute}: CPUs {outside} are not available to this process (it may use {allowed})");
    }
    let http = allowed.without(compute);
    if http.is_empty() {
        bail!("--compute-cpus {compute} leaves no CPU for the HTTP side (this process may use {allowed})");
    }
    affinity::pin_current_thread(compute).context("moving to the compute CPUs")?;
    Ok(http)
}

/// SIGINT or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    eprintln!("vgg serve: shutting down, finishing the requests in flight");
}
