//! Convolution over a map of at most 2x2 pixels as one dense product over the whole map.
//!
//! A VGG's last block runs on 2x2 maps for 32x32 inputs (CIFAR, Fashion-MNIST). There, padding
//! leaves only four of a 3x3 kernel's nine taps inside the map for every output pixel, so im2col +
//! GEMM multiplies 5/9 of its patch matrix by zeros, in GEMMs of only four rows per image. Written as
//! a matrix from the whole input map to the whole output map, `Wd[(iy, ix, ci), (y, x, co)] =
//! W[iy - y + 1, ix - x + 1, ci, co]` (zero where the tap falls outside the kernel), the convolution
//! of a batch is one GEMM `[n, h·w·ci] · [h·w·ci, h·w·co]` doing only the products a direct
//! convolution does (16 per channel pair at 2x2 against im2col's 36), in a well-shaped product. The
//! input gradient multiplies by `Wdᵀ`, and the weight gradient `xᵀ · dz` is folded back onto the
//! nine taps. Sums run over the same terms as im2col, less the zeros: no extra rounding.

use super::sgemm;
use super::shape::ConvShape;

/// Whether the dense product is cheaper than im2col + GEMM: a map of at most 2x2 pixels and a batch
/// large enough to pay for building `Wd` (counted as eight products per element) on every call.
pub fn suits(sh: &ConvShape) -> bool {
    let hw = sh.h * sh.w;
    sh.k > 1 && sh.h <= 2 && sh.w <= 2 && hw * hw * (sh.n + 8) < sh.k * sh.k * hw * sh.n
}

/// The `(tap, input pixel, output pixel)` triples of the map: every tap that lands inside it.
fn taps(sh: &ConvShape) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let (h, w, k) = (sh.h as isize, sh.w as isize, sh.k as isize);
    let pad = k / 2;
    (0..h * w).flat_map(move |o| {
        let (y, x) = (o / w, o % w);
        (0..k * k).filter_map(move |t| {
            let (iy, ix) = (y + t / k - pad, x + t % k - pad);
            (iy >= 0 && ix >= 0 && iy < h && ix < w).then_some((t as usize, (iy * w + ix) as usize, o as usize))
        })
    })
}

/// `Wd`, `[(iy, ix, ci), (y, x, co)]`, from weights in the engine's `[(ky, kx, ci), co]` layout.
fn dense_filter(wk: &[f32], sh: &ConvShape) -> Vec<f32> {
    let (ci, co, hw) = (sh.ci, sh.co, sh.h * sh.w);
    assert_eq!(wk.len(), sh.k * sh.k * ci * co);
    let cols = hw * co;
    let mut wd = vec![0f32; hw * ci * cols];
    for (t, ip, op) in taps(sh) {
        for i in 0..ci {
            wd[(ip * ci + i) * cols + op * co..][..co].copy_from_slice(&wk[(t * ci + i) * co..][..co]);
        }
    }
    wd
}

/// `out = conv(x, w) + bias`, `x` `[n, h, w, ci]` and `out` `[n, h, w, co]` (NHWC).
pub fn forward(x: &[f32], wk: &[f32], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    let (rows, cols) = (sh.h * sh.w * sh.ci, sh.h * sh.w * sh.co);
    assert_eq!(x.len(), sh.n * rows);
    assert_eq!(out.len(), sh.n * cols);
    let wd = dense_filter(wk, sh);
    sgemm(sh.n, cols, rows, x, [rows, 1], &wd, [cols, 1], out, cols, false, true);
    super::add_bias(out, bias);
}

/// The input gradient `dx = dz · Wdᵀ`.
pub fn input_grad(wk: &[f32], dz: &[f32], sh: &ConvShape, dx: &mut [f32]) {
    let (rows, cols) = (sh.h * sh.w * sh.ci, sh.h * sh.w * sh.co);
    assert_eq!(dz.len(), sh.n * cols);
    assert_eq!(dx.len(), sh.n * rows);
    let wd = dense_filter(wk, sh);
    sgemm(sh.n, rows, cols, dz, [cols, 1], &wd, [1, cols], dx, rows, false, true);
}

/// The weight gradient in the engine's `[(ky, kx, ci), co]` layout: `xᵀ · dz` over the batch, each
/// block of it added onto the tap that links its input and output pixels.
pub fn weight_grad(x: &[f32], dz: &[f32], sh: &ConvShape) -> Vec<f32> {
    let (ci, co, hw) = (sh.ci, sh.co, sh.h * sh.w);
    let (rows, cols) = (hw * ci, hw * co);
    assert_eq!(x.len(), sh.n * rows);
    assert_eq!(dz.len(), sh.n * cols);
    let mut dwd = vec![0f32; rows * cols];
    sgemm(rows, cols, sh.n, x, [1, rows], dz, [cols, 1], &mut dwd, cols, false, true);
    let mut dw = vec![0f32; sh.k * sh.k * ci * co];
    for (t, ip, op) in taps(sh) {
        for i in 0..ci {
            let src = &dwd[(ip * ci + i) * cols + op * co..][..co];
            for (d, s) in dw[(t * ci + i) * co..][..co].iter_mut().zip(src) {
                *d += s;
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv;
    use crate::kernels::test_data as data;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
    }

    /// The three products against im2col + GEMM (itself tested against the definition) on every
    /// map the dense path takes: 2x2, 2x1, 1x2 and 1x1, with channel counts that are not multiples
    /// of the GEMM's panels.
    #[test]
    fn agrees_with_im2col() {
        for (h, w) in [(2, 2), (2, 1), (1, 2), (1, 1)] {
            let sh = ConvShape { n: 11, h, w, ci: 13, co: 7, k: 3 };
            assert!(suits(&sh), "{sh:?}");
            let x = data(sh.n * h * w * sh.ci, 1);
            let wk = data(9 * sh.ci * sh.co, 2);
            let b = data(sh.co, 3);
            let dz = data(sh.n * h * w * sh.co, 4);
            let (mut got, mut want) = (vec![0f32; dz.len()], vec![0f32; dz.len()]);
            forward(&x, &wk, &b, &sh, &mut got);
            conv::forward_im2col(&x, &wk, &b, &sh, &mut want);
            assert!(close(&got, &want), "forward {sh:?}");
            let (mut got, mut want) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            input_grad(&wk, &dz, &sh, &mut got);
            let zero = vec![0f32; sh.ci];
            let back = ConvShape { ci: sh.co, co: sh.ci, ..sh };
            conv::forward_im2col(&dz, &conv::flipped(&wk, sh.ci, sh.co, 3), &zero, &back, &mut want);
            assert!(close(&got, &want), "input gradient {sh:?}");
            let (want, _) = conv::weight_grad_im2col(&x, &dz, &sh);
            assert!(close(&weight_grad(&x, &dz, &sh), &want), "weight gradient {sh:?}");
        }
    }

    #[test]
    fn taken_only_where_cheaper() {
        let sh = |n, h, w| ConvShape { n, h, w, ci: 64, co: 64, k: 3 };
        assert!(suits(&sh(64, 2, 2)) && suits(&sh(8, 2, 2)) && suits(&sh(2, 1, 1)));
        // One image: building Wd costs more than the four-row GEMM it replaces.
        assert!(!suits(&sh(1, 2, 2)));
        assert!(!suits(&sh(64, 4, 4)) && !suits(&sh(64, 3, 2)));
        assert!(!suits(&ConvShape { k: 1, ..sh(64, 2, 2) }));
    }
}
