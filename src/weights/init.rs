//! torchvision's VGG initialisation as a state dict, without building a burn model: the engine
//! takes the tensors over directly, so a randomly initialised network costs one copy of its
//! weights in memory instead of two (`vgg bench`'s peak RSS), or none in f32 at all when the
//! engine stores them in 16 bits.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::source::TensorSource;
use super::{Dtype, StateDict, TensorEntry, WeightsError};
use crate::config::VggConfig;

/// Conv weights Kaiming-normal (fan_out, ReLU gain) with zero bias, BatchNorm γ = 1, β = 0 and
/// running statistics (0, 1), linear weights N(0, 0.01) with zero bias — `VGG._initialize_weights`.
pub fn torchvision(config: &VggConfig, seed: u64) -> StateDict {
    let mut src = TorchvisionInit::new(seed);
    let mut sd = StateDict::new();
    for (key, shape) in super::keys::expected_shapes(config) {
        let entry = if key.ends_with(".num_batches_tracked") {
            TensorEntry { shape, dtype: Dtype::I64, data: vec![0.0] }
        } else {
            let v = src.take(&key, &shape).expect("the initialiser has every tensor");
            TensorEntry::f32(shape, v)
        };
        sd.insert(key, entry);
    }
    sd
}

/// [`torchvision`]'s draws as a [`TensorSource`]: each tensor is drawn when the network being
/// built asks for it, in pieces if it asks for that, so that a half-precision engine never holds
/// an f32 copy of its weights (`vgg bench --half`).
pub struct TorchvisionInit {
    rng: StdRng,
}

impl TorchvisionInit {
    /// Draws from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed) }
    }
}

impl TorchvisionInit {
    /// The standard deviation of `key`'s draws, or its constant value.
    fn law(key: &str, shape: &[usize]) -> Result<f64, f32> {
        let leaf = key.rsplit('.').next().unwrap_or("");
        match (leaf, shape.len()) {
            ("weight", 4) => Ok((2.0 / (shape[0] * shape[2] * shape[3]) as f64).sqrt()),
            ("weight", 2) => Ok(0.01),
            ("weight", 1) | ("running_var", _) => Err(1.0),
            _ => Err(0.0),
        }
    }
}

impl TensorSource for TorchvisionInit {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let n: usize = shape.iter().product();
        Ok(match Self::law(key, shape) {
            Ok(std) => normal(&mut self.rng, n, std),
            Err(constant) => vec![constant; n],
        })
    }

    fn take_pieces(&mut self, key: &str, shape: &[usize], sink: &mut dyn FnMut(&[f32])) -> Result<(), WeightsError> {
        let n: usize = shape.iter().product();
        let Ok(std) = Self::law(key, shape) else {
            sink(&self.take(key, shape)?);
            return Ok(());
        };
        // In pieces of 2^20 draws, so that not even one layer exists in f32 (fc6: 411 MB). The
        // draws are those of `take`: Box-Muller pairs never straddle a piece of even length.
        let mut left = n;
        while left > 0 {
            let m = left.min(1 << 20);
            sink(&normal(&mut self.rng, m, std));
            left -= m;
        }
        Ok(())
    }

    fn count(&mut self, _key: &str) -> f32 {
        0.0
    }
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
