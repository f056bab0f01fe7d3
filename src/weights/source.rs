//! Where a network's tensors come from when it is built: one at a time, taken over rather than
//! copied, and on request in pieces, so that a network that stores its weights in 16 bits need
//! never hold a whole layer in f32 (`vgg bench --half`: fc6 alone is 411 MB in f32).

use super::{StateDict, WeightsError};

/// A supplier of tensors under torchvision's keys, in PyTorch's layout.
pub trait TensorSource {
    /// The tensor `key`, which must be of `shape`, taken over.
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError>;

    /// The values of [`TensorSource::take`] handed to `sink` in consecutive pieces, for a caller
    /// that converts them as they come. By default in one piece.
    fn take_pieces(&mut self, key: &str, shape: &[usize], sink: &mut dyn FnMut(&[f32])) -> Result<(), WeightsError> {
        sink(&self.take(key, shape)?);
        Ok(())
    }

    /// BatchNorm's `num_batches_tracked` (0 when absent).
    fn count(&mut self, key: &str) -> f32;
}

impl TensorSource for StateDict {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let Some(e) = self.remove(key) else {
            return Err(WeightsError::MissingKey {
                key: key.into(),
                expected: shape.to_vec(),
                arch: "this network".into(),
                hint: super::keys::describe(self),
            });
        };
        if e.shape != shape {
            return Err(WeightsError::ShapeMismatch { key: key.into(), expected: shape.to_vec(), found: e.shape });
        }
        Ok(e.data)
    }

    fn count(&mut self, key: &str) -> f32 {
        self.get(key).map_or(0.0, |e| e.data[0])
    }
}
