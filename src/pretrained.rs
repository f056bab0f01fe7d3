//! From a weights spec (`torchvision:vgg16`, a file, or `random`) to a ready model with the
//! preprocessing its weights expect.

use std::path::PathBuf;

use burn::tensor::Device;

use crate::config::{ConfigError, VggConfig};
use crate::image::{Normalize, Preprocess};
use crate::model::Vgg;
use crate::weights::registry::{self, Fetcher};
use crate::weights::{self, LoadReport, Strict, WeightsError};

/// Where weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSpec {
    /// A torchvision registry name, `torchvision:vgg16`.
    Named(String),
    /// A `.pth`, `.safetensors`, `.onnx` or Keras `.h5` file.
    File(PathBuf),
    /// torchvision's random initialisation (for summaries and benchmarks).
    Random,
    /// The fixtures' deterministic weights ([`crate::formula`]), to check against torchvision.
    Formula,
    /// The Fashion-MNIST model built into the binary ([`FASHION_MNIST`]): `fashion-mnist`.
    FashionMnist,
}

/// VGG-13-BN at 0.375 width (CIFAR-style head, one input channel) trained from scratch on
/// Fashion-MNIST by `vgg train` (command, curves and accuracy in BENCHMARKS.md), with its
/// preprocessing recorded: the default weights of `vgg classify`, so that it works offline.
pub const FASHION_MNIST: &[u8] = include_bytes!("../assets/fashion-mnist/vgg13_bn-x0.375-fashion-mnist.safetensors");

impl WeightsSpec {
    /// `torchvision:NAME`, `random`, `formula`, `fashion-mnist`, or a path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("torchvision:") {
            WeightsSpec::Named(s.to_string())
        } else if s == "random" || s == "none" {
            WeightsSpec::Random
        } else if s == "formula" {
            WeightsSpec::Formula
        } else if s == "fashion-mnist" {
            WeightsSpec::FashionMnist
        } else {
            WeightsSpec::File(PathBuf::from(s))
        }
    }
}

/// Why a model could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Weights could not be read or matched.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Nothing says which architecture the weights are for.
    #[error(
        "{0}: the file does not record its architecture and its keys match no VGG configuration; name the architecture"
    )]
    UnknownArch(String),
    /// `--arch` contradicts the named weights.
    #[error("{name} are weights for {fits}, not {asked}")]
    WrongArch {
        /// The weights.
        name: String,
        /// What they fit.
        fits: String,
        /// What was asked.
        asked: String,
    },
}

/// A model ready to run.
#[derive(Debug)]
pub struct Loaded {
    /// The network.
    pub model: Vgg,
    /// The preprocessing the weights expect.
    pub preprocess: Preprocess,
    /// What was loaded (for messages).
    pub source: String,
    /// What matched (complete unless loading was non-strict).
    pub report: LoadReport,
}

/// The preprocessing for a configuration when the weights do not say: torchvision's ImageNet
/// pipeline, or for one input channel the gray equivalent with mean 0.5 and std 0.5.
pub fn default_preprocess(config: &VggConfig) -> Preprocess {
    let mut p = Preprocess::imagenet();
    if config.in_channels == 1 {
        p.normalize = Normalize::Gray { mean: 0.5, std: 0.5 };
    }
    p
}

/// Weights read for a configuration, not yet in a model: what the engine takes over directly, so
/// that inference holds one copy of them (`vgg classify`, `vgg bench`).
#[derive(Debug)]
pub struct Weights {
    /// The architecture they are for.
    pub config: VggConfig,
    /// The tensors, under torchvision's keys.
    pub state_dict: weights::StateDict,
    /// The preprocessing they expect.
    pub preprocess: Preprocess,
    /// What was loaded (for messages).
    pub source: String,
    /// Trunk-only weights for a configuration with a head: the head stays as initialised.
    pub partial: bool,
    /// What was adapted on reading (an ONNX graph's layout, a dropped Softmax, ...).
    pub notes: Vec<String>,
}

