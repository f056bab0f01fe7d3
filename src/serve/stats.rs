//! Per-model statistics in the shape of Triton's statistics extension
//! (`GET /v2/models/{name}/stats`): cumulative counts and nanoseconds of successful and failed
//! requests, their time in the queue and in compute, and one entry per batch size executed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// A count and the nanoseconds spent over it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

impl Tally {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }

    fn json(self) -> Value {
        json!({"count": self.count, "ns": self.ns})
    }
}

/// What one model has done since the server started.
#[derive(Debug, Default, Clone)]
pub struct ModelStats {
    /// Milliseconds since the epoch of the last request answered.
    pub last_inference_ms: u64,
    /// Images classified.
    pub inference_count: u64,
    /// Forward passes run.
    pub execution_count: u64,
    /// Requests answered, with their whole time in the server.
    pub success: Tally,
    /// Requests that failed after they were accepted (refusals of bad input included).
    pub fail: Tally,
    /// Time requests waited in the queue.
    pub queue: Tally,
    /// Decoding and preprocessing the request's inputs.
    pub compute_input: Tally,
    /// The forward pass a request was part of.
    pub compute_infer: Tally,
    /// Encoding the response.
    pub compute_output: Tally,
    /// Forward passes by their number of images.
    pub batches: BTreeMap<usize, Tally>,
}

impl ModelStats {
    /// A forward pass of `images` images that took `compute`.
    pub fn record_batch(&mut self, images: usize, compute: Duration) {
        self.execution_count += 1;
        self.inference_count += images as u64;
        self.batches.entry(images).or_default().add(compute);
    }

    /// A request answered (`ok`) or failed after `total`, with the parts of it that apply.
    pub fn record_request(&mut self, ok: bool, total: Duration, parts: &RequestTimes) {
        if ok {
            self.success.add(total);
            self.queue.add(parts.queued);
            self.compute_input.add(parts.input);
            self.compute_infer.add(parts.compute);
            self.compute_output.add(parts.output);
        } else {
            self.fail.add(total);
        }
        self.last_inference_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    }

    /// Triton's `model_stats` entry.
    pub fn to_json(&self, name: &str) -> Value {
        let batches: Vec<Value> = self
            .batches
            .iter()
            .map(|(size, t)| {
                json!({"batch_size": size, "compute_input": json!({"count": t.count, "ns": 0}),
                       "compute_infer": t.json(), "compute_output": json!({"count": t.count, "ns": 0})})
            })
            .collect();
        json!({
            "name": name,
            "version": "1",
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
            },
            "batch_stats": batches,
        })
    }
}

/// Where one request's time went.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestTimes {
    /// Decoding and preprocessing.
    pub input: Duration,
    /// In the queue (the longest of its images).
    pub queued: Duration,
    /// In the forward pass.
    pub compute: Duration,
    /// Encoding the answer.
    pub output: Duration,
}
