//! `torch.optim.SGD`, step for step, with its momentum buffers keyed by torchvision `state_dict`
//! keys so that a checkpoint can hold them next to the weights.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::Gradients;
use burn::tensor::Tensor;

use crate::model::Vgg;
use crate::weights::{StateDict, TensorEntry};

/// Hyper-parameters, as PyTorch names them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Momentum factor (0 disables the buffers).
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// The momentum buffers, flattened, by parameter key.
#[derive(Debug, Default, Clone)]
pub struct SgdState {
    buffers: BTreeMap<String, Tensor<1>>,
}

impl SgdState {
    /// The buffers as a state dict (`momentum_buffer.<key>`), for checkpoints.
    pub fn to_state_dict(&self) -> StateDict {
        self.buffers
            .iter()
            .map(|(k, t)| {
                (format!("momentum_buffer.{k}"), TensorEntry::f32(t.dims().to_vec(), crate::model::to_f32(t.to_data())))
            })
            .collect()
    }

    /// Restores buffers written by [`SgdState::to_state_dict`] onto `device`.
    pub fn from_state_dict(sd: &StateDict, device: &burn::tensor::Device) -> Self {
        let buffers = sd
            .iter()
            .filter_map(|(k, t)| {
                let key = k.strip_prefix("momentum_buffer.")?;
                let data = burn::tensor::TensorData::new(t.data.clone(), [t.data.len()]);
                Some((key.to_string(), Tensor::from_data(data, device)))
            })
            .collect();
        Self { buffers }
    }
}

fn update<const D: usize>(
    p: &mut Param<Tensor<D>>,
    key: &str,
    grads: &Gradients,
    state: &mut SgdState,
    c: &SgdConfig,
    lr: f64,
) {
    let t = p.val();
    let Some(g) = t.grad(grads) else { return };
    let dims = g.dims();
    let n: usize = dims.iter().product();
    let w = t.inner();
    let mut g = g.reshape([n]);
    let wf = w.clone().reshape([n]);
    if c.weight_decay != 0.0 {
        g = g.add(wf.clone().mul_scalar(c.weight_decay));
    }
    if c.momentum != 0.0 {
        // PyTorch: the buffer starts as the first gradient, then buf = m·buf + g (no dampening).
        let buf = match state.buffers.remove(key) {
            Some(b) => b.mul_scalar(c.momentum).add(g.clone()),
            None => g.clone(),
        };
        g = if c.nesterov { g.add(buf.clone().mul_scalar(c.momentum)) } else { buf.clone() };
        state.buffers.insert(key.to_string(), buf);
    }
    let new = wf.sub(g.mul_scalar(lr)).reshape(dims);
    *p = Param::initialized(p.id, Tensor::from_inner(new).require_grad());
}

impl Vgg {
    /// One SGD step on every parameter that has a gradient in `grads` and is not in `frozen`.
    pub fn sgd_step(
        &mut self,
        grads: &Gradients,
        state: &mut SgdState,
        c: &SgdConfig,
        lr: f64,
        frozen: &dyn Fn(&str) -> bool,
    ) {
        for (key, slot) in self.param_slots() {
            if frozen(&key) {
                continue;
            }
            match slot {
                crate::weights::keys::ParamSlot::P1(p) => update(p, &key, grads, state, c, lr),
                crate::weights::keys::ParamSlot::P2(p) => update(p, &key, grads, state, c, lr),
                crate::weights::keys::ParamSlot::P4(p) => update(p, &key, grads, state, c, lr),
            }
        }
    }
}
