//! The deterministic weights of the reference fixtures (`../shared/fixtures/FORMULA.md`): every
//! tensor is a pure function of its torchvision key and element index, so torchvision and this
//! crate can build bit-identical models without shipping weights. `--weights formula` uses them to
//! check an installation against torchvision's recorded outputs.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{LayerKind, Plan};
use crate::weights::{Dtype, StateDict, TensorEntry};

fn fnv1a64(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9e3779b97f4a7c15);
    let z = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// `u(name, i)` for `i` in `0..n`: uniform in [0, 1).
pub fn u(name: &str, n: usize) -> Vec<f64> {
    let h = fnv1a64(name);
    (0..n as u64).map(|i| (splitmix64(h.wrapping_add(i)) >> 11) as f64 * (2f64).powi(-53)).collect()
}

/// `s(name, i) = 2 u(name, i) - 1`: uniform in [-1, 1).
pub fn s(name: &str, n: usize) -> Vec<f64> {
    u(name, n).into_iter().map(|v| 2.0 * v - 1.0).collect()
}

/// The value of the tensor `key` of `shape`; `is_bn` selects the BatchNorm rules.
pub fn tensor(key: &str, shape: &[usize], is_bn: bool) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let leaf = key.rsplit('.').next().unwrap_or(key);
    match (is_bn, leaf) {
        (_, "num_batches_tracked") => vec![0.0; n],
        (true, "weight") => s(key, n).into_iter().map(|v| 1.0 + 0.2 * v).collect(),
        (true, "bias") | (true, "running_mean") => s(key, n).into_iter().map(|v| 0.1 * v).collect(),
        (true, "running_var") => u(key, n).into_iter().map(|v| 1.0 + 0.5 * v).collect(),
        (true, _) => vec![0.0; n],
        (false, "bias") => s(key, n).into_iter().map(|v| 0.05 * v).collect(),
        (false, _) => {
            let fan_in: usize = shape[1..].iter().product();
            let k = (6.0 / fan_in as f64).sqrt();
            s(key, n).into_iter().map(|v| k * v).collect()
        }
    }
}

/// The formula state dict of a plan, under torchvision's keys, as f32.
pub fn state_dict(plan: &Plan) -> StateDict {
    let mut sd = StateDict::new();
    for l in &plan.layers {
        let (leaves, bn): (Vec<(&str, Vec<usize>)>, bool) = match l.kind {
            LayerKind::Conv { in_channels, out_channels, kernel } => {
                (vec![("weight", vec![out_channels, in_channels, kernel, kernel]), ("bias", vec![out_channels])], false)
            }
            LayerKind::Linear { in_features, out_features } => {
                (vec![("weight", vec![out_features, in_features]), ("bias", vec![out_features])], false)
            }
            LayerKind::BatchNorm { channels } => {
                (["weight", "bias", "running_mean", "running_var"].iter().map(|&k| (k, vec![channels])).collect(), true)
            }
            _ => continue,
        };
        for (leaf, shape) in leaves {
            let key = format!("{}.{leaf}", l.key);
            let v = tensor(&key, &shape, bn);
            sd.insert(key, TensorEntry::f32(shape, v.into_iter().map(|x| x as f32).collect()));
        }
        if bn {
            let key = format!("{}.num_batches_tracked", l.key);
            sd.insert(key, TensorEntry { shape: vec![], dtype: Dtype::I64, data: vec![0.0] });
        }
    }
    sd
}

/// The formula input `s("input:" + tag, i)` of shape `[N, C, H, W]`.
pub fn input(tag: &str, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    let v: Vec<f32> = s(&format!("input:{tag}"), n).into_iter().map(|x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}
