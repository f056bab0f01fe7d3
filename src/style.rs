//! Neural style transfer (Gatys, Ecker & Bethge, 2016) on a VGG trunk run by the engine.
//!
//! The image is optimised in pixel space ([0, 1] RGB, clamped at every evaluation as the PyTorch
//! tutorial does) to minimise
//! `content_weight · mse(F_c(x), F_c(content)) + style_weight · Σ_l mse(G_l(x), G_l(style))`,
//! where `F_l` is layer `l`'s activation and `G_l = F_lᵀ F_l / (c·h·w)` its normalised Gram
//! matrix. Layer names are taken literally: `conv4_2` is the convolution's output before its
//! ReLU (the PyTorch tutorial's choice); `relu4_2` is the rectified map Caffe's in-place ReLU gave
//! Gatys et al. Gram matrices are accumulated in f32, never in half precision (they overflow in
//! f16: leongatys/PytorchNeuralStyleTransfer#3).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Engine, EngineError};
use crate::kernels::sgemm;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StyleError {
    /// The engine cannot run the network or has no such layer.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Style and content layers must be maps.
    #[error("{0} is not a convolutional map")]
    NotAMap(String),
    /// A loss became NaN or infinite.
    #[error("the loss became {0} at step {1}; lower the learning rate or the style weight")]
    Diverged(f64, usize),
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
}

/// How the image is optimised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// L-BFGS as `torch.optim.LBFGS` (no line search, history 100), Gatys et al.'s choice.
    Lbfgs {
        /// Step size (1 in PyTorch's default).
        lr: f64,
    },
    /// Adam on the pixels.
    Adam {
        /// Step size in pixel units (e.g. 0.02).
        lr: f64,
    },
}

/// Settings of a transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleConfig {
    /// Layer whose activations carry the content.
    pub content_layer: String,
    /// Layers whose Gram matrices carry the style.
    pub style_layers: Vec<String>,
    /// Weight of the content loss.
    pub content_weight: f64,
    /// Weight of the style loss.
    pub style_weight: f64,
    /// Loss evaluations (forward and backward passes).
    pub steps: usize,
    /// How the pixels move.
    pub optimizer: Optimizer,
    /// Start from uniform white noise instead of the content image.
    pub from_noise: bool,
    /// Seed of the noise.
    pub seed: u64,
}

impl Default for StyleConfig {
    /// The PyTorch tutorial's settings: content at conv4_2, style at conv1_1 … conv5_1, weights 1
    /// and 10⁶, L-BFGS, 300 evaluations, starting from the content image.
    fn default() -> Self {
        Self {
            content_layer: "conv4_2".into(),
            style_layers: ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"].map(String::from).to_vec(),
            content_weight: 1.0,
            style_weight: 1e6,
            steps: 300,
            optimizer: Optimizer::Lbfgs { lr: 1.0 },
            from_noise: false,
            seed: 0,
        }
    }
}

/// An image in [0, 1] as `[c, h, w]` planes: RGB (`c = 3`) for ImageNet-style networks, gray
/// (`c = 1`) for networks trained on gray pictures such as the built-in Fashion-MNIST model.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// `[h, w]`.
    pub size: [usize; 2],
    /// Planes of values in [0, 1].
    pub data: Vec<f32>,
}

impl Image {
    /// Number of planes.
    pub fn channels(&self) -> usize {
        self.data.len() / (self.size[0] * self.size[1]).max(1)
    }
}

/// The losses of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// Weighted content loss.
    pub content: f64,
    /// Weighted style loss (all layers).
    pub style: f64,
}

impl Losses {
    /// Their sum.
    pub fn total(&self) -> f64 {
        self.content + self.style
    }
}

/// The objective: the network, the normalisation it expects, and the targets of the content and
/// style images.
pub struct Objective<'a> {
    engine: &'a Engine,
    mean: Vec<f32>,
    std: Vec<f32>,
    content_idx: usize,
    style_idx: Vec<usize>,
    content_target: Vec<f32>,
    grams: Vec<Vec<f32>>,
    content_weight: f64,
    style_weight: f64,
    size: [usize; 2],
}

