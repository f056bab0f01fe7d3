//! The seam between what a network is used for and what runs it.
//!
//! Two implementations run a VGG: the hand-written [`Engine`] (the fast CPU path) and burn's
//! [`Vgg`] (the reference path, and what runs the layers the engine has no kernel for). Callers —
//! classification, the paper's test protocols, evaluation, the server — hold a `dyn` [`Network`]
//! and never ask which one they have. The choice is made once, here, in [`build`] (from tensors)
//! and [`choose`] (from a model): the engine wherever it runs the model, burn otherwise, and then the network says
//! why ([`RunsOn::fallback`]), so that a slower path is never taken silently.
//!
//! Training composes a network with an optimizer on the same seam: see
//! [`crate::train::learner`].

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use crate::config::VggConfig;
use crate::engine::{Engine, EngineError, HalfKind, Isa};
use crate::explain::{ExplainError, Explanation, Method};
use crate::model::Vgg;
use crate::weights::{StateDict, Strict};

/// Why a network could not be built or cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The weights do not fit the configuration, or a layer cannot be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The weights do not fit burn's model of the configuration.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An explanation that cannot be made (no such layer or class).
    #[error(transparent)]
    Explain(#[from] ExplainError),
    /// Something only the engine does was asked of a model it does not run.
    #[error("{what} runs on the fast CPU engine, which does not run {arch}: {why}")]
    NeedsEngine {
        /// What was asked (`16-bit weight storage`, `dense evaluation`, ...).
        what: String,
        /// The architecture.
        arch: String,
        /// Why the engine does not run it.
        why: String,
    },
}

/// Which implementation runs a network, and why when it is not the fast one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsOn {
    /// The hand-written engine, on this kernel path.
    Engine(Isa),
    /// burn's model on the CPU.
    Burn {
        /// Why not the engine (`None` when burn was asked for).
        because: Option<String>,
    },
}

impl RunsOn {
    /// The reason a model runs on the slower path without having been asked to, to be shown to
    /// the user.
    pub fn fallback(&self) -> Option<&str> {
        match self {
            RunsOn::Burn { because: Some(why) } => Some(why),
            _ => None,
        }
    }
}

impl std::fmt::Display for RunsOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunsOn::Engine(isa) => write!(f, "the fast CPU engine ({})", isa.name()),
            RunsOn::Burn { because: None } => write!(f, "burn"),
            RunsOn::Burn { because: Some(why) } => write!(f, "burn ({why})"),
        }
    }
}

/// A network ready to run in evaluation mode, on NCHW `f32` batches.
pub trait Network {
    /// The configuration (classes, input channels, head).
    fn config(&self) -> &VggConfig;
    /// What runs it.
    fn runs_on(&self) -> RunsOn;
    /// Logits `[n, classes]` of the batch `x` of shape `dims` (`[n, c, h, w]`), row-major.
    fn logits(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32>;
    /// The paper's dense evaluation: the classifier applied convolutionally to the whole image,
    /// class scores averaged over positions (`[n, classes]`).
    fn dense_logits(&self, x: &[f32], dims: [usize; 4]) -> Result<Vec<f32>, NetError>;
    /// Why the network chose a class: Grad-CAM or saliency maps for each image of the batch
    /// (of `classes`, or of the top class), on the engine's input-gradient path.
    fn explain(
        &self,
        x: &[f32],
        dims: [usize; 4],
        method: &Method,
        classes: Option<&[usize]>,
    ) -> Result<Vec<Explanation>, NetError>;
    /// Parameters and BatchNorm buffers as a torchvision `state_dict`.
    fn state_dict(&self) -> StateDict;
}

impl Network for Engine {
    fn config(&self) -> &VggConfig {
        Engine::config(self)
    }
    fn runs_on(&self) -> RunsOn {
        // An engine exists only once the kernel path was chosen, so this cannot fail here.
        RunsOn::Engine(crate::engine::kernel_path().unwrap_or(Isa::Generic))
    }
    fn logits(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        self.forward(x, dims)
    }
    fn dense_logits(&self, x: &[f32], dims: [usize; 4]) -> Result<Vec<f32>, NetError> {
        Ok(self.dense_forward(x, dims))
    }
    fn explain(
        &self,
        x: &[f32],
        dims: [usize; 4],
        method: &Method,
        classes: Option<&[usize]>,
    ) -> Result<Vec<Explanation>, NetError> {
        Ok(crate::explain::explain(self, x, dims, method, classes)?)
    }
    fn state_dict(&self) -> StateDict {
        Engine::state_dict(self)
    }
}

/// burn's model in evaluation mode, with the reason it runs instead of the engine.
#[derive(Debug, Clone)]
pub struct BurnNet {
    model: Vgg,
    because: Option<String>,
}

impl BurnNet {
    /// `model` in evaluation mode; `because` says why the engine does not run it (`None`: burn
    /// was asked for).
    pub fn new(model: &Vgg, because: Option<String>) -> Self {
        BurnNet { model: model.valid(), because }
    }

