//! Shared helpers for the fixture tests: where `../shared/fixtures` is, the counter-based weight
//! formula of its FORMULA.md, and error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use vgg::config::{LayerKind, Plan};
use vgg::weights::{Dtype, StateDict, TensorEntry};

/// `../shared/fixtures` next to the checkout (or `$VGG_FIXTURES`); panics with a clear message if absent.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("VGG_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(
        dir.join("FORMULA.md").exists(),
        "reference fixtures not found at {}: they live in ../shared/fixtures next to the checkout (or set VGG_FIXTURES)",
        dir.display()
    );
    dir
}

pub fn npy(rel: &str) -> vgg::npy::Array {
    vgg::npy::read(&fixtures().join(rel)).unwrap_or_else(|e| panic!("{e}"))
}

pub fn manifest() -> serde_json::Value {
    let s = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&s).expect("manifest is JSON")
}

// ---- FORMULA.md ----

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

/// `u(name, i)` in [0, 1).
pub fn u(name: &str, n: usize) -> Vec<f64> {
    let h = fnv1a64(name);
    (0..n as u64).map(|i| (splitmix64(h.wrapping_add(i)) >> 11) as f64 * (2f64).powi(-53)).collect()
}

/// `s(name, i)` in [-1, 1).
pub fn s(name: &str, n: usize) -> Vec<f64> {
    u(name, n).into_iter().map(|v| 2.0 * v - 1.0).collect()
}

/// The formula value of a parameter or buffer named `key` of the given shape.
pub fn formula(key: &str, shape: &[usize], is_bn: bool) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let leaf = key.rsplit('.').next().unwrap();
    match (is_bn, leaf) {
        (_, "num_batches_tracked") => vec![0.0; n],
        (true, "weight") => s(key, n).into_iter().map(|v| 1.0 + 0.2 * v).collect(),
        (true, "bias") => s(key, n).into_iter().map(|v| 0.1 * v).collect(),
        (true, "running_mean") => s(key, n).into_iter().map(|v| 0.1 * v).collect(),
        (true, "running_var") => u(key, n).into_iter().map(|v| 1.0 + 0.5 * v).collect(),
        (false, "weight") => {
            let fan_in: usize = shape[1..].iter().product();
            let k = (6.0 / fan_in as f64).sqrt();
            s(key, n).into_iter().map(|v| k * v).collect()
        }
        (false, "bias") => s(key, n).into_iter().map(|v| 0.05 * v).collect(),
        _ => panic!("no formula for {key}"),
    }
}

/// The formula state dict of a plan, in torchvision's keys.
pub fn formula_state_dict(plan: &Plan) -> StateDict {
    let mut sd = StateDict::new();
    for l in &plan.layers {
        let (leaves, bn): (Vec<(&str, Vec<usize>)>, bool) = match l.kind {
            LayerKind::Conv { in_channels, out_channels, kernel } => {
                (vec![("weight", vec![out_channels, in_channels, kernel, kernel]), ("bias", vec![out_channels])], false)
            }
            LayerKind::Linear { in_features, out_features } => {
                (vec![("weight", vec![out_features, in_features]), ("bias", vec![out_features])], false)
            }
            LayerKind::BatchNorm { channels } => (
                vec![
                    ("weight", vec![channels]),
                    ("bias", vec![channels]),
                    ("running_mean", vec![channels]),
                    ("running_var", vec![channels]),
                ],
                true,
            ),
            _ => continue,
        };
        for (leaf, shape) in leaves {
            let key = format!("{}.{leaf}", l.key);
            let v = formula(&key, &shape, bn);
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
pub fn formula_input(tag: &str, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    let v: Vec<f32> = s(&format!("input:{tag}"), n).into_iter().map(|x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `‖out − ref‖ / ‖ref‖`.
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "lengths differ");
    let num: f64 = out.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    vgg::model::to_f32(t.into_data())
}

pub fn argsort_desc(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx
}
