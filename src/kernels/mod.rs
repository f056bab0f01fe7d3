//! CPU kernels for training and inference on NHWC activations: convolution as im2col + GEMM (forward
//! and both gradients, the reference the others are tested against), Winograd F(4x4, 3x3) (forward
//! and both gradients), an implicit GEMM over a padded copy of the input (the exact forward of
//! training), products per pixel pair for maps of at most 2x2, or, for the first layer's few input
//! channels, direct loops (forward and weight gradient); BatchNorm fused with ReLU, max and adaptive
//! average pooling, fully connected layers and the loss. `conv` picks among them per layer.
//!
//! They exist because burn-flex spends most of a small VGG's training step outside its GEMM (layout
//! changes, per-op dispatch, a convolution backward built from transposed convolutions). Each kernel
//! works on plain slices and is tested against the burn path, which stays the reference.
//!
//! Each kernel is a portable loop compiled for AVX-512, for AVX2 + FMA and for the baseline
//! ([`isa::dispatch`]), or, for the GEMM micro-kernels, hand-written intrinsics per path beside the
//! portable loop; [`isa`] chooses the path once per process (`VGG_ISA` forces one).
//!
//! Work is split into one contiguous range of rows (pixels of the batch) per thread; partial sums
//! (weight gradients, batch statistics) are reduced in range order, so results do not depend on
//! scheduling.

pub mod conv;
pub mod dense;
pub mod direct;
pub mod half;
pub mod implicit;
pub mod isa;
pub mod norm;
pub mod packed;
pub mod peak;
pub mod pool;
pub mod shape;
pub mod small;
pub mod winograd;

use rayon::prelude::*;

/// Whether the kernels take their AVX2 + FMA paths: the CPU has them and [`isa::active`] chose
/// them (`VGG_ISA=generic` forces the portable loops).
pub fn avx2_fma() -> bool {
    isa::active() >= isa::Isa::Avx2
}

/// Whether the kernels that have a 512-bit version take it: the CPU has AVX-512 (F, BW, DQ, VL)
/// and [`isa::active`] chose it (`VGG_ISA=avx2` keeps the 256-bit kernels).
pub fn avx512() -> bool {
    isa::active() >= isa::Isa::Avx512
}

/// `c[m×n] (+)= a[m×k] · b[k×n]`, each matrix given by its row and column strides.
///
/// `parallel` lets the GEMM use the rayon pool; the per-chunk calls of the trunk kernels run on one
/// thread each because the chunks already are parallel.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    [a_rs, a_cs]: [usize; 2],
    b: &[f32],
    [b_rs, b_cs]: [usize; 2],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // The GEMM reads through raw pointers: these bounds make every access it can make valid.
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "lhs out of bounds");
    assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "rhs out of bounds");
    assert!((m - 1) * ldc + n - 1 < c.len(), "dst out of bounds");
    let par = if parallel && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element the strides can address inside the slices, and
    // `c` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Adds `bias` (`[co]`) to every pixel of an NHWC output.
pub(crate) fn add_bias(out: &mut [f32], bias: &[f32]) {
    for px in out.chunks_exact_mut(bias.len()) {
        for (v, b) in px.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Per-channel sums over rows of a `[rows, c]` matrix, with `f` mapping (row values, accumulators);
/// computed per chunk of rows in parallel and reduced in order.
pub fn channel_sums<const K: usize>(
    x: &[f32],
    c: usize,
    rows_per_chunk: usize,
    f: impl Fn(&[f32], usize, &mut [[f64; K]]) + Sync,
) -> Vec<[f64; K]> {
    let parts: Vec<Vec<[f64; K]>> = x
        .par_chunks(rows_per_chunk.max(1) * c)
        .enumerate()
        .map(|(i, chunk)| {
            let mut acc = vec![[0f64; K]; c];
            f(chunk, i * rows_per_chunk, &mut acc);
            acc
        })
        .collect();
    let mut total = vec![[0f64; K]; c];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            for k in 0..K {
                t[k] += v[k];
            }
        }
    }
    total
}

/// Deterministic test values in [-1, 1) for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}