impl<'a> Objective<'a> {
    /// Computes the targets. `mean`/`std` map [0, 1] pixels to the network's input, one value per
    /// channel (ImageNet's three for torchvision weights, one for a gray network); both images
    /// must have that many channels.
    pub fn new(
        engine: &'a Engine,
        content: &Image,
        style: &Image,
        cfg: &StyleConfig,
        mean: &[f32],
        std: &[f32],
    ) -> Result<Self, StyleError> {
        if cfg.style_layers.is_empty() {
            return Err(StyleError::Invalid("no style layers".into()));
        }
        let c = mean.len();
        if std.len() != c || content.channels() != c || style.channels() != c {
            return Err(StyleError::Invalid(format!(
                "the network normalises {c} channel(s) ({} std values) but the content has {} and the style {}",
                std.len(),
                content.channels(),
                style.channels()
            )));
        }
        let content_idx = engine.activation_index(&cfg.content_layer)?;
        let style_idx = cfg.style_layers.iter().map(|l| engine.activation_index(l)).collect::<Result<Vec<_>, _>>()?;
        let mut obj = Self {
            engine,
            mean: mean.to_vec(),
            std: std.to_vec(),
            content_idx,
            style_idx,
            content_target: vec![],
            grams: vec![],
            content_weight: cfg.content_weight,
            style_weight: cfg.style_weight,
            size: content.size,
        };
        let top = obj.top();
        let t = engine.trace(&obj.normalise(content), [1, c, content.size[0], content.size[1]], top);
        for (i, name) in std::iter::once(content_idx).zip(std::iter::once(&cfg.content_layer)) {
            if !t.is_map(i) {
                return Err(StyleError::NotAMap(name.clone()));
            }
        }
        obj.content_target = t.activation_nhwc(content_idx).0.to_vec();
        let t = engine.trace(&obj.normalise(style), [1, c, style.size[0], style.size[1]], top);
        for (&i, name) in obj.style_idx.iter().zip(&cfg.style_layers) {
            if !t.is_map(i) {
                return Err(StyleError::NotAMap(name.clone()));
            }
        }
        obj.grams = obj.style_idx.iter().map(|&i| gram(t.activation_nhwc(i).0, t.activation_nhwc(i).1)).collect();
        Ok(obj)
    }

    fn top(&self) -> usize {
        self.style_idx.iter().copied().chain([self.content_idx]).max().unwrap_or(0)
    }

    fn normalise(&self, img: &Image) -> Vec<f32> {
        let plane = img.size[0] * img.size[1];
        img.data
            .iter()
            .enumerate()
            .map(|(i, &v)| (v.clamp(0.0, 1.0) - self.mean[i / plane]) / self.std[i / plane])
            .collect()
    }

    /// The losses at `img` and their gradient with respect to its pixels (`[c, h, w]`).
    pub fn evaluate(&self, img: &Image) -> (Losses, Vec<f32>) {
        let [h, w] = img.size;
        let ch = self.mean.len();
        assert_eq!(img.size, self.size, "the image must keep the content's size");
        assert_eq!(img.channels(), ch, "the image must keep the content's channels");
        let trace = self.engine.trace(&self.normalise(img), [1, ch, h, w], self.top());
        let mut seeds = Vec::new();
        // Content: mse(F, P); d/dF = 2 (F − P) / numel.
        let (f, _) = trace.activation_nhwc(self.content_idx);
        let numel = f.len() as f64;
        let mut content = 0f64;
        let mut g = vec![0f32; f.len()];
        for ((gi, &a), &b) in g.iter_mut().zip(f).zip(&self.content_target) {
            let d = (a - b) as f64;
            content += d * d;
            *gi = (self.content_weight * 2.0 * d / numel) as f32;
        }
        seeds.push((self.content_idx, g));
        let content = self.content_weight * content / numel;
        let mut style = 0f64;
        for (&i, target) in self.style_idx.iter().zip(&self.grams) {
            let (f, dims) = trace.activation_nhwc(i);
            let (loss, g) = style_layer(f, dims, target, self.style_weight);
            style += loss;
            seeds.push((i, g));
        }
        let gx = self.engine.gradient(&trace, seeds, 0);
        // Back to [c, h, w] planes and through the normalisation (and the clamp: no gradient
        // pushes a saturated pixel further out).
        let plane = h * w;
        let mut grad = vec![0f32; ch * plane];
        for p in 0..plane {
            for c in 0..ch {
                let (v, gv) = (img.data[c * plane + p], gx[p * ch + c]);
                let pass = (0.0..=1.0).contains(&v) || (v < 0.0 && gv < 0.0) || (v > 1.0 && gv > 0.0);
                grad[c * plane + p] = if pass { gv / self.std[c] } else { 0.0 };
            }
        }
        (Losses { content, style }, grad)
    }
}

