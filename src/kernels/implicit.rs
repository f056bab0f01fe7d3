//! 3x3 convolution as an implicit GEMM: the GEMM's left-hand rows are gathered straight from a
//! zero-padded copy of the input instead of from an im2col patch matrix.
//!
//! With NHWC and the weights as `[(ky, kx, ci), co]`, row `m` of the patch matrix (output pixel
//! `m`) is nine runs of `ci` floats of the padded input, one per tap, at fixed offsets from the
//! pixel's position. Each task takes a stretch of output pixels and, per block of [`KC`] of the
//! `9 · ci` depth, copies those pixels' slices of the nine runs into a packed block (one row of
//! [`KC`] floats per pixel, so the copies are whole runs of channels and the micro-kernel finds its
//! rows at constant offsets) which stays in L1 and L2 while the block's filter panels stream past.
//! The gather also skips the padding: the earlier version ran its micro-kernel along the padded
//! map, so a 4x4 map's rows filled 16 of every 24 rows computed. im2col writes and re-reads the whole patch matrix (9x the map); here each task packs
//! only what it is about to multiply.
//!
//! Every output is the bias followed by the products in (tap, channel) order, in one running sum:
//! the first block starts from the bias, every later block continues from the values the one before
//! stored. That is im2col + GEMM's sum without blocking of k, bit for bit, whatever the blocking:
//! as exact as the reference path (no Winograd rounding), which is what the training forward's
//! agreement with PyTorch rests on. (The `gemm` crate, faster still, sums each block of k from zero
//! and adds it to the output: train-mode BatchNorm over 2x2 maps amplified that difference past
//! the fixture test's tolerance — BENCHMARKS.md, "AVX-512 on Intel Xeon".)

use std::cell::RefCell;

use rayon::prelude::*;

use super::isa::Isa;
use super::packed::{NR, PackedB};
use super::shape::ConvShape;

/// Output pixels per micro-kernel call on the AVX2 and portable paths (six rows of two 8-lane
/// accumulators: twelve of the sixteen registers).
const MR: usize = 6;
/// Output pixels per micro-kernel call on the AVX-512 path; each call covers two panels (32
/// columns), so 24 of the 32 registers accumulate and 14 loads feed 24 FMAs.
const MR_512: usize = 12;
/// Depth of one block of k: the block's two filter panels (128 x 32 floats, 16 KiB) and one call's
/// packed pixels (12 x 128 floats, 6 KiB) stay in L1 (32 KiB on Zen, 48 KiB on Intel).
const KC: usize = 128;
/// Most output pixels per task: their packed block (512 x 128 floats, 256 KiB) stays in L2.
const TASK_PIXELS: usize = 512;

thread_local! {
    /// The padded input, kept between calls.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A task's packed block of pixels.
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

/// Where the pixels of one task come from and go to.
struct Geometry<'a> {
    /// The padded input.
    xp: &'a [f32],
    /// Offset in `xp` of each kernel row's first tap, relative to the output pixel's own position
    /// (a kernel row's three taps are `3 · ci` contiguous floats from there).
    row_offs: [usize; 3],
    h: usize,
    w: usize,
    ci: usize,
}

