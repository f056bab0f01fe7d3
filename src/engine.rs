//! A VGG executed by the [`crate::kernels`]: the same plan as [`Vgg`], with hand-written forward and
//! backward passes over NHWC activations, for training and batch inference on the CPU.
//!
//! burn's autodiff path stays the reference: the engine is built from a [`Vgg`] (its weights and
//! running statistics), trains its own copy, and hands the result back as a torchvision
//! `state_dict` ([`Engine::state_dict`]). Tests hold both paths and the PyTorch fixtures together.
//!
//! What it does not run (local response normalisation, the headless trunk) is refused by
//! [`Engine::new`], and the callers fall back to burn.

use std::borrow::Cow;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::config::{Head, LayerKind, VggConfig};
use crate::kernels::half::{HalfBuf, HalfKind};
use crate::kernels::{conv, dense, norm, pool};
use crate::model::Vgg;
use crate::weights::{StateDict, Strict, TensorEntry};

/// What the engine cannot run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A layer kind or head without a kernel here.
    #[error("the fast CPU engine does not run {0}; the burn path does")]
    Unsupported(String),
    /// A weight the model should have is absent or of another size.
    #[error("weights for the engine: {0}")]
    Weights(String),
    /// The weights do not fit the configuration (a strict load).
    #[error(transparent)]
    Load(#[from] crate::weights::WeightsError),
    /// `VGG_ISA` names a kernel path this build or CPU does not have.
    #[error("VGG_ISA: {0}")]
    Isa(#[from] crate::kernels::isa::IsaError),
}

/// A parameter: PyTorch key, value in the engine's layout, and its gradient after a backward pass.
#[derive(Debug, Clone)]
pub struct ParamBuf {
    /// torchvision `state_dict` key.
    pub key: String,
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// The values; conv weights as `[(ky, kx, ci), co]`, everything else as PyTorch stores it.
    pub value: Vec<f32>,
    /// The gradient (empty until a backward pass reaches it).
    pub grad: Vec<f32>,
    /// Half-precision storage ([`Engine::store_half`]); `value` is then empty.
    pub half: Option<HalfBuf>,
    /// `Some((co, ci, k))` for conv weights, whose layout differs from PyTorch's.
    conv: Option<(usize, usize, usize)>,
}

impl ParamBuf {
    fn new(key: String, shape: Vec<usize>, value: Vec<f32>, conv: Option<(usize, usize, usize)>) -> Self {
        Self { key, shape, value, grad: vec![], half: None, conv }
    }

    /// The values in the engine's layout: borrowed, or widened from half-precision storage.
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.half {
            Some(h) => Cow::Owned(h.decode()),
            None => Cow::Borrowed(&self.value),
        }
    }

    /// Values of a buffer of this parameter's engine layout in PyTorch's layout.
    pub fn to_torch(&self, v: &[f32]) -> Vec<f32> {
        match self.conv {
            Some((co, ci, k)) => conv::to_torch(v, co, ci, k),
            None => v.to_vec(),
        }
    }

    /// Values in PyTorch's layout converted to this parameter's engine layout.
    pub fn from_torch(&self, v: &[f32]) -> Vec<f32> {
        match self.conv {
            Some((co, ci, k)) => conv::from_torch(v, co, ci, k),
            None => v.to_vec(),
        }
    }
}

/// A convolution's transformed filters for the forward and input-gradient passes (filled on first
/// use; `Arc` so that cloning an op or an engine shares instead of copying them).
#[derive(Debug, Default)]
struct ConvCache {
    forward: conv::FilterCache,
    input_grad: conv::FilterCache,
}

/// BatchNorm buffers.
#[derive(Debug, Clone)]
struct Running {
    key: String,
    mean: Vec<f32>,
    var: Vec<f32>,
    tracked: f32,
}

#[derive(Debug, Clone)]
enum Op {
    /// Indices of weight and bias in `params`.
    Conv {
        w: usize,
        b: usize,
        ci: usize,
        co: usize,
        k: usize,
        /// Winograd-transformed filters of the current weights, replaced when they change.
        cache: Arc<ConvCache>,
    },
    /// BatchNorm followed by ReLU: γ and β indices, and the running statistics.
    BnRelu {
        g: usize,
        b: usize,
        running: Running,
    },
    Relu,
    MaxPool,
    /// 2x2/2 average pooling in place of max-pooling (Gatys et al.'s option for style transfer).
    AvgPool2,
    AvgPool {
        out: [usize; 2],
    },
    /// NHWC map → PyTorch's (c, h, w) flat vector.
    Flatten,
    Linear {
        w: usize,
        b: usize,
        inp: usize,
        out: usize,
    },
    Dropout,
}

/// Shape of an activation: a `[n, h, w, c]` map or an `[n, f]` vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Map([usize; 4]),
    Flat([usize; 2]),
}

impl Shape {
    fn len(&self) -> usize {
        match self {
            Shape::Map(s) => s.iter().product(),
            Shape::Flat(s) => s.iter().product(),
        }
    }
}

/// What a training forward keeps for the backward pass of one op.
enum Saved {
    None,
    Stats {
        mean: Vec<f64>,
        var: Vec<f64>,
        affine: norm::Affine,
    },
    /// Evaluation-mode BatchNorm: the affine map of the running statistics.
    Eval(norm::Affine),
    Arg(Vec<u8>),
    Mask(Vec<f32>),
}

