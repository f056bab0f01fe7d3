//! The model's tensors in and out under torchvision's `state_dict` keys (or the paper's, on
//! loading), with `load_state_dict`'s strict and non-strict semantics.

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};

use super::Vgg;
use crate::config::LayerKind;
use crate::weights::keys::{KeyStyle, LoadReport, Strict, describe, key_pairs, rename};
use crate::weights::{Dtype, StateDict, TensorEntry, WeightsError};

/// A mutable slot of the model: a parameter or a running statistic of rank 1, 2 or 4.
enum Slot<'a> {
    P1(&'a mut Param<Tensor<1>>),
    P2(&'a mut Param<Tensor<2>>),
    P4(&'a mut Param<Tensor<4>>),
    R1(&'a mut RunningState<Tensor<1>>),
    /// `num_batches_tracked`: an int64 scalar in PyTorch, a one-element float here.
    Count(&'a mut RunningState<Tensor<1>>),
}

impl Slot<'_> {
    fn shape(&self) -> Vec<usize> {
        match self {
            Slot::P1(p) => p.shape().dims::<1>().to_vec(),
            Slot::P2(p) => p.shape().dims::<2>().to_vec(),
            Slot::P4(p) => p.shape().dims::<4>().to_vec(),
            Slot::R1(r) => r.value_sync().dims().to_vec(),
            Slot::Count(_) => vec![],
        }
    }

    fn get(&self) -> TensorEntry {
        let (shape, data) = match self {
            Slot::P1(p) => (self.shape(), p.val().into_data()),
            Slot::P2(p) => (self.shape(), p.val().into_data()),
            Slot::P4(p) => (self.shape(), p.val().into_data()),
            Slot::R1(r) => (self.shape(), r.value_sync().into_data()),
            Slot::Count(r) => {
                let v = super::to_f32(r.value_sync().into_data());
                return TensorEntry { shape: vec![], dtype: Dtype::I64, data: v };
            }
        };
        TensorEntry::f32(shape, super::to_f32(data))
    }

    fn set(&mut self, t: &TensorEntry, device: &Device) {
        let data = |shape: Vec<usize>| TensorData::new(t.data.clone(), shape);
        match self {
            Slot::P1(p) => **p = Param::from_data(data(t.shape.clone()), device),
            Slot::P2(p) => **p = Param::from_data(data(t.shape.clone()), device),
            Slot::P4(p) => **p = Param::from_data(data(t.shape.clone()), device),
            Slot::R1(r) => **r = RunningState::new(Tensor::from_data(data(t.shape.clone()), device)),
            Slot::Count(r) => **r = RunningState::new(Tensor::from_data(data(vec![1]), device)),
        }
    }
}

/// A trainable parameter of the model, by rank.
pub enum ParamSlot<'a> {
    /// Biases, BatchNorm γ and β.
    P1(&'a mut Param<Tensor<1>>),
    /// Linear weights `[out, in]`.
    P2(&'a mut Param<Tensor<2>>),
    /// Conv weights `[out, in, k, k]`.
    P4(&'a mut Param<Tensor<4>>),
}

impl Vgg {
    /// The trainable parameters with their torchvision keys (running statistics excluded).
    pub fn param_slots(&mut self) -> Vec<(String, ParamSlot<'_>)> {
        self.slots()
            .into_iter()
            .filter_map(|(k, s)| match s {
                Slot::P1(p) => Some((k, ParamSlot::P1(p))),
                Slot::P2(p) => Some((k, ParamSlot::P2(p))),
                Slot::P4(p) => Some((k, ParamSlot::P4(p))),
                Slot::R1(_) | Slot::Count(_) => None,
            })
            .collect()
    }

    /// Every tensor of the model with its torchvision key, in the order torchvision lists them.
    fn slots(&mut self) -> Vec<(String, Slot<'_>)> {
        let plan = self.plan().clone();
        let mut out = Vec::new();
        let mut convs = self.convs.iter_mut();
        let mut fcs = self.fcs.iter_mut();
        let mut pending_bn = None;
        for layer in &plan.layers {
            match layer.kind {
                LayerKind::Conv { .. } => {
                    let u = convs.next().expect("plan and modules agree");
                    out.push((format!("{}.weight", layer.key), Slot::P4(&mut u.conv.weight)));
                    out.push((format!("{}.bias", layer.key), Slot::P1(&mut u.conv.bias)));
                    pending_bn = u.bn.as_mut();
                }
                LayerKind::BatchNorm { .. } => {
                    let bn = pending_bn.take().expect("plan and modules agree on BatchNorm");
                    let k = &layer.key;
                    out.push((format!("{k}.weight"), Slot::P1(&mut bn.weight)));
                    out.push((format!("{k}.bias"), Slot::P1(&mut bn.bias)));
                    out.push((format!("{k}.running_mean"), Slot::R1(&mut bn.running_mean)));
                    out.push((format!("{k}.running_var"), Slot::R1(&mut bn.running_var)));
                    out.push((format!("{k}.num_batches_tracked"), Slot::Count(&mut bn.num_batches_tracked)));
                }
                LayerKind::Linear { .. } => {
                    let f = fcs.next().expect("plan and modules agree");
                    out.push((format!("{}.weight", layer.key), Slot::P2(&mut f.weight)));
                    out.push((format!("{}.bias", layer.key), Slot::P1(&mut f.bias)));
                }
                _ => {}
            }
        }
        out
    }

    /// The model's tensors under torchvision's keys (BatchNorm buffers included).
    pub fn state_dict(&self) -> StateDict {
        // `slots` needs `&mut` to hand out setters; reading through a clone keeps this `&self`.
        let mut copy = self.clone();
        copy.slots().into_iter().map(|(k, s)| (k, s.get())).collect()
    }

    /// Loads weights named with torchvision's keys or the paper's (`conv1_1.weight`).
    ///
    /// Strict loading fails on the first missing key, unexpected key or shape mismatch, leaving the
    /// model untouched; non-strict loading takes what matches and reports the rest.
    pub fn load_state_dict(&mut self, sd: &StateDict, strict: Strict) -> Result<LoadReport, WeightsError> {
        // Renaming copies every tensor, so only files written with paper names pay for it.
        let renamed;
        let paper: std::collections::BTreeSet<String> = key_pairs(self.plan()).into_iter().map(|(_, p)| p).collect();
        let sd = if sd.keys().any(|k| paper.contains(k)) {
            renamed = rename(sd, self.plan(), KeyStyle::Torchvision);
            &renamed
        } else {
            sd
        };
        let arch = self.config().arch_name();
        let device = self.devices();
        let mut report = LoadReport::default();
        let mut known = std::collections::BTreeSet::new();
        // Check everything first so that a strict failure changes nothing.
        {
            let slots = self.slots();
            for (key, slot) in &slots {
                known.insert(key.clone());
                let expected = slot.shape();
                match sd.get(key) {
                    None => {
                        if strict == Strict::Yes {
                            return Err(WeightsError::MissingKey {
                                key: key.clone(),
                                expected,
                                arch,
                                hint: describe(sd),
                            });
                        }
                        report.missing.push(key.clone());
                    }
                    Some(t) => {
                        let found_numel: usize = t.shape.iter().product();
                        let same = t.shape == expected
                            // PyTorch stores num_batches_tracked as a 0-d tensor; accept [1] too.
                            || (matches!(slot, Slot::Count(_)) && found_numel == 1);
                        if !same {
                            if strict == Strict::Yes {
                                return Err(WeightsError::ShapeMismatch {
                                    key: key.clone(),
                                    expected,
                                    found: t.shape.clone(),
                                });
                            }
                            report.mismatched.push((key.clone(), expected, t.shape.clone()));
                        }
                    }
                }
            }
        }
        report.unexpected = sd.keys().filter(|k| !known.contains(*k)).cloned().collect();
        if strict == Strict::Yes && !report.unexpected.is_empty() {
            return Err(WeightsError::UnexpectedKeys { arch, keys: report.unexpected.join(", ") });
        }
        let skip: std::collections::BTreeSet<String> =
            report.missing.iter().chain(report.mismatched.iter().map(|m| &m.0)).cloned().collect();
        for (key, mut slot) in self.slots() {
            if skip.contains(&key) {
                continue;
            }
            slot.set(&sd[&key], &device);
            report.loaded.push(key);
        }
        Ok(report)
    }
}
