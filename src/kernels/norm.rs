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

/// Mean and biased variance of each channel of `[rows, c]`: two passes, f32 sums over blocks of 64
/// rows carried in f64; the second pass sums `x − mean` and its square, so that the f32 rounding of
/// the mean is corrected for (`var = E[d²] − E[d]²`).
pub fn batch_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (x.len() / c).max(1) as f64;
    let sums = channel_sums::<2>(x, c, ROWS_PER_CHUNK, |chunk, _, acc| row_sums(chunk, c, None, acc));
    let mean: Vec<f64> = sums.iter().map(|s| s[0] / rows).collect();
    let meanf: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let centred = channel_sums::<2>(x, c, ROWS_PER_CHUNK, |chunk, _, acc| row_sums(chunk, c, Some(&meanf), acc));
    let mut var = Vec::with_capacity(c);
    let mut mean_out = Vec::with_capacity(c);
    for (s, m) in centred.iter().zip(&meanf) {
        let d = s[0] / rows;
        mean_out.push(*m as f64 + d);
        var.push((s[1] / rows - d * d).max(0.0));
    }
    (mean_out, var)
}

super::isa::dispatch! {
    /// Per-channel sums of the rows of `chunk` (and of their squares) into `acc`, after subtracting
    /// `centre` when given.
    fn row_sums(chunk: &[f32], c: usize, centre: Option<&[f32]>, acc: &mut [[f64; 2]]) = row_sums_body;
}

#[inline(always)]
fn row_sums_body(chunk: &[f32], c: usize, centre: Option<&[f32]>, acc: &mut [[f64; 2]]) {
    let (mut s0, mut s1) = (vec![0f32; c], vec![0f32; c]);
    for block in chunk.chunks(64 * c) {
        s0.fill(0.0);
        s1.fill(0.0);
        let (t0, t1) = (&mut s0[..c], &mut s1[..c]);
        match centre {
            None => {
                for r in block.chunks_exact(c) {
                    let r = &r[..c];
                    for ch in 0..c {
                        t0[ch] += r[ch];
                    }
                }
            }
            Some(m) => {
                let m = &m[..c];
                for r in block.chunks_exact(c) {
                    let r = &r[..c];
                    for ch in 0..c {
                        let d = r[ch] - m[ch];
                        t0[ch] += d;
                        t1[ch] += d * d;
                    }
                }
            }
        }
        for ch in 0..c {
            acc[ch][0] += t0[ch] as f64;
            acc[ch][1] += t1[ch] as f64;
        }
    }
}

/// `out = relu((x − mean)·scale + β)` per channel.
pub fn affine_relu(x: &[f32], a: &Affine, out: &mut [f32]) {
    let c = a.scale.len();
    out.par_chunks_mut(ROWS_PER_CHUNK * c)
        .zip(x.par_chunks(ROWS_PER_CHUNK * c))
        .for_each(|(o, xi)| affine_relu_rows(xi, a, o));
}

super::isa::dispatch! {
    fn affine_relu_rows(x: &[f32], a: &Affine, out: &mut [f32]) = affine_relu_body;
}

#[inline(always)]
fn affine_relu_body(x: &[f32], a: &Affine, out: &mut [f32]) {
    let c = a.scale.len();
    let (m, s, t) = (&a.mean[..c], &a.scale[..c], &a.shift[..c]);
    for (or, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let (or, xr) = (&mut or[..c], &xr[..c]);
        for ch in 0..c {
            or[ch] = ((xr[ch] - m[ch]) * s[ch] + t[ch]).max(0.0);
        }
    }
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
            *g = if *y > 0.0 { *g } else { 0.0 };
        }
    });
}

/// Sums per-channel values in place over every process whose rows share the statistics (the
/// identity in one process).
pub type SumAcross<'a> = &'a dyn Fn(&mut [f64]);

