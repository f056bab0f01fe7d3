//! Stride-1 "same" convolution (k x k, padding k/2; k = 3 or 1) on NHWC activations.
//!
//! Weights are kept as a `[k·k·cin, cout]` matrix in (ky, kx, ci) row order, so that a patch row of
//! the im2col matrix is nine contiguous channel runs copied from the input. [`to_torch`] and
//! [`from_torch`] convert to and from PyTorch's `[cout, cin, k, k]`.

use rayon::prelude::*;

use super::{chunk_samples, sgemm};

/// Shape of a convolution over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Input channels.
    pub ci: usize,
    /// Output channels.
    pub co: usize,
    /// Kernel side (odd).
    pub k: usize,
}

impl ConvShape {
    /// Rows of the weight matrix: k·k·cin.
    pub fn kdim(&self) -> usize {
        self.k * self.k * self.ci
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// How the batch is split: (samples per chunk, samples per im2col block, whether the GEMM itself
    /// runs on all threads). Large maps give each thread its own chunk of samples; small ones (the
    /// 4x4 and 2x2 maps of a 32x32 input) leave too few rows per thread to amortise streaming the
    /// weights, so the whole batch goes through one parallel GEMM.
    fn split(&self) -> (usize, usize, bool) {
        let per = chunk_samples(self.n);
        let block = 2048usize.div_ceil(self.hw()).max(1);
        if per * self.hw() >= 1024 || rayon::current_num_threads() == 1 {
            (per, block.min(per), false)
        } else {
            (self.n, block.min(self.n), true)
        }
    }
}

/// PyTorch `[cout, cin, k, k]` → `[(ky, kx, ci), cout]`.
pub fn from_torch(w: &[f32], co: usize, ci: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    out[((ky * k + kx) * ci + i) * co + o] = w[((o * ci + i) * k + ky) * k + kx];
                }
            }
        }
    }
    out
}