    /// The model.
    pub fn model(&self) -> &Vgg {
        &self.model
    }
}

impl Network for BurnNet {
    fn config(&self) -> &VggConfig {
        self.model.config()
    }
    fn runs_on(&self) -> RunsOn {
        RunsOn::Burn { because: self.because.clone() }
    }
    fn logits(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        let x = Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &self.model.devices());
        crate::model::to_f32(self.model.forward(x).into_data())
    }
    fn dense_logits(&self, _: &[f32], _: [usize; 4]) -> Result<Vec<f32>, NetError> {
        Err(needs_engine("dense evaluation", self.config(), self.because.as_deref()))
    }
    fn explain(&self, _: &[f32], _: [usize; 4], _: &Method, _: Option<&[usize]>) -> Result<Vec<Explanation>, NetError> {
        Err(needs_engine("explanations", self.config(), self.because.as_deref()))
    }
    fn state_dict(&self) -> StateDict {
        self.model.state_dict()
    }
}

fn needs_engine(what: &str, config: &VggConfig, because: Option<&str>) -> NetError {
    let why = match because {
        Some(why) => why.to_string(),
        None => Engine::supports(config).err().map_or_else(|| "burn was asked for".into(), |e| e.to_string()),
    };
    NetError::NeedsEngine { what: what.into(), arch: config.arch_name(), why }
}

/// How [`build`] makes a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Strict: every tensor present and no other; non-strict: missing tensors stay as
    /// torchvision initialises them (trunk-only weights under a new head) and extra ones are
    /// ignored.
    pub strict: Strict,
    /// Keep the conv and fully connected weights in 16 bits (the engine only).
    pub half: Option<HalfKind>,
    /// Run on burn even where the engine could (the reference path).
    pub burn: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { strict: Strict::Yes, half: None, burn: false }
    }
}

/// The network of `config` with the weights `sd` (torchvision keys, or any naming
/// [`Vgg::load_state_dict`] accepts), taking them over: on the engine wherever it runs the
/// configuration, holding one copy of the weights; on burn otherwise, saying why.
pub fn build(config: &VggConfig, sd: StateDict, opts: BuildOptions) -> Result<Box<dyn Network + Send>, NetError> {
    let unsupported = match (opts.burn, Engine::supports(config)) {
        (true, _) => None,
        (false, Ok(())) if opts.strict == Strict::Yes => {
            return Ok(Box::new(Engine::load(config, sd, Strict::Yes, opts.half)?));
        }
        (false, Ok(())) => {
            // The engine needs every tensor: burn fills in the missing ones as it initialises them.
            let mut model = Vgg::new(config, &Default::default())?;
            model.load_state_dict(&sd, Strict::No)?;
            drop(sd);
            let mut engine = Engine::new(&model)?;
            if let Some(kind) = opts.half {
                engine.store_half(kind);
            }
            return Ok(Box::new(engine));
        }
        (false, Err(why)) => Some(why.to_string()),
    };
    if opts.half.is_some() {
        return Err(needs_engine("16-bit weight storage", config, unsupported.as_deref()));
    }
    let mut model = Vgg::new(config, &Default::default())?;
    model.load_state_dict(&sd, opts.strict)?;
    Ok(Box::new(BurnNet { model, because: unsupported }))
}

/// What runs a model: the engine (with a copy of its weights), or burn and why.
pub enum Choice {
    /// The engine runs it.
    Engine(Box<Engine>),
    /// burn runs it.
    Burn {
        /// Why not the engine (`None`: burn was asked for).
        because: Option<String>,
    },
}

/// The one place that decides what runs `model`: the engine wherever it runs it, unless `burn`
/// asks for the reference path.
pub fn choose(model: &Vgg, burn: bool) -> Choice {
    // Asked for burn: no engine (a copy of every weight) is built only to be dropped.
    if burn {
        return Choice::Burn { because: None };
    }
    match Engine::new(model) {
        Ok(engine) => Choice::Engine(Box::new(engine)),
        Err(why) => Choice::Burn { because: Some(why.to_string()) },
    }
}

/// The network that runs `model` in evaluation mode: an engine with a copy of its weights where
/// the engine runs it, the model itself otherwise (saying why).
pub fn for_model(model: &Vgg) -> Box<dyn Network + Send> {
    match choose(model, false) {
        Choice::Engine(engine) => engine,
        Choice::Burn { because } => Box::new(BurnNet::new(model, because)),
    }
}
