//! A GEMM against a right-hand matrix packed once: `C (+)= A · B` with `B` stored as panels of 16
//! columns (`[panel][k][16]`, zero-padded), so that each k step of the micro-kernel reads 16
//! contiguous floats of `B` and broadcasts one float per row of `A`.
//!
//! Why not the `gemm` crate here: it packs `B` on every call, and the convolutions' `B` (filters)
//! changes only when the weights do; for the few-row products of batch-1 inference and of the
//! Winograd path's 36 small GEMMs, that packing costs as much as the arithmetic. The micro-kernel
//! keeps a 6x16 block of `C` in twelve AVX registers (two FMA per broadcast); with AVX-512 a 12x16
//! block in twelve of the 32 ZMM registers (one 16-lane FMA per broadcast, twelve per load of `B`);
//! there is a portable version of the same loop for CPUs without either.
//!
//! The panels can also hold 16-bit values (bf16 or f16, [`PackedB::narrowed`]), widened to f32 as
//! the micro-kernel loads them: the engine's `--half` keeps its transformed filters so, half the
//! bytes of the f32 ones, instead of widening and transforming the filters on every call.

use std::ops::Range;

use rayon::prelude::*;

use super::half::HalfKind;
use super::isa::Isa;

/// Columns per panel.
pub const NR: usize = 16;
/// Rows per micro-kernel call on the AVX2 and portable paths.
const MR: usize = 6;
/// Rows per micro-kernel call on the AVX-512 path.
const MR_512: usize = 12;
/// Depth of one pass over `A`: a 6-row strip of `A` (6 KB) and a panel slice of `B` (16 KB) stay
/// in L1/L2 while `C` accumulates.
const KC: usize = 256;
/// Rows of `A` kept hot while the panels stream past (a multiple of both row counts).
const MC: usize = 96;

/// `B` (`k x n`) in panels of [`NR`] columns.
#[derive(Debug, Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Panels,
}

/// The panels' values, in one of the element types of [`Elem`].
#[derive(Debug, Clone)]
enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
    F16(Vec<half::f16>),
}

/// An element type the micro-kernels read `B` in; arithmetic is f32 whatever it is.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Which one, for the SIMD loads (a constant per type: the match on it compiles away).
    const KIND: Option<HalfKind>;
    /// The value as f32 (exact: every bf16 and f16 value is an f32 value).
    fn widen(self) -> f32;
}

impl Elem for f32 {
    const KIND: Option<HalfKind> = None;
    fn widen(self) -> f32 {
        self
    }
}

impl Elem for half::bf16 {
    const KIND: Option<HalfKind> = Some(HalfKind::Bf16);
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Elem for half::f16 {
    const KIND: Option<HalfKind> = Some(HalfKind::F16);
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl PackedB {
    /// Packs `b`, `k x n`, given by its row and column strides.
    pub fn new(b: &[f32], k: usize, n: usize, [rs, cs]: [usize; 2]) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for p in 0..panels {
            for kk in 0..k {
                let dst = &mut data[(p * k + kk) * NR..][..NR];
                for (j, d) in dst.iter_mut().enumerate().take(NR.min(n - p * NR)) {
                    *d = b[kk * rs + (p * NR + j) * cs];
                }
            }
        }
        Self { k, n, data: Panels::F32(data) }
    }

    /// The same matrix with its values rounded to 16 bits (to nearest, ties to even), or itself
    /// when `kind` is `None`.
    pub fn narrowed(self, kind: Option<HalfKind>) -> Self {
        let Some(kind) = kind else { return self };
        let Panels::F32(v) = &self.data else { panic!("narrowing panels that are already 16-bit") };
        let data = match kind {
            HalfKind::Bf16 => Panels::Bf16(v.par_iter().map(|&x| half::bf16::from_f32(x)).collect()),
            HalfKind::F16 => Panels::F16(v.par_iter().map(|&x| half::f16::from_f32(x)).collect()),
        };
        Self { data, ..self }
    }

    /// The largest magnitude among the values (0 for an empty matrix).
    pub fn max_abs(&self) -> f32 {
        let fold = |m: f32, v: f32| m.max(v.abs());
        match &self.data {
            Panels::F32(v) => v.iter().copied().fold(0.0, fold),
            Panels::Bf16(v) => v.iter().map(|x| x.to_f32()).fold(0.0, fold),
            Panels::F16(v) => v.iter().map(|x| x.to_f32()).fold(0.0, fold),
        }
    }

    /// The 16-bit format the values are held in, `None` for f32.
    pub fn half_kind(&self) -> Option<HalfKind> {
        match self.data {
            Panels::F32(_) => None,
            Panels::Bf16(_) => Some(HalfKind::Bf16),
            Panels::F16(_) => Some(HalfKind::F16),
        }
    }

    /// Rows (the inner dimension of the product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Panel `p`: `k` rows of [`NR`] floats. f32 panels only (the implicit GEMM reads them so).
    pub(crate) fn panel(&self, p: usize) -> &[f32] {
        let Panels::F32(v) = &self.data else { panic!("panel() reads f32 panels; these are 16-bit") };
        &v[p * self.k * NR..][..self.k * NR]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Panels::F32(v) => v.len() * 4,
            Panels::Bf16(v) => v.len() * 2,
            Panels::F16(v) => v.len() * 2,
        }
    }
}