impl Geometry<'_> {
    /// Offset in the padded input of output pixel `m`'s top-left tap.
    fn origin(&self, m: usize) -> usize {
        let (s, y, x) = (m / (self.h * self.w), m / self.w % self.h, m % self.w);
        ((s * (self.h + 2) + y) * (self.w + 2) + x) * self.ci
    }

    /// Copies depth `k0..k0 + kl` of the patch rows of pixels `m0..` into `dst`, one row of
    /// [`KC`] floats (the first `kl` of them written) per pixel.
    fn pack(&self, m0: usize, k0: usize, kl: usize, dst: &mut [f32]) {
        for (r, row) in dst.chunks_exact_mut(KC).enumerate() {
            let origin = self.origin(m0 + r);
            let (mut k, end) = (k0, k0 + kl);
            // The three taps of a kernel row are three neighbouring pixels, `3 · ci` contiguous
            // floats of the padded map (one copy instead of three: the first layer's 3 channels
            // made nine 12-byte copies a pixel).
            while k < end {
                let (ky, c) = (k / (3 * self.ci), k % (3 * self.ci));
                let run = (3 * self.ci - c).min(end - k);
                row[k - k0..][..run].copy_from_slice(&self.xp[origin + self.row_offs[ky] + c..][..run]);
                k += run;
            }
        }
    }
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
    let (mr, width) = if isa >= Isa::Avx512 { (MR_512, 2) } else { (MR, 1) };
    // Tasks of whole micro-kernel calls: enough of them to balance the threads, none with more
    // pixels than its packed block keeps in L2.
    let pixels = n * h * w;
    let per_task = pixels.div_ceil(4 * rayon::current_num_threads().max(1)).next_multiple_of(mr).min(TASK_PIXELS);
    let geo = Geometry { xp: &xp[..n * hp * wp * ci], row_offs: std::array::from_fn(|ky| ky * wp * ci), h, w, ci };
    let depth = 9 * ci;
    out.par_chunks_mut(per_task * co).enumerate().for_each(|(task, block)| {
        let m0 = task * per_task;
        let count = block.len() / co;
        PACKED_A.with(|cell| {
            let mut packed = cell.borrow_mut();
            packed.resize(count * KC, 0.0);
            let packed = &mut packed[..count * KC];
            // Where a call's last panel has fewer than `width` x 16 valid columns.
            let mut spill = [0f32; MR_512 * 2 * NR];
            for k0 in (0..depth).step_by(KC) {
                let kl = KC.min(depth - k0);
                geo.pack(m0, k0, kl, packed);
                for p in (0..panels).step_by(width) {
                    let cols = (width * NR).min(co - p * NR);
                    let b_block: [&[f32]; 2] =
                        std::array::from_fn(
                            |i| if p + i < panels { &b.panel(p + i)[k0 * NR..][..kl * NR] } else { &[] },
                        );
                    let from_bias = (k0 == 0).then_some(&bias_p[p * NR..(p + width).min(panels) * NR]);
                    for g in (0..count).step_by(mr) {
                        let rows = mr.min(count - g);
                        let a = &packed[g * KC..][..rows * KC];
                        let call = Call { kl, cols, ldc: co, from_bias };
                        // The AVX2 kernel stores whole panels; the others only `cols` columns.
                        if cols == width * NR || isa != Isa::Avx2 {
                            micro_rows(rows, a, &b_block, &mut block[g * co + p * NR..], call, isa);
                        } else {
                            // Continue from the stored sums through a full-width buffer.
                            let ldc = width * NR;
                            for r in 0..rows {
                                spill[r * ldc..][..cols].copy_from_slice(&block[(g + r) * co + p * NR..][..cols]);
                            }
                            micro_rows(rows, a, &b_block, &mut spill, Call { ldc, ..call }, isa);
                            for r in 0..rows {
                                block[(g + r) * co + p * NR..][..cols].copy_from_slice(&spill[r * ldc..][..cols]);
                            }
                        }
                    }
                }
            }
        });
    });
    PADDED.with(|p| *p.borrow_mut() = xp);
}

/// One micro-kernel call's geometry.
#[derive(Clone, Copy)]
struct Call<'a> {
    /// Depth of the block.
    kl: usize,
    /// Valid columns (at most the path's panels x 16; the stores write only these).
    cols: usize,
    /// Floats between neighbouring output pixels.
    ldc: usize,
    /// The bias of the call's columns when this is the first block of k; otherwise the sums
    /// continue from what `c` holds.
    from_bias: Option<&'a [f32]>,
}

impl Call<'_> {
    /// Where row `r`'s sums start: the bias in the first block of depth, else what `c` holds.
    #[inline(always)]
    fn start(&self, c: *mut f32, r: usize) -> *const f32 {
        match self.from_bias {
            Some(bias) => bias.as_ptr(),
            None => c.wrapping_add(r * self.ldc),
        }
    }
}

