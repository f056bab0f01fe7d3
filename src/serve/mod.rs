//! `vgg serve`: networks behind HTTP, speaking the Open Inference Protocol (KServe v2, Triton's
//! HTTP API) so that `tritonclient`, KServe's clients and OIP tooling work unchanged, with a `curl`
//! route for image files, Prometheus metrics and a web page.
//!
//! The server is one more caller of the network seam ([`crate::net`]): each model is a
//! `dyn Network` owned by its [`batcher`]'s worker thread, whatever runs it. Requests wait in a
//! bounded queue and share forward passes (dynamic batching); a full queue, or (with a latency
//! budget) a backlog that would answer late, answers 503 at once.
//! Nothing a request says can name a file or load a model: models come from the command line.
//!
//! One job per file: [`oip`] reads and writes the protocol's bodies, [`batcher`] queues and runs
//! forward passes, [`admission`] predicts when a request would be answered, [`routes`] answers
//! each endpoint, [`access`] guards and logs every request,
//! [`stats`] and [`metrics`] count, [`page`] is the web page, [`affinity`] keeps compute and HTTP
//! on separate cores.

pub mod access;
pub mod admission;
pub mod affinity;
pub mod batcher;
pub mod metrics;
pub mod oip;
pub mod page;
pub mod routes;
pub mod stats;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::VggConfig;
use crate::image::Preprocess;
use crate::net::Network;
pub use batcher::BatchOptions;
use batcher::Batcher;
use metrics::Metrics;
use stats::ModelStats;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Batching and the queue.
    pub batch: BatchOptions,
    /// How long a request may wait for its answer before a 504.
    pub request_timeout: Duration,
    /// Required as `Authorization: Bearer <key>` on every route but the health probes.
    pub api_key: Option<String>,
    /// The one origin browsers may call from (no CORS headers otherwise).
    pub cors_origin: Option<String>,
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Access log lines as JSON objects instead of text.
    pub log_json: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            batch: BatchOptions::default(),
            request_timeout: Duration::from_secs(30),
            api_key: None,
            cors_origin: None,
            max_body_bytes: 32 << 20,
            log_json: false,
        }
    }
}

/// A network to serve, as the command line named it.
pub struct Model {
    /// The name in URLs (`/v2/models/{name}/infer`).
    pub name: String,
    /// The network.
    pub net: Box<dyn Network + Send>,
    /// How encoded images are turned into its inputs (as `vgg classify` does).
    pub preprocess: Preprocess,
    /// Class names.
    pub labels: Vec<String>,
}

/// A model being served.
pub struct Served {
    /// Its name.
    pub name: String,
    /// Its configuration (classes, input channels).
    pub config: VggConfig,
    /// Its preprocessing of encoded images.
    pub preprocess: Preprocess,
    /// Class names.
    pub labels: Vec<String>,
    /// What runs it, for the metadata.
    pub runs_on: String,
    batcher: Batcher,
    stats: Arc<Mutex<ModelStats>>,
}

impl Served {
    /// The `[h, w]` its preprocessing produces, where fixed.
    pub fn input_size(&self) -> Option<[usize; 2]> {
        self.preprocess.crop
    }
}

/// Everything the handlers share.
pub struct Server {
    /// The models, in the order given.
    pub models: Vec<Served>,
    /// The settings.
    pub options: ServeOptions,
    /// The Prometheus series.
    pub metrics: Arc<Metrics>,
}

impl Server {
    /// Starts a worker per model (each warms up before it reports ready).
    pub fn new(models: Vec<Model>, options: ServeOptions) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let mut served = Vec::with_capacity(models.len());
        for m in models {
            let config = m.net.config().clone();
            let [h, w] = m.preprocess.crop.unwrap_or([224, 224]);
            let runs_on = m.net.runs_on().to_string();
            let stats = Arc::new(Mutex::new(ModelStats::default()));
            let warmup = [config.in_channels, h.max(VggConfig::MIN_INPUT), w.max(VggConfig::MIN_INPUT)];
            let batcher = Batcher::start(&m.name, m.net, warmup, options.batch, stats.clone(), metrics.clone())?;
            served.push(Served {
                name: m.name,
                config,
                preprocess: m.preprocess,
                labels: m.labels,
                runs_on,
                batcher,
                stats,
            });
        }
        Ok(Server { models: served, options, metrics })
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Option<&Served> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Whether every model is loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.models.iter().all(|m| m.batcher.ready())
    }
}

/// Serves `server` on `listener` until `shutdown` completes, then stops accepting and finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = routes::router(Arc::new(server));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
