//! Training-time augmentation beyond the CIFAR-style shift and flip: the paper's scale jittering,
//! torchvision's RandomResizedCrop, AlexNet's PCA lighting noise, and random erasing.
//!
//! Crops are drawn as a box in source-pixel coordinates and resampled bilinearly to the canvas, so
//! that "rescale the shorter side to S, then crop" and "crop a random box, then resize" are one
//! operation.

use rand::Rng;
use rand::rngs::StdRng;

/// How a training image is cropped.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropAug {
    /// Place the image on the canvas and shift it by up to `shift` pixels (CIFAR style).
    #[default]
    Shift,
    /// The paper's scale jittering: the shorter side is rescaled to S drawn uniformly from
    /// `[smin, smax]` (in canvas pixels, so 256..512 for a 224 canvas), and a canvas-sized square is
    /// cropped at a random place.
    ScaleJitter {
        /// Smallest S.
        smin: usize,
        /// Largest S.
        smax: usize,
    },
    /// torchvision's `RandomResizedCrop(canvas, scale=(min_scale, 1), ratio=(3/4, 4/3))`.
    ResizedCrop {
        /// Smallest share of the image's area.
        min_scale: f64,
    },
}

/// `shift`, `jitter:SMIN,SMAX` (the paper's scale jittering) or `rrc:MIN_SCALE`.
impl std::str::FromStr for CropAug {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            crate::parse::ParseError::new(
                "crop",
                s,
                "shift, jitter:SMIN,SMAX with 0 < SMIN <= SMAX, or rrc:MIN_SCALE in [0, 1]",
            )
        };
        if s == "shift" {
            return Ok(CropAug::Shift);
        }
        if let Some(sizes) = s.strip_prefix("jitter:") {
            return match crate::parse::list::<usize>(sizes).as_deref() {
                Some(&[smin, smax]) if 0 < smin && smin <= smax => Ok(CropAug::ScaleJitter { smin, smax }),
                _ => Err(err()),
            };
        }
        match s.strip_prefix("rrc:").map(str::parse::<f64>) {
            Some(Ok(min_scale)) if (0.0..=1.0).contains(&min_scale) => Ok(CropAug::ResizedCrop { min_scale }),
            _ => Err(err()),
        }
    }
}

/// A crop box in source pixels: top, left, height, width.
pub type CropBox = [f64; 4];

/// The box of a scale-jitter crop of an `h`x`w` image onto a `canvas` square.
pub fn scale_jitter_box(h: usize, w: usize, canvas: usize, smin: usize, smax: usize, rng: &mut StdRng) -> CropBox {
    let s = rng.random_range(smin.max(1)..=smax.max(smin).max(1)) as f64;
    // Source pixels per output pixel after rescaling the shorter side to s.
    let f = h.min(w) as f64 / s;
    let (bh, bw) = ((canvas as f64 * f).min(h as f64), (canvas as f64 * f).min(w as f64));
    let top = rng.random::<f64>() * (h as f64 - bh);
    let left = rng.random::<f64>() * (w as f64 - bw);
    [top, left, bh, bw]
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a box of random area and aspect
/// ratio, then the central crop of the clamped ratio.
pub fn resized_crop_box(h: usize, w: usize, min_scale: f64, rng: &mut StdRng) -> CropBox {
    let area = (h * w) as f64;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(min_scale.clamp(0.0, 1.0)..=1.0);
        let ratio = rng.random_range(lr0..=lr1).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w as f64 && ch <= h as f64 {
            let top = rng.random_range(0..=(h - ch as usize)) as f64;
            let left = rng.random_range(0..=(w - cw as usize)) as f64;
            return [top, left, ch, cw];
        }
    }
    let r = w as f64 / h as f64;
    let (ch, cw) = if r < 3.0 / 4.0 {
        ((w as f64 / (3.0 / 4.0)).round(), w as f64)
    } else if r > 4.0 / 3.0 {
        (h as f64, (h as f64 * 4.0 / 3.0).round())
    } else {
        (h as f64, w as f64)
    };
    [((h as f64 - ch) / 2.0).floor(), ((w as f64 - cw) / 2.0).floor(), ch, cw]
}

