//! The training seam: a network together with its optimizer, stepped one batch at a time.
//!
//! The training loop ([`super::fit`]) holds a `dyn` [`Learner`] and never asks what runs it. Two
//! implementations: the fast engine with [`OptimizerState`] (SGD or AdamW, gradient clipping,
//! weight averaging, BatchNorm recalibration), and burn's autodiff with [`SgdState`], the reference
//! path, which also runs the models the engine has no kernels for. [`learner`] chooses once, says
//! why when it is not the engine ([`Learner::runs_on`]), and refuses up front what burn's path
//! does not do.

use std::collections::BTreeSet;

use burn::tensor::{Tensor, TensorData};

use super::TrainError;
use super::burn_sgd::SgdState;
use super::config::FitConfig;
use super::config::{OptimizerConfig, SgdConfig};
use super::engine_optim::{OptimizerState, clip_grad_norm};
use crate::engine::{DataParallel, Engine};
use crate::model::Vgg;
use crate::net::{BurnNet, Choice, Network, RunsOn};
use crate::weights::{StateDict, TensorEntry};

/// Prefix of the weight average's entries in a checkpoint.
pub const SWA_PREFIX: &str = "swa_average.";

/// Result of one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Mean loss of the batch (before the update).
    pub loss: f32,
    /// Correct top-1 predictions in the batch.
    pub hits: usize,
}

/// A network being trained, with its optimizer state.
pub trait Learner {
    /// What runs it.
    fn runs_on(&self) -> RunsOn;
    /// Seeds the dropout draws of the epoch about to start where they come from a generator of
    /// the device (burn's); the engine draws from each step's own seed instead.
    fn start_epoch(&mut self, seed: u64);
    /// One step on the batch `x` (`dims` `[n, c, h, w]`): forward with batch statistics, loss,
    /// backward, gradient clipping, optimizer update at learning rate `lr`. Image `r`'s dropout
    /// masks draw from `sample_seeds[r]` where the learner draws per image (the engine). Data-parallel,
    /// `x` is this process's shard and the result is the global batch's. A loss that is not finite
    /// (on any process) is returned without updating anything.
    fn step(&mut self, x: Vec<f32>, dims: [usize; 4], labels: &[usize], sample_seeds: &[u64], lr: f64) -> Step;
    /// The network in evaluation mode as it is now.
    fn network(&self) -> &dyn Network;
    /// Parameters and BatchNorm buffers as a torchvision `state_dict`.
    fn state_dict(&self) -> StateDict;
    /// The optimizer state (and the weight average) as tensors keyed like PyTorch's, for the
    /// checkpoint.
    fn optimizer_state(&self) -> StateDict;
    /// Adds the current weights to the running average (`AveragedModel`'s equal-weight mean);
    /// `count` snapshots are in it so far.
    fn add_to_average(&mut self, count: usize) -> Result<(), TrainError>;
    /// Replaces the weights with their running average.
    fn use_average(&mut self) -> Result<(), TrainError>;
    /// Recomputes the BatchNorm statistics over `batches` (`swa_utils.update_bn`).
    fn recalibrate_bn(&mut self, batches: &mut dyn Iterator<Item = (Vec<f32>, [usize; 4])>) -> Result<(), TrainError>;
}

