//! Weights for other tools: safetensors with torchvision's or the paper's keys, recording the
//! architecture and preprocessing so that later commands need no `--arch`. ONNX graphs are
//! written (and read) by [`crate::onnx`].

use std::path::Path;

use crate::config::VggConfig;
use crate::image::Preprocess;
use crate::weights::safetensors::{self, Meta};
use crate::weights::{Dtype, KeyStyle, StateDict, WeightsError, is_optimizer_key};

/// Writes the model's tensors (optimizer state dropped) as safetensors with torchvision's keys or
/// the paper's (`conv1_1.weight`, `bn1_1.running_mean`, `fc6.weight`), floats stored as `dtype`
/// (f32, f16 or bf16), with the configuration and preprocessing in the metadata.
pub fn write_safetensors(
    path: &Path,
    config: &VggConfig,
    sd: &StateDict,
    preprocess: Option<&Preprocess>,
    keys: KeyStyle,
    dtype: Dtype,
) -> Result<usize, WeightsError> {
    let model: StateDict =
        sd.iter().filter(|(k, _)| !is_optimizer_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let plan = config.plan([224, 224]);
    let renamed = crate::weights::keys::rename(&model, &plan, keys);
    let meta = Meta { config: Some(config.clone()), preprocess: preprocess.cloned(), extra: vec![] };
    safetensors::write(path, &renamed, &meta, dtype)?;
    Ok(renamed.len())
}