/// Reads the weights of `spec` (random ones are drawn as torchvision initialises them, seed 0).
/// `config` (from `--arch` and friends) is required for random weights and for files that neither
/// record nor reveal their architecture.
pub fn weights(
    spec: &WeightsSpec,
    config: Option<VggConfig>,
    fetcher: &Fetcher,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Weights, LoadError> {
    let w = |config: VggConfig, state_dict, preprocess, source: String| Weights {
        config,
        state_dict,
        preprocess,
        source,
        partial: false,
        notes: vec![],
    };
    match spec {
        WeightsSpec::Random => {
            let config = config.ok_or_else(|| LoadError::UnknownArch("random weights".into()))?;
            config.validate()?;
            let sd = weights::init::torchvision(&config, 0);
            Ok(w(config.clone(), sd, default_preprocess(&config), "random initialisation".into()))
        }
        WeightsSpec::Formula => {
            let config = config.ok_or_else(|| LoadError::UnknownArch("formula weights".into()))?;
            config.validate()?;
            let sd = crate::formula::state_dict(&config.plan([224, 224]));
            Ok(w(config.clone(), sd, default_preprocess(&config), "FORMULA.md weights".into()))
        }
        WeightsSpec::Named(name) => {
            let entry = registry::lookup(name)?;
            let fits = entry.config();
            let config = match config {
                Some(c) if c.arch_name() != fits.arch_name() => {
                    return Err(LoadError::WrongArch {
                        name: name.clone(),
                        fits: fits.arch_name(),
                        asked: c.arch_name(),
                    });
                }
                // The trunk-only weights go with any head the user asks for (loaded non-strictly).
                Some(c) => c,
                None => fits,
            };
            let path = fetcher.get(name, progress)?;
            let sd = weights::load_file(&path)?;
            let mut preprocess = Preprocess::imagenet();
            preprocess.normalize = entry.normalize();
            let partial = entry.features_only && !matches!(config.head, crate::config::Head::None);
            Ok(Weights { partial, ..w(config, sd, preprocess, format!("{name} ({})", path.display())) })
        }
        WeightsSpec::File(path) => {
            let p = path.display().to_string();
            let bytes = crate::file::read(path).map_err(WeightsError::from)?;
            from_bytes(&bytes, p, config)
        }
        WeightsSpec::FashionMnist => from_bytes(FASHION_MNIST, "the built-in Fashion-MNIST model".into(), config),
    }
}

/// Builds the model for `spec`. `config` (from `--arch` and friends) is required for random
/// weights and for files that neither record nor reveal their architecture.
pub fn load(
    spec: &WeightsSpec,
    config: Option<VggConfig>,
    strict: Strict,
    fetcher: &Fetcher,
    device: &Device,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Loaded, LoadError> {
    if let WeightsSpec::Random = spec {
        // burn's own initialisation: no second copy to load.
        let config = config.ok_or_else(|| LoadError::UnknownArch("random weights".into()))?;
        let model = Vgg::new(&config, device)?;
        return Ok(Loaded {
            preprocess: default_preprocess(&config),
            model,
            source: "random initialisation".into(),
            report: LoadReport::default(),
        });
    }
    let w = weights(spec, config, fetcher, progress)?;
    let strict = if w.partial { Strict::No } else { strict };
    let mut model = Vgg::new(&w.config, device)?;
    let report = model.load_state_dict(&w.state_dict, strict)?;
    Ok(Loaded { model, preprocess: w.preprocess, source: w.source, report })
}

/// The weights in the bytes of a `.pth`, `.safetensors`, `.onnx`, Keras `.h5`/`.keras` or Caffe
/// `.caffemodel` file.
fn from_bytes(bytes: &[u8], p: String, config: Option<VggConfig>) -> Result<Weights, LoadError> {
    let mut notes = vec![];
    let (mut sd, recorded, recorded_pre) = if weights::safetensors::looks_like(bytes) {
        let (sd, meta) = weights::safetensors::read(bytes, &p)?;
        (sd, meta.config, meta.preprocess)
    } else if weights::keras::looks_like(bytes) {
        // Keras' HDF5 layout: the architecture is recognised from the shapes unless recorded.
        let k = weights::keras::read(bytes, &p)?;
        notes = k.imported.notes;
        (k.imported.state_dict, k.config, k.imported.preprocess)
    } else if p.to_lowercase().ends_with(".caffemodel") || weights::caffe::looks_like(bytes) {
        let imported = weights::caffe::read(bytes, &p)?;
        notes = imported.notes;
        (imported.state_dict, None, imported.preprocess)
    } else if p.to_lowercase().ends_with(".onnx") || crate::onnx::looks_like(bytes) {
        // The architecture is recognised from the graph's tensors, as for a .pth file.
        let imported = crate::onnx::read(bytes, &p)?;
        notes = imported.notes;
        (imported.state_dict, None, imported.preprocess)
    } else {
        let (sd, pth_notes) = weights::pth::read_noting(bytes, &p)?;
        notes = pth_notes;
        (sd, None, None)
    };
    // A training checkpoint also holds the optimiser's state; it is not model weights.
    sd.retain(|k, _| !weights::is_optimizer_key(k));
    if let Some(torchvision) = weights::keys::from_timm(&sd) {
        sd = torchvision;
        notes.push(format!(
            "{p} has timm's VGG keys: pre_logits.fc1/fc2 (convolutions) and head.fc read as torchvision's \
             classifier.0/3/6; timm's outputs are the same up to 224x224 inputs (larger ones: timm slides the \
             head over the map, as the paper's dense evaluation)"
        ));
    }
    let config = match config.or(recorded) {
        Some(c) => c,
        None => weights::infer::infer_config(&sd).ok_or_else(|| LoadError::UnknownArch(p.clone()))?,
    };
    config.validate()?;
    Ok(Weights {
        preprocess: recorded_pre.unwrap_or_else(|| default_preprocess(&config)),
        config,
        state_dict: sd,
        source: p,
        partial: false,
        notes,
    })
}
