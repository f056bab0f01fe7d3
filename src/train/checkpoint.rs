//! A run's directory: the resumable checkpoint (weights, optimizer state and the run's state in
//! one safetensors file, written atomically), the best weights, and the metrics of each epoch.

use std::path::{Path, PathBuf};

use super::config::FitConfig;
use super::{EpochMetrics, TrainError};
use crate::data::batch::PixelNorm;
use crate::model::Vgg;
use crate::weights::safetensors::{self as st, Meta};
use crate::weights::{self, Dtype, StateDict, Strict};

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// The run's configuration.
    pub fit: FitConfig,
    /// Pixel normalisation.
    pub norm: PixelNorm,
    /// Metrics so far.
    pub history: Vec<EpochMetrics>,
    /// Best test accuracy so far.
    pub best_acc: f64,
    /// Snapshots in the weight average (stochastic weight averaging).
    #[serde(default)]
    pub swa_count: usize,
}

const STATE_KEY: &str = "vgg.train_state";

/// Where a run writes: `last.safetensors` (weights, momentum, state), `best.safetensors` (weights
/// of the best epoch, ready for `vgg classify`/`vgg eval`), `metrics.jsonl`, and with weight
/// averaging `unaveraged.safetensors`.
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// The resumable checkpoint.
    pub fn last(&self) -> PathBuf {
        self.0.join("last.safetensors")
    }
    /// The best weights.
    pub fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }
    /// With weight averaging: the last weights before they were replaced by the average.
    pub fn unaveraged(&self) -> PathBuf {
        self.0.join("unaveraged.safetensors")
    }
    /// Metrics, one JSON object per epoch.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
}

/// Writes the resumable checkpoint atomically.
pub(crate) fn save_last(
    dir: &RunDir,
    config: &crate::config::VggConfig,
    weights: StateDict,
    optimizer: StateDict,
    state: &TrainState,
    pre: &crate::image::Preprocess,
) -> Result<(), TrainError> {
    let mut sd = weights;
    sd.extend(optimizer);
    let meta = Meta {
        config: Some(config.clone()),
        preprocess: Some(pre.clone()),
        extra: vec![(STATE_KEY.into(), serde_json::to_string(state).expect("state serialises"))],
    };
    st::write(&dir.last(), &sd, &meta, Dtype::F32)?;
    Ok(())
}

/// Reads a resumable checkpoint into the model; returns the optimizer state (as tensors keyed like
/// PyTorch's) and the run state.
pub fn load_last(path: &Path, model: &mut Vgg) -> Result<(StateDict, TrainState), TrainError> {
    let p = path.display().to_string();
    let bytes = crate::file::read(path).map_err(crate::weights::WeightsError::from)?;
    let (sd, _) = st::read(&bytes, &p)?;
    let (optimizer, weights): (StateDict, StateDict) = sd.into_iter().partition(|(k, _)| weights::is_optimizer_key(k));
    model.load_state_dict(&weights, Strict::Yes)?;
    let state: TrainState = st::read_meta(&bytes, &p, STATE_KEY)?
        .ok_or_else(|| TrainError::Checkpoint(format!("{p} is weights only, not a training checkpoint")))?;
    Ok((optimizer, state))
}
