//! `GET /metrics`: the server in Prometheus' text format (OpenMetrics), per model — requests by
//! outcome, their duration, time in the queue and in compute (histograms), the images per forward
//! pass (so the average batch is visible), the queue depth — and the requests in flight.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The model a series is about.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Its name.
    pub model: String,
}

/// A request's model and how it ended: `success`, `failure` (bad input, a failed forward pass,
/// a timeout) or `rejected` (a full queue: 503).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The model.
    pub model: String,
    /// How it ended.
    pub outcome: String,
}

/// Every series the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    request_seconds: Family<ModelLabel, Histogram>,
    queue_seconds: Family<ModelLabel, Histogram>,
    compute_seconds: Family<ModelLabel, Histogram>,
    batch_size: Family<ModelLabel, Histogram>,
    queue_depth: Family<ModelLabel, Gauge>,
    in_flight: Gauge,
}

fn seconds() -> Histogram {
    // 0.1 ms to about 3.3 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 16))
}

fn images() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vgg");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register("inference_requests", "Inference requests by model and outcome", requests.clone());
        let request_seconds = Family::<ModelLabel, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register("request_duration_seconds", "Whole time of inference requests", request_seconds.clone());
        let queue_seconds = Family::<ModelLabel, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register("queue_duration_seconds", "Time requests waited for a forward pass", queue_seconds.clone());
        let compute_seconds = Family::<ModelLabel, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register("compute_duration_seconds", "Time of each forward pass", compute_seconds.clone());
        let batch_size = Family::<ModelLabel, Histogram>::new_with_constructor(images as fn() -> Histogram);
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        let queue_depth = Family::<ModelLabel, Gauge>::default();
        registry.register("queue_depth", "Requests waiting for a forward pass", queue_depth.clone());
        let in_flight = Gauge::default();
        registry.register("requests_in_flight", "HTTP requests being served", in_flight.clone());
        Metrics {
            registry,
            requests,
            request_seconds,
            queue_seconds,
            compute_seconds,
            batch_size,
            queue_depth,
            in_flight,
        }
    }
}

impl Metrics {
    /// An inference request of `model` ended with `outcome` after `total`.
    pub fn request(&self, model: &str, outcome: &str, total: Duration) {
        let label = OutcomeLabel { model: model.into(), outcome: outcome.into() };
        self.requests.get_or_create(&label).inc();
        self.request_seconds.get_or_create(&ModelLabel { model: model.into() }).observe(total.as_secs_f64());
    }

    /// A request of `model` waited `queued` for its forward pass.
    pub fn queued(&self, model: &str, queued: Duration) {
        self.queue_seconds.get_or_create(&ModelLabel { model: model.into() }).observe(queued.as_secs_f64());
    }

    /// A forward pass of `model` over `images` images took `compute`.
    pub fn forward(&self, model: &str, images: usize, compute: Duration) {
        let label = ModelLabel { model: model.into() };
        self.compute_seconds.get_or_create(&label).observe(compute.as_secs_f64());
        self.batch_size.get_or_create(&label).observe(images as f64);
    }

    /// An HTTP request began (`+1`) or ended (`-1`).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// The text exposition, with the queue depths as they are now.
    pub fn render(&self, depths: &[(String, usize)]) -> String {
        for (model, depth) in depths {
            self.queue_depth.get_or_create(&ModelLabel { model: model.clone() }).set(*depth as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
