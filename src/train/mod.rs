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

pub use checkpoint::{RunDir, TrainState, load_last};
pub use config::{FitConfig, OptimizerConfig, SgdConfig, SwaConfig, frozen_keys};
pub use fit::{Event, RunOptions, fit, image_seed};
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

/// What one epoch did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented images, in training mode).
    pub train_acc: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test top-1 accuracy.
    pub test_acc: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
    /// With weight averaging or precise BatchNorm, in the last epoch: the test accuracy of the last
    /// weights with their running statistics, before averaging and recomputing the statistics
    /// (the result's accuracy is `test_acc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_weights_test_acc: Option<f64>,
    /// With a time budget: the number of epochs the schedule was planned for during this epoch
    /// ([`FitConfig::planned_epochs`]), so that a budgeted run's metrics say how its schedule moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_epochs: Option<usize>,
}
