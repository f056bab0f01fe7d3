//! Direct 3x3 convolution for layers with a handful of input channels: the first layer of every VGG
//! (1 channel for Fashion-MNIST, 3 for RGB).
//!
//! With 9–27 products per output, im2col + GEMM spends its time writing and re-reading the patch
//! matrix and in the GEMM's packing, not in arithmetic. Here each output pixel's channels are held in
//! up to eight 8-lane accumulators (64 channels) that stay in registers across all taps, and the
//! weight gradient sums each tap's products over a row of pixels in registers before carrying them
//! into f64. An earlier attempt that re-read and re-wrote the output row for every tap was slower than
//! im2col (see BENCHMARKS' history); this one is not. The fast engine's forward now takes the
//! implicit GEMM for these layers as well (2.5-3x faster than this forward, `conv::forward_exact`);
//! the forward here serves the im2col engine, the weight gradient every engine.

use rayon::prelude::*;

use super::shape::ConvShape;

/// Lanes of one accumulator.
const L: usize = 8;
/// Accumulators per pass: 64 output channels.
const MAX_V: usize = 8;

/// Whether the direct kernels take this convolution: 3x3 with at most four input channels.
pub fn suits(sh: &ConvShape) -> bool {
    sh.k == 3 && sh.ci <= 4
}

/// `[(ky, kx, ci), co]` rows padded to a multiple of eight channels, so that every accumulator
/// loads whole lanes.
fn pad_rows(v: &[f32], rows: usize, co: usize, cop: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cop];
    for (o, i) in out.chunks_exact_mut(cop).zip(v.chunks_exact(co)).take(rows) {
        o[..co].copy_from_slice(i);
    }
    out
}

/// `out = conv(x, w) + bias` with `x` `[n, h, w, ci]`, weights `[(ky, kx, ci), co]`, `out`
/// `[n, h, w, co]`; the same result as im2col + GEMM up to the order of the f32 sums.
pub fn forward(x: &[f32], wk: &[f32], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    assert!(suits(sh), "direct convolution needs a 3x3 kernel and few input channels: {sh:?}");
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    assert_eq!(x.len(), sh.n * h * w * ci);
    assert_eq!(out.len(), sh.n * h * w * co);
    assert_eq!(wk.len(), 9 * ci * co);
    let cop = co.div_ceil(L) * L;
    let wp = pad_rows(wk, 9 * ci, co, cop);
    let bp = pad_rows(bias, 1, co, cop);
    // One output row (w pixels) per task: thousands of rows per batch, each a few kilobytes.
    out.par_chunks_mut(w * co).enumerate().for_each(|(r, orow)| {
        let (s, y) = (r / h, r % h);
        let img = &x[s * h * w * ci..][..h * w * ci];
        for c0 in (0..cop).step_by(L * MAX_V) {
            let nv = ((cop - c0) / L).min(MAX_V);
            forward_row(nv, img, &wp, &bp, sh, y, c0, orow);
        }
    });
}

super::isa::dispatch! {
    fn forward_row(nv: usize, img: &[f32], wp: &[f32], bp: &[f32], sh: &ConvShape, y: usize, c0: usize, o: &mut [f32]) = forward_row_nv;
}

/// Monomorphises the row kernel for the number of accumulators, so that they live in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_row_nv(nv: usize, img: &[f32], wp: &[f32], bp: &[f32], sh: &ConvShape, y: usize, c0: usize, o: &mut [f32]) {
    match nv {
        1 => forward_row_n::<1>(img, wp, bp, sh, y, c0, o),
        2 => forward_row_n::<2>(img, wp, bp, sh, y, c0, o),
        3 => forward_row_n::<3>(img, wp, bp, sh, y, c0, o),
        4 => forward_row_n::<4>(img, wp, bp, sh, y, c0, o),
        5 => forward_row_n::<5>(img, wp, bp, sh, y, c0, o),
        6 => forward_row_n::<6>(img, wp, bp, sh, y, c0, o),
        7 => forward_row_n::<7>(img, wp, bp, sh, y, c0, o),
        _ => forward_row_n::<8>(img, wp, bp, sh, y, c0, o),
    }
}

