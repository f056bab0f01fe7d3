//! A parameter of the engine: its torchvision key and shape, its values in the engine's layout
//! (f32, or 16 bits for inference) and its gradient after a training step.

use std::borrow::Cow;

use crate::kernels::conv;
use crate::kernels::half::HalfBuf;

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
    pub(super) fn new(key: String, shape: Vec<usize>, value: Vec<f32>, conv: Option<(usize, usize, usize)>) -> Self {
        Self { key, shape, value, grad: vec![], half: None, conv }
    }

    /// The values in the engine's layout: borrowed, or widened from half-precision storage.
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.half {
            Some(h) => Cow::Owned(h.decode()),
            None => Cow::Borrowed(&self.value),
        }
    }

    /// The values as a convolution reads them: f32, or the 16-bit storage itself.
    pub fn filter(&self) -> conv::Filter<'_> {
        match &self.half {
            Some(h) => conv::Filter::Half(h),
            None => conv::Filter::F32(&self.value),
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
