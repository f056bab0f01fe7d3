//! Half-precision weight storage (bf16 or f16) with f32 arithmetic: weights are widened to f32 as
//! they are read, products and sums stay in f32. Halves the memory the weights take and the bytes
//! a batch-1 fully connected layer streams (fc6: 411 → 205 MB per image).

use rayon::prelude::*;

/// Which 16-bit format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    /// bfloat16: f32's exponent range, 8 bits of mantissa.
    Bf16,
    /// IEEE binary16: 11 bits of mantissa, values up to 65504.
    F16,
}

impl HalfKind {
    /// `bf16` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            HalfKind::Bf16 => "bf16",
            HalfKind::F16 => "f16",
        }
    }
}

impl std::str::FromStr for HalfKind {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bf16" => Ok(HalfKind::Bf16),
            "f16" => Ok(HalfKind::F16),
            _ => Err(crate::parse::ParseError::new("16-bit format", s, "bf16 or f16")),
        }
    }
}

/// Values stored in 16 bits.
#[derive(Debug, Clone, PartialEq)]
pub struct HalfBuf {
    /// The format.
    pub kind: HalfKind,
    /// The bit patterns.
    pub bits: Vec<u16>,
}

impl HalfBuf {
    /// Rounds `v` to the nearest representable values (ties to even).
    pub fn encode(kind: HalfKind, v: &[f32]) -> Self {
        let bits = match kind {
            HalfKind::Bf16 => v.par_iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(),
            HalfKind::F16 => v.par_iter().map(|&x| half::f16::from_f32(x).to_bits()).collect(),
        };
        Self { kind, bits }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// The values widened to f32.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.bits.len()];
        out.par_chunks_mut(1 << 16).zip(self.bits.par_chunks(1 << 16)).for_each(|(o, b)| decode_into(self.kind, b, o));
        out
    }
}

/// Widens `b` into `out` (same length).
pub fn decode_into(kind: HalfKind, b: &[u16], out: &mut [f32]) {
    assert_eq!(b.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if simd(kind) {
        // SAFETY: the features were checked by `simd`.
        return unsafe { x86::decode(kind, b, out) };
    }
    for (o, &x) in out.iter_mut().zip(b) {
        *o = scalar(kind, x);
    }
}

fn scalar(kind: HalfKind, x: u16) -> f32 {
    match kind {
        HalfKind::Bf16 => f32::from_bits((x as u32) << 16),
        HalfKind::F16 => half::f16::from_bits(x).to_f32(),
    }
}

/// AVX2 (and F16C for f16) available.
fn simd(kind: HalfKind) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx2_fma() && (kind == HalfKind::Bf16 || std::is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kind;
        false
    }
}