/// `c[m x n] (+)= a[m x k] · b` for the columns of `panels` only; `a` has row stride `lda` (unit
/// column stride), `c` row stride `ldc`. Single-threaded: callers split rows or panels.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    panels: Range<usize>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || panels.is_empty() {
        return;
    }
    assert!(panels.end <= b.panels(), "panel range beyond B");
    assert!(k == 0 || (m - 1) * lda + k <= a.len(), "A out of bounds");
    let last_col = (panels.end * NR).min(n);
    assert!((m - 1) * ldc + last_col <= c.len(), "C out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc + panels.start * NR..r * ldc + last_col].fill(0.0);
            }
        }
        return;
    }
    gemm_on(super::isa::active(), m, a, lda, b, panels, c, ldc, accumulate);
}

/// [`gemm`] on the kernel path `isa` (which the CPU must have), so that tests can run every path
/// in one process.
#[allow(clippy::too_many_arguments)]
fn gemm_on(
    isa: Isa,
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    panels: Range<usize>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(isa.is_supported(), "{isa} kernels on a CPU without them");
    match &b.data {
        Panels::F32(v) => blocks(isa, m, a, lda, b, v, panels, c, ldc, accumulate),
        Panels::Bf16(v) => blocks(isa, m, a, lda, b, v, panels, c, ldc, accumulate),
        Panels::F16(v) => blocks(isa, m, a, lda, b, v, panels, c, ldc, accumulate),
    }
}

/// [`gemm_on`] over `b`'s values `data`, of element type `E`.
#[allow(clippy::too_many_arguments)]
fn blocks<E: Elem>(
    isa: Isa,
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    data: &[E],
    panels: Range<usize>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (k, n) = (b.k, b.n);
    let mr = if isa >= Isa::Avx512 { MR_512 } else { MR };
    // The Winograd products read A's rows 36·ci floats apart (one tile element of each tile): at
    // 256 and 512 channels that is a multiple of 4 KiB, so the micro-kernel's rows all map to the
    // same L1 sets and evict one another. Copying each MC x KC block of such an A to rows KC apart
    // costs one read of A per block, reused by every panel: a 196x512x512 product went from 84 to
    // 106 GFLOP/s on one Zen 4 core with the 12-row kernel. Other strides keep reading A in place
    // (copying them measured 0-10% slower).
    let copy_a = lda != k && (lda * 4).is_multiple_of(4096);
    let mut block = if copy_a { A_BLOCK.with(|cell| std::mem::take(&mut *cell.borrow_mut())) } else { Vec::new() };
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let acc = accumulate || k0 > 0;
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            let (a_blk, lda_blk): (&[f32], usize) = if copy_a {
                block.resize(mc * kc, 0.0);
                for (r, dst) in block.chunks_exact_mut(kc).enumerate() {
                    dst.copy_from_slice(&a[(i0 + r) * lda + k0..][..kc]);
                }
                (&block[..], kc)
            } else {
                (&a[i0 * lda + k0..], lda)
            };
            for p in panels.clone() {
                let cols = NR.min(n - p * NR);
                let bp = &data[(p * k + k0) * NR..][..kc * NR];
                for r0 in (i0..i0 + mc).step_by(mr) {
                    let rows = mr.min(i0 + mc - r0);
                    let ap = &a_blk[(r0 - i0) * lda_blk..];
                    let cp = &mut c[r0 * ldc + p * NR..];
                    let t = Tile { kc, lda: lda_blk, ldc, cols, accumulate: acc };
                    match rows {
                        12 => micro::<12, E>(ap, bp, cp, t, isa),
                        11 => micro::<11, E>(ap, bp, cp, t, isa),
                        10 => micro::<10, E>(ap, bp, cp, t, isa),
                        9 => micro::<9, E>(ap, bp, cp, t, isa),
                        8 => micro::<8, E>(ap, bp, cp, t, isa),
                        7 => micro::<7, E>(ap, bp, cp, t, isa),
                        6 => micro::<6, E>(ap, bp, cp, t, isa),
                        5 => micro::<5, E>(ap, bp, cp, t, isa),
                        4 => micro::<4, E>(ap, bp, cp, t, isa),
                        3 => micro::<3, E>(ap, bp, cp, t, isa),
                        2 => micro::<2, E>(ap, bp, cp, t, isa),
                        _ => micro::<1, E>(ap, bp, cp, t, isa),
                    }
                }
            }
        }
    }
    if copy_a {
        A_BLOCK.with(|cell| *cell.borrow_mut() = block);
    }
}

