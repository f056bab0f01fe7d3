//! 3x3 convolution as an implicit GEMM: the GEMM micro-kernel reads its left-hand rows straight
//! from a zero-padded copy of the input instead of from an im2col patch matrix.
//!
//! With NHWC and the weights as `[(ky, kx, ci), co]`, the nine taps of six neighbouring output
//! pixels of one row are six neighbouring input pixels, `ci` floats apart, shifted by the tap's
//! offset in the padded map. So the product `patches · W` needs no patches: the micro-kernel keeps a
//! 6x16 block of outputs (12x16 with AVX-512) in registers through all nine taps, broadcasting input channels from the
//! padded map and reading the filter's packed panels. im2col writes and re-reads nine copies of the
//! input (the patch matrix is 9x the map), which is where its time goes for maps of few channels;
//! here the only extra traffic is the padded copy (about 1.3x the map, once). The products and their
//! order per output are those of im2col + GEMM without blocking of k: the result is as exact as the
//! reference path's (no Winograd rounding), which is what the training forward needs.

use std::cell::RefCell;

use rayon::prelude::*;

use super::isa::Isa;
use super::packed::{NR, PackedB};
use super::shape::ConvShape;

/// Output pixels per micro-kernel call on the AVX2 and portable paths (twelve 8-lane accumulators).
const MR: usize = 6;
/// Output pixels per micro-kernel call on the AVX-512 path (twelve 16-lane accumulators).
const MR_512: usize = 12;
/// Bytes of filter panels one task keeps hot while it runs over its rows.
const PANEL_BYTES: usize = 256 << 10;