/// The learner for `model` (on an autodiff device when it may run on burn) and the run `fit`,
/// continuing from the optimizer state `opt_sd` of a checkpoint (empty for a new run) in which
/// `swa_count` snapshots were averaged: the engine unless `fit.burn_reference` or the engine does
/// not run the model. With `parallel`, the steps span its processes, starting from rank 0's
/// weights (the engine only).
pub fn learner(
    model: &Vgg,
    fit: &FitConfig,
    frozen: BTreeSet<String>,
    opt_sd: &StateDict,
    swa_count: usize,
    parallel: Option<DataParallel>,
) -> Result<Box<dyn Learner>, TrainError> {
    let because = match crate::net::choose(model, fit.burn_reference) {
        Choice::Engine(mut engine) => {
            if let Some(p) = &parallel {
                engine.broadcast_weights(&*p.group, 0);
            }
            engine.set_data_parallel(parallel);
            return Ok(Box::new(EngineLearner::new(*engine, fit, frozen, opt_sd, swa_count)?));
        }
        Choice::Burn { because } => because,
    };
    if parallel.is_some_and(|p| p.group.size() > 1) {
        let why = because.as_deref().unwrap_or("burn's path was asked for");
        return Err(TrainError::Config(format!(
            "training over several processes runs on the fast CPU engine only, and this run is on burn's: {why}"
        )));
    }
    let engine_only = [
        (!matches!(fit.optimizer(), OptimizerConfig::Sgd(_)), "AdamW"),
        (fit.clip_grad_norm.is_some(), "gradient clipping"),
        (fit.swa.is_some(), "weight averaging"),
        (fit.precise_bn, "precise BatchNorm"),
    ];
    if let Some((_, what)) = engine_only.iter().find(|(asked, _)| *asked) {
        let why = because.as_deref().unwrap_or("burn's path was asked for");
        return Err(TrainError::Checkpoint(format!(
            "{what} runs on the fast CPU engine only, and this run is on burn's: {why}"
        )));
    }
    Ok(Box::new(BurnLearner {
        model: model.clone(),
        sgd: SgdState::from_state_dict(opt_sd, &model.devices()),
        config: fit.sgd,
        smoothing: fit.label_smoothing,
        frozen,
        eval: Default::default(),
        because,
    }))
}

/// The fast engine with PyTorch's optimizers.
struct EngineLearner {
    engine: Engine,
    optimizer: OptimizerState,
    config: OptimizerConfig,
    smoothing: f64,
    clip: Option<f64>,
    frozen: BTreeSet<String>,
    /// The running average of the weights, in the engine's layout, aligned with its parameters.
    average: Vec<Vec<f32>>,
}

