//! Training with PyTorch's semantics: the loss, and `torch.optim.SGD` written out so that its
//! momentum buffers can be checkpointed (burn's own SGD also dampens momentum by 0.1 by default;
//! PyTorch does not).

pub mod burn_sgd;
pub mod checkpoint;
pub mod config;
pub mod engine_optim;
pub mod fit;
pub mod learner;
pub mod schedule;

pub use checkpoint::{EpochMetrics, RunDir, TrainState, load_last};
pub use config::{FitConfig, OptimizerConfig, SgdConfig, SwaConfig, frozen_keys};
pub use fit::{Event, fit};
pub use learner::{Learner, SWA_PREFIX, learner};
pub use schedule::{Schedule, plateau_cuts};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::weights::WeightsError;

/// Mean cross-entropy of `logits` `[N, C]` against class indices, with optional label smoothing
/// (`torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)`). Returns `[1]`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize], smoothing: f64) -> Tensor<1> {
    let [n, _] = logits.dims();
    assert_eq!(n, labels.len(), "one label per row");
    let device = logits.device();
    let logp = log_softmax(logits, 1);
    let idx: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [n, 1]), &device);
    let nll = logp.clone().gather(1, idx).neg().mean();
    if smoothing == 0.0 {
        return nll;
    }
    // PyTorch: (1 - ε) · NLL + ε · mean over classes of −log p.
    let uniform = logp.neg().mean_dim(1).mean();
    nll.mul_scalar(1.0 - smoothing).add(uniform.mul_scalar(smoothing))
}

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; the last checkpoint is the last good state.
    #[error(
        "the loss became {loss} at epoch {epoch}, step {step}: training stopped; the last good checkpoint is kept (try a lower learning rate)"
    )]
    NonFinite {
        /// The loss value.
        loss: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Step within the epoch.
        step: usize,
    },
    /// Checkpoint or weights I/O failed.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A checkpoint does not fit this run.
    #[error("{0}")]
    Checkpoint(String),
    /// A setting does not fit the model or the path that trains it.
    #[error("{0}")]
    Config(String),
}
