//! The perceptual loss of Johnson, Alahi & Fei-Fei (2016): distances between VGG activations of an
//! image and a target (feature reconstruction), optionally with Gatys et al.'s Gram-matrix (style)
//! terms, and its gradient with respect to the image, for training image models against it:
//!
//! `Σ_l a_l · mean(|φ_l(x) − φ_l(y)|ᵖ) + Σ_m b_m · mean((G_m(x) − G_m(y))²)`, p = 1 or 2,
//!
//! with `mean` over every element as `F.l1_loss` / `F.mse_loss` take it, `G = FᵀF / (c·h·w)` per
//! image ([`crate::style::gram`]), and layers named as the engine names its activations (`relu2_2`,
//! `conv4_2`).

use super::PerceptualError;
use crate::engine::Engine;
use crate::style::{gram, style_layer};

/// How feature maps are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Mean absolute difference (`F.l1_loss`).
    L1,
    /// Mean squared difference (`F.mse_loss`), Johnson et al.'s choice.
    L2,
}

/// Which layers count, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct PerceptualConfig {
    /// Feature-reconstruction terms: layer and weight.
    pub feature_layers: Vec<(String, f64)>,
    /// Gram-matrix terms: layer and weight.
    pub style_layers: Vec<(String, f64)>,
    /// How feature maps are compared.
    pub norm: Norm,
}

impl Default for PerceptualConfig {
    /// Johnson et al.'s feature reconstruction at `relu2_2` (their super-resolution loss), L2.
    fn default() -> Self {
        PerceptualConfig { feature_layers: vec![("relu2_2".into(), 1.0)], style_layers: vec![], norm: Norm::L2 }
    }
}

/// The loss on an engine's trunk, with the normalisation the trunk expects.
pub struct PerceptualLoss<'a> {
    engine: &'a Engine,
    mean: Vec<f32>,
    std: Vec<f32>,
    features: Vec<(usize, f64)>,
    style: Vec<(usize, f64)>,
    norm: Norm,
}

impl<'a> PerceptualLoss<'a> {
    /// The loss of `config` on `engine`; `mean`/`std` map [0, 1] pixels to its input, one value
    /// per channel (ImageNet's for torchvision weights).
    pub fn new(
        engine: &'a Engine,
        config: &PerceptualConfig,
        mean: &[f32],
        std: &[f32],
    ) -> Result<Self, PerceptualError> {
        if config.feature_layers.is_empty() && config.style_layers.is_empty() {
            return Err(PerceptualError::Input("no layers: give feature or style layers".into()));
        }
        if mean.len() != std.len() {
            return Err(PerceptualError::Input(format!("{} means but {} standard deviations", mean.len(), std.len())));
        }
        let index = |layers: &[(String, f64)]| -> Result<Vec<(usize, f64)>, PerceptualError> {
            layers.iter().map(|(name, weight)| Ok((engine.activation_index(name)?, *weight))).collect()
        };
        Ok(PerceptualLoss {
            engine,
            mean: mean.to_vec(),
            std: std.to_vec(),
            features: index(&config.feature_layers)?,
            style: index(&config.style_layers)?,
            norm: config.norm,
        })
    }

    fn top(&self) -> usize {
        self.features.iter().chain(&self.style).map(|(i, _)| *i).max().unwrap_or(0)
    }

    fn normalise(&self, x: &[f32], [_, c, h, w]: [usize; 4]) -> Vec<f32> {
        x.iter().enumerate().map(|(i, &v)| (v - self.mean[(i / (h * w)) % c]) / self.std[(i / (h * w)) % c]).collect()
    }

    /// The loss of images `x` against `target` (both `[n, c, h, w]` in [0, 1]) and its gradient
    /// with respect to `x` (NCHW).
    pub fn loss_and_gradient(
        &self,
        x: &[f32],
        target: &[f32],
        dims: [usize; 4],
    ) -> Result<(f64, Vec<f32>), PerceptualError> {
        let [n, c, h, w] = dims;
        if c != self.mean.len() || x.len() != n * c * h * w || target.len() != x.len() {
            return Err(PerceptualError::Input(format!(
                "{} and {} values for {n} images of {c}x{h}x{w} on a network of {} channel(s)",
                x.len(),
                target.len(),
                self.mean.len()
            )));
        }
        super::check_side(self.engine, self.top(), [h, w])?;
        let tx = self.engine.trace(&self.normalise(x, dims), dims, self.top());
        let tt = self.engine.trace(&self.normalise(target, dims), dims, self.top());
        let mut loss = 0f64;
        let mut seeds = Vec::new();
        for &(i, weight) in &self.features {
            let (fx, _) = tx.activation_nhwc(i);
            let ft = tt.activation_nhwc(i).0;
            let count = fx.len() as f64;
            let mut g = vec![0f32; fx.len()];
            for ((gi, &a), &b) in g.iter_mut().zip(fx).zip(ft) {
                let d = (a - b) as f64;
                let (l, dl) = match self.norm {
                    Norm::L1 => (d.abs(), d.signum() * (d != 0.0) as u8 as f64),
                    Norm::L2 => (d * d, 2.0 * d),
                };
                loss += weight * l / count;
                *gi = (weight * dl / count) as f32;
            }
            seeds.push((i, g));
        }
        for &(i, weight) in &self.style {
            let (fx, [_, fh, fw, fc]) = tx.activation_nhwc(i);
            let ft = tt.activation_nhwc(i).0;
            let per_image = fh * fw * fc;
            let mut g = Vec::with_capacity(fx.len());
            for k in 0..n {
                let one = [1, fh, fw, fc];
                let target = gram(&ft[k * per_image..(k + 1) * per_image], one);
                let (l, gk) = style_layer(&fx[k * per_image..(k + 1) * per_image], one, &target, weight / n as f64);
                loss += l;
                g.extend(gk);
            }
            seeds.push((i, g));
        }
        let gx = self.engine.gradient(&tx, seeds, 0);
        let mut grad = vec![0f32; x.len()];
        for k in 0..n {
            for p in 0..h * w {
                for ch in 0..c {
                    grad[(k * c + ch) * h * w + p] = gx[(k * h * w + p) * c + ch] / self.std[ch];
                }
            }
        }
        Ok((loss, grad))
    }
}
