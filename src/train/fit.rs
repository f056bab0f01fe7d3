//! The training loop: deterministic data order and augmentation for a seed, a prefetching loader
//! thread, PyTorch's SGD and learning-rate schedules, evaluation after each epoch, atomic
//! checkpoints that resume to the same result as an uninterrupted run.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::cross_entropy;
use super::optim::{OptimizerConfig, OptimizerState, clip_grad_norm};
use super::sgd::{SgdConfig, SgdState};
use crate::data::Dataset;
use crate::data::augment::CropAug;
use crate::data::batch::{Augment, PixelNorm, epoch_order, make_batch, make_batch_with};
use crate::engine::Engine;
use crate::eval::{Evaluation, burn_logits, evaluate_with};
use crate::model::Vgg;
use crate::weights::safetensors::{self as st, Meta};
use crate::weights::{self, Dtype, StateDict, Strict, TensorEntry, WeightsError};

/// How the learning rate moves over training.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
    /// `torch.optim.lr_scheduler.OneCycleLR` defaults: cosine up from peak/25 over 30% of the
    /// steps, then cosine down to peak/25/1e4.
    OneCycle,
    /// Divide by 10 every `step` epochs.
    Step {
        /// Epochs between divisions.
        step: usize,
    },
    /// Divide by 10 at each of these epochs (`MultiStepLR`).
    MultiStep {
        /// Epochs (0-based counts of finished epochs) at which the rate drops.
        milestones: Vec<usize>,
    },
    /// Divide by 10 when the test accuracy has not improved for `patience` epochs, as the paper
    /// did with its validation accuracy (`ReduceLROnPlateau(mode="max", threshold=1e-4)`).
    Plateau {
        /// Epochs without improvement tolerated.
        patience: usize,
    },
}

/// How many times `ReduceLROnPlateau(mode="max", factor, patience, threshold=1e-4 relative)` has cut
/// the rate after the accuracies of `history`.
pub fn plateau_cuts(accuracies: &[f64], patience: usize) -> i32 {
    let (mut best, mut bad, mut cuts) = (f64::NEG_INFINITY, 0usize, 0);
    for &a in accuracies {
        if a > best * (1.0 + 1e-4) || best == f64::NEG_INFINITY {
            best = a;
            bad = 0;
        } else {
            bad += 1;
        }
        if bad > patience {
            cuts += 1;
            bad = 0;
        }
    }
    cuts
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
                TrainError::Checkpoint(format!("--freeze: no layer '{name}' (layers: {})", plan.names()))
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
                let base = self.schedule_lr(from, total, steps_per_epoch, history);
                let p = (step - from) as f64 / (swa.anneal_epochs * steps_per_epoch).max(1) as f64;
                return if p >= 1.0 { swa.lr } else { cosine(base, swa.lr, p) };
            }
        }
        self.schedule_lr(step, total, steps_per_epoch, history)
    }

    fn schedule_lr(&self, step: usize, total: usize, steps_per_epoch: usize, history: &[EpochMetrics]) -> f64 {
        let t = step as f64 / total.max(1) as f64;
        match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let warm = (self.warmup_epochs * steps_per_epoch as f64) as usize;
                if step < warm {
                    self.lr * (step + 1) as f64 / warm as f64
                } else {
                    cosine(self.lr, 0.0, (step - warm) as f64 / (total - warm).max(1) as f64)
                }
            }
            Schedule::OneCycle => {
                let start = self.lr / 25.0;
                let end = start / 1e4;
                let up = 0.3;
                if t < up { cosine(start, self.lr, t / up) } else { cosine(self.lr, end, (t - up) / (1.0 - up)) }
            }
            Schedule::Step { step: s } => self.lr * 0.1f64.powi((step / steps_per_epoch / s.max(&1)) as i32),
            Schedule::MultiStep { milestones } => {
                let epoch = step / steps_per_epoch.max(1);
                self.lr * 0.1f64.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            Schedule::Plateau { patience } => {
                let acc: Vec<f64> = history.iter().map(|m| m.test_acc).collect();
                self.lr * 0.1f64.powi(plateau_cuts(&acc, *patience))
            }
        }
    }
}

/// Half a cosine from `a` (at `p = 0`) to `b` (at `p = 1`).
fn cosine(a: f64, b: f64, p: f64) -> f64 {
    b + (a - b) * (1.0 + (std::f64::consts::PI * p).cos()) / 2.0
}

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; the last checkpoint is the last good state.
    #[error(
        "the loss became {loss} at epoch {epoch}, step {step}: training stopped; the last good checkpoint is kept (try a lower --lr)"
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

