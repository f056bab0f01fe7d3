//! What defines a training run: [`FitConfig`] (saved in its checkpoints, so that a resumed run
//! is the same run), weight averaging, frozen layers, and the plan of epochs under a time budget.

use super::EpochMetrics;
use super::TrainError;
use super::schedule::Schedule;
use crate::data::augment::CropAug;
use crate::model::Vgg;

/// Which optimizer, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum OptimizerConfig {
    /// SGD with momentum.
    Sgd(SgdConfig),
    /// AdamW.
    AdamW {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

/// Hyper-parameters, as PyTorch names them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Momentum factor (0 disables the buffers).
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// Everything that defines a run (saved in its checkpoints).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule.
    pub schedule: Schedule,
    /// Warm-up length in epochs (cosine schedule).
    pub warmup_epochs: f64,
    /// SGD settings.
    pub sgd: SgdConfig,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// Random crop within the canvas and horizontal flip.
    pub augment: bool,
    /// Side of the square canvas images are placed on (32 for 28x28 Fashion-MNIST).
    pub canvas: usize,
    /// Largest random shift of the augmentation, in pixels (2 for Fashion-MNIST, 4 for CIFAR).
    pub shift: usize,
    /// Seed of data order, augmentation and dropout.
    pub seed: u64,
    /// Layers left untrained: `features` (the whole trunk) or a layer name (`conv4_3`: everything
    /// up to and including it). Their BatchNorm statistics still follow the data.
    #[serde(default)]
    pub freeze: Option<String>,
    /// The optimizer; `None` is SGD with [`FitConfig::sgd`].
    #[serde(default)]
    pub optimizer: Option<OptimizerConfig>,
    /// Clip the global gradient L2 norm to this (`torch.nn.utils.clip_grad_norm_`).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Train through burn's autodiff (the reference path) instead of the fast CPU engine.
    #[serde(default)]
    pub burn_reference: bool,
    /// How training images are cropped (with `augment`).
    #[serde(default)]
    pub crop: CropAug,
    /// PCA lighting noise (RGB datasets; 0.1 in AlexNet and the paper).
    #[serde(default)]
    pub lighting: f64,
    /// Probability of random erasing of a training image (torchvision's RandomErasing; 0: off).
    #[serde(default)]
    pub erase: f64,
    /// Stochastic weight averaging (`torch.optim.swa_utils`); `None`: the last weights are the model.
    #[serde(default)]
    pub swa: Option<SwaConfig>,
    /// After the last epoch, recompute the BatchNorm statistics over the (unaugmented) training
    /// images, as fvcore's PreciseBN and `swa_utils.update_bn` do, instead of keeping the momentum
    /// averages of the last few hundred augmented batches. Implied by `swa`.
    #[serde(default)]
    pub precise_bn: bool,
    /// Train for a wall-clock budget (seconds, evaluation included) instead of a fixed number of
    /// epochs: `epochs` is then only the first plan, and the schedule is stretched or shortened to
    /// the epochs that fit (see [`FitConfig::planned_epochs`]).
    #[serde(default)]
    pub time_budget_s: Option<f64>,
}

/// Stochastic weight averaging (Izmailov et al., 2018) as `torch.optim.swa_utils` runs it: the
/// schedule until `start` epochs, then `SWALR` (cosine from the rate reached to `lr` over
/// `anneal_epochs`, then constant), the weights averaged `per_epoch` times in each later epoch, and
/// at the end the average with BatchNorm statistics recomputed on the training images (`update_bn`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SwaConfig {
    /// Epochs of the ordinary schedule before averaging begins.
    pub start: usize,
    /// The constant learning rate of the averaging phase.
    pub lr: f64,
    /// Epochs of the cosine move from the schedule's rate to `lr`.
    pub anneal_epochs: usize,
    /// Snapshots averaged per epoch (evenly spaced, the last at the epoch's end).
    pub per_epoch: usize,
}

impl SwaConfig {
    /// Whether the average takes the weights after `step` (1-based) of an epoch of `steps` steps.
    pub fn averages_after(&self, step: usize, steps: usize) -> bool {
        let k = self.per_epoch.clamp(1, steps.max(1));
        (1..=k).any(|j| (j * steps).div_ceil(k) == step)
    }
}

/// The parameter keys frozen by [`FitConfig::freeze`].
pub fn frozen_keys(model: &Vgg, freeze: Option<&str>) -> Result<std::collections::BTreeSet<String>, TrainError> {
    let plan = model.plan();
    let upto = match freeze {
        None => return Ok(Default::default()),
        Some("features") | Some("trunk") => plan.trunk,
        Some(name) => {
            plan.find(name).ok_or_else(|| {
                TrainError::Config(format!("no layer '{name}' to freeze up to (layers: {})", plan.names()))
            })? + 1
        }
    };
    let prefixes: Vec<String> = plan.layers[..upto].iter().map(|l| format!("{}.", l.key)).collect();
    Ok(crate::weights::keys::key_pairs(plan)
        .into_iter()
        .map(|(tv, _)| tv)
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p.as_str())))
        .collect())
}

impl FitConfig {
    /// The optimizer in effect.
    pub fn optimizer(&self) -> OptimizerConfig {
        self.optimizer.unwrap_or(OptimizerConfig::Sgd(self.sgd))
    }

    /// How many epochs the run has, as planned when the epoch after `history` begins.
    ///
    /// Without a time budget, `epochs`. With one (budgeted training, Li et al., ICLR 2020: a
    /// schedule that reaches its end when the budget does beats a longer one cut short), `epochs`
    /// is the plan for the first epoch, and after each epoch the plan becomes as many epochs as the
    /// budget's remainder holds at the pace of the last three (their wall time, from `history`, so
    /// a resumed run plans as the uninterrupted one did) — at least one more, so that the schedule
    /// ends where it is annealed, until the epoch planned as the last has run.
    pub fn planned_epochs(&self, history: &[EpochMetrics]) -> usize {
        let Some(budget) = self.time_budget_s else { return self.epochs };
        let done = history.len();
        if done == 0 {
            return self.epochs.max(1);
        }
        if self.planned_epochs(&history[..done - 1]) <= done {
            return done;
        }
        let spent: f64 = history.iter().map(|m| m.seconds).sum();
        let recent = &history[done.saturating_sub(3)..];
        let pace = recent.iter().map(|m| m.seconds).sum::<f64>() / recent.len() as f64;
        let more = ((budget - spent) / pace.max(1e-9)).floor();
        done + if more.is_finite() && more >= 1.0 { more as usize } else { 1 }
    }

    /// The learning rate at `step` of `total`, after the epochs of `history`.
    pub fn lr_at(&self, step: usize, total: usize, steps_per_epoch: usize, history: &[EpochMetrics]) -> f64 {
        if let Some(swa) = self.swa {
            let from = swa.start * steps_per_epoch;
            if step >= from {
                let base = self.schedule.lr_at(self.lr, self.warmup_epochs, from, total, steps_per_epoch, history);
                let p = (step - from) as f64 / (swa.anneal_epochs * steps_per_epoch).max(1) as f64;
                return if p >= 1.0 { swa.lr } else { super::schedule::cosine(base, swa.lr, p) };
            }
        }
        self.schedule.lr_at(self.lr, self.warmup_epochs, step, total, steps_per_epoch, history)
    }
}