thread_local! {
    /// [`blocks`]' copy of a block of A, kept between calls.
    static A_BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One micro-tile's geometry.
#[derive(Clone, Copy)]
struct Tile {
    kc: usize,
    lda: usize,
    ldc: usize,
    /// Valid columns of the panel (the last panel may be partial).
    cols: usize,
    accumulate: bool,
}

#[inline(always)]
fn micro<const R: usize, E: Elem>(a: &[f32], b: &[E], c: &mut [f32], t: Tile, isa: Isa) {
    // Bounds for the unchecked reads below: R rows of kc values of A, kc·16 of B, R rows of C.
    assert!((R - 1) * t.lda + t.kc <= a.len() && t.kc * NR <= b.len());
    assert!((R - 1) * t.ldc + t.cols <= c.len());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `gemm_on` checked that the CPU has the path's instructions; the asserts above
        // bound every access.
        Isa::Avx512 => return unsafe { avx512::micro::<R, E>(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), t) },
        Isa::Avx2 => return unsafe { avx2::micro::<R, E>(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), t) },
        Isa::Generic => {}
    }
    let _ = isa;
    let mut acc = [[0f32; NR]; R];
    for kk in 0..t.kc {
        let bk = &b[kk * NR..][..NR];
        for (r, row) in acc.iter_mut().enumerate() {
            let av = a[r * t.lda + kk];
            for (x, bv) in row.iter_mut().zip(bk) {
                *x = av.mul_add(bv.widen(), *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let dst = &mut c[r * t.ldc..][..t.cols];
        for (d, v) in dst.iter_mut().zip(row) {
            *d = if t.accumulate { *d + v } else { *v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Elem, HalfKind, NR, Tile};
    use std::arch::x86_64::*;

    /// Eight values of `B` at `p` as f32: a plain load, or 16-bit values widened (bf16: shifted
    /// into the top half of each lane; f16: F16C's conversion).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<E: Elem>(p: *const E) -> __m256 {
        unsafe {
            match E::KIND {
                None => _mm256_loadu_ps(p.cast()),
                Some(HalfKind::Bf16) => {
                    let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
                }
                Some(HalfKind::F16) => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            }
        }
    }

    /// SAFETY: the caller guarantees AVX2+FMA+F16C and that `a` (R rows of `kc`, stride `lda`), `b`
    /// (`kc · 16`) and `c` (R rows of `cols`, stride `ldc`) are valid.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn micro<const R: usize, E: Elem>(a: *const f32, b: *const E, c: *mut f32, t: Tile) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for kk in 0..t.kc {
                let b0 = load8(b.add(kk * NR));
                let b1 = load8(b.add(kk * NR + 8));
                for (r, x) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * t.lda + kk));
                    x[0] = _mm256_fmadd_ps(av, b0, x[0]);
                    x[1] = _mm256_fmadd_ps(av, b1, x[1]);
                }
            }
            for (r, x) in acc.iter().enumerate() {
                let dst = c.add(r * t.ldc);
                if t.cols == NR {
                    let (mut lo, mut hi) = (x[0], x[1]);
                    if t.accumulate {
                        lo = _mm256_add_ps(lo, _mm256_loadu_ps(dst));
                        hi = _mm256_add_ps(hi, _mm256_loadu_ps(dst.add(8)));
                    }
                    _mm256_storeu_ps(dst, lo);
                    _mm256_storeu_ps(dst.add(8), hi);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), x[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), x[1]);
                    for (j, v) in tmp.iter().enumerate().take(t.cols) {
                        let d = dst.add(j);
                        *d = if t.accumulate { *d + v } else { *v };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Elem, HalfKind, NR, Tile};
    use std::arch::x86_64::*;

    /// Sixteen values of `B` at `p` as f32 (see the AVX2 `load8`).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn load16<E: Elem>(p: *const E) -> __m512 {
        unsafe {
            match E::KIND {
                None => _mm512_loadu_ps(p.cast()),
                Some(HalfKind::Bf16) => {
                    let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
                }
                Some(HalfKind::F16) => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            }
        }
    }

    /// SAFETY: the caller guarantees AVX-512F and that `a` (R rows of `kc`, stride `lda`), `b`
    /// (`kc · 16`) and `c` (R rows of `cols`, stride `ldc`) are valid.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn micro<const R: usize, E: Elem>(a: *const f32, b: *const E, c: *mut f32, t: Tile) {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for kk in 0..t.kc {
                let bk = load16(b.add(kk * NR));
                for (r, x) in acc.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * t.lda + kk)), bk, *x);
                }
            }
            // The last panel may be partial: a masked store writes only its columns.
            let mask: __mmask16 = if t.cols >= NR { 0xffff } else { (1u16 << t.cols) - 1 };
            for (r, x) in acc.iter().enumerate() {
                let dst = c.add(r * t.ldc);
                let mut v = *x;
                if t.accumulate {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
                }
                _mm512_mask_storeu_ps(dst, mask, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data as data;

    /// Against a float64 triple loop, on every kernel path the CPU has and with B in f32, bf16 and
    /// f16: every row count of the micro-kernels, partial panels, depths across several KC blocks,
    /// row strides wider than k (one a multiple of 4 KiB, whose blocks are copied), accumulation,
    /// and a panel sub-range.
    #[test]
    fn matches_the_definition() {
        for (m, n, k, lda) in [
            (1, 1, 1, 1),
            (7, 33, 5, 9),
            (13, 16, 300, 300),
            (200, 40, 530, 600),
            (6, 17, 257, 260),
            (23, 31, 7, 7),
            // Rows 4 KiB apart: the blocks of A are copied first (two MC blocks, two KC blocks).
            (110, 20, 300, 1024),
        ] {
            let a = data(m * lda, 1);
            let braw = data(k * n, 2);
            for kind in [None, Some(HalfKind::Bf16), Some(HalfKind::F16)] {
                let b = PackedB::new(&braw, k, n, [n, 1]).narrowed(kind);
                assert_eq!((b.k(), b.n(), b.half_kind()), (k, n, kind));
                // The values B holds: rounded to nearest once, as `half` rounds them.
                let held: Vec<f32> = match kind {
                    None => braw.clone(),
                    Some(HalfKind::Bf16) => braw.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
                    Some(HalfKind::F16) => braw.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
                };
                if kind.is_some() && k * n > 1 {
                    assert_ne!(held, braw, "the test data must need rounding");
                }
                check_every_path(m, n, k, lda, &a, &b, &held);
            }
            let b = PackedB::new(&braw, k, n, [n, 1]);
            // Only the second panel onwards: the first 16 columns stay untouched.
            if b.panels() > 1 {
                let mut c = vec![7f32; m * n];
                gemm(m, &a, lda, &b, 1..b.panels(), &mut c, n, false);
                assert!(c.chunks(n).all(|r| r[..NR].iter().all(|&v| v == 7.0)));
                assert!(c.chunks(n).any(|r| r[NR..].iter().any(|&v| v != 7.0)));
            }
        }
    }

    /// `gemm_on` on every path the CPU has, with and without accumulation, against a float64
    /// triple loop over the values `b` holds (`held`, `k x n` row-major).
    fn check_every_path(m: usize, n: usize, k: usize, lda: usize, a: &[f32], b: &PackedB, held: &[f32]) {
        let kind = b.half_kind().map_or("f32", HalfKind::name);
        for accumulate in [false, true] {
            let ldc = n + 3;
            let c0 = data(m * ldc, 3);
            for isa in Isa::supported() {
                let mut c = c0.clone();
                gemm_on(isa, m, a, lda, b, 0..b.panels(), &mut c, ldc, accumulate);
                for i in 0..m {
                    for j in 0..n {
                        let mut want: f64 = (0..k).map(|kk| a[i * lda + kk] as f64 * held[kk * n + j] as f64).sum();
                        if accumulate {
                            want += c0[i * ldc + j] as f64;
                        }
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{isa} {kind}: {m}x{n}x{k} [{i},{j}]: {got} vs {want}"
                        );
                    }
                    // Padding columns of C are left alone.
                    assert_eq!(&c[i * ldc + n..i * ldc + ldc], &c0[i * ldc + n..i * ldc + ldc], "{isa} {kind}");
                }
            }
        }
    }

    /// Column-major input to the packer (a transposed matrix, as the fully connected weights are).
    #[test]
    fn packs_transposed_input() {
        let (k, n) = (5, 20);
        let bt = data(n * k, 4); // n x k row-major = B column-major
        let b = PackedB::new(&bt, k, n, [1, k]);
        let a = data(2 * k, 5);
        let mut c = vec![0f32; 2 * n];
        gemm(2, &a, k, &b, 0..b.panels(), &mut c, n, false);
        for i in 0..2 {
            for j in 0..n {
                let want: f32 = (0..k).map(|kk| a[i * k + kk] * bt[j * k + kk]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