/// Resamples the box of a `[c, h, w]` 8-bit image bilinearly onto a `canvas` square (values / 255),
/// mirrored when `flip`; writes `[c, canvas, canvas]` into `out`.
pub fn sample_box(img: &[u8], [c, h, w]: [usize; 3], b: CropBox, canvas: usize, flip: bool, out: &mut [f32]) {
    let [top, left, bh, bw] = b;
    let (sy, sx) = (bh / canvas as f64, bw / canvas as f64);
    // Pixel centres, as align_corners=False.
    let coord = |o: usize, s: f64, start: f64, len: usize| -> (usize, usize, f32) {
        let v = (start + (o as f64 + 0.5) * s - 0.5).clamp(0.0, (len - 1) as f64);
        let i0 = v.floor() as usize;
        (i0, (i0 + 1).min(len - 1), (v - i0 as f64) as f32)
    };
    let xs: Vec<_> = (0..canvas).map(|x| coord(x, sx, left, w)).collect();
    for y in 0..canvas {
        let (y0, y1, fy) = coord(y, sy, top, h);
        for ch in 0..c {
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                let p = |yy: usize, xx: usize| plane[yy * w + xx] as f32;
                let top_v = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                let bot_v = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                let ox = if flip { canvas - 1 - x } else { x };
                out[(ch * canvas + y) * canvas + ox] = (top_v + (bot_v - top_v) * fy) / 255.0;
            }
        }
    }
}

/// Principal components of the RGB values of a dataset (values / 255), for PCA lighting noise.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pca {
    /// Eigenvalues of the 3x3 covariance, largest first.
    pub eigval: [f32; 3],
    /// Eigenvectors, one per column: `eigvec[channel][component]`.
    pub eigvec: [[f32; 3]; 3],
}