/// `FᵀF / (c·h·w)` of an NHWC map of one image, `[c, c]`.
pub fn gram(f: &[f32], [_, h, w, c]: [usize; 4]) -> Vec<f32> {
    let hw = h * w;
    let mut g = vec![0f32; c * c];
    sgemm(c, c, hw, f, [1, c], f, [c, 1], &mut g, c, false, c * c * hw >= 1 << 20);
    let s = 1.0 / (c * hw) as f32;
    for v in &mut g {
        *v *= s;
    }
    g
}

/// `weight · mse(G(F), target)` and its gradient with respect to `F` (NHWC):
/// `4·weight·F(G − A) / (c²·c·h·w)`.
pub fn style_layer(f: &[f32], dims: [usize; 4], target: &[f32], weight: f64) -> (f64, Vec<f32>) {
    let [_, h, w, c] = dims;
    let g = gram(f, dims);
    let mut diff = vec![0f32; c * c];
    let mut loss = 0f64;
    for ((d, &a), &b) in diff.iter_mut().zip(&g).zip(target) {
        *d = a - b;
        loss += (*d as f64) * (*d as f64);
    }
    let loss = weight * loss / (c * c) as f64;
    let mut grad = vec![0f32; f.len()];
    sgemm(h * w, c, c, f, [c, 1], &diff, [c, 1], &mut grad, c, false, h * w * c * c >= 1 << 20);
    let s = (4.0 * weight / ((c * c) as f64 * (c * h * w) as f64)) as f32;
    for v in &mut grad {
        *v *= s;
    }
    (loss, grad)
}

/// Runs the optimisation from the content image (or noise), calling `progress` after every
/// evaluation with the step, the losses and the current image. Returns the image with the lowest
/// loss seen, clamped to [0, 1].
pub fn transfer(
    obj: &Objective,
    content: &Image,
    cfg: &StyleConfig,
    progress: &mut dyn FnMut(usize, Losses, &Image),
) -> Result<(Image, Losses), StyleError> {
    let mut x = content.clone();
    if cfg.from_noise {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        for v in &mut x.data {
            *v = rng.random_range(0.0..1.0);
        }
    }
    let mut best: Option<(Image, Losses)> = None;
    let mut eval = |x: &Image, step: usize| -> Result<(Losses, Vec<f32>), StyleError> {
        let (l, g) = obj.evaluate(x);
        if !l.total().is_finite() {
            return Err(StyleError::Diverged(l.total(), step));
        }
        let clamped = Image { size: x.size, data: x.data.iter().map(|v| v.clamp(0.0, 1.0)).collect() };
        progress(step, l, &clamped);
        if best.as_ref().is_none_or(|(_, b)| l.total() < b.total()) {
            best = Some((clamped, l));
        }
        Ok((l, g))
    };
    match cfg.optimizer {
        Optimizer::Adam { lr } => {
            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
            let mut m = vec![0f64; x.data.len()];
            let mut v = vec![0f64; x.data.len()];
            for step in 1..=cfg.steps {
                let (_, g) = eval(&x, step)?;
                for i in 0..x.data.len() {
                    let gi = g[i] as f64;
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let mh = m[i] / (1.0 - b1.powi(step as i32));
                    let vh = v[i] / (1.0 - b2.powi(step as i32));
                    x.data[i] = ((x.data[i] as f64 - lr * mh / (vh.sqrt() + eps)) as f32).clamp(0.0, 1.0);
                }
            }
        }
        Optimizer::Lbfgs { lr } => {
            let mut lb = Lbfgs::new(100);
            let (_, mut g) = eval(&x, 1)?;
            for step in 2..=cfg.steps {
                let d = lb.direction(&g);
                // PyTorch: the first step is scaled by min(1, 1/|g|₁).
                let t = if lb.is_empty() {
                    lr * (1.0 / g.iter().map(|v| v.abs() as f64).sum::<f64>()).min(1.0)
                } else {
                    lr
                };
                let s: Vec<f32> = d.iter().map(|v| (t * *v as f64) as f32).collect();
                for (xi, si) in x.data.iter_mut().zip(&s) {
                    *xi = (*xi + si).clamp(0.0, 1.0);
                }
                let (_, g_new) = eval(&x, step)?;
                let y: Vec<f32> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                lb.push(s, y);
                g = g_new;
            }
        }
    }
    Ok(best.expect("at least one evaluation"))
}