fn preprocess_for(ds: &Dataset, fit: &FitConfig, norm: PixelNorm) -> crate::image::Preprocess {
    use crate::image::{Filter, Normalize, Preprocess};
    let normalize = if ds.shape[0] == 1 {
        Normalize::Gray { mean: norm.mean[0], std: norm.std[0] }
    } else {
        Normalize::MeanStd { mean: norm.mean, std: norm.std }
    };
    // Files are scaled to the training images' size, then padded to the canvas as in training.
    Preprocess { resize: Some(ds.shape[1]), crop: Some([fit.canvas, fit.canvas]), filter: Filter::Bilinear, normalize }
}

/// Writes the resumable checkpoint atomically.
fn save_last(
    dir: &RunDir,
    model: &Vgg,
    optimizer: StateDict,
    state: &TrainState,
    pre: &crate::image::Preprocess,
) -> Result<(), TrainError> {
    let mut sd: StateDict = model.state_dict();
    sd.extend(optimizer);
    let meta = Meta {
        config: Some(model.config().clone()),
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
    let bytes = std::fs::read(path).map_err(|err| WeightsError::Io { path: p.clone(), err })?;
    let (sd, _) = st::read(&bytes, &p)?;
    let (optimizer, weights): (StateDict, StateDict) = sd.into_iter().partition(|(k, _)| weights::is_optimizer_key(k));
    model.load_state_dict(&weights, Strict::Yes)?;
    let state: TrainState = st::read_meta(&bytes, &p, STATE_KEY)?
        .ok_or_else(|| TrainError::Checkpoint(format!("{p} is weights only, not a training checkpoint")))?;
    Ok((optimizer, state))
}

/// Progress reports from [`fit`].
pub enum Event<'a> {
    /// An epoch begins: (epoch, epochs planned, steps in it).
    EpochStart(usize, usize, usize),
    /// A step finished: (step, loss, accuracy of the batch, learning rate).
    Step(usize, f32, f64, f64),
    /// The epoch ended and was evaluated.
    EpochEnd(&'a EpochMetrics),
}

/// Trains `model` (built on an autodiff device) on `train`, evaluating on `test` after each epoch
/// and checkpointing into `dir`. With `resume`, continues from `dir`'s last checkpoint. `events`
/// may stop the run by returning `Break`: mid-epoch, nothing of that epoch is kept (as after an
/// interruption); at an epoch's end, after its checkpoint.
pub fn fit(
    mut model: Vgg,
    train: &Dataset,
    test: &Dataset,
    fit: &FitConfig,
    dir: &RunDir,
    resume: bool,
    events: &mut dyn FnMut(Event) -> ControlFlow<()>,
) -> Result<(Vgg, TrainState), TrainError> {
    let device = model.devices();
    std::fs::create_dir_all(&dir.0).map_err(|err| WeightsError::Io { path: dir.0.display().to_string(), err })?;
    let (opt_sd, mut state) = if resume && dir.last().exists() {
        let (opt_sd, state) = load_last(&dir.last(), &mut model)?;
        if &state.fit != fit {
            return Err(TrainError::Checkpoint(format!(
                "{} was written by a run with other settings; resume with the same ones",
                dir.last().display()
            )));
        }
        (opt_sd, state)
    } else {
        let norm = PixelNorm::of(train);
        (
            StateDict::new(),
            TrainState { epochs_done: 0, fit: fit.clone(), norm, history: vec![], best_acc: -1.0, swa_count: 0 },
        )
    };
    let opt_cfg = fit.optimizer();
    // The fast engine trains its own copy of the weights; the model is brought up to date at the end
    // of each epoch. burn's autodiff path remains for what the engine does not run.
    let mut runner = match Engine::new(&model) {
        Ok(engine) if !fit.burn_reference => {
            let opt = OptimizerState::from_state_dict(&engine, &opt_sd);
            Runner::Engine(Box::new(engine), opt)
        }
        _ => {
            if !matches!(opt_cfg, OptimizerConfig::Sgd(_))
                || fit.clip_grad_norm.is_some()
                || fit.swa.is_some()
                || fit.precise_bn
            {
                return Err(TrainError::Checkpoint(
                    "AdamW, gradient clipping, weight averaging and precise BatchNorm run on the fast engine only, which does not run this model"
                        .into(),
                ));
            }
            Runner::Burn(SgdState::from_state_dict(&opt_sd, &device))
        }
    };
    // The running average of the weights, in the engine's layout, aligned with its parameters.
    let mut swa_avg: Vec<Vec<f32>> = match &runner {
        Runner::Engine(engine, _) if state.swa_count > 0 => engine
            .params()
            .iter()
            .map(|p| {
                opt_sd.get(&format!("{SWA_PREFIX}{}", p.key)).map(|e| p.from_torch(&e.data)).ok_or_else(|| {
                    TrainError::Checkpoint(format!("{} lacks the weight average of {}", dir.last().display(), p.key))
                })
            })
            .collect::<Result<_, _>>()?,
        _ => vec![],
    };
    let norm = state.norm;
    let pre = preprocess_for(train, fit, norm);
    // What `best.safetensors` and `unaveraged.safetensors` record besides the tensors.
    let weights_meta = Meta { config: Some(model.config().clone()), preprocess: Some(pre.clone()), extra: vec![] };
    let classes = model.config().num_classes;
    let test_on = |engine: &Engine| {
        evaluate_with(&|x, dims| engine.forward(&x, dims), classes, test, fit.canvas, norm, 256, false, &mut |_| {})
    };
    let frozen = frozen_keys(&model, fit.freeze.as_deref())?;
    let is_frozen = |k: &str| frozen.contains(k);
    let [c, _, _] = train.shape;
    let steps_per_epoch = train.len().div_ceil(fit.batch_size);
    loop {
        let epoch = state.epochs_done + 1;
        let planned = fit.planned_epochs(&state.history);
        if epoch > planned {
            break;
        }
        let total = steps_per_epoch * planned;
        let started = std::time::Instant::now();
        device.seed(fit.seed.wrapping_add(epoch as u64));
        if events(Event::EpochStart(epoch, planned, steps_per_epoch)).is_break() {
            return Ok((model, state));
        }
        let order = epoch_order(train.len(), fit.seed, epoch);
        let (tx, rx) = sync_channel::<(Vec<f32>, Vec<usize>)>(3);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = fit.lr;
        let batch_seed = |b: usize| fit.seed ^ ((epoch as u64) << 32 | b as u64).wrapping_mul(0xbf58476d1ce4e5b9);
        let result: Result<bool, TrainError> = std::thread::scope(|s| {
            // The sender moves into the loader so that the channel closes when the epoch's data ends.
            s.spawn(move || {
                for (b, chunk) in order.chunks(fit.batch_size).enumerate() {
                    let mut rng = StdRng::seed_from_u64(batch_seed(b));
                    let aug = Augment { crop: fit.crop, shift: fit.shift, lighting: fit.lighting, erase: fit.erase };
                    let batch = make_batch_with(train, chunk, fit.canvas, &aug, norm, fit.augment.then_some(&mut rng));
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            });
            // Owned here, so that stopping early drops it and unblocks the loader.
            let rx = rx;
            for (b, (x, labels)) in rx.iter().enumerate() {
                let n = labels.len();
                let dims = [n, c, fit.canvas, fit.canvas];
                lr = fit.lr_at((epoch - 1) * steps_per_epoch + b, total, steps_per_epoch, &state.history);
                let (loss_v, hits) = match &mut runner {
                    Runner::Engine(engine, opt) => {
                        // Dropout's draws depend on the batch alone, so a resumed run repeats them.
                        let r = engine.train_step(&x, dims, &labels, fit.label_smoothing, !batch_seed(b), &is_frozen);
                        let loss_v = r.loss as f32;
                        if !loss_v.is_finite() {
                            return Err(TrainError::NonFinite { loss: loss_v, epoch, step: b + 1 });
                        }
                        if let Some(max) = fit.clip_grad_norm {
                            clip_grad_norm(engine, max, &is_frozen);
                        }
                        opt.step(engine, &opt_cfg, lr, &is_frozen);
                        if fit.swa.is_some_and(|s| epoch > s.start && s.averages_after(b + 1, steps_per_epoch)) {
                            average_into(&mut swa_avg, &mut state.swa_count, engine);
                        }
                        (loss_v, r.hits)
                    }
                    Runner::Burn(sgd) => {
                        let x = Tensor::<4>::from_data(TensorData::new(x, dims), &device);
                        let logits = model.forward_train(x);
                        let loss = cross_entropy(logits.clone(), &labels, fit.label_smoothing);
                        let loss_v = crate::model::to_f32(loss.to_data())[0];
                        if !loss_v.is_finite() {
                            return Err(TrainError::NonFinite { loss: loss_v, epoch, step: b + 1 });
                        }
                        let pred = crate::classify::top_k(&logits.detach(), 1);
                        let hits = pred.iter().zip(&labels).filter(|(p, l)| p[0].0 == **l).count();
                        let grads = loss.backward();
                        model.sgd_step(&grads, sgd, &fit.sgd, lr, &is_frozen);
                        (loss_v, hits)
                    }
                };
                loss_sum += loss_v as f64 * n as f64;
                correct += hits;
                seen += n;
                if events(Event::Step(b + 1, loss_v, hits as f64 / n as f64, lr)).is_break() {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if !result? {
            return Ok((model, state));
        }
        let train_secs = started.elapsed().as_secs_f64();
        let mut last_weights_test_acc = None;
        let (ev, opt_sd) = match &mut runner {
            Runner::Engine(engine, opt) => {
                if epoch == planned && (state.swa_count > 0 || fit.precise_bn) {
                    last_weights_test_acc = Some(test_on(engine).acc);
                    if state.swa_count > 0 {
                        st::write(&dir.unaveraged(), &engine.state_dict(), &weights_meta, Dtype::F32)?;
                        for (p, avg) in engine.params_mut().iter_mut().zip(&swa_avg) {
                            p.value.clone_from(avg);
                        }
                    }
                    let order: Vec<usize> = (0..train.len()).collect();
                    let mut batches = order.chunks(fit.batch_size).map(|chunk| {
                        let (x, _) = make_batch(train, chunk, fit.canvas, 0, norm, None);
                        (x, [chunk.len(), c, fit.canvas, fit.canvas])
                    });
                    engine.update_bn(&mut batches);
                }
                model.load_state_dict(&engine.state_dict(), Strict::Yes)?;
                let ev = test_on(engine);
                let mut opt_sd = opt.to_state_dict(engine, &opt_cfg);
                for (p, avg) in engine.params().iter().zip(&swa_avg) {
                    opt_sd.insert(format!("{SWA_PREFIX}{}", p.key), TensorEntry::f32(p.shape.clone(), p.to_torch(avg)));
                }
                (ev, opt_sd)
            }
            Runner::Burn(sgd) => {
                let ev = {
                    let model = model.valid();
                    let forward = |x, dims| burn_logits(&model, x, dims);
                    evaluate_with(&forward, model.config().num_classes, test, fit.canvas, norm, 256, false, &mut |_| {})
                };
                (ev, sgd.to_state_dict())
            }
        };
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss: ev.loss,
            test_acc: ev.acc,
            lr,
            images_per_s: seen as f64 / train_secs,
            seconds: started.elapsed().as_secs_f64(),
            last_weights_test_acc,
            planned_epochs: fit.time_budget_s.map(|_| planned),
        };
        state.epochs_done = epoch;
        state.history.push(m.clone());
        if m.test_acc > state.best_acc {
            state.best_acc = m.test_acc;
            st::write(&dir.best(), &model.state_dict(), &weights_meta, Dtype::F32)?;
        }
        save_last(dir, &model, opt_sd, &state, &pre)?;
        let lines: String =
            state.history.iter().map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n").collect();
        st::write_atomic(&dir.metrics(), lines.as_bytes())?;
        write_pictures(dir, &state, &ev, test);
        if events(Event::EpochEnd(&m)).is_break() {
            break;
        }
    }
    Ok((model, state))
}

/// `curves.png` (loss and accuracy per epoch) and `confusion.png` (of the epoch just evaluated).
/// Pictures are a convenience: failing to write one does not stop training.
fn write_pictures(dir: &RunDir, state: &TrainState, ev: &Evaluation, test: &Dataset) {
    let rows: Vec<_> =
        state.history.iter().map(|m| (m.epoch, m.train_loss, m.train_acc, m.test_loss, m.test_acc)).collect();
    let title = format!("best test accuracy {:.2}%", state.best_acc * 100.0);
    let _ = crate::plot::training_curves(&rows, &title).save(&dir.0.join("curves.png"));
    let epoch = state.history.last().map_or(0, |m| m.epoch);
    let title = format!("epoch {epoch}: test accuracy {:.2}%", ev.acc * 100.0);
    let _ = crate::plot::confusion(&ev.confusion, &test.classes, &title).save(&dir.0.join("confusion.png"));
}

/// Prefix of the weight average's entries in a checkpoint.
pub const SWA_PREFIX: &str = "swa_average.";

/// Adds the engine's current weights to the running average (`AveragedModel`'s equal-weight mean).
fn average_into(avg: &mut Vec<Vec<f32>>, count: &mut usize, engine: &Engine) {
    if *count == 0 {
        *avg = engine.params().iter().map(|p| p.values().into_owned()).collect();
        *count = 1;
        return;
    }
    *count += 1;
    let n = *count as f32;
    for (a, p) in avg.iter_mut().zip(engine.params()) {
        for (x, &v) in a.iter_mut().zip(p.values().iter()) {
            *x += (v - *x) / n;
        }
    }
}

/// Who runs the steps: the fast engine with its optimizer, or burn's autodiff with PyTorch's SGD.
enum Runner {
    Engine(Box<Engine>, OptimizerState),
    Burn(SgdState),
}
