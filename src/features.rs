//! Named activations (`conv1_1`, `relu4_2`, `pool5`, `fc7`) as a state dict, for style transfer,
//! perceptual losses and inspection.

use burn::tensor::Tensor;

use crate::config::ConfigError;
use crate::model::Vgg;
use crate::weights::{StateDict, TensorEntry};

/// Evaluation-mode activations of `names` for the batch `x`, keyed by the names as given, each with
/// its batch dimension.
pub fn extract(model: &Vgg, x: Tensor<4>, names: &[&str]) -> Result<StateDict, ConfigError> {
    let taps = model.taps(x, names)?;
    Ok(taps
        .into_iter()
        .map(|(name, act)| {
            let shape = act.dims();
            let data = match act {
                crate::model::Activation::Map(t) => t.into_data(),
                crate::model::Activation::Flat(t) => t.into_data(),
            };
            (name, TensorEntry::f32(shape, crate::model::to_f32(data)))
        })
        .collect())
}