/// The two-loop recursion of L-BFGS over a bounded history of steps `s` and gradient changes `y`.
struct Lbfgs {
    history: usize,
    pairs: std::collections::VecDeque<(Vec<f32>, Vec<f32>, f64)>,
}

impl Lbfgs {
    fn new(history: usize) -> Self {
        Self { history, pairs: Default::default() }
    }

    fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Records a step unless its curvature `y·s` is too small (PyTorch's 1e-10 test).
    fn push(&mut self, s: Vec<f32>, y: Vec<f32>) {
        let ys = dot(&y, &s);
        if ys > 1e-10 {
            if self.pairs.len() == self.history {
                self.pairs.pop_front();
            }
            self.pairs.push_back((s, y, 1.0 / ys));
        }
    }

    /// `−H·g` with the inverse Hessian approximated from the history (`−g` without one).
    fn direction(&self, g: &[f32]) -> Vec<f32> {
        let mut q: Vec<f64> = g.iter().map(|v| -*v as f64).collect();
        let mut alphas = Vec::with_capacity(self.pairs.len());
        for (s, y, rho) in self.pairs.iter().rev() {
            let a = rho * s.iter().zip(&q).map(|(a, b)| *a as f64 * b).sum::<f64>();
            for (qi, yi) in q.iter_mut().zip(y) {
                *qi -= a * *yi as f64;
            }
            alphas.push(a);
        }
        if let Some((s, y, _)) = self.pairs.back() {
            let h0 = dot(s, y) / dot(y, y);
            for v in &mut q {
                *v *= h0;
            }
        }
        for ((s, y, rho), a) in self.pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * y.iter().zip(&q).map(|(a, b)| *a as f64 * b).sum::<f64>();
            for (qi, si) in q.iter_mut().zip(s) {
                *qi += (a - b) * *si as f64;
            }
        }
        q.into_iter().map(|v| v as f32).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lbfgs_solves_a_quadratic_in_few_steps() {
        // f(x) = Σ a_i (x_i − 1)², minimised at 1.
        let a = [1.0f32, 4.0, 9.0, 0.5];
        let grad = |x: &[f32]| -> Vec<f32> { x.iter().zip(&a).map(|(x, a)| 2.0 * a * (x - 1.0)).collect() };
        let mut x = vec![0f32; 4];
        let mut lb = Lbfgs::new(10);
        let mut g = grad(&x);
        let mut t = 0.05;
        for _ in 0..30 {
            let d = lb.direction(&g);
            let s: Vec<f32> = d.iter().map(|v| t * v).collect();
            for (xi, si) in x.iter_mut().zip(&s) {
                *xi += si;
            }
            let gn = grad(&x);
            lb.push(s, gn.iter().zip(&g).map(|(a, b)| a - b).collect());
            g = gn;
            t = 1.0;
        }
        assert!(x.iter().all(|v| (v - 1.0).abs() < 1e-3), "{x:?}");
    }

    #[test]
    fn style_gradient_matches_finite_differences() {
        let dims = [1, 2, 3, 4];
        let f: Vec<f32> = (0..24).map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0).collect();
        // A target is a Gram matrix, hence symmetric (the gradient formula relies on it).
        let other: Vec<f32> = (0..24).map(|i| ((i * 13 % 7) as f32 - 3.0) / 5.0).collect();
        let target = gram(&other, dims);
        let (base, g) = style_layer(&f, dims, &target, 3.0);
        for i in 0..f.len() {
            let mut f2 = f.clone();
            let e = 1e-2;
            f2[i] += e;
            let (up, _) = style_layer(&f2, dims, &target, 3.0);
            f2[i] -= 2.0 * e;
            let (down, _) = style_layer(&f2, dims, &target, 3.0);
            let fd = (up - down) / (2.0 * e as f64);
            assert!((fd - g[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()), "{i}: {fd} vs {}", g[i]);
        }
        assert!(base > 0.0);
    }
}