/// `[(ky, kx, ci), cout]` → PyTorch `[cout, cin, k, k]`.
pub fn to_torch(w: &[f32], co: usize, ci: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    out[((o * ci + i) * k + ky) * k + kx] = w[((ky * k + kx) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// Patches of `s` samples `[s, h, w, ci]` into `p`, `[s·h·w, k·k·ci]` (zeros outside the image).
fn im2col(x: &[f32], s: usize, sh: &ConvShape, p: &mut [f32]) {
    let (h, w, ci, k) = (sh.h, sh.w, sh.ci, sh.k);
    let pad = k / 2;
    let kd = sh.kdim();
    for si in 0..s {
        let xs = &x[si * h * w * ci..(si + 1) * h * w * ci];
        for y in 0..h {
            for xx in 0..w {
                let row = &mut p[((si * h + y) * w + xx) * kd..][..kd];
                for ky in 0..k {
                    let iy = y as isize + ky as isize - pad as isize;
                    for kx in 0..k {
                        let ix = xx as isize + kx as isize - pad as isize;
                        let dst = &mut row[(ky * k + kx) * ci..][..ci];
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            dst.fill(0.0);
                        } else {
                            dst.copy_from_slice(&xs[(iy as usize * w + ix as usize) * ci..][..ci]);
                        }
                    }
                }
            }
        }
    }
}

/// Adds patch gradients `dp` (`[s·h·w, k·k·ci]`) back onto the input gradient `dx` (`[s, h, w, ci]`).
fn col2im(dp: &[f32], s: usize, sh: &ConvShape, dx: &mut [f32]) {
    let (h, w, ci, k) = (sh.h, sh.w, sh.ci, sh.k);
    let pad = k / 2;
    let kd = sh.kdim();
    dx[..s * h * w * ci].fill(0.0);
    for si in 0..s {
        let dxs = &mut dx[si * h * w * ci..(si + 1) * h * w * ci];
        for y in 0..h {
            for xx in 0..w {
                let row = &dp[((si * h + y) * w + xx) * kd..][..kd];
                for ky in 0..k {
                    let iy = y as isize + ky as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = xx as isize + kx as isize - pad as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let src = &row[(ky * k + kx) * ci..][..ci];
                        let dst = &mut dxs[(iy as usize * w + ix as usize) * ci..][..ci];
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// `out = conv(x, w) + bias`; `x` is `[n, h, w, ci]`, `out` `[n, h, w, co]`.
pub fn forward(x: &[f32], wk: &[f32], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    let (in_len, out_len, kd) = (sh.hw() * sh.ci, sh.hw() * sh.co, sh.kdim());
    assert_eq!(x.len(), sh.n * in_len);
    assert_eq!(out.len(), sh.n * out_len);
    assert_eq!(wk.len(), kd * sh.co);
    let (per, block, par) = sh.split();
    out.par_chunks_mut(per * out_len).zip(x.par_chunks(per * in_len)).for_each(|(o, xi)| {
        let samples = xi.len() / in_len;
        let bs = block.min(samples);
        let mut p = if sh.k == 1 { vec![] } else { vec![0f32; bs * sh.hw() * kd] };
        for b0 in (0..samples).step_by(bs) {
            let s = bs.min(samples - b0);
            let rows = s * sh.hw();
            let xb = &xi[b0 * in_len..(b0 + s) * in_len];
            let ob = &mut o[b0 * out_len..(b0 + s) * out_len];
            for r in ob.chunks_exact_mut(sh.co) {
                r.copy_from_slice(bias);
            }
            let pm: &[f32] = if sh.k == 1 {
                xb
            } else {
                im2col(xb, s, sh, &mut p);
                &p[..rows * kd]
            };
            sgemm(rows, sh.co, kd, pm, [kd, 1], wk, [sh.co, 1], ob, sh.co, true, par);
        }
    });
}

/// Gradients of [`forward`]: returns (dW `[(ky,kx,ci), co]`, dbias `[co]`) and, when `dx` is given,
/// writes the input gradient into it.
pub fn backward(x: &[f32], wk: &[f32], dz: &[f32], sh: &ConvShape, dx: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
    let (in_len, out_len, kd, co) = (sh.hw() * sh.ci, sh.hw() * sh.co, sh.kdim(), sh.co);
    assert_eq!(x.len(), sh.n * in_len);
    assert_eq!(dz.len(), sh.n * out_len);
    let (per, block, par) = sh.split();
    let work = |xi: &[f32], dzi: &[f32], mut dxi: Option<&mut [f32]>| {
        let samples = xi.len() / in_len;
        let bs = block.min(samples);
        let mut dw = vec![0f32; kd * co];
        let mut db = vec![0f64; co];
        let mut p = if sh.k == 1 { vec![] } else { vec![0f32; bs * sh.hw() * kd] };
        let mut dp = if sh.k == 1 || dxi.is_none() { vec![] } else { vec![0f32; bs * sh.hw() * kd] };
        for b0 in (0..samples).step_by(bs) {
            let s = bs.min(samples - b0);
            let rows = s * sh.hw();
            let xb = &xi[b0 * in_len..(b0 + s) * in_len];
            let dzb = &dzi[b0 * out_len..(b0 + s) * out_len];
            for r in dzb.chunks_exact(co) {
                for (a, v) in db.iter_mut().zip(r) {
                    *a += *v as f64;
                }
            }
            let pm: &[f32] = if sh.k == 1 {
                xb
            } else {
                im2col(xb, s, sh, &mut p);
                &p[..rows * kd]
            };
            // dW += Pᵀ · dZ
            sgemm(kd, co, rows, pm, [1, kd], dzb, [co, 1], &mut dw, co, true, par);
            if let Some(dxi) = dxi.as_deref_mut() {
                let dxb = &mut dxi[b0 * in_len..(b0 + s) * in_len];
                if sh.k == 1 {
                    sgemm(rows, kd, co, dzb, [co, 1], wk, [1, co], dxb, kd, false, par);
                } else {
                    // dP = dZ · Wᵀ, then each patch row goes back where it was read from.
                    sgemm(rows, kd, co, dzb, [co, 1], wk, [1, co], &mut dp, kd, false, par);
                    col2im(&dp[..rows * kd], s, sh, dxb);
                }
            }
        }
        (dw, db)
    };
    let parts: Vec<(Vec<f32>, Vec<f64>)> = match dx {
        Some(dx) => {
            assert_eq!(dx.len(), sh.n * in_len);
            dx.par_chunks_mut(per * in_len)
                .zip(x.par_chunks(per * in_len).zip(dz.par_chunks(per * out_len)))
                .map(|(dxi, (xi, dzi))| work(xi, dzi, Some(dxi)))
                .collect()
        }
        None => {
            x.par_chunks(per * in_len).zip(dz.par_chunks(per * out_len)).map(|(xi, dzi)| work(xi, dzi, None)).collect()
        }
    };
    let mut dw = vec![0f32; kd * co];
    let mut db = vec![0f64; co];
    for (pw, pb) in parts {
        for (a, v) in dw.iter_mut().zip(pw) {
            *a += v;
        }
        for (a, v) in db.iter_mut().zip(pb) {
            *a += v;
        }
    }
    (dw, db.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, by definition.
    fn reference(x: &[f32], w: &[f32], b: &[f32], sh: &ConvShape) -> Vec<f32> {
        let pad = (sh.k / 2) as isize;
        let mut out = vec![0f32; sh.n * sh.h * sh.w * sh.co];
        for n in 0..sh.n {
            for y in 0..sh.h {
                for xx in 0..sh.w {
                    for o in 0..sh.co {
                        let mut acc = b[o] as f64;
                        for i in 0..sh.ci {
                            for ky in 0..sh.k {
                                for kx in 0..sh.k {
                                    let iy = y as isize + ky as isize - pad;
                                    let ix = xx as isize + kx as isize - pad;
                                    if iy < 0 || ix < 0 || iy >= sh.h as isize || ix >= sh.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * sh.h + iy as usize) * sh.w + ix as usize) * sh.ci + i];
                                    acc += xv as f64 * w[((o * sh.ci + i) * sh.k + ky) * sh.k + kx] as f64;
                                }
                            }
                        }
                        out[((n * sh.h + y) * sh.w + xx) * sh.co + o] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        for sh in [
            ConvShape { n: 5, h: 7, w: 6, ci: 3, co: 4, k: 3 },
            ConvShape { n: 3, h: 2, w: 2, ci: 5, co: 2, k: 3 },
            ConvShape { n: 4, h: 3, w: 5, ci: 4, co: 3, k: 1 },
        ] {
            let x = data(sh.n * sh.h * sh.w * sh.ci, 1);
            let w = data(sh.co * sh.kdim(), 2);
            let b = data(sh.co, 3);
            let wk = from_torch(&w, sh.co, sh.ci, sh.k);
            assert_eq!(to_torch(&wk, sh.co, sh.ci, sh.k), w);
            let mut out = vec![0f32; sh.n * sh.h * sh.w * sh.co];
            forward(&x, &wk, &b, &sh, &mut out);
            assert!(close(&out, &reference(&x, &w, &b, &sh)), "{sh:?}");
            // Gradients of L = Σ g·out by finite differences of the (linear) reference.
            let g = data(out.len(), 4);
            let mut dx = vec![0f32; x.len()];
            let (dw, db) = backward(&x, &wk, &g, &sh, Some(&mut dx));
            let dw = to_torch(&dw, sh.co, sh.ci, sh.k);
            let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
                reference(x, w, b, &sh).iter().zip(&g).map(|(o, g)| *o as f64 * *g as f64).sum()
            };
            let base = loss(&x, &w, &b);
            for (i, want) in dw.iter().enumerate().step_by(5) {
                let mut w2 = w.clone();
                w2[i] += 1.0;
                assert!(((loss(&x, &w2, &b) - base) as f32 - want).abs() < 1e-2, "dw[{i}] {sh:?}");
            }
            for (i, want) in dx.iter().enumerate().step_by(7) {
                let mut x2 = x.clone();
                x2[i] += 1.0;
                assert!(((loss(&x2, &w, &b) - base) as f32 - want).abs() < 1e-2, "dx[{i}] {sh:?}");
            }
            let sums: Vec<f32> = (0..sh.co).map(|o| g.iter().skip(o).step_by(sh.co).sum()).collect();
            assert!(close(&db, &sums));
        }
    }
}