thread_local! {
    /// The padded input, kept between calls.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether this path takes the convolution: a 3x3 kernel (padding 1), any channel count (the first
/// layer's 1–3 channels included: faster than [`super::direct`]'s loops there too).
pub fn suits(sh: &ConvShape) -> bool {
    sh.k == 3
}

/// The filter `[(ky, kx, ci), co]` packed for [`forward`].
pub fn pack_filter(wk: &[f32], sh: &ConvShape) -> PackedB {
    PackedB::new(wk, sh.kdim(), sh.co, [sh.co, 1])
}

/// `x`, `[n, h, w, c]`, into `xp`, `[n, h + 2, w + 2, c]`, with a border of zeros.
fn pad(x: &[f32], [n, h, w, c]: [usize; 4], xp: &mut [f32]) {
    let (hp, wp) = (h + 2, w + 2);
    xp.par_chunks_mut(wp * c).enumerate().for_each(|(r, row)| {
        let y = r % hp;
        if y == 0 || y == hp - 1 {
            row.fill(0.0);
            return;
        }
        let s = r / hp;
        row[..c].fill(0.0);
        row[(w + 1) * c..].fill(0.0);
        row[c..(w + 1) * c].copy_from_slice(&x[((s * h + y - 1) * w) * c..][..w * c]);
    });
    debug_assert_eq!(xp.len(), n * hp * wp * c);
}

/// `out = conv(x, w) + bias` with `b = pack_filter(w)`; `x` `[n, h, w, ci]`, `out` `[n, h, w, co]`.
pub fn forward(x: &[f32], b: &PackedB, bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    forward_on(super::isa::active(), x, b, bias, sh, out)
}

/// [`forward`] on the kernel path `isa` (which the CPU must have), so that tests can run every path
/// in one process.
fn forward_on(isa: Isa, x: &[f32], b: &PackedB, bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    assert!(isa.is_supported(), "{isa} kernels on a CPU without them");
    let (n, h, w, ci, co) = (sh.n, sh.h, sh.w, sh.ci, sh.co);
    assert_eq!(sh.k, 3, "the implicit GEMM is written for 3x3 kernels");
    assert_eq!(x.len(), n * h * w * ci);
    assert_eq!(out.len(), n * h * w * co);
    assert!(b.k() == 9 * ci && b.n() == co, "filter of another shape");
    assert_eq!(bias.len(), co);
    if out.is_empty() {
        return;
    }
    let (hp, wp) = (h + 2, w + 2);
    let mut xp = PADDED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    xp.resize(n * hp * wp * ci, 0.0);
    pad(x, [n, h, w, ci], &mut xp[..n * hp * wp * ci]);
    let panels = b.panels();
    let mut bias_p = vec![0f32; panels * NR];
    bias_p[..co].copy_from_slice(bias);
    // Panels per group: as many as stay in L2 while a task's rows pass under them.
    let group = (PANEL_BYTES / (9 * ci * NR * 4)).clamp(1, panels);
    // Tasks of whole output rows: enough of them to balance the threads, each with rows enough to
    // reuse a group of panels.
    let rows = n * h;
    let per_task = rows.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
    let offs: [usize; 9] = std::array::from_fn(|t| ((t / 3) * wp + t % 3) * ci);
    let mr = if isa >= Isa::Avx512 { MR_512 } else { MR };
    let xp_ref = &xp[..];
    out.par_chunks_mut(per_task * w * co).enumerate().for_each(|(task, block)| {
        let r0 = task * per_task;
        let nrows = block.len() / (w * co);
        // Where a micro-kernel call's pixels run past the end of an output row.
        let mut spill = [0f32; MR_512 * NR];
        for g0 in (0..panels).step_by(group) {
            // The task's rows, in runs within one image. Output pixel (y, x) reads its taps from
            // padded pixel (y, x) on, so a run's pixels are one stretch of the image's padded map,
            // `wp` positions per row of which the last two are the padding: the micro-kernel calls
            // go along the stretch, across row ends, and fill their `mr` rows even where a row
            // has fewer pixels (a 4-pixel row used a third of the AVX-512 kernel's 12: CIFAR
            // VGG-16-BN's conv4_2 at batch 64, 4x4 maps, took 47 ms a row at a time, 36-40 ms
            // along the stretch; Intel Xeon family 6 model 207, 2 threads). Each output is the same
            // sum in the same order either way.
            let mut r = r0;
            while r < r0 + nrows {
                let (s, y) = (r / h, r % h);
                let run = (h - y).min(r0 + nrows - r);
                let image = &xp_ref[s * hp * wp * ci..];
                let (q0, q1) = (y * wp, (y + run - 1) * wp + w);
                // Output pixel of stretch position q within this task's block.
                let pixel = |q: usize| (r - r0 + q / wp - y) * w + q % wp;
                for p in g0..(g0 + group).min(panels) {
                    let cols = NR.min(co - p * NR);
                    let (bp, bias) = (b.panel(p), &bias_p[p * NR..][..NR]);
                    for q in (q0..q1).step_by(mr) {
                        let rows = mr.min(q1 - q);
                        let a = &image[q * ci..];
                        if q % wp + rows <= w {
                            let c = &mut block[pixel(q) * co + p * NR..];
                            micro_rows(rows, a, &offs, bp, bias, c, Taps { ci, lda: ci, ldc: co, cols }, isa);
                        } else {
                            micro_rows(rows, a, &offs, bp, bias, &mut spill, Taps { ci, lda: ci, ldc: NR, cols }, isa);
                            for (i, row) in spill.chunks_exact(NR).take(rows).enumerate() {
                                if (q + i) % wp < w {
                                    block[pixel(q + i) * co + p * NR..][..cols].copy_from_slice(&row[..cols]);
                                }
                            }
                        }
                    }
                }
                r += run;
            }
        }
    });
    PADDED.with(|p| *p.borrow_mut() = xp);
}

/// [`micro`] for `rows` (1 to 12) neighbouring output pixels.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn micro_rows(rows: usize, a: &[f32], offs: &[usize; 9], b: &[f32], bias: &[f32], c: &mut [f32], t: Taps, isa: Isa) {
    match rows {
        12 => micro::<12>(a, offs, b, bias, c, t, isa),
        11 => micro::<11>(a, offs, b, bias, c, t, isa),
        10 => micro::<10>(a, offs, b, bias, c, t, isa),
        9 => micro::<9>(a, offs, b, bias, c, t, isa),
        8 => micro::<8>(a, offs, b, bias, c, t, isa),
        7 => micro::<7>(a, offs, b, bias, c, t, isa),
        6 => micro::<6>(a, offs, b, bias, c, t, isa),
        5 => micro::<5>(a, offs, b, bias, c, t, isa),
        4 => micro::<4>(a, offs, b, bias, c, t, isa),
        3 => micro::<3>(a, offs, b, bias, c, t, isa),
        2 => micro::<2>(a, offs, b, bias, c, t, isa),
        _ => micro::<1>(a, offs, b, bias, c, t, isa),
    }
}

