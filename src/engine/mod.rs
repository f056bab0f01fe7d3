//! A VGG executed by the [`crate::kernels`]: the same plan as [`Vgg`](crate::model::Vgg), with
//! hand-written forward and backward passes over NHWC activations, for training and batch
//! inference on the CPU.
//!
//! burn's autodiff path stays the reference: the engine is built from a [`Vgg`](crate::model::Vgg)
//! (its weights and running statistics), trains its own copy, and hands the result back as a
//! torchvision `state_dict` ([`Engine::state_dict`]). Tests hold both paths and the PyTorch
//! fixtures together.
//!
//! What it does not run (local response normalisation, the headless trunk) is refused by
//! [`Engine::new`]; [`crate::net`] then runs the model on burn and says why.
//!
//! One job per file: `build` turns a configuration and weights into the op list, `params` holds
//! the parameter buffers, `ops` runs and differentiates one op, `infer` the evaluation passes,
//! `train` the training step and BatchNorm recalibration, `trace` keeps the activations for
//! gradients with respect to the input (explain, style).

mod build;
mod infer;
mod ops;
mod parallel;
mod params;
mod trace;
mod train;

use std::sync::Arc;

use crate::config::VggConfig;
use crate::kernels::half::HalfBuf;
use crate::kernels::pool;
use crate::weights::{StateDict, TensorEntry};

/// The 16-bit formats the engine can store weights in, and the kernel path (instruction set) it
/// runs on: what callers above the engine choose or report, without reaching into the kernels.
pub use crate::kernels::conv::ConvAlgos;
pub use crate::kernels::half::HalfKind;
pub use crate::kernels::isa::{Isa, IsaError, cpu_name};
pub use crate::kernels::peak::fma_peak_gflops;
pub use parallel::DataParallel;
pub use params::ParamBuf;
pub use trace::Trace;
pub use train::StepResult;

use ops::{BufPool, Op, OpEnv};

/// What the engine cannot run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A layer kind or head without a kernel here.
    #[error("the fast CPU engine does not run {0}; the burn path does")]
    Unsupported(String),
    /// The weights do not fit the configuration (a strict load).
    #[error(transparent)]
    Load(#[from] crate::weights::WeightsError),
    /// `VGG_ISA` names a kernel path this build or CPU does not have.
    #[error("VGG_ISA: {0}")]
    Isa(#[from] crate::kernels::isa::IsaError),
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
    /// The previous inference pass's two activation buffers, for the next pass.
    scratch: infer::Scratch,
    /// Which convolution algorithms may run.
    conv_algos: ConvAlgos,
    /// The processes the training steps span, if more than this one.
    parallel: Option<DataParallel>,
}

/// The kernel path this process runs on (chosen once: the CPU's best, or `VGG_ISA`); an error
/// when `VGG_ISA` names a path this build or CPU does not have.
pub fn kernel_path() -> Result<Isa, IsaError> {
    crate::kernels::isa::selected()
}

impl Engine {
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
    /// streams. The convolutions' transformed filters are cached in the same 16 bits (rounded once
    /// more after the transform), so that a pass reads half the filter bytes of an f32 one. For
    /// inference: training steps need [`Engine::store_f32`] first.
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

    /// Lets the convolutions take only `algos` from now on (all of them by default).
    pub fn set_conv_algos(&mut self, algos: ConvAlgos) {
        self.conv_algos = algos;
        self.drop_caches();
    }

    /// What the ops read besides their inputs.
    fn env(&self) -> OpEnv<'_> {
        OpEnv {
            params: &self.params,
            eps: self.eps,
            dropout: self.config.dropout,
            conv_algos: self.conv_algos,
            sync_bn: self.sync_bn_group(),
        }
    }

    /// The processes whose batches BatchNorm's training statistics span, if synchronised.
    fn sync_bn_group(&self) -> Option<&dyn crate::dist::Collective> {
        self.parallel.as_ref().filter(|p| p.sync_bn).map(|p| &*p.group)
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
}

fn nhwc([n, c, h, w]: [usize; 4]) -> [usize; 4] {
    [n, h, w, c]
}

fn to_nhwc(x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    to_nhwc_into(x, dims, Vec::new())
}

/// [`to_nhwc`] written into `buffer`'s allocation.
fn to_nhwc_into(x: &[f32], [n, c, h, w]: [usize; 4], buffer: Vec<f32>) -> Vec<f32> {
    assert_eq!(x.len(), n * c * h * w, "input of {n}x{c}x{h}x{w} expected");
    let mut out = ops::reuse(buffer, x.len());
    if c == 1 {
        out.copy_from_slice(x);
    } else {
        pool::nhwc_to_nchw(x, [n, h, w, c], &mut out, true);
    }
    out
}