/// `Σ w[i]·x[i]` with `w` widened from 16 bits, accumulated in f32 over eight lanes.
pub fn dot(kind: HalfKind, w: &[u16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if simd(kind) {
        // SAFETY: the features were checked by `simd`.
        return unsafe { x86::dot(kind, w, x) };
    }
    let mut acc = [0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(&a, b)| scalar(kind, a) * b).sum();
    for (a, b) in wc.zip(xc) {
        for l in 0..8 {
            acc[l] += scalar(kind, a[l]) * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Up to this many rows, [`linear_forward`] takes dot products over each row of `W`; more widen
/// blocks of `W` for the GEMM (the f32 layer's wider dot products, [`super::dense::DOT_ROWS`],
/// are not written for 16-bit rows).
const DOT_ROWS: usize = 4;

/// `y = x·Wᵀ + b` with `W` `[out, in]` in 16 bits; `x` `[n, in]`, `y` `[n, out]`. A few rows take
/// dot products over each row of `W` (read once); more rows widen blocks of `W` and use the GEMM.
pub fn linear_forward(x: &[f32], w: &HalfBuf, b: &[f32], n: usize, y: &mut [f32]) {
    let out = b.len();
    let inp = w.len() / out;
    assert!(x.len() == n * inp && y.len() == n * out);
    super::dense::by_output_blocks(n, y, out, |o0, o1| {
        let rows = o1 - o0;
        // [rows, n] results of this block.
        let mut res = vec![0f32; rows * n];
        if n <= DOT_ROWS {
            for o in o0..o1 {
                let row = &w.bits[o * inp..(o + 1) * inp];
                for r in 0..n {
                    res[(o - o0) * n + r] = b[o] + dot(w.kind, row, &x[r * inp..(r + 1) * inp]);
                }
            }
        } else {
            let mut wf = vec![0f32; rows * inp];
            decode_into(w.kind, &w.bits[o0 * inp..o1 * inp], &mut wf);
            for (o, r) in res.chunks_exact_mut(n).enumerate() {
                r.fill(b[o0 + o]);
            }
            // res[rows, n] = wf[rows, in] · xᵀ[in, n]
            super::sgemm(rows, n, inp, &wf, [inp, 1], x, [1, inp], &mut res, n, true, false);
        }
        res
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::HalfKind;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(kind: HalfKind, p: *const u16) -> __m256 {
        // SAFETY (caller): `p` points at eight readable u16.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            match kind {
                HalfKind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)),
                HalfKind::F16 => _mm256_cvtph_ps(h),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn decode(kind: HalfKind, b: &[u16], out: &mut [f32]) {
        let n8 = b.len() / 8 * 8;
        // SAFETY: every access is below `n8` ≤ len of both slices.
        unsafe {
            for i in (0..n8).step_by(8) {
                _mm256_storeu_ps(out.as_mut_ptr().add(i), load8(kind, b.as_ptr().add(i)));
            }
        }
        for i in n8..b.len() {
            out[i] = super::scalar(kind, b[i]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(kind: HalfKind, w: &[u16], x: &[f32]) -> f32 {
        let n32 = w.len() / 32 * 32;
        // SAFETY: every access is below `n32` ≤ len of both slices.
        unsafe {
            let (mut a0, mut a1, mut a2, mut a3) =
                (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            for i in (0..n32).step_by(32) {
                a0 = _mm256_fmadd_ps(load8(kind, wp.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
                a1 = _mm256_fmadd_ps(load8(kind, wp.add(i + 8)), _mm256_loadu_ps(xp.add(i + 8)), a1);
                a2 = _mm256_fmadd_ps(load8(kind, wp.add(i + 16)), _mm256_loadu_ps(xp.add(i + 16)), a2);
                a3 = _mm256_fmadd_ps(load8(kind, wp.add(i + 24)), _mm256_loadu_ps(xp.add(i + 24)), a3);
            }
            let s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
            let mut total: f32 = lanes.iter().sum();
            for i in n32..w.len() {
                total += super::scalar(kind, w[i]) * x[i];
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_and_dots_match_the_half_crate_and_float64() {
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            for n in [0usize, 1, 7, 8, 31, 32, 33, 100] {
                let v: Vec<f32> = super::super::test_data(n, 3).iter().map(|x| x * 3.0).collect();
                let x: Vec<f32> = super::super::test_data(n, 5);
                let h = HalfBuf::encode(kind, &v);
                let wide = h.decode();
                let want: Vec<f32> = v
                    .iter()
                    .map(|&a| match kind {
                        HalfKind::Bf16 => half::bf16::from_f32(a).to_f32(),
                        HalfKind::F16 => half::f16::from_f32(a).to_f32(),
                    })
                    .collect();
                assert_eq!(wide, want, "{kind:?} n={n}");
                let exact: f64 = want.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = dot(kind, &h.bits, &x) as f64;
                assert!((got - exact).abs() <= 1e-5 * (1.0 + exact.abs()), "{kind:?} n={n}: {got} vs {exact}");
            }
        }
    }

    #[test]
    fn half_linear_layer_equals_the_f32_layer_on_the_widened_weights() {
        let (inp, out) = (70, 130);
        let w: Vec<f32> = super::super::test_data(out * inp, 11);
        let b: Vec<f32> = super::super::test_data(out, 12);
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let h = HalfBuf::encode(kind, &w);
            let wide = h.decode();
            for n in [1usize, 3, 4, 5, 9] {
                let x: Vec<f32> = super::super::test_data(n * inp, 13 + n as u32);
                let mut y = vec![0f32; n * out];
                let mut want = vec![0f32; n * out];
                linear_forward(&x, &h, &b, n, &mut y);
                super::super::dense::linear_forward(&x, &wide, &b, n, &mut want);
                for (a, c) in y.iter().zip(&want) {
                    assert!((a - c).abs() <= 1e-5 * (1.0 + c.abs()), "{kind:?} n={n}: {a} vs {c}");
                }
            }
        }
    }
}