/// Result of [`Engine::train_step`].
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    /// Mean loss of the batch.
    pub loss: f64,
    /// Correct top-1 predictions in the batch.
    pub hits: usize,
}

/// The network, its parameters and BatchNorm statistics, ready to run on NHWC data.
#[derive(Debug, Clone)]
pub struct Engine {
    config: VggConfig,
    ops: Vec<Op>,
    /// Index of the first op of the classifier head.
    head_start: usize,
    /// Parameters in torchvision's `state_dict` order.
    params: Vec<ParamBuf>,
    /// The paper's name of each op's output (`conv1_1`, `relu1_1` for a fused BatchNorm and ReLU,
    /// `pool1`, `fc6`, ...).
    names: Vec<String>,
    eps: f64,
    momentum: f64,
    /// The previous training step's activations, whose allocations the next step writes into.
    spare_acts: Vec<Vec<f32>>,
    /// The previous training step's gradient buffers, for the next step's input gradients.
    spare_grads: BufPool,
}

/// `len` floats in `v`'s allocation, not zeroed where `v` already holds that many: every kernel
/// that writes into such a buffer overwrites all of it (zeroing fresh buffers was ~7% of a small
/// model's training step). Debug builds fill a reused buffer with NaN instead, so that the tests
/// catch a kernel that does not.
fn reuse(mut v: Vec<f32>, len: usize) -> Vec<f32> {
    if v.len() >= len {
        v.truncate(len);
        if cfg!(debug_assertions) {
            v.fill(f32::NAN);
        }
    } else {
        v.clear();
        v.resize(len, 0.0);
    }
    v
}

/// Gradient buffers kept by length for [`reuse`].
#[derive(Debug, Clone, Default)]
struct BufPool(std::collections::HashMap<usize, Vec<Vec<f32>>>);

impl BufPool {
    fn take(&mut self, len: usize) -> Vec<f32> {
        reuse(self.0.get_mut(&len).and_then(Vec::pop).unwrap_or_default(), len)
    }

    fn give(&mut self, v: Vec<f32>) {
        if !v.is_empty() {
            self.0.entry(v.len()).or_default().push(v);
        }
    }
}

/// A tensor handed to the engine: f32, or already in 16 bits.
pub enum Taken {
    /// f32 values.
    F32(Vec<f32>),
    /// 16-bit values.
    Half(HalfBuf),
}

/// Where the engine takes its tensors from, one at a time, so that a half-precision engine need
/// never hold every weight in f32 at once.
pub trait TensorSource {
    /// The tensor `key` of `shape` (PyTorch's layout), as 16-bit values if `half` asks and the
    /// source can (f32 otherwise).
    fn take(&mut self, key: &str, shape: &[usize], half: Option<HalfKind>) -> Result<Taken, EngineError>;
    /// BatchNorm's `num_batches_tracked` (0 when absent).
    fn count(&mut self, key: &str) -> f32;
}

impl TensorSource for StateDict {
    fn take(&mut self, key: &str, shape: &[usize], half: Option<HalfKind>) -> Result<Taken, EngineError> {
        let e = self.remove(key).ok_or_else(|| EngineError::Weights(format!("missing {key}")))?;
        if e.shape != shape {
            return Err(EngineError::Weights(format!("{key}: shape {:?}, expected {shape:?}", e.shape)));
        }
        Ok(match half {
            // The f32 copy is dropped here, tensor by tensor.
            Some(kind) => Taken::Half(HalfBuf::encode(kind, &e.data)),
            None => Taken::F32(e.data),
        })
    }

    fn count(&mut self, key: &str) -> f32 {
        self.get(key).map_or(0.0, |e| e.data[0])
    }
}

