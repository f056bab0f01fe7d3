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

/// Why activations of several images cannot be stacked.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// An image's activation differs in shape from the first image's.
    #[error(
        "'{key}' of image {index} has shape {got:?}, that of the first image {want:?}: stacking needs images of one size (preprocess them to one, e.g. with a center crop)"
    )]
    Shape {
        /// The activation.
        key: String,
        /// The image's position (0-based).
        index: usize,
        /// Its shape.
        got: Vec<usize>,
        /// The first image's.
        want: Vec<usize>,
    },
}

/// The activations of several images (one state dict each, batch dimension 1, as [`extract`] gives
/// them) stacked along the batch dimension in their order.
pub fn stack(rows: &[StateDict]) -> Result<StateDict, StackError> {
    let Some(first) = rows.first() else { return Ok(StateDict::new()) };
    let mut out = StateDict::new();
    for (key, head) in first {
        let mut data = Vec::with_capacity(head.data.len() * rows.len());
        for (index, row) in rows.iter().enumerate() {
            let got = row.get(key).map(|e| e.shape.clone()).unwrap_or_default();
            if got != head.shape {
                return Err(StackError::Shape { key: key.clone(), index, got, want: head.shape.clone() });
            }
            data.extend_from_slice(&row[key].data);
        }
        let mut shape = head.shape.clone();
        shape[0] *= rows.len();
        out.insert(key.clone(), TensorEntry::f32(shape, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[f32], shape: Vec<usize>) -> StateDict {
        StateDict::from([("fc7".to_string(), TensorEntry::f32(shape, values.to_vec()))])
    }

    /// Rows in order along the first dimension; a row of another shape is refused, named.
    #[test]
    fn stacks_rows_in_order_and_refuses_other_shapes() {
        let s = stack(&[row(&[1.0, 2.0], vec![1, 2]), row(&[3.0, 4.0], vec![1, 2])]).unwrap();
        assert_eq!(s["fc7"].shape, vec![2, 2]);
        assert_eq!(s["fc7"].data, vec![1.0, 2.0, 3.0, 4.0]);
        let err = stack(&[row(&[1.0, 2.0], vec![1, 2]), row(&[3.0], vec![1, 1])]).unwrap_err();
        assert!(err.to_string().contains("'fc7' of image 1 has shape [1, 1]"), "{err}");
    }
}
