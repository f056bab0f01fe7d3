//! Why the network chose a class: Grad-CAM (Selvaraju et al., 2017) and vanilla saliency
//! (Simonyan et al., 2014), computed with the engine's evaluation-mode backward pass.
//!
//! - Grad-CAM: the gradient of the class score (the logit, before softmax) with respect to a conv
//!   layer's output `A` (`[c, h, w]`) is averaged over the map to one weight per channel,
//!   `α_k = mean(∂y/∂A_k)`; the map is `ReLU(Σ_k α_k A_k)`, upsampled bilinearly to the input.
//! - Saliency: `max over channels of |∂y/∂x|`, at the input's resolution.
//!
//! A batch of images is explained in one forward and one backward pass: in evaluation mode the
//! images do not interact, so seeding each row with its own class gives each its own gradient.

use crate::engine::{Engine, EngineError};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The engine cannot run the network or has no such layer.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Grad-CAM needs a spatial map, not a vector.
    #[error("Grad-CAM needs a convolutional map; {0} is a vector (pick a conv, relu or pool layer)")]
    NotAMap(String),
    /// A class index beyond the head.
    #[error("class {class} does not exist: the head has {classes} classes")]
    NoSuchClass {
        /// Asked for.
        class: usize,
        /// Classes of the head.
        classes: usize,
    },
    /// The network has no classifier to explain.
    #[error("explanations need a classifier head")]
    NoHead,
}

/// Which map to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Grad-CAM at the named layer (`relu5_3`, `conv4_2`, `pool4`, ...).
    GradCam {
        /// Paper name of the layer.
        layer: String,
    },
    /// Absolute input gradient, maximum over the colour channels.
    Saliency,
}

/// The explanation of one image.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The class explained.
    pub class: usize,
    /// Its logit.
    pub score: f32,
    /// Its softmax probability.
    pub probability: f32,
    /// The map at the input's resolution, `[h, w]` row-major, non-negative, not normalised.
    pub map: Vec<f32>,
    /// `[h, w]` of `map`.
    pub size: [usize; 2],
    /// The map at the layer's own resolution (Grad-CAM; for saliency the same as `map`).
    pub layer_map: Vec<f32>,
    /// `[h, w]` of `layer_map`.
    pub layer_size: [usize; 2],
}

/// Explains each image of the batch `x` (`[n, c, h, w]`, preprocessed) for `classes[i]`, or for
/// its top-1 class when `classes` is `None`.
pub fn explain(
    engine: &Engine,
    x: &[f32],
    dims: [usize; 4],
    method: &Method,
    classes: Option<&[usize]>,
) -> Result<Vec<Explanation>, ExplainError> {
    let [n, _, ih, iw] = dims;
    let top = engine.activation_index("logits").map_err(|_| ExplainError::NoHead)?;
    let target = match method {
        Method::GradCam { layer } => engine.activation_index(layer)?,
        Method::Saliency => 0,
    };
    let trace = engine.trace(x, dims, top);
    if let Method::GradCam { layer } = method
        && !trace.is_map(target)
    {
        return Err(ExplainError::NotAMap(layer.clone()));
    }
    let (logits, shape) = trace.activation(top);
    let k = shape[1];
    let chosen: Vec<usize> = match classes {
        Some(c) => {
            if let Some(&bad) = c.iter().find(|&&c| c >= k) {
                return Err(ExplainError::NoSuchClass { class: bad, classes: k });
            }
            (0..n).map(|i| c[i.min(c.len() - 1)]).collect()
        }
        None => logits.chunks_exact(k).map(argmax).collect(),
    };
    let mut seed = vec![0f32; n * k];
    for (i, &c) in chosen.iter().enumerate() {
        seed[i * k + c] = 1.0;
    }
    let grad = engine.gradient(&trace, vec![(top, seed)], target);
    let (act, [_, h, w, c]) = trace.activation_nhwc(target);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let row = &logits[i * k..(i + 1) * k];
        let probability = softmax_at(row, chosen[i]);
        let (a, g) = (&act[i * h * w * c..(i + 1) * h * w * c], &grad[i * h * w * c..(i + 1) * h * w * c]);
        let layer_map = match method {
            Method::GradCam { .. } => grad_cam(a, g, [h, w, c]),
            Method::Saliency => g.chunks_exact(c).map(|px| px.iter().fold(0f32, |m, v| m.max(v.abs()))).collect(),
        };
        let map = if [h, w] == [ih, iw] { layer_map.clone() } else { upsample(&layer_map, [h, w], [ih, iw]) };
        out.push(Explanation {
            class: chosen[i],
            score: row[chosen[i]],
            probability,
            map,
            size: [ih, iw],
            layer_map,
            layer_size: [h, w],
        });
    }
    Ok(out)
}