fn take(src: &mut dyn TensorSource, key: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
    match src.take(key, shape, None)? {
        Taken::F32(v) => Ok(v),
        Taken::Half(h) => Ok(h.decode()),
    }
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
    /// activations by name instead of logits. Keys of a head the configuration lacks are ignored.
    pub fn from_state_dict_any_head(config: &VggConfig, mut sd: StateDict) -> Result<Self, EngineError> {
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
                    (None, h) => {
                        let mut p = ParamBuf::new(k.clone(), shape.clone(), vec![], None);
                        match sd.take(&k, &shape, h)? {
                            Taken::F32(v) => p.value = v,
                            Taken::Half(b) => p.half = Some(b),
                        }
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
        })
    }

    /// Parameters in torchvision's `state_dict` order, in the engine's layout, with their gradients.
    pub fn params(&self) -> &[ParamBuf] {
        &self.params
    }

    /// Mutable parameters (for optimizers); drops the cached transformed filters, which the next
    /// pass recomputes from the new values, and widens half-precision storage back to f32.
    pub fn params_mut(&mut self) -> &mut [ParamBuf] {
        self.store_f32();
        self.drop_caches();
        &mut self.params
    }

    /// Stores the conv and fully connected weights in 16 bits (biases and BatchNorm stay f32),
    /// computing in f32 as before: half the memory for weights, and half the bytes a batch-1 fc6
    /// streams. Convolutions then widen and transform their filters on every call instead of
    /// caching them. For inference: training steps need [`Engine::store_f32`] first.
    pub fn store_half(&mut self, kind: HalfKind) {
        let weights: Vec<usize> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Conv { w, .. } | Op::Linear { w, .. } => Some(*w),
                _ => None,
            })
            .collect();
        for w in weights {
            let p = &mut self.params[w];
            let v = match &p.half {
                Some(h) if h.kind == kind => continue,
                Some(h) => h.decode(),
                None => std::mem::take(&mut p.value),
            };
            p.half = Some(HalfBuf::encode(kind, &v));
        }
        self.drop_caches();
    }

    /// Back to f32 storage (the values stay those of the 16-bit ones).
    /// A no-op (caches kept) when nothing is in 16 bits, as for every training step's call.
    pub fn store_f32(&mut self) {
        let mut widened = false;
        for p in &mut self.params {
            if let Some(h) = p.half.take() {
                p.value = h.decode();
                widened = true;
            }
        }
        if widened {
            self.drop_caches();
        }
    }

    /// The 16-bit format the weights are stored in, if any.
    pub fn half_storage(&self) -> Option<HalfKind> {
        self.params.iter().find_map(|p| p.half.as_ref().map(|h| h.kind))
    }

    fn drop_caches(&mut self) {
        for op in &mut self.ops {
            if let Op::Conv { cache, .. } = op {
                *cache = Arc::default();
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VggConfig {
        &self.config
    }

    /// Parameters and BatchNorm buffers as a torchvision `state_dict`.
    pub fn state_dict(&self) -> StateDict {
        let mut sd: StateDict = self
            .params
            .iter()
            .map(|p| (p.key.clone(), TensorEntry::f32(p.shape.clone(), p.to_torch(&p.values()))))
            .collect();
        for op in &self.ops {
            if let Op::BnRelu { running: r, .. } = op {
                let c = r.mean.len();
                sd.insert(format!("{}.running_mean", r.key), TensorEntry::f32(vec![c], r.mean.clone()));
                sd.insert(format!("{}.running_var", r.key), TensorEntry::f32(vec![c], r.var.clone()));
                sd.insert(
                    format!("{}.num_batches_tracked", r.key),
                    TensorEntry { shape: vec![], dtype: crate::weights::Dtype::I64, data: vec![r.tracked] },
                );
            }
        }
        sd
    }

    /// Evaluation-mode logits `[n, classes]` of `x`, `[n, c, h, w]` (NCHW, as everywhere else).
    pub fn forward(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        self.run_ops(0..self.ops.len(), to_nhwc(x, dims), Shape::Map(nhwc(dims))).0
    }

    /// Evaluation-mode forward of `x` that times each op: (output name, seconds), in order. The
    /// per-layer view of `vgg bench --layers`; runs exactly the code of [`Engine::forward`].
    pub fn profile(&self, x: &[f32], dims: [usize; 4]) -> Vec<(String, f64)> {
        let mut times = Vec::with_capacity(self.ops.len());
        self.run_ops_timed(0..self.ops.len(), to_nhwc(x, dims), Shape::Map(nhwc(dims)), Some(&mut times));
        times
    }

    fn run_ops(&self, range: std::ops::Range<usize>, act: Vec<f32>, shape: Shape) -> (Vec<f32>, Shape) {
        self.run_ops_timed(range, act, shape, None)
    }

    /// [`Engine::run_ops`], pushing each op's name and wall time onto `times` when given.
    fn run_ops_timed(
        &self,
        range: std::ops::Range<usize>,
        mut act: Vec<f32>,
        mut shape: Shape,
        mut times: Option<&mut Vec<(String, f64)>>,
    ) -> (Vec<f32>, Shape) {
        let mut rng = StdRng::seed_from_u64(0);
        // Each op writes into the buffer its input's input had (the largest maps are tens of
        // megabytes: fresh allocations cost page faults and zeroing every layer).
        let mut spare = Vec::new();
        for i in range {
            let t = std::time::Instant::now();
            match &self.ops[i] {
                Op::Relu => norm::relu_inplace(&mut act),
                Op::Dropout => {}
                op => {
                    let (out, s, _) = self.op_forward_into(op, &act, shape, false, &mut rng, &mut spare);
                    spare = std::mem::replace(&mut act, out);
                    shape = s;
                }
            }
            if let Some(times) = times.as_deref_mut() {
                times.push((self.names[i].clone(), t.elapsed().as_secs_f64()));
            }
        }
        (act, shape)
    }

    /// The paper's dense evaluation: the classifier applied as convolutions over the whole trunk map
    /// (fc6 as a convolution with the head's pooled size as kernel, fc7 and fc8 as 1x1; a CIFAR head
    /// at every position), class scores averaged over the positions. Returns logits `[n, classes]`.
    /// A map smaller than the kernel falls back to [`Engine::forward`].
    pub fn dense_forward(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        let (map, shape) = self.run_ops(0..self.head_start, to_nhwc(x, dims), Shape::Map(nhwc(dims)));
        let Shape::Map([n, h, w, c]) = shape else { unreachable!("the trunk ends in a map") };
        let [kh, kw] = match self.config.head {
            Head::Imagenet { pool, .. } => pool,
            _ => [1, 1],
        };
        let first_fc = (self.head_start..self.ops.len())
            .find(|&i| matches!(self.ops[i], Op::Linear { .. }))
            .expect("a head has a linear layer");
        if h < kh || w < kw {
            return self.forward(x, dims);
        }
        let (ph, pw) = (h - kh + 1, w - kw + 1);
        let positions = ph * pw;
        // Each position's receptive window, flattened in PyTorch's (c, y, x) order so that fc6's
        // weights apply unchanged.
        let f = c * kh * kw;
        let mut rows = vec![0f32; n * positions * f];
        for s in 0..n {
            for py in 0..ph {
                for px in 0..pw {
                    let row = &mut rows[((s * ph + py) * pw + px) * f..][..f];
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let src = &map[((s * h + py + ky) * w + px + kx) * c..][..c];
                            for (ch, v) in src.iter().enumerate() {
                                row[(ch * kh + ky) * kw + kx] = *v;
                            }
                        }
                    }
                }
            }
        }
        let (scores, _) = self.run_ops(first_fc..self.ops.len(), rows, Shape::Flat([n * positions, f]));
        let classes = self.config.num_classes;
        let mut out = vec![0f32; n * classes];
        for s in 0..n {
            for p in 0..positions {
                for k in 0..classes {
                    out[s * classes + k] += scores[(s * positions + p) * classes + k] / positions as f32;
                }
            }
        }
        out
    }

    /// One training forward and backward on `x` (`[n, c, h, w]`): leaves each parameter's gradient
    /// in [`ParamBuf::grad`] and updates the BatchNorm running statistics as PyTorch does. Ops before
    /// `first_trainable` get no gradients (frozen layers); dropout draws from `seed`.
    pub fn train_step(
        &mut self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[usize],
        smoothing: f64,
        seed: u64,
        frozen: &dyn Fn(&str) -> bool,
    ) -> StepResult {
        self.train_step_timed(x, dims, labels, smoothing, seed, frozen, None)
    }

    /// [`Engine::train_step`] that also times each op's forward and backward: (`"<name> fwd"` or
    /// `"<name> bwd"`, seconds), forward ops in order, then the loss, then the backward ops in the
    /// order they run. The per-layer view of `vgg bench --train --layers`.
    pub fn profile_train_step(&mut self, x: &[f32], dims: [usize; 4], labels: &[usize]) -> Vec<(String, f64)> {
        let mut times = Vec::with_capacity(2 * self.ops.len() + 1);
        self.train_step_timed(x, dims, labels, 0.0, 0, &|_| false, Some(&mut times));
        times
    }

    #[allow(clippy::too_many_arguments)]
    fn train_step_timed(
        &mut self,
        x: &[f32],
        dims: [usize; 4],
        labels: &[usize],
        smoothing: f64,
        seed: u64,
        frozen: &dyn Fn(&str) -> bool,
        mut times: Option<&mut Vec<(String, f64)>>,
    ) -> StepResult {
        let mut lap = |name: &str, suffix: &str, t: std::time::Instant| {
            if let Some(times) = times.as_deref_mut() {
                times.push((format!("{name} {suffix}").trim_end().to_string(), t.elapsed().as_secs_f64()));
            }
        };
        let [n, c, h, w] = dims;
        // Gradients and optimizer updates need f32 weights.
        self.store_f32();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut acts = vec![to_nhwc(x, dims)];
        let mut shapes = vec![Shape::Map([n, h, w, c])];
        let mut saved = Vec::with_capacity(self.ops.len());
        let mut spare = std::mem::take(&mut self.spare_acts);
        for i in 0..self.ops.len() {
            let t = std::time::Instant::now();
            let mut buf = spare.get_mut(i + 1).map(std::mem::take).unwrap_or_default();
            let (out, shape, s) = self.op_forward_into(&self.ops[i], &acts[i], shapes[i], true, &mut rng, &mut buf);
            if let Saved::Stats { mean, var, .. } = &s {
                self.update_running(i, mean, var, shapes[i].len() / c_of(shapes[i]));
            }
            acts.push(out);
            shapes.push(shape);
            saved.push(s);
            lap(&self.names[i], "fwd", t);
        }
        let t = std::time::Instant::now();
        let classes = self.config.num_classes;
        let (loss, mut grad, hits) = dense::cross_entropy(acts.last().expect("output"), labels, classes, smoothing);
        lap("loss", "", t);
        // Backward stops below the lowest op that has a trainable parameter.
        let lowest = (0..self.ops.len())
            .find(|&i| self.op_params(i).iter().any(|&p| !frozen(&self.params[p].key)))
            .unwrap_or(self.ops.len());
        for p in &mut self.params {
            p.grad.clear();
        }
        for i in (lowest..self.ops.len()).rev() {
            let t = std::time::Instant::now();
            let need_dx = i > lowest;
            grad = self.op_backward(i, &acts[i], shapes[i], &saved[i], grad, need_dx);
            lap(&self.names[i], "bwd", t);
        }
        self.spare_grads.give(grad);
        self.spare_acts = acts;
        StepResult { loss, hits }
    }

    /// Recomputes every BatchNorm's running statistics from `batches` (NCHW, with their dims), as
    /// `torch.optim.swa_utils.update_bn` does: statistics reset, then the equally weighted mean of
    /// each batch's mean and unbiased variance (BatchNorm with `momentum=None`), and
    /// `num_batches_tracked` the number of batches. Weights averaged over training (SWA) need this
    /// because no forward pass ever produced statistics for them; it also refreshes statistics that a
    /// momentum average took from the last few hundred augmented batches only. Returns the number
    /// of batches seen; with none, the statistics are left as they were.
    pub fn update_bn(&mut self, batches: &mut dyn Iterator<Item = (Vec<f32>, [usize; 4])>) -> usize {
        self.store_f32();
        let Some(last_bn) = self.ops.iter().rposition(|op| matches!(op, Op::BnRelu { .. })) else {
            return 0;
        };
        let mut sums: Vec<Option<(Vec<f64>, Vec<f64>)>> = vec![None; self.ops.len()];
        let mut rng = StdRng::seed_from_u64(0);
        let mut count = 0usize;
        for (x, dims) in batches {
            let [n, c, h, w] = dims;
            let mut act = to_nhwc(&x, dims);
            let mut shape = Shape::Map([n, h, w, c]);
            for (i, sum) in sums.iter_mut().enumerate().take(last_bn + 1) {
                let (out, next, saved) = self.op_forward(&self.ops[i], &act, shape, true, &mut rng);
                if let Saved::Stats { mean, var, .. } = saved {
                    let unbias = unbias_factor(shape.len() / c_of(shape));
                    let (m, v) = sum.get_or_insert_with(|| (vec![0.0; mean.len()], vec![0.0; var.len()]));
                    m.iter_mut().zip(&mean).for_each(|(a, b)| *a += b);
                    v.iter_mut().zip(&var).for_each(|(a, b)| *a += b * unbias);
                }
                act = out;
                shape = next;
            }
            count += 1;
        }
        if count == 0 {
            return 0;
        }
        for (op, sum) in self.ops.iter_mut().zip(sums) {
            if let (Op::BnRelu { running: r, .. }, Some((m, v))) = (op, sum) {
                r.mean = m.iter().map(|s| (s / count as f64) as f32).collect();
                r.var = v.iter().map(|s| (s / count as f64) as f32).collect();
                r.tracked = count as f32;
            }
        }
        count
    }

    fn op_params(&self, i: usize) -> Vec<usize> {
        match self.ops[i] {
            Op::Conv { w, b, .. } | Op::Linear { w, b, .. } => vec![w, b],
            Op::BnRelu { g, b, .. } => vec![g, b],
            _ => vec![],
        }
    }

    fn update_running(&mut self, i: usize, mean: &[f64], var: &[f64], count: usize) {
        let m = self.momentum;
        let Op::BnRelu { running: r, .. } = &mut self.ops[i] else { return };
        let unbias = unbias_factor(count);
        for ch in 0..mean.len() {
            r.mean[ch] = ((1.0 - m) * r.mean[ch] as f64 + m * mean[ch]) as f32;
            r.var[ch] = ((1.0 - m) * r.var[ch] as f64 + m * var[ch] * unbias) as f32;
        }
        r.tracked += 1.0;
    }

    /// Runs one op. In training, BatchNorm uses the batch statistics (returned in [`Saved::Stats`])
    /// and dropout is applied.
    fn op_forward(&self, op: &Op, x: &[f32], shape: Shape, train: bool, rng: &mut StdRng) -> (Vec<f32>, Shape, Saved) {
        self.op_forward_into(op, x, shape, train, rng, &mut Vec::new())
    }

    /// [`Engine::op_forward`] writing its output into `spare`'s allocation where it has one.
    fn op_forward_into(
        &self,
        op: &Op,
        x: &[f32],
        shape: Shape,
        train: bool,
        rng: &mut StdRng,
        spare: &mut Vec<f32>,
    ) -> (Vec<f32>, Shape, Saved) {
        let mut buffer = |len: usize| reuse(std::mem::take(spare), len);
        match (op, shape) {
            (&Op::Conv { w, b, ci, co, k, ref cache }, Shape::Map([n, h, wd, c])) => {
                debug_assert_eq!(c, ci);
                let sh = conv::ConvShape { n, h, w: wd, ci, co, k };
                let mut out = buffer(n * h * wd * co);
                let (wk, bias) = (self.params[w].values(), &self.params[b].value);
                // Half-precision storage keeps no transformed f32 filters between calls.
                let once = conv::FilterCache::default();
                let transformed = if self.params[w].half.is_some() { &once } else { &cache.forward };
                if train {
                    // Winograd's rounding error (~3e-6 relative, 30x direct f32's) is amplified by
                    // train-mode BatchNorm over small batches past the fixture tolerances; the input
                    // gradients and evaluation stay within them and take the Winograd path.
                    conv::forward_exact(x, &wk, transformed, bias, &sh, &mut out);
                } else {
                    conv::forward_cached(x, &wk, transformed, bias, &sh, &mut out);
                }
                (out, Shape::Map([n, h, wd, co]), Saved::None)
            }
            (Op::BnRelu { g, b, running }, Shape::Map([_, _, _, c])) => {
                let (gamma, beta) = (&self.params[*g].value, &self.params[*b].value);
                let mut out = buffer(x.len());
                if train {
                    let (mean, var) = norm::batch_stats(x, c);
                    let affine = norm::Affine::new(&mean, &var, gamma, beta, self.eps);
                    norm::affine_relu(x, &affine, &mut out);
                    (out, shape, Saved::Stats { mean, var, affine })
                } else {
                    let mean: Vec<f64> = running.mean.iter().map(|&v| v as f64).collect();
                    let var: Vec<f64> = running.var.iter().map(|&v| v as f64).collect();
                    let affine = norm::Affine::new(&mean, &var, gamma, beta, self.eps);
                    norm::affine_relu(x, &affine, &mut out);
                    (out, shape, Saved::Eval(affine))
                }
            }
            (Op::Relu, _) => {
                let mut out = buffer(x.len());
                norm::relu(x, &mut out);
                (out, shape, Saved::None)
            }
            (Op::MaxPool, Shape::Map([n, h, w, c])) => {
                let os = [n, h / 2, w / 2, c];
                let mut out = buffer(os.iter().product());
                let mut arg = vec![0u8; out.len()];
                pool::max2_forward(x, [n, h, w, c], &mut out, &mut arg);
                (out, Shape::Map(os), Saved::Arg(arg))
            }
            (Op::AvgPool2, Shape::Map([n, h, w, c])) => {
                let os = [n, h / 2, w / 2, c];
                let mut out = buffer(os.iter().product());
                pool::avg2_forward(x, [n, h, w, c], &mut out);
                (out, Shape::Map(os), Saved::None)
            }
            (&Op::AvgPool { out: [oh, ow] }, Shape::Map([n, h, w, c])) => {
                if [h, w] == [oh, ow] {
                    return (x.to_vec(), shape, Saved::None);
                }
                let mut out = buffer(n * oh * ow * c);
                pool::adaptive_avg_forward(x, [n, h, w, c], [oh, ow], &mut out);
                (out, Shape::Map([n, oh, ow, c]), Saved::None)
            }
            (Op::Flatten, Shape::Map([n, h, w, c])) => {
                let mut out = buffer(x.len());
                if h * w == 1 {
                    out.copy_from_slice(x);
                } else {
                    pool::nhwc_to_nchw(x, [n, h, w, c], &mut out, false);
                }
                (out, Shape::Flat([n, h * w * c]), Saved::None)
            }
            (&Op::Linear { w, b, inp, out }, Shape::Flat([n, f])) => {
                assert_eq!(f, inp, "the head expects {inp} features, got {f}");
                let mut y = buffer(n * out);
                match &self.params[w].half {
                    Some(h) => crate::kernels::half::linear_forward(x, h, &self.params[b].value, n, &mut y),
                    None => dense::linear_forward(x, &self.params[w].value, &self.params[b].value, n, &mut y),
                }
                (y, Shape::Flat([n, out]), Saved::None)
            }
            (Op::Dropout, _) => {
                let mut out = x.to_vec();
                if train && self.config.dropout > 0.0 {
                    let mask = dense::dropout(&mut out, self.config.dropout, rng);
                    (out, shape, Saved::Mask(mask))
                } else {
                    (out, shape, Saved::None)
                }
            }
            (op, shape) => unreachable!("{op:?} on {shape:?}"),
        }
    }

    /// Backward of op `i` with input `x`: stores parameter gradients and returns the input gradient
    /// (empty when `need_dx` is false).
    fn op_backward(
        &mut self,
        i: usize,
        x: &[f32],
        shape: Shape,
        saved: &Saved,
        mut g: Vec<f32>,
        need_dx: bool,
    ) -> Vec<f32> {
        let op = self.ops[i].clone();
        match (&op, shape) {
            (&Op::Conv { w, b, ci, co, k, ref cache }, Shape::Map([n, h, wd, _])) => {
                let sh = conv::ConvShape { n, h, w: wd, ci, co, k };
                let mut dx = if need_dx { self.spare_grads.take(x.len()) } else { vec![] };
                let wk = &self.params[w].value;
                let (dw, db) =
                    conv::backward_cached(x, wk, &cache.input_grad, &g, &sh, need_dx.then_some(dx.as_mut_slice()));
                self.params[w].grad = dw;
                self.params[b].grad = db;
                self.spare_grads.give(g);
                dx
            }
            (Op::BnRelu { g: gi, b, .. }, _) => {
                let Saved::Stats { mean, var, affine } = saved else { unreachable!("BatchNorm saved its statistics") };
                let (dg, dbeta) =
                    norm::bn_relu_backward(x, &mut g, mean, var, &self.params[*gi].value, affine, self.eps);
                self.params[*gi].grad = dg;
                self.params[*b].grad = dbeta;
                g
            }
            (&Op::Linear { w, b, out, .. }, Shape::Flat([n, _])) => {
                let mut dx = if need_dx { self.spare_grads.take(x.len()) } else { vec![] };
                let (dw, db) =
                    dense::linear_backward(x, &self.params[w].value, &g, n, out, need_dx.then_some(dx.as_mut_slice()));
                self.params[w].grad = dw;
                self.params[b].grad = db;
                self.spare_grads.give(g);
                dx
            }
            (op, _) => passive_backward(op, x, shape, saved, g, &mut self.spare_grads),
        }
    }
}

