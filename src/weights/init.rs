//! torchvision's VGG initialisation as a state dict, without building a burn model: the engine
//! takes the tensors over directly, so a randomly initialised network costs one copy of its
//! weights in memory instead of two (`vgg bench`'s peak RSS).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Dtype, StateDict, TensorEntry};
use crate::config::{LayerKind, VggConfig};

/// Conv weights Kaiming-normal (fan_out, ReLU gain) with zero bias, BatchNorm γ = 1, β = 0 and
/// running statistics (0, 1), linear weights N(0, 0.01) with zero bias — `VGG._initialize_weights`.
pub fn torchvision(config: &VggConfig, seed: u64) -> StateDict {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sd = StateDict::new();
    let mut put = |key: String, shape: Vec<usize>, data: Vec<f32>| {
        // The step counter is an int64 scalar in PyTorch.
        let dtype = if key.ends_with(".num_batches_tracked") { Dtype::I64 } else { Dtype::F32 };
        sd.insert(key, TensorEntry { shape, dtype, data });
    };
    for l in &config.plan([224, 224]).layers {
        let k = &l.key;
        match l.kind {
            LayerKind::Conv { in_channels, out_channels, kernel } => {
                let std = (2.0 / (out_channels * kernel * kernel) as f64).sqrt();
                let n = out_channels * in_channels * kernel * kernel;
                put(format!("{k}.weight"), vec![out_channels, in_channels, kernel, kernel], normal(&mut rng, n, std));
                put(format!("{k}.bias"), vec![out_channels], vec![0.0; out_channels]);
            }
            LayerKind::Linear { in_features, out_features } => {
                let w = normal(&mut rng, out_features * in_features, 0.01);
                put(format!("{k}.weight"), vec![out_features, in_features], w);
                put(format!("{k}.bias"), vec![out_features], vec![0.0; out_features]);
            }
            LayerKind::BatchNorm { channels } => {
                put(format!("{k}.weight"), vec![channels], vec![1.0; channels]);
                put(format!("{k}.bias"), vec![channels], vec![0.0; channels]);
                put(format!("{k}.running_mean"), vec![channels], vec![0.0; channels]);
                put(format!("{k}.running_var"), vec![channels], vec![1.0; channels]);
                put(format!("{k}.num_batches_tracked"), vec![], vec![0.0]);
            }
            _ => {}
        }
    }
    sd
}

/// `n` draws of N(0, std²) (Box–Muller, two per pair of uniforms).
fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random_range(0.0..1.0);
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        if out.len() < n {
            out.push((r * t.sin()) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_torchvisions_scales_and_every_key_of_the_model() {
        let config = VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25).with_num_classes(10);
        let sd = torchvision(&config, 7);
        let device = Default::default();
        let model = crate::model::Vgg::new(&config, &device).unwrap();
        let want = model.state_dict();
        let mut a: Vec<&String> = sd.keys().collect();
        let mut b: Vec<&String> = want.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        for (k, e) in &want {
            assert_eq!(sd[k].shape, e.shape, "{k}");
        }
        let expected = crate::weights::keys::expected_shapes(&config);
        assert_eq!(expected.len(), want.len());
        for (k, shape) in expected {
            assert_eq!(want[&k].shape, shape, "{k}");
        }
        let std = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        // features.4 is conv2_1 (16 -> 32 channels at width 0.25): std sqrt(2 / (32 * 9)).
        let w = &sd["features.4.weight"].data;
        assert!((std(w) / (2.0f64 / (32.0 * 9.0)).sqrt() - 1.0).abs() < 0.05, "{}", std(w));
        let fc = &sd["classifier.0.weight"].data;
        assert!((std(fc) / 0.01 - 1.0).abs() < 0.05, "{}", std(fc));
        assert!(sd["features.1.running_var"].data.iter().all(|&v| v == 1.0));
        assert_ne!(torchvision(&config, 8)["features.0.weight"].data, sd["features.0.weight"].data);
    }
}
