//! Building the engine: the op list of a configuration's plan, with the tensors taken one at a
//! time from a [`TensorSource`] (a `state_dict`, or an initialiser that draws them), in f32 or
//! straight into 16 bits.

use std::sync::Arc;

use super::ops::{BufPool, Op, Running};
use super::{Engine, EngineError, ParamBuf};
use crate::config::{Head, LayerKind, VggConfig};
use crate::kernels::conv;
use crate::kernels::conv::ConvAlgos;
use crate::kernels::half::{HalfBuf, HalfKind};
use crate::model::Vgg;
use crate::weights::source::TensorSource;
use crate::weights::{StateDict, Strict};

fn take(src: &mut dyn TensorSource, key: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
    Ok(src.take(key, shape)?)
}

impl Engine {
    /// Whether the engine runs `config`: everything but local response normalisation and the
    /// headless trunk.
    pub fn supports(config: &VggConfig) -> Result<(), EngineError> {
        if matches!(config.head, Head::None) {
            return Err(EngineError::Unsupported("a network without a classifier".into()));
        }
        if config.plan([224, 224]).layers.iter().any(|l| matches!(l.kind, LayerKind::Lrn)) {
            return Err(EngineError::Unsupported("local response normalisation".into()));
        }
        Ok(())
    }

    /// Takes `model`'s configuration and weights.
    pub fn new(model: &Vgg) -> Result<Self, EngineError> {
        Self::supports(model.config())?;
        Self::from_state_dict(model.config(), model.state_dict())
    }

    /// Builds the network of `config` with the weights of `sd` (torchvision keys), taking them over.
    pub fn from_state_dict(config: &VggConfig, mut sd: StateDict) -> Result<Self, EngineError> {
        Self::supports(config)?;
        Self::build(config, &mut sd, None)
    }

    /// Builds the network of `config` from `src`, with conv and fully connected weights stored
    /// in 16 bits when `half` says so (see [`Engine::store_half`]), converted tensor by tensor.
    pub fn from_source(
        config: &VggConfig,
        src: &mut dyn TensorSource,
        half: Option<HalfKind>,
    ) -> Result<Self, EngineError> {
        Self::supports(config)?;
        Self::build(config, src, half)
    }

    /// Like [`Engine::from_state_dict`], with the checks and errors of a burn model's
    /// `load_state_dict` (missing, unexpected and misshapen keys named; the paper's key names
    /// accepted). The engine needs every tensor, so non-strict loading only ignores extra keys.
    /// `half` stores the weights in 16 bits as they are taken over (see [`Engine::store_half`]).
    pub fn load(
        config: &VggConfig,
        sd: StateDict,
        strict: Strict,
        half: Option<HalfKind>,
    ) -> Result<Self, EngineError> {
        Self::supports(config)?;
        let mut sd = crate::weights::keys::conform(sd, config, strict)?;
        Self::build(config, &mut sd, half)
    }

    /// Like [`Engine::from_state_dict`], but also for a trunk without a classifier
    /// ([`Head::None`]): for features, explanations and style transfer, whose callers read
    /// activations by name instead of logits. Keys of a head the configuration lacks are ignored;
    /// the paper's key names are accepted.
    pub fn from_state_dict_any_head(config: &VggConfig, sd: StateDict) -> Result<Self, EngineError> {
        let mut sd = crate::weights::keys::conform(sd, config, Strict::No)?;
        Self::build(config, &mut sd, None)
    }