impl Pca {
    /// The components of the pixels of `images` (`[n, 3, h, w]` bytes), from every `stride`-th image.
    pub fn of(images: &[u8], hw: usize, stride: usize) -> Self {
        let mut sum = [0f64; 3];
        let mut sq = [[0f64; 3]; 3];
        let mut n = 0f64;
        for img in images.chunks_exact(3 * hw).step_by(stride.max(1)) {
            for p in 0..hw {
                let v = [0, 1, 2].map(|c| img[c * hw + p] as f64 / 255.0);
                for i in 0..3 {
                    sum[i] += v[i];
                    for j in 0..3 {
                        sq[i][j] += v[i] * v[j];
                    }
                }
                n += 1.0;
            }
        }
        let n = n.max(1.0);
        let mut cov = [[0f64; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] = sq[i][j] / n - sum[i] / n * sum[j] / n;
            }
        }
        let (vals, vecs) = jacobi3(cov);
        let mut order = [0usize, 1, 2];
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        Self {
            eigval: order.map(|k| vals[k].max(0.0) as f32),
            eigvec: [0, 1, 2].map(|c| order.map(|k| vecs[c][k] as f32)),
        }
    }

    /// AlexNet's lighting noise: the RGB offset `Σ_k eigvec[:, k] · α_k · eigval_k` with
    /// α ~ N(0, std²), one draw per image.
    pub fn offset(&self, std: f64, rng: &mut StdRng) -> [f32; 3] {
        let alpha: [f64; 3] = [0; 3].map(|_| normal(rng) * std);
        [0, 1, 2]
            .map(|c| (0..3).map(|k| self.eigvec[c][k] as f64 * alpha[k] * self.eigval[k] as f64).sum::<f64>() as f32)
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Eigen-decomposition of a symmetric 3x3 matrix by Jacobi rotations: (values, vectors as columns).
#[allow(clippy::needless_range_loop)] // matrix algebra reads best with indices
fn jacobi3(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..50 {
        let (mut p, mut q, mut big) = (0, 1, 0.0);
        for i in 0..3 {
            for j in i + 1..3 {
                if a[i][j].abs() > big {
                    (p, q, big) = (i, j, a[i][j].abs());
                }
            }
        }
        if big < 1e-15 {
            break;
        }
        let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
        let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
        let t = if theta == 0.0 { 1.0 } else { t };
        let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
        // A ← Jᵀ A J, V ← V J for the rotation J in the (p, q) plane.
        for k in 0..3 {
            let (akp, akq) = (a[k][p], a[k][q]);
            a[k][p] = c * akp - s * akq;
            a[k][q] = s * akp + c * akq;
        }
        for k in 0..3 {
            let (apk, aqk) = (a[p][k], a[q][k]);
            a[p][k] = c * apk - s * aqk;
            a[q][k] = s * apk + c * aqk;
        }
        for row in v.iter_mut() {
            let (vp, vq) = (row[p], row[q]);
            row[p] = c * vp - s * vq;
            row[q] = s * vp + c * vq;
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

/// torchvision's `RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)` (Zhong et al.,
/// 2017): with probability `p`, a rectangle of 2–33% of the image's area and aspect ratio in
/// [0.3, 3.3] (log-uniform) is chosen, trying ten times for one that fits. Returns the rectangle as
/// (top, left, height, width), or `None` when nothing is erased.
pub fn erase_box(h: usize, w: usize, p: f64, rng: &mut StdRng) -> Option<[usize; 4]> {
    if p <= 0.0 || !rng.random_bool(p.min(1.0)) {
        return None;
    }
    let area = (h * w) as f64;
    let (lo, hi) = (0.3f64.ln(), 3.3f64.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..0.33);
        let aspect = rng.random_range(lo..hi).exp();
        let eh = (target * aspect).sqrt().round() as usize;
        let ew = (target / aspect).sqrt().round() as usize;
        if eh == 0 || ew == 0 || eh >= h || ew >= w {
            continue;
        }
        let top = rng.random_range(0..=h - eh);
        let left = rng.random_range(0..=w - ew);
        return Some([top, left, eh, ew]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn jacobi_diagonalises() {
        let m = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 1.0]];
        let (vals, vecs) = jacobi3(m);
        for k in 0..3 {
            // m·v = λ·v for each column.
            for i in 0..3 {
                let mv: f64 = (0..3).map(|j| m[i][j] * vecs[j][k]).sum();
                assert!((mv - vals[k] * vecs[i][k]).abs() < 1e-9);
            }
        }
        assert!((vals.iter().sum::<f64>() - 8.0).abs() < 1e-9, "trace is kept");
    }

    #[test]
    fn pca_of_pixels_on_a_line_has_one_component() {
        // Pixels (t, 2t, 0): all variance along (1, 2, 0)/√5.
        let hw = 64;
        let img: Vec<u8> = (0..3 * hw)
            .map(|i| {
                if i < hw {
                    (i % hw) as u8
                } else if i < 2 * hw {
                    (2 * (i % hw)) as u8
                } else {
                    0
                }
            })
            .collect();
        let p = Pca::of(&img, hw, 1);
        assert!(p.eigval[1] < 1e-6 * p.eigval[0] && p.eigval[2] < 1e-6 * p.eigval[0]);
        let v = [p.eigvec[0][0], p.eigvec[1][0], p.eigvec[2][0]];
        let s = if v[0] < 0.0 { -1.0 } else { 1.0 };
        assert!((s * v[0] - 1.0 / 5f32.sqrt()).abs() < 1e-4 && (s * v[1] - 2.0 / 5f32.sqrt()).abs() < 1e-4);
    }

    #[test]
    fn boxes_stay_inside_and_follow_their_rules() {
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..500 {
            let [t, l, bh, bw] = scale_jitter_box(300, 400, 224, 256, 512, &mut rng);
            assert!(t >= 0.0 && l >= 0.0 && t + bh <= 300.0 + 1e-9 && l + bw <= 400.0 + 1e-9);
            // S in [256, 512] → the box side is 224·300/S, between 131.25 and 262.5 source pixels.
            assert!((131.0..=262.6).contains(&bh) && (bh - bw).abs() < 1e-9);
            let [t, l, bh, bw] = resized_crop_box(300, 400, 0.08, &mut rng);
            assert!(t >= 0.0 && l >= 0.0 && t + bh <= 300.0 && l + bw <= 400.0);
            assert!(bh * bw >= 0.08 * 300.0 * 400.0 * 0.95);
        }
    }

    #[test]
    fn the_whole_image_resampled_to_its_own_size_is_itself() {
        let img: Vec<u8> = (0..2 * 5 * 7).map(|i| (i * 37 % 251) as u8).collect();
        let mut out = vec![0f32; 2 * 5 * 5];
        // A 5x5 box at (0, 1) of a 5x7 image onto a 5x5 canvas: a plain copy.
        sample_box(&img, [2, 5, 7], [0.0, 1.0, 5.0, 5.0], 5, false, &mut out);
        for c in 0..2 {
            for y in 0..5 {
                for x in 0..5 {
                    assert_eq!(out[(c * 5 + y) * 5 + x], img[(c * 5 + y) * 7 + x + 1] as f32 / 255.0);
                }
            }
        }
        let mut flipped = vec![0f32; out.len()];
        sample_box(&img, [2, 5, 7], [0.0, 1.0, 5.0, 5.0], 5, true, &mut flipped);
        assert_eq!(flipped[0], out[4]);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::CropAug;

    #[test]
    fn crops_read_from_their_written_forms() {
        assert_eq!("shift".parse(), Ok(CropAug::Shift));
        assert_eq!("jitter:256,512".parse(), Ok(CropAug::ScaleJitter { smin: 256, smax: 512 }));
        assert_eq!("rrc:0.35".parse(), Ok(CropAug::ResizedCrop { min_scale: 0.35 }));
        for bad in ["jitter:512,256", "jitter:0,4", "jitter:256", "rrc:1.5", "rrc:", "zoom"] {
            assert!(bad.parse::<CropAug>().unwrap_err().to_string().contains(bad), "{bad}");
        }
    }
}