/// `ReLU(Σ_k mean(g_k)·a_k)` over one image's NHWC map `a` and its gradient `g`.
pub fn grad_cam(a: &[f32], g: &[f32], [h, w, c]: [usize; 3]) -> Vec<f32> {
    let mut alpha = vec![0f64; c];
    for px in g.chunks_exact(c) {
        for (s, v) in alpha.iter_mut().zip(px) {
            *s += *v as f64;
        }
    }
    for s in &mut alpha {
        *s /= (h * w) as f64;
    }
    a.chunks_exact(c).map(|px| px.iter().zip(&alpha).map(|(v, s)| *v as f64 * s).sum::<f64>().max(0.0) as f32).collect()
}

/// Bilinear resize of a one-channel map with half-pixel centres (OpenCV's `resize`, PyTorch's
/// `interpolate(align_corners=False)`), as Grad-CAM implementations upsample.
pub fn upsample(map: &[f32], [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<f32> {
    let coord = |o: usize, inp: usize, out: usize| -> (usize, usize, f32) {
        let s = ((o as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, (s - i0 as f64) as f32)
    };
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh {
        let (y0, y1, fy) = coord(y, h, oh);
        for x in 0..ow {
            let (x0, x1, fx) = coord(x, w, ow);
            let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let bottom = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            out[y * ow + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// The map blended over an RGB image (`[h, w, 3]` bytes) in the jet colour map, half and half,
/// after scaling the map to [0, 1] by its own minimum and maximum.
pub fn overlay(rgb: &[u8], map: &[f32]) -> Vec<u8> {
    assert_eq!(rgb.len(), map.len() * 3);
    let (lo, hi) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut out = Vec::with_capacity(rgb.len());
    for (px, &v) in rgb.chunks_exact(3).zip(map) {
        let heat = jet((v - lo) / span);
        for ch in 0..3 {
            out.push(((px[ch] as f32 + heat[ch] as f32) / 2.0).round() as u8);
        }
    }
    out
}

/// The jet colour map (blue → cyan → yellow → red) at `t` in [0, 1], as OpenCV's COLORMAP_JET.
pub fn jet(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let ramp = |x: f32| (1.5 - (4.0 * t - x).abs()).clamp(0.0, 1.0);
    [(ramp(3.0) * 255.0).round() as u8, (ramp(2.0) * 255.0).round() as u8, (ramp(1.0) * 255.0).round() as u8]
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b })
}

fn softmax_at(row: &[f32], i: usize) -> f32 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let sum: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
    (((row[i] - m) as f64).exp() / sum) as f32
}

/// The last ReLU of the trunk of `config` (`relu5_3` for VGG-16), Grad-CAM's usual layer: the
/// deepest map that still has positions.
pub fn last_trunk_relu(config: &crate::config::VggConfig) -> Option<String> {
    let plan = config.plan([224, 224]);
    plan.layers[..plan.trunk]
        .iter()
        .rev()
        .find(|l| matches!(l.kind, crate::config::LayerKind::Relu))
        .map(|l| l.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_keeps_constants_and_matches_half_pixel_centres() {
        assert!(upsample(&[2.0; 4], [2, 2], [5, 7]).iter().all(|&v| (v - 2.0).abs() < 1e-6));
        // 1x2 → 1x4: centres at -0.25, 0.25, 0.75, 1.25 in source pixels (clamped at the edges).
        let up = upsample(&[0.0, 4.0], [1, 2], [1, 4]);
        assert_eq!(up, vec![0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn jet_runs_from_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5), [128, 255, 128]);
    }

    #[test]
    fn grad_cam_weights_channels_by_their_mean_gradient() {
        // Two channels over a 1x2 map: channel 0 has mean gradient 1, channel 1 has −1.
        let a = [3.0, 1.0, 0.0, 5.0];
        let g = [1.0, -2.0, 1.0, 0.0];
        assert_eq!(grad_cam(&a, &g, [1, 2, 2]), vec![2.0, 0.0]);
    }
}