/// [`micro`] for `rows` (1 to 12) neighbouring output pixels.
#[inline(always)]
fn micro_rows(rows: usize, a: &[f32], b: &[&[f32]; 2], c: &mut [f32], call: Call, isa: Isa) {
    match rows {
        12 => micro::<12>(a, b, c, call, isa),
        11 => micro::<11>(a, b, c, call, isa),
        10 => micro::<10>(a, b, c, call, isa),
        9 => micro::<9>(a, b, c, call, isa),
        8 => micro::<8>(a, b, c, call, isa),
        7 => micro::<7>(a, b, c, call, isa),
        6 => micro::<6>(a, b, c, call, isa),
        5 => micro::<5>(a, b, c, call, isa),
        4 => micro::<4>(a, b, c, call, isa),
        3 => micro::<3>(a, b, c, call, isa),
        2 => micro::<2>(a, b, c, call, isa),
        _ => micro::<1>(a, b, c, call, isa),
    }
}

/// `c[R x cols] (+)= a · b` over one block of depth: `a` the packed pixels `[R][KC]`, `b` the
/// block's panels (one on the AVX2 and portable paths, two on AVX-512), the sums starting from the
/// bias or continuing from `c`.
#[inline(always)]
fn micro<const R: usize>(a: &[f32], b: &[&[f32]; 2], c: &mut [f32], call: Call, isa: Isa) {
    let Call { kl, cols, ldc, from_bias } = call;
    let width = cols.div_ceil(NR);
    // Bounds for the unchecked accesses below.
    assert!(kl <= KC && a.len() == R * KC && b[..width].iter().all(|p| p.len() == kl * NR));
    assert!(cols > 0 && (R - 1) * ldc + cols <= c.len() && from_bias.is_none_or(|s| s.len() >= cols));
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `forward_on` checked that the CPU has the path's instructions; the asserts above
        // bound every access, and the AVX-512 kernel reads the second panel only where `cols` > 16.
        Isa::Avx512 => {
            return unsafe { avx512::micro::<R>(a.as_ptr(), [b[0].as_ptr(), b[1].as_ptr()], c.as_mut_ptr(), call) };
        }
        // SAFETY: as above; one panel (`cols` ≤ 16) on this path.
        Isa::Avx2 => return unsafe { avx2::micro::<R>(a.as_ptr(), b[0].as_ptr(), c.as_mut_ptr(), call) },
        Isa::Generic => {}
    }
    let _ = isa;
    for (j0, panel) in (0..cols).step_by(NR).zip(b) {
        let n = NR.min(cols - j0);
        let mut acc = [[0f32; NR]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            match from_bias {
                Some(bias) => row[..n].copy_from_slice(&bias[j0..][..n]),
                None => row[..n].copy_from_slice(&c[r * ldc + j0..][..n]),
            }
        }
        for kk in 0..kl {
            let bk = &panel[kk * NR..][..NR];
            for (r, row) in acc.iter_mut().enumerate() {
                let av = a[r * KC + kk];
                for (x, bv) in row.iter_mut().zip(bk) {
                    *x = av.mul_add(*bv, *x);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            c[r * ldc + j0..][..n].copy_from_slice(&row[..n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Call, KC, NR};
    use std::arch::x86_64::*;

    /// SAFETY: the caller guarantees AVX2+FMA, `cols` = 16 (or a full-width `c`), and that every
    /// read of `a` (`R · KC`), `b` (`kl · 16`) and access of `c` (R rows of 16) is valid.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn micro<const R: usize>(a: *const f32, b: *const f32, c: *mut f32, call: Call) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for (r, x) in acc.iter_mut().enumerate() {
                let src = call.start(c, r);
                *x = [_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8))];
            }
            let (mut ak, mut bk) = (a, b);
            for _ in 0..call.kl {
                let b0 = _mm256_loadu_ps(bk);
                let b1 = _mm256_loadu_ps(bk.add(8));
                for (r, x) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ak.add(r * KC));
                    x[0] = _mm256_fmadd_ps(av, b0, x[0]);
                    x[1] = _mm256_fmadd_ps(av, b1, x[1]);
                }
                ak = ak.add(1);
                bk = bk.add(NR);
            }
            for (r, x) in acc.iter().enumerate() {
                let dst = c.add(r * call.ldc);
                _mm256_storeu_ps(dst, x[0]);
                _mm256_storeu_ps(dst.add(8), x[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Call, KC, NR};
    use std::arch::x86_64::*;

    /// SAFETY: the caller guarantees AVX-512F, and that every read of `a` (`R · KC`), of `b[0]`
    /// (`kl · 16`) and, where `cols` > 16, `b[1]` (`kl · 16`), and every access of `c` (R rows of
    /// `cols`) is valid; the bias, when given, has `cols` values.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn micro<const R: usize>(a: *const f32, b: [*const f32; 2], c: *mut f32, call: Call) {
        unsafe {
            let mask = |j0: usize| -> __mmask16 {
                let n = call.cols.saturating_sub(j0).min(NR);
                if n >= NR { 0xffff } else { (1u16 << n) - 1 }
            };
            let (m0, m1) = (mask(0), mask(NR));
            if m1 == 0 {
                return one_panel::<R>(a, b[0], c, call, m0);
            }
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for (r, x) in acc.iter_mut().enumerate() {
                let src = call.start(c, r);
                *x = [_mm512_maskz_loadu_ps(m0, src), _mm512_maskz_loadu_ps(m1, src.add(NR))];
            }
            let (mut ak, mut b0, mut b1) = (a, b[0], b[1]);
            for _ in 0..call.kl {
                let (v0, v1) = (_mm512_loadu_ps(b0), _mm512_loadu_ps(b1));
                for (r, x) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ak.add(r * KC));
                    x[0] = _mm512_fmadd_ps(av, v0, x[0]);
                    x[1] = _mm512_fmadd_ps(av, v1, x[1]);
                }
                ak = ak.add(1);
                b0 = b0.add(NR);
                b1 = b1.add(NR);
            }
            for (r, x) in acc.iter().enumerate() {
                let dst = c.add(r * call.ldc);
                _mm512_mask_storeu_ps(dst, m0, x[0]);
                _mm512_mask_storeu_ps(dst.add(NR), m1, x[1]);
            }
        }
    }

    /// [`micro`] over a single panel (the last one of an odd count).
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn one_panel<const R: usize>(a: *const f32, b: *const f32, c: *mut f32, call: Call, mask: __mmask16) {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for (r, x) in acc.iter_mut().enumerate() {
                let src = call.start(c, r);
                *x = _mm512_maskz_loadu_ps(mask, src);
            }
            let (mut ak, mut bk) = (a, b);
            for _ in 0..call.kl {
                let v = _mm512_loadu_ps(bk);
                for (r, x) in acc.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(*ak.add(r * KC)), v, *x);
                }
                ak = ak.add(1);
                bk = bk.add(NR);
            }
            for (r, x) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * call.ldc), mask, *x);
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
    /// in (tap, channel) order, bit for bit, on every path, wherever the pixel falls in a
    /// micro-kernel call and however the depth is split into blocks (171 and 360 deep: two and
    /// three blocks of [`KC`], the last partial; odd panel counts, partial panels, calls that
    /// straddle images). The training forward's agreement with PyTorch rests on these sums, not on
    /// any other rounding.
    #[test]
    fn every_output_is_one_sum_in_tap_order() {
        for sh in [
            ConvShape { n: 3, h: 4, w: 4, ci: 19, co: 20, k: 3 },
            ConvShape { n: 2, h: 3, w: 13, ci: 8, co: 16, k: 3 },
            ConvShape { n: 2, h: 5, w: 5, ci: 3, co: 33, k: 3 },
            ConvShape { n: 3, h: 6, w: 7, ci: 40, co: 48, k: 3 },
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