impl EngineLearner {
    fn new(
        engine: Engine,
        fit: &FitConfig,
        frozen: BTreeSet<String>,
        opt_sd: &StateDict,
        swa_count: usize,
    ) -> Result<Self, TrainError> {
        let average = if swa_count > 0 {
            engine
                .params()
                .iter()
                .map(|p| {
                    opt_sd.get(&format!("{SWA_PREFIX}{}", p.key)).map(|e| p.from_torch(&e.data)).ok_or_else(|| {
                        TrainError::Checkpoint(format!("the checkpoint lacks the weight average of {}", p.key))
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            vec![]
        };
        Ok(EngineLearner {
            optimizer: OptimizerState::from_state_dict(&engine, opt_sd),
            engine,
            config: fit.optimizer(),
            smoothing: fit.label_smoothing,
            clip: fit.clip_grad_norm,
            frozen,
            average,
        })
    }
}

impl Learner for EngineLearner {
    fn runs_on(&self) -> RunsOn {
        self.engine.runs_on()
    }
    fn start_epoch(&mut self, _: u64) {}
    fn step(&mut self, x: Vec<f32>, dims: [usize; 4], labels: &[usize], sample_seeds: &[u64], lr: f64) -> Step {
        let frozen = |k: &str| self.frozen.contains(k);
        let r = self.engine.train_step(&x, dims, labels, self.smoothing, sample_seeds, &frozen);
        let step = Step { loss: r.loss as f32, hits: r.hits };
        if !step.loss.is_finite() {
            return step;
        }
        if let Some(max) = self.clip {
            clip_grad_norm(&mut self.engine, max, &frozen);
        }
        self.optimizer.step(&mut self.engine, &self.config, lr, &frozen);
        step
    }
    fn network(&self) -> &dyn Network {
        &self.engine
    }
    fn state_dict(&self) -> StateDict {
        self.engine.state_dict()
    }
    fn optimizer_state(&self) -> StateDict {
        let mut sd = self.optimizer.to_state_dict(&self.engine, &self.config);
        for (p, avg) in self.engine.params().iter().zip(&self.average) {
            sd.insert(format!("{SWA_PREFIX}{}", p.key), TensorEntry::f32(p.shape.clone(), p.to_torch(avg)));
        }
        sd
    }
    fn add_to_average(&mut self, count: usize) -> Result<(), TrainError> {
        if count == 0 {
            self.average = self.engine.params().iter().map(|p| p.values().into_owned()).collect();
            return Ok(());
        }
        let n = (count + 1) as f32;
        for (a, p) in self.average.iter_mut().zip(self.engine.params()) {
            for (x, &v) in a.iter_mut().zip(p.values().iter()) {
                *x += (v - *x) / n;
            }
        }
        Ok(())
    }
    fn use_average(&mut self) -> Result<(), TrainError> {
        for (p, avg) in self.engine.params_mut().iter_mut().zip(&self.average) {
            p.value.clone_from(avg);
        }
        Ok(())
    }
    fn recalibrate_bn(&mut self, batches: &mut dyn Iterator<Item = (Vec<f32>, [usize; 4])>) -> Result<(), TrainError> {
        self.engine.update_bn(batches);
        Ok(())
    }
}

/// burn's autodiff with PyTorch's SGD (the reference path).
struct BurnLearner {
    /// On an autodiff device.
    model: Vgg,
    sgd: SgdState,
    config: SgdConfig,
    smoothing: f64,
    frozen: BTreeSet<String>,
    /// The model in evaluation mode, made when first asked for after a step.
    eval: std::cell::OnceCell<BurnNet>,
    because: Option<String>,
}

impl BurnLearner {
    fn engine_only(&self, what: &str) -> TrainError {
        TrainError::Config(format!("{what} runs on the fast CPU engine only"))
    }
}

impl Learner for BurnLearner {
    fn runs_on(&self) -> RunsOn {
        RunsOn::Burn { because: self.because.clone() }
    }
    fn start_epoch(&mut self, seed: u64) {
        self.model.devices().seed(seed);
    }
    fn step(&mut self, x: Vec<f32>, dims: [usize; 4], labels: &[usize], _: &[u64], lr: f64) -> Step {
        let x = Tensor::<4>::from_data(TensorData::new(x, dims), &self.model.devices());
        let logits = self.model.forward_train(x);
        let loss = super::cross_entropy(logits.clone(), labels, self.smoothing);
        let loss_v = crate::model::to_f32(loss.to_data())[0];
        let pred = crate::classify::top_k(&logits.detach(), 1);
        let step = Step { loss: loss_v, hits: pred.iter().zip(labels).filter(|(p, l)| p[0].0 == **l).count() };
        if !loss_v.is_finite() {
            return step;
        }
        let grads = loss.backward();
        let frozen = |k: &str| self.frozen.contains(k);
        self.sgd.step(&mut self.model, &grads, &self.config, lr, &frozen);
        self.eval = Default::default();
        step
    }
    fn network(&self) -> &dyn Network {
        self.eval.get_or_init(|| BurnNet::new(&self.model, self.because.clone()))
    }
    fn state_dict(&self) -> StateDict {
        self.model.state_dict()
    }
    fn optimizer_state(&self) -> StateDict {
        self.sgd.to_state_dict()
    }
    fn add_to_average(&mut self, _: usize) -> Result<(), TrainError> {
        Err(self.engine_only("weight averaging"))
    }
    fn use_average(&mut self) -> Result<(), TrainError> {
        Err(self.engine_only("weight averaging"))
    }
    fn recalibrate_bn(&mut self, _: &mut dyn Iterator<Item = (Vec<f32>, [usize; 4])>) -> Result<(), TrainError> {
        Err(self.engine_only("precise BatchNorm"))
    }
}
