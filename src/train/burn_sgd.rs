//! burn's path: `torch.optim.SGD`, step for step, on a burn [`Vgg`] and its autodiff gradients,
//! with its momentum buffers keyed by torchvision `state_dict` keys so that a checkpoint can hold
//! them next to the weights. (The engine's optimizers are in [`super::engine_optim`].)

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::Gradients;
use burn::tensor::Tensor;

use super::config::SgdConfig;
use crate::model::{ParamSlot, Vgg};
use crate::weights::{StateDict, TensorEntry};

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

impl SgdState {
    /// One SGD step of `model` on every parameter that has a gradient in `grads` and is not in
    /// `frozen`.
    pub fn step(&mut self, model: &mut Vgg, grads: &Gradients, c: &SgdConfig, lr: f64, frozen: &dyn Fn(&str) -> bool) {
        for (key, slot) in model.param_slots() {
            if frozen(&key) {
                continue;
            }
            match slot {
                ParamSlot::P1(p) => update(p, &key, grads, self, c, lr),
                ParamSlot::P2(p) => update(p, &key, grads, self, c, lr),
                ParamSlot::P4(p) => update(p, &key, grads, self, c, lr),
            }
        }
    }
}