/// An evaluation-mode forward pass that keeps every activation, for gradients with respect to
/// activations and the input ([`Engine::trace`], [`Engine::gradient`]).
pub struct Trace {
    acts: Vec<Vec<f32>>,
    shapes: Vec<Shape>,
    saved: Vec<Saved>,
}

impl Trace {
    /// How many activations it holds (the input and each op's output run).
    pub fn len(&self) -> usize {
        self.acts.len()
    }

    /// Whether it holds nothing (never: the input is always there).
    pub fn is_empty(&self) -> bool {
        self.acts.is_empty()
    }

    /// Activation `i` (0: the input) in PyTorch's layout: `[n, c, h, w]` or `[n, f]`.
    pub fn activation(&self, i: usize) -> (Vec<f32>, Vec<usize>) {
        match self.shapes[i] {
            Shape::Map([n, h, w, c]) => {
                let mut out = vec![0f32; self.acts[i].len()];
                pool::nhwc_to_nchw(&self.acts[i], [n, h, w, c], &mut out, false);
                (out, vec![n, c, h, w])
            }
            Shape::Flat([n, f]) => (self.acts[i].clone(), vec![n, f]),
        }
    }

    /// Whether activation `i` is a spatial map (not a vector of the head).
    pub fn is_map(&self, i: usize) -> bool {
        matches!(self.shapes[i], Shape::Map(_))
    }