/// One micro-tile's geometry.
#[derive(Clone, Copy)]
struct Taps {
    /// Input channels (the depth of each tap).
    ci: usize,
    /// Floats between neighbouring pixels of the padded input.
    lda: usize,
    /// Floats between neighbouring output pixels.
    ldc: usize,
    /// Valid columns of the panel.
    cols: usize,
}

/// `c[R x cols] = bias + Σ_taps a[offs[t]..] · b[t]` for `R` neighbouring output pixels.
#[inline(always)]
fn micro<const R: usize>(a: &[f32], offs: &[usize; 9], b: &[f32], bias: &[f32], c: &mut [f32], t: Taps, isa: Isa) {
    // Bounds for the unchecked reads below.
    assert!(offs[8] + (R - 1) * t.lda + t.ci <= a.len() && 9 * t.ci * NR <= b.len() && bias.len() == NR);
    assert!((R - 1) * t.ldc + t.cols <= c.len());
    let (ap, bp, biasp, cp) = (a.as_ptr(), b.as_ptr(), bias.as_ptr(), c.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `forward_on` checked that the CPU has the path's instructions; the asserts above
        // bound every access.
        Isa::Avx512 => return unsafe { avx512::micro::<R>(ap, offs, bp, biasp, cp, t) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { avx2::micro::<R>(ap, offs, bp, biasp, cp, t) },
        Isa::Generic => {}
    }
    let _ = (isa, ap, bp, biasp, cp);
    let mut acc = [[0f32; NR]; R];
    for row in acc.iter_mut() {
        row.copy_from_slice(bias);
    }
    for (tap, off) in offs.iter().enumerate() {
        for kk in 0..t.ci {
            let bk = &b[(tap * t.ci + kk) * NR..][..NR];
            for (r, row) in acc.iter_mut().enumerate() {
                let av = a[off + r * t.lda + kk];
                for (x, bv) in row.iter_mut().zip(bk) {
                    *x = av.mul_add(*bv, *x);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        c[r * t.ldc..][..t.cols].copy_from_slice(&row[..t.cols]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{NR, Taps};
    use std::arch::x86_64::*;

    /// SAFETY: the caller guarantees AVX2+FMA and that every read of `a` (R pixels of `ci` floats
    /// at each offset), `b` (`9 · ci · 16`), `bias` (16) and write of `c` (R rows of `cols`) is valid.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn micro<const R: usize>(
        a: *const f32,
        offs: &[usize; 9],
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        t: Taps,
    ) {
        unsafe {
            let (z0, z1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
            let mut acc = [[z0, z1]; R];
            let mut bk = b;
            for off in offs {
                let at = a.add(*off);
                for kk in 0..t.ci {
                    let b0 = _mm256_loadu_ps(bk);
                    let b1 = _mm256_loadu_ps(bk.add(8));
                    for (r, x) in acc.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*at.add(r * t.lda + kk));
                        x[0] = _mm256_fmadd_ps(av, b0, x[0]);
                        x[1] = _mm256_fmadd_ps(av, b1, x[1]);
                    }
                    bk = bk.add(NR);
                }
            }
            for (r, x) in acc.iter().enumerate() {
                let dst = c.add(r * t.ldc);
                if t.cols == NR {
                    _mm256_storeu_ps(dst, x[0]);
                    _mm256_storeu_ps(dst.add(8), x[1]);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), x[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), x[1]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, t.cols);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{NR, Taps};
    use std::arch::x86_64::*;

    /// SAFETY: the caller guarantees AVX-512F and that every read of `a` (R pixels of `ci` floats
    /// at each offset), `b` (`9 · ci · 16`), `bias` (16) and write of `c` (R rows of `cols`) is valid.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn micro<const R: usize>(
        a: *const f32,
        offs: &[usize; 9],
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        t: Taps,
    ) {
        unsafe {
            let mut acc = [_mm512_loadu_ps(bias); R];
            let mut bk = b;
            for off in offs {
                let at = a.add(*off);
                for kk in 0..t.ci {
                    let bv = _mm512_loadu_ps(bk);
                    for (r, x) in acc.iter_mut().enumerate() {
                        *x = _mm512_fmadd_ps(_mm512_set1_ps(*at.add(r * t.lda + kk)), bv, *x);
                    }
                    bk = bk.add(NR);
                }
            }
            // The last panel may be partial: a masked store writes only its columns.
            let mask: __mmask16 = if t.cols >= NR { 0xffff } else { (1u16 << t.cols) - 1 };
            for (r, x) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * t.ldc), mask, *x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv;
    use crate::kernels::test_data as data;

    /// Against im2col + GEMM (itself tested against the definition), on every kernel path the CPU
    /// has: widths that leave every remainder of the 6- and 12-pixel tiles, partial panels, one-pixel maps, several tasks per image.
    #[test]
    fn agrees_with_im2col() {
        for sh in [
            ConvShape { n: 3, h: 5, w: 13, ci: 7, co: 20, k: 3 },
            ConvShape { n: 2, h: 8, w: 8, ci: 48, co: 96, k: 3 },
            ConvShape { n: 4, h: 1, w: 1, ci: 9, co: 33, k: 3 },
            ConvShape { n: 1, h: 29, w: 3, ci: 5, co: 16, k: 3 },
            ConvShape { n: 2, h: 2, w: 11, ci: 300, co: 17, k: 3 },
            ConvShape { n: 1, h: 3, w: 22, ci: 16, co: 32, k: 3 },
        ] {
            let x = data(sh.n * sh.h * sh.w * sh.ci, 1);
            let wk = data(9 * sh.ci * sh.co, 2);
            let bias = data(sh.co, 3);
            let mut want = vec![0f32; sh.n * sh.h * sh.w * sh.co];
            conv::forward_im2col(&x, &wk, &bias, &sh, &mut want);
            let packed = pack_filter(&wk, &sh);
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; want.len()];
                forward_on(isa, &x, &packed, &bias, &sh, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{isa} {sh:?} [{i}]: {g} vs {w}");
                }
            }
        }
    }

    /// Each output is the bias plus the nine taps' products over the channels, fused-multiply-added
    /// in (tap, channel) order, bit for bit, on every path and wherever the pixel falls in a
    /// micro-kernel call (calls run across row ends: 4-, 5- and 13-pixel rows). The training
    /// forward's agreement with PyTorch rests on these sums, not on any other rounding.
    #[test]
    fn every_output_is_one_sum_in_tap_order() {
        for sh in [
            ConvShape { n: 3, h: 4, w: 4, ci: 19, co: 20, k: 3 },
            ConvShape { n: 2, h: 3, w: 13, ci: 8, co: 16, k: 3 },
            ConvShape { n: 2, h: 5, w: 5, ci: 3, co: 33, k: 3 },
        ] {
            let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
            let x = data(sh.n * h * w * ci, 1);
            let wk = data(9 * ci * co, 2);
            let bias = data(co, 3);
            let mut want = vec![0f32; sh.n * h * w * co];
            for (px, out) in want.chunks_exact_mut(co).enumerate() {
                let (s, y, xx) = (px / (h * w), px / w % h, px % w);
                for (o, v) in out.iter_mut().enumerate() {
                    let mut acc = bias[o];
                    for tap in 0..9 {
                        let (iy, ix) = ((y + tap / 3).wrapping_sub(1), (xx + tap % 3).wrapping_sub(1));
                        for c in 0..ci {
                            let xv = if iy < h && ix < w { x[((s * h + iy) * w + ix) * ci + c] } else { 0.0 };
                            acc = xv.mul_add(wk[(tap * ci + c) * co + o], acc);
                        }
                    }
                    *v = acc;
                }
            }
            let packed = pack_filter(&wk, &sh);
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; want.len()];
                forward_on(isa, &x, &packed, &bias, &sh, &mut got);
                assert_eq!(got, want, "{isa} {sh:?}");
            }
        }
    }
}
