//! BatchNorm over the channels of NHWC rows, fused with the ReLU that follows it in every VGG, and
//! the plain ReLU of the variants without BatchNorm.
//!
//! Statistics are accumulated in f64 per chunk of rows and reduced in order.

use rayon::prelude::*;

use super::channel_sums;

const ROWS_PER_CHUNK: usize = 4096;

/// Per-channel map `y = (x − mean)·scale + β` that a BatchNorm applies for given statistics
/// (subtracting the mean first, as PyTorch does, keeps channels whose mean dwarfs their spread exact).
#[derive(Debug, Clone)]
pub struct Affine {
    /// The mean.
    pub mean: Vec<f32>,
    /// γ / sqrt(var + eps).
    pub scale: Vec<f32>,
    /// β.
    pub shift: Vec<f32>,
}

impl Affine {
    /// The map of BatchNorm with `mean`, `var`, γ, β and `eps`.
    pub fn new(mean: &[f64], var: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Self {
        let scale: Vec<f32> = var.iter().zip(gamma).map(|(v, g)| (*g as f64 / (v + eps).sqrt()) as f32).collect();
        Self { mean: mean.iter().map(|&m| m as f32).collect(), scale, shift: beta.to_vec() }
    }
}

/// Mean and biased variance of each channel of `[rows, c]` (two passes, f64).
pub fn batch_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (x.len() / c).max(1) as f64;
    let sums = channel_sums::<1>(x, c, ROWS_PER_CHUNK, |chunk, _, acc| {
        for r in chunk.chunks_exact(c) {
            for (a, v) in acc.iter_mut().zip(r) {
                a[0] += *v as f64;
            }
        }
    });
    let mean: Vec<f64> = sums.iter().map(|s| s[0] / rows).collect();
    let sq = channel_sums::<1>(x, c, ROWS_PER_CHUNK, |chunk, _, acc| {
        for r in chunk.chunks_exact(c) {
            for ((a, v), m) in acc.iter_mut().zip(r).zip(&mean) {
                let d = *v as f64 - m;
                a[0] += d * d;
            }
        }
    });
    (mean, sq.iter().map(|s| s[0] / rows).collect())
}

/// `out = relu((x − mean)·scale + β)` per channel.
pub fn affine_relu(x: &[f32], a: &Affine, out: &mut [f32]) {
    let c = a.scale.len();
    out.par_chunks_mut(ROWS_PER_CHUNK * c).zip(x.par_chunks(ROWS_PER_CHUNK * c)).for_each(|(o, xi)| {
        for (or, xr) in o.chunks_exact_mut(c).zip(xi.chunks_exact(c)) {
            for ((((o, x), m), s), t) in or.iter_mut().zip(xr).zip(&a.mean).zip(&a.scale).zip(&a.shift) {
                *o = ((x - m) * s + t).max(0.0);
            }
        }
    });
}

/// `out = relu(x)`.
pub fn relu(x: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(1 << 16).zip(x.par_chunks(1 << 16)).for_each(|(o, xi)| {
        for (o, x) in o.iter_mut().zip(xi) {
            *o = x.max(0.0);
        }
    });
}

/// [`relu`] in place.
pub fn relu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(1 << 16).for_each(|c| {
        for v in c {
            *v = v.max(0.0);
        }
    });
}

/// Zeroes the gradient `g` where the ReLU output `y` was not positive.
pub fn relu_backward(y: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(1 << 16).zip(y.par_chunks(1 << 16)).for_each(|(g, y)| {
        for (g, y) in g.iter_mut().zip(y) {
            if *y <= 0.0 {
                *g = 0.0;
            }
        }
    });
}

/// Backward of `relu(BatchNorm_train(z))` with batch statistics `mean`, `var` (biased): turns the
/// output gradient `g` into the gradient of `z` in place and returns (dγ, dβ).
pub fn bn_relu_backward(
    z: &[f32],
    g: &mut [f32],
    mean: &[f64],
    var: &[f64],
    gamma: &[f32],
    a: &Affine,
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let rows = (z.len() / c) as f64;
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let meanf: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    // Pass 1: apply the ReLU mask (recomputed from z exactly as the forward computed it) and sum
    // g and g·x̂ per channel.
    let sums: Vec<[f64; 2]> = {
        let parts: Vec<Vec<[f64; 2]>> = g
            .par_chunks_mut(ROWS_PER_CHUNK * c)
            .zip(z.par_chunks(ROWS_PER_CHUNK * c))
            .map(|(gi, zi)| {
                // f32 sums over blocks of 64 rows (branch-free and vectorisable), carried in f64.
                let mut acc = vec![[0f64; 2]; c];
                let (mut s0, mut s1) = (vec![0f32; c], vec![0f32; c]);
                for (gb, zb) in gi.chunks_mut(64 * c).zip(zi.chunks(64 * c)) {
                    s0.fill(0.0);
                    s1.fill(0.0);
                    for (gr, zr) in gb.chunks_exact_mut(c).zip(zb.chunks_exact(c)) {
                        let (gr, zr) = (&mut gr[..c], &zr[..c]);
                        let (am, sc, sh, mf) = (&a.mean[..c], &a.scale[..c], &a.shift[..c], &meanf[..c]);
                        let (t0, t1) = (&mut s0[..c], &mut s1[..c]);
                        for ch in 0..c {
                            let on = (zr[ch] - am[ch]) * sc[ch] + sh[ch] > 0.0;
                            let gv = if on { gr[ch] } else { 0.0 };
                            gr[ch] = gv;
                            t0[ch] += gv;
                            t1[ch] += gv * (zr[ch] - mf[ch]);
                        }
                    }
                    for ch in 0..c {
                        acc[ch][0] += s0[ch] as f64;
                        acc[ch][1] += s1[ch] as f64 * invstd[ch];
                    }
                }
                acc
            })
            .collect();
        let mut total = vec![[0f64; 2]; c];
        for p in parts {
            for (t, v) in total.iter_mut().zip(p) {
                t[0] += v[0];
                t[1] += v[1];
            }
        }
        total
    };
    // Pass 2: dz = γ/σ · (g − mean(g) − x̂·mean(g·x̂)).
    let k: Vec<[f32; 4]> = (0..c)
        .map(|ch| {
            let s = gamma[ch] as f64 * invstd[ch];
            let mg = sums[ch][0] / rows;
            let mgx = sums[ch][1] / rows;
            [s as f32, (s * mg) as f32, (s * mgx * invstd[ch]) as f32, mean[ch] as f32]
        })
        .collect();
    g.par_chunks_mut(ROWS_PER_CHUNK * c).zip(z.par_chunks(ROWS_PER_CHUNK * c)).for_each(|(gi, zi)| {
        for (gr, zr) in gi.chunks_exact_mut(c).zip(zi.chunks_exact(c)) {
            for ch in 0..c {
                let [s, smg, w, m] = k[ch];
                gr[ch] = s * gr[ch] - smg - w * (zr[ch] - m);
            }
        }
    });
    (sums.iter().map(|s| s[1] as f32).collect(), sums.iter().map(|s| s[0] as f32).collect())
}