    /// Activation `i` as the engine holds it: NHWC maps, and the dims `[n, h, w, c]` (`[n, 1, 1, f]`
    /// for vectors).
    pub fn activation_nhwc(&self, i: usize) -> (&[f32], [usize; 4]) {
        let dims = match self.shapes[i] {
            Shape::Map(s) => s,
            Shape::Flat([n, f]) => [n, 1, 1, f],
        };
        (&self.acts[i], dims)
    }
}

impl Engine {
    /// The names of the activations a [`Trace`] holds, by index: `input`, then each op's output
    /// (`conv1_1`, `relu1_1`, `pool1`, ..., `fc8`). With BatchNorm, `bnX_Y` is fused into `reluX_Y`
    /// and not available on its own.
    pub fn activation_names(&self) -> Vec<&str> {
        std::iter::once("input").chain(self.names.iter().map(String::as_str)).collect()
    }

    /// Index in a [`Trace`] of the activation called `name` (a paper name, or `logits` for the last).
    pub fn activation_index(&self, name: &str) -> Result<usize, EngineError> {
        if name == "logits" && self.head_start < self.ops.len() {
            return Ok(self.ops.len());
        }
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i + 1);
        }
        let hint = if name.starts_with("bn") {
            " (a BatchNorm's output is fused with its ReLU here: ask for the relu)"
        } else {
            ""
        };
        Err(EngineError::Unsupported(format!(
            "a layer named '{name}'{hint}; the layers are: {}",
            self.names.join(", ")
        )))
    }

    /// The last ReLU of the trunk (`relu5_3` of VGG-16): where Grad-CAM looks by default.
    pub fn last_trunk_relu(&self) -> Option<&str> {
        self.names[..self.head_start].iter().rev().find(|n| n.starts_with("relu")).map(String::as_str)
    }

    /// Replaces every max-pooling with 2x2 average pooling (Gatys et al. found it gives slightly
    /// smoother style transfer results).
    pub fn use_average_pooling(&mut self) {
        for op in &mut self.ops {
            if matches!(op, Op::MaxPool) {
                *op = Op::AvgPool2;
            }
        }
    }

    /// Evaluation-mode forward of `x` (`[n, c, h, w]`) up to activation `upto` (see
    /// [`Engine::activation_index`]), keeping everything [`Engine::gradient`] needs.
    pub fn trace(&self, x: &[f32], dims: [usize; 4], upto: usize) -> Trace {
        let mut rng = StdRng::seed_from_u64(0);
        let mut acts = vec![to_nhwc(x, dims)];
        let mut shapes = vec![Shape::Map(nhwc(dims))];
        let mut saved = Vec::new();
        for op in &self.ops[..upto.min(self.ops.len())] {
            let (out, shape, s) =
                self.op_forward(op, acts.last().expect("input"), *shapes.last().expect("input"), false, &mut rng);
            acts.push(out);
            shapes.push(shape);
            saved.push(s);
        }
        Trace { acts, shapes, saved }
    }

    /// Evaluation-mode forward from activation `i` of `trace`'s shape, replaced by `act` (NHWC, as
    /// [`Trace::activation_nhwc`] holds it), to the network's output: what-if experiments on an
    /// intermediate map (and a finite-difference check of [`Engine::gradient`]).
    pub fn forward_from(&self, trace: &Trace, i: usize, act: Vec<f32>) -> Vec<f32> {
        assert_eq!(act.len(), trace.acts[i].len(), "activation {i} has another size");
        self.run_ops(i..self.ops.len(), act, trace.shapes[i]).0
    }

    /// Gradient of a scalar with respect to activation `down_to` of `trace`, given the scalar's
    /// gradients with respect to later activations: `seeds` pairs an activation index with a
    /// gradient in the engine's NHWC layout (as [`Trace::activation_nhwc`] holds them); several seeds
    /// add up (a style loss over several layers). Returns NHWC, like the seeds. Parameters get no
    /// gradients (evaluation mode: BatchNorm uses its running statistics).
    pub fn gradient(&self, trace: &Trace, seeds: Vec<(usize, Vec<f32>)>, down_to: usize) -> Vec<f32> {
        let top = seeds.iter().map(|(i, _)| *i).max().unwrap_or(down_to).max(down_to);
        assert!(top < trace.acts.len(), "seed beyond the trace");
        let mut seeds = seeds;
        let mut g = vec![0f32; trace.acts[top].len()];
        for i in (down_to..=top).rev() {
            for (j, s) in seeds.iter_mut().filter(|(j, _)| *j == i) {
                let _ = j;
                assert_eq!(s.len(), g.len(), "seed for activation {i} of the wrong size");
                for (a, b) in g.iter_mut().zip(s.iter()) {
                    *a += b;
                }
            }
            if i == down_to {
                break;
            }
            g = self.input_backward(i - 1, &trace.acts[i - 1], trace.shapes[i - 1], &trace.saved[i - 1], g);
        }
        g
    }

    /// Backward of op `i` to its input only.
    fn input_backward(&self, i: usize, x: &[f32], shape: Shape, saved: &Saved, mut g: Vec<f32>) -> Vec<f32> {
        match (&self.ops[i], shape) {
            (&Op::Conv { w, ci, co, k, ref cache, .. }, Shape::Map([n, h, wd, _])) => {
                let sh = conv::ConvShape { n, h, w: wd, ci, co, k };
                let mut dx = vec![0f32; x.len()];
                let once = conv::FilterCache::default();
                let transformed = if self.params[w].half.is_some() { &once } else { &cache.input_grad };
                conv::backward_input_cached(&self.params[w].values(), transformed, &g, &sh, &mut dx);
                dx
            }
            (Op::BnRelu { .. }, _) => {
                let Saved::Eval(a) = saved else { unreachable!("an evaluation trace keeps BatchNorm's affine map") };
                let c = a.scale.len();
                for (gr, zr) in g.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for ch in 0..c {
                        let on = (zr[ch] - a.mean[ch]) * a.scale[ch] + a.shift[ch] > 0.0;
                        gr[ch] = if on { gr[ch] * a.scale[ch] } else { 0.0 };
                    }
                }
                g
            }
            (&Op::Linear { w, inp, out, .. }, Shape::Flat([n, _])) => {
                let mut dx = vec![0f32; n * inp];
                dense::linear_backward_input(&self.params[w].values(), &g, n, out, &mut dx);
                dx
            }
            (Op::Dropout, _) => g,
            (op, _) => passive_backward(op, x, shape, saved, g, &mut BufPool::default()),
        }
    }
}