    fn build(config: &VggConfig, sd: &mut dyn TensorSource, half: Option<HalfKind>) -> Result<Self, EngineError> {
        crate::kernels::isa::selected()?;
        if config.plan([224, 224]).layers.iter().any(|l| matches!(l.kind, LayerKind::Lrn)) {
            return Err(EngineError::Unsupported("local response normalisation".into()));
        }
        let plan = config.plan([224, 224]);
        let mut names = Vec::new();
        let mut ops = Vec::new();
        let mut params = Vec::new();
        let mut layers = plan.layers.iter().enumerate().peekable();
        let mut flat = false;
        let mut head_start = usize::MAX;
        while let Some((i, layer)) = layers.next() {
            if i == plan.trunk {
                head_start = ops.len();
            }
            let key = &layer.key;
            let mut add = |suffix: &str, shape: Vec<usize>, conv: Option<(usize, usize, usize)>| {
                let k = format!("{key}.{suffix}");
                let weight = suffix == "weight" && shape.len() > 1;
                let p = match (conv, half.filter(|_| weight)) {
                    // Conv filters change layout first (in f32: at most one layer's worth).
                    (Some((co, ci, kk)), h) => {
                        let v = conv::from_torch(&take(sd, &k, &shape)?, co, ci, kk);
                        let mut p = ParamBuf::new(k, shape, vec![], conv);
                        match h {
                            Some(kind) => p.half = Some(HalfBuf::encode(kind, &v)),
                            None => p.value = v,
                        }
                        p
                    }
                    (None, None) => ParamBuf::new(k.clone(), shape.clone(), take(sd, &k, &shape)?, None),
                    (None, Some(kind)) => {
                        // Encoded piece by piece as the source hands them over.
                        let mut bits = Vec::with_capacity(shape.iter().product());
                        sd.take_pieces(&k, &shape, &mut |piece| bits.extend(HalfBuf::encode(kind, piece).bits))?;
                        let mut p = ParamBuf::new(k.clone(), shape.clone(), vec![], None);
                        p.half = Some(HalfBuf { kind, bits });
                        p
                    }
                };
                params.push(p);
                Ok::<usize, EngineError>(params.len() - 1)
            };
            match layer.kind {
                LayerKind::Conv { in_channels: ci, out_channels: co, kernel: k } => {
                    let w = add("weight", vec![co, ci, k, k], Some((co, ci, k)))?;
                    let b = add("bias", vec![co], None)?;
                    ops.push(Op::Conv { w, b, ci, co, k, cache: Arc::default() });
                }
                LayerKind::BatchNorm { channels } => {
                    let g = add("weight", vec![channels], None)?;
                    let b = add("bias", vec![channels], None)?;
                    let mean = take(sd, &format!("{key}.running_mean"), &[channels])?;
                    let var = take(sd, &format!("{key}.running_var"), &[channels])?;
                    let tracked = sd.count(&format!("{key}.num_batches_tracked"));
                    let relu = match layers.next() {
                        Some((_, l)) if matches!(l.kind, LayerKind::Relu) => l.name.clone(),
                        _ => return Err(EngineError::Unsupported("a BatchNorm not followed by a ReLU".into())),
                    };
                    ops.push(Op::BnRelu { g, b, running: Running { key: key.clone(), mean, var, tracked } });
                    names.push(relu);
                    continue;
                }
                LayerKind::Relu => ops.push(Op::Relu),
                LayerKind::MaxPool => ops.push(Op::MaxPool),
                LayerKind::Lrn => return Err(EngineError::Unsupported("local response normalisation".into())),
                LayerKind::AdaptiveAvgPool { out } => ops.push(Op::AvgPool { out }),
                LayerKind::Dropout => ops.push(Op::Dropout),
                LayerKind::Linear { in_features: inp, out_features: out } => {
                    // The CIFAR head averages whatever map is left to 1x1 (see `Vgg::run`).
                    if i == plan.trunk && config.head.averages_to_one() {
                        ops.push(Op::AvgPool { out: [1, 1] });
                        names.push("avgpool".into());
                    }
                    if !flat {
                        ops.push(Op::Flatten);
                        names.push("flatten".into());
                        flat = true;
                    }
                    let w = add("weight", vec![out, inp], None)?;
                    let b = add("bias", vec![out], None)?;
                    ops.push(Op::Linear { w, b, inp, out });
                }
            }
            names.push(layer.name.clone());
        }
        let head_start = head_start.min(ops.len());
        Ok(Self {
            config: config.clone(),
            ops,
            head_start,
            params,
            names,
            eps: 1e-5,
            momentum: 0.1,
            spare_acts: vec![],
            spare_grads: BufPool::default(),
            scratch: Default::default(),
            conv_algos: ConvAlgos::default(),
            parallel: None,
        })
    }
}