/// Output channels `c0..c0 + 8·V` (of the padded `cop`) of output row `y`.
#[inline(always)]
fn forward_row_n<const V: usize>(
    img: &[f32],
    wp: &[f32],
    bp: &[f32],
    sh: &ConvShape,
    y: usize,
    c0: usize,
    orow: &mut [f32],
) {
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    let cop = bp.len();
    let keep = (co - c0.min(co)).min(V * L);
    let mut bias = [[0f32; L]; V];
    for (v, b) in bias.iter_mut().enumerate() {
        b.copy_from_slice(&bp[c0 + v * L..][..L]);
    }
    for xo in 0..w {
        let mut acc = bias;
        for ky in 0..3 {
            let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else { continue };
            for kx in 0..3 {
                let Some(ix) = (xo + kx).checked_sub(1).filter(|&ix| ix < w) else { continue };
                let px = &img[(iy * w + ix) * ci..][..ci];
                for (c, &xv) in px.iter().enumerate() {
                    let wrow = &wp[((ky * 3 + kx) * ci + c) * cop + c0..][..V * L];
                    for v in 0..V {
                        for l in 0..L {
                            acc[v][l] = xv.mul_add(wrow[v * L + l], acc[v][l]);
                        }
                    }
                }
            }
        }
        let dst = &mut orow[xo * co + c0..][..keep];
        for (j, d) in dst.iter_mut().enumerate() {
            *d = acc[j / L][j % L];
        }
    }
}