/// Backward of an op without parameters (ReLU, pooling, flatten, dropout) to its input.
fn passive_backward(op: &Op, x: &[f32], shape: Shape, saved: &Saved, mut g: Vec<f32>, bufs: &mut BufPool) -> Vec<f32> {
    match (op, shape) {
        (Op::Relu, _) => {
            // The forward output is relu(x): positive exactly where x is.
            norm::relu_backward(x, &mut g);
            g
        }
        (Op::MaxPool, Shape::Map(s)) => {
            let Saved::Arg(arg) = saved else { unreachable!("max-pool saved its arguments") };
            let mut dx = bufs.take(x.len());
            pool::max2_backward(&g, arg, s, &mut dx);
            bufs.give(g);
            dx
        }
        (Op::AvgPool2, Shape::Map(s)) => {
            let mut dx = bufs.take(x.len());
            pool::avg2_backward(&g, s, &mut dx);
            bufs.give(g);
            dx
        }
        (&Op::AvgPool { out }, Shape::Map(s)) => {
            if [s[1], s[2]] == out {
                return g;
            }
            let mut dx = bufs.take(x.len());
            pool::adaptive_avg_backward(&g, s, out, &mut dx);
            bufs.give(g);
            dx
        }
        (Op::Flatten, Shape::Map([n, h, w, c])) => {
            if h * w == 1 {
                return g;
            }
            let mut dx = bufs.take(x.len());
            pool::nhwc_to_nchw(&g, [n, h, w, c], &mut dx, true);
            bufs.give(g);
            dx
        }
        (Op::Dropout, _) => {
            if let Saved::Mask(mask) = saved {
                for (v, m) in g.iter_mut().zip(mask) {
                    *v *= m;
                }
            }
            g
        }
        (op, shape) => unreachable!("{op:?} on {shape:?}"),
    }
}

/// n / (n - 1): turns a batch's biased variance over `n` values into the unbiased one that
/// PyTorch's running variance takes.
fn unbias_factor(n: usize) -> f64 {
    if n > 1 { n as f64 / (n - 1) as f64 } else { 1.0 }
}

fn c_of(s: Shape) -> usize {
    match s {
        Shape::Map([_, _, _, c]) => c,
        Shape::Flat([_, f]) => f,
    }
}

fn nhwc([n, c, h, w]: [usize; 4]) -> [usize; 4] {
    [n, h, w, c]
}

fn to_nhwc(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    assert_eq!(x.len(), n * c * h * w, "input of {n}x{c}x{h}x{w} expected");
    if c == 1 {
        return x.to_vec();
    }
    let mut out = vec![0f32; x.len()];
    pool::nhwc_to_nchw(x, [n, h, w, c], &mut out, true);
    out
}