/// Backward of `relu(BatchNorm_train(z))` with batch statistics `mean`, `var` (biased): turns the
/// output gradient `g` into the gradient of `z` in place and returns (dγ, dβ).
///
/// `(count, reduce)`: the statistics are over `count` values per channel, of which these rows are
/// some (all of them in one process); `reduce` sums the per-channel sums `[Σg…, Σg·x̂…]` over the
/// rest (the identity in one process), as synchronised BatchNorm's backward does.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_backward(
    z: &[f32],
    g: &mut [f32],
    mean: &[f64],
    var: &[f64],
    gamma: &[f32],
    a: &Affine,
    eps: f64,
    (count, reduce): (usize, SumAcross),
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let rows = count as f64;
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let meanf: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    // Pass 1: apply the ReLU mask (recomputed from z exactly as the forward computed it) and sum
    // g and g·x̂ per channel.
    let (local, sums): (Vec<[f64; 2]>, Vec<[f64; 2]>) = {
        let parts: Vec<Vec<[f64; 2]>> = g
            .par_chunks_mut(ROWS_PER_CHUNK * c)
            .zip(z.par_chunks(ROWS_PER_CHUNK * c))
            .map(|(gi, zi)| {
                let mut acc = vec![[0f64; 2]; c];
                mask_sums(gi, zi, a, &meanf, &invstd, &mut acc);
                acc
            })
            .collect();
        let mut total = vec![0f64; 2 * c];
        for p in parts {
            for (ch, v) in p.iter().enumerate() {
                total[ch] += v[0];
                total[c + ch] += v[1];
            }
        }
        let local = (0..c).map(|ch| [total[ch], total[c + ch]]).collect();
        // The input gradient needs the sums over every process; dγ and dβ are this process's
        // share, summed with the other gradients later.
        reduce(&mut total);
        (local, (0..c).map(|ch| [total[ch], total[c + ch]]).collect())
    };
    // Pass 2: dz = γ/σ · (g − mean(g) − x̂·mean(g·x̂)), coefficients per channel in separate
    // arrays (an array of per-channel structs kept this loop scalar).
    let mut k = [vec![0f32; c], vec![0f32; c], vec![0f32; c], vec![0f32; c]];
    for ch in 0..c {
        let s = gamma[ch] as f64 * invstd[ch];
        let mg = sums[ch][0] / rows;
        let mgx = sums[ch][1] / rows;
        k[0][ch] = s as f32;
        k[1][ch] = (s * mg) as f32;
        k[2][ch] = (s * mgx * invstd[ch]) as f32;
        k[3][ch] = mean[ch] as f32;
    }
    g.par_chunks_mut(ROWS_PER_CHUNK * c)
        .zip(z.par_chunks(ROWS_PER_CHUNK * c))
        .for_each(|(gi, zi)| input_grad(gi, zi, &k));
    (local.iter().map(|s| s[1] as f32).collect(), local.iter().map(|s| s[0] as f32).collect())
}

/// Pass 1 of [`bn_relu_backward`] over a chunk of rows: f32 sums over blocks of 64 rows
/// (branch-free and vectorisable), carried in f64.
#[inline(always)]
fn mask_sums_body(gi: &mut [f32], zi: &[f32], a: &Affine, meanf: &[f32], invstd: &[f64], acc: &mut [[f64; 2]]) {
    let c = meanf.len();
    let (mut s0, mut s1) = (vec![0f32; c], vec![0f32; c]);
    let (am, sc, sh, mf) = (&a.mean[..c], &a.scale[..c], &a.shift[..c], &meanf[..c]);
    for (gb, zb) in gi.chunks_mut(64 * c).zip(zi.chunks(64 * c)) {
        s0.fill(0.0);
        s1.fill(0.0);
        let (t0, t1) = (&mut s0[..c], &mut s1[..c]);
        for (gr, zr) in gb.chunks_exact_mut(c).zip(zb.chunks_exact(c)) {
            let (gr, zr) = (&mut gr[..c], &zr[..c]);
            for ch in 0..c {
                // Loaded before the test: a load under the condition kept this loop scalar and
                // branchy (13% of a training step).
                let g0 = gr[ch];
                let on = (zr[ch] - am[ch]) * sc[ch] + sh[ch] > 0.0;
                let gv = if on { g0 } else { 0.0 };
                gr[ch] = gv;
                t0[ch] += gv;
                t1[ch] += gv * (zr[ch] - mf[ch]);
            }
        }
        for ch in 0..c {
            acc[ch][0] += t0[ch] as f64;
            acc[ch][1] += t1[ch] as f64 * invstd[ch];
        }
    }
}

super::isa::dispatch! {
    fn mask_sums(gi: &mut [f32], zi: &[f32], a: &Affine, meanf: &[f32], invstd: &[f64], acc: &mut [[f64; 2]]) = mask_sums_body;
}

/// Pass 2 of [`bn_relu_backward`] over a chunk of rows, with `k` = (γ/σ, γ/σ·mean(g),
/// γ/σ²·mean(g·x̂), mean) per channel.
#[inline(always)]
fn input_grad_body(gi: &mut [f32], zi: &[f32], k: &[Vec<f32>; 4]) {
    let c = k[0].len();
    let (s, smg, w, m) = (&k[0][..c], &k[1][..c], &k[2][..c], &k[3][..c]);
    for (gr, zr) in gi.chunks_exact_mut(c).zip(zi.chunks_exact(c)) {
        let (gr, zr) = (&mut gr[..c], &zr[..c]);
        for ch in 0..c {
            gr[ch] = s[ch] * gr[ch] - smg[ch] - w[ch] * (zr[ch] - m[ch]);
        }
    }
}

super::isa::dispatch! {
    fn input_grad(gi: &mut [f32], zi: &[f32], k: &[Vec<f32>; 4]) = input_grad_body;
}