/// The weight gradient `dW = Σ x ⋆ dz` of [`forward`], `[(ky, kx, ci), co]`: per row of output
/// pixels, each tap's products summed in registers, then carried in f64 per thread's range of rows
/// and reduced in order (the result does not depend on scheduling).
pub fn weight_grad(x: &[f32], dz: &[f32], sh: &ConvShape) -> Vec<f32> {
    assert!(suits(sh), "direct convolution needs a 3x3 kernel and few input channels: {sh:?}");
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    assert_eq!(x.len(), sh.n * h * w * ci);
    assert_eq!(dz.len(), sh.n * h * w * co);
    let cop = co.div_ceil(L) * L;
    let rows = sh.n * h;
    let per = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts: Vec<Vec<f64>> = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f64; 9 * ci * cop];
            let mut dzp = vec![0f32; w * cop];
            for r in t * per..((t + 1) * per).min(rows) {
                let (s, y) = (r / h, r % h);
                for (d, src) in dzp.chunks_exact_mut(cop).zip(dz[r * w * co..][..w * co].chunks_exact(co)) {
                    d[..co].copy_from_slice(src);
                }
                let img = &x[s * h * w * ci..][..h * w * ci];
                for c0 in (0..cop).step_by(L * MAX_V) {
                    let nv = ((cop - c0) / L).min(MAX_V);
                    grad_row(nv, img, &dzp, sh, y, c0, &mut acc);
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; 9 * ci * cop];
    for p in parts {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total.chunks_exact(cop).flat_map(|r| r[..co].iter().map(|&v| v as f32)).collect()
}

super::isa::dispatch! {
    fn grad_row(nv: usize, img: &[f32], dzp: &[f32], sh: &ConvShape, y: usize, c0: usize, acc: &mut [f64]) = grad_row_nv;
}

#[inline(always)]
fn grad_row_nv(nv: usize, img: &[f32], dzp: &[f32], sh: &ConvShape, y: usize, c0: usize, acc: &mut [f64]) {
    match nv {
        1 => grad_row_n::<1>(img, dzp, sh, y, c0, acc),
        2 => grad_row_n::<2>(img, dzp, sh, y, c0, acc),
        3 => grad_row_n::<3>(img, dzp, sh, y, c0, acc),
        4 => grad_row_n::<4>(img, dzp, sh, y, c0, acc),
        5 => grad_row_n::<5>(img, dzp, sh, y, c0, acc),
        6 => grad_row_n::<6>(img, dzp, sh, y, c0, acc),
        7 => grad_row_n::<7>(img, dzp, sh, y, c0, acc),
        _ => grad_row_n::<8>(img, dzp, sh, y, c0, acc),
    }
}

/// Adds output row `y`'s contribution to channels `c0..c0 + 8·V` of every tap's gradient row:
/// `acc[(tap, c)] += Σ_x x[y + ky − 1, x + kx − 1, c] · dz[y, x]`, `dzp` the row padded to `cop`.
#[inline(always)]
fn grad_row_n<const V: usize>(img: &[f32], dzp: &[f32], sh: &ConvShape, y: usize, c0: usize, acc: &mut [f64]) {
    let (h, w, ci) = (sh.h, sh.w, sh.ci);
    let cop = dzp.len() / w;
    for ky in 0..3 {
        let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else { continue };
        let irow = &img[iy * w * ci..][..w * ci];
        for kx in 0..3 {
            // Output columns whose tap (ky, kx) falls inside the image.
            let (lo, hi) = (1usize.saturating_sub(kx), (w + 1 - kx).min(w));
            for c in 0..ci {
                let mut s = [[0f32; L]; V];
                for xo in lo..hi {
                    let xv = irow[(xo + kx - 1) * ci + c];
                    let d = &dzp[xo * cop + c0..][..V * L];
                    for v in 0..V {
                        for l in 0..L {
                            s[v][l] = xv.mul_add(d[v * L + l], s[v][l]);
                        }
                    }
                }
                let a = &mut acc[((ky * 3 + kx) * ci + c) * cop + c0..][..V * L];
                for v in 0..V {
                    for l in 0..L {
                        a[v * L + l] += s[v][l] as f64;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv;
    use crate::kernels::test_data as data;

    /// Forward and weight gradient against float64 sums by the definition, on shapes that cover one
    /// and several 64-channel passes, channel counts that are not multiples of eight, 1x1 and 1-row
    /// maps, and the first layers of the Fashion-MNIST and ImageNet models.
    #[test]
    fn forward_and_weight_gradient_match_the_definition() {
        for sh in [
            ConvShape { n: 3, h: 7, w: 6, ci: 1, co: 24, k: 3 },
            ConvShape { n: 2, h: 5, w: 9, ci: 3, co: 28, k: 3 },
            ConvShape { n: 2, h: 1, w: 1, ci: 2, co: 5, k: 3 },
            ConvShape { n: 1, h: 1, w: 7, ci: 4, co: 72, k: 3 },
            ConvShape { n: 1, h: 12, w: 11, ci: 3, co: 64, k: 3 },
            ConvShape { n: 2, h: 4, w: 3, ci: 3, co: 130, k: 3 },
        ] {
            let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
            let x = data(sh.n * h * w * ci, 5);
            let wk = data(9 * ci * co, 6);
            let b = data(co, 7);
            let dz = data(sh.n * h * w * co, 8);
            let tap = |s: usize, y: usize, xo: usize, ky: usize, kx: usize, c: usize| -> f64 {
                let (iy, ix) = ((y + ky).checked_sub(1), (xo + kx).checked_sub(1));
                match (iy, ix) {
                    (Some(iy), Some(ix)) if iy < h && ix < w => x[((s * h + iy) * w + ix) * ci + c] as f64,
                    _ => 0.0,
                }
            };
            let mut want = vec![0f64; sh.n * h * w * co];
            let mut want_dw = vec![0f64; 9 * ci * co];
            for s in 0..sh.n {
                for y in 0..h {
                    for xo in 0..w {
                        let p = (s * h + y) * w + xo;
                        for o in 0..co {
                            want[p * co + o] = b[o] as f64;
                        }
                        for t in 0..9 {
                            for c in 0..ci {
                                let xv = tap(s, y, xo, t / 3, t % 3, c);
                                for o in 0..co {
                                    want[p * co + o] += xv * wk[(t * ci + c) * co + o] as f64;
                                    want_dw[(t * ci + c) * co + o] += xv * dz[p * co + o] as f64;
                                }
                            }
                        }
                    }
                }
            }
            let mut out = vec![f32::NAN; want.len()];
            forward(&x, &wk, &b, &sh, &mut out);
            for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                assert!((*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{sh:?} out[{i}] {g} vs {e}");
            }
            let dw = weight_grad(&x, &dz, &sh);
            assert_eq!(dw.len(), want_dw.len());
            for (i, (g, e)) in dw.iter().zip(&want_dw).enumerate() {
                assert!((*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{sh:?} dw[{i}] {g} vs {e}");
            }
            // And the same numbers as the im2col path they replace.
            let mut im = vec![0f32; out.len()];
            conv::forward_im2col(&x, &wk, &b, &sh, &mut im);
            assert!(im.iter().zip(&out).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + a.abs())), "{sh:?}");
        }
    }
}
