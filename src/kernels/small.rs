//! Convolution over a map of at most 2x2 pixels as one product per (input pixel, output pixel)
//! pair.
//!
//! A VGG's last block runs on 2x2 maps for 32x32 inputs (CIFAR, Fashion-MNIST). There, padding
//! leaves only four of a 3x3 kernel's nine taps inside the map for every output pixel, so im2col +
//! GEMM multiplies 5/9 of its patch matrix by zeros, in GEMMs of only four rows per image. Every
//! tap that lands inside the map links one input pixel `ip` to one output pixel `op`, and its
//! share of the convolution is a product over the batch: `out[:, op] += x[:, ip] · W[tap]`
//! (`[n, ci] · [ci, co]`, read in place through the GEMM's strides). These products do only what a
//! direct convolution does (16 per channel pair at 2x2 against im2col's 36). The input gradient is
//! `dx[:, ip] += dz[:, op] · W[tap]ᵀ` and the weight gradient `dW[tap] += x[:, ip]ᵀ · dz[:, op]`.
//!
//! An earlier version wrote the pairs into one dense matrix `Wd` over the whole map and ran one
//! GEMM: building that 16 MiB matrix (512 channels at 2x2) on every call cost more than the
//! product. CIFAR VGG-16-BN's conv5 layers at batch 64 took 10 ms forward and 23-27 ms backward
//! each that way (AMD EPYC Zen 4, 2 threads, `vgg bench --train --layers`).

use super::sgemm;
use super::shape::ConvShape;

/// Whether these products are cheaper than im2col + GEMM: a map of at most 2x2 pixels and a batch
/// large enough for products of `n` rows (the threshold dates from the `Wd` version, which counted
/// eight products per element of `Wd` on every call; one image still goes to im2col).
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

/// `out = conv(x, w) + bias`, `x` `[n, h, w, ci]` and `out` `[n, h, w, co]` (NHWC), weights in
/// the engine's `[(ky, kx, ci), co]` layout.
pub fn forward(x: &[f32], wk: &[f32], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    let (ci, co, hw) = (sh.ci, sh.co, sh.h * sh.w);
    assert_eq!(x.len(), sh.n * hw * ci);
    assert_eq!(out.len(), sh.n * hw * co);
    assert_eq!(wk.len(), sh.k * sh.k * ci * co);
    out.fill(0.0);
    for (t, ip, op) in taps(sh) {
        let (a, b) = (&x[ip * ci..], &wk[t * ci * co..][..ci * co]);
        sgemm(sh.n, co, ci, a, [hw * ci, 1], b, [co, 1], &mut out[op * co..], hw * co, true, true);
    }
    super::add_bias(out, bias);
}

/// The input gradient: `dx[:, ip] = Σ dz[:, op] · W[tap]ᵀ` over the taps linking them.
pub fn input_grad(wk: &[f32], dz: &[f32], sh: &ConvShape, dx: &mut [f32]) {
    let (ci, co, hw) = (sh.ci, sh.co, sh.h * sh.w);
    assert_eq!(dz.len(), sh.n * hw * co);
    assert_eq!(dx.len(), sh.n * hw * ci);
    assert_eq!(wk.len(), sh.k * sh.k * ci * co);
    dx.fill(0.0);
    for (t, ip, op) in taps(sh) {
        let (a, b) = (&dz[op * co..], &wk[t * ci * co..][..ci * co]);
        sgemm(sh.n, ci, co, a, [hw * co, 1], b, [1, co], &mut dx[ip * ci..], hw * ci, true, true);
    }
}

/// The weight gradient in the engine's `[(ky, kx, ci), co]` layout: `dW[tap] = Σ x[:, ip]ᵀ ·
/// dz[:, op]` over the batch and the pixel pairs the tap links.
pub fn weight_grad(x: &[f32], dz: &[f32], sh: &ConvShape) -> Vec<f32> {
    let (ci, co, hw) = (sh.ci, sh.co, sh.h * sh.w);
    assert_eq!(x.len(), sh.n * hw * ci);
    assert_eq!(dz.len(), sh.n * hw * co);
    let mut dw = vec![0f32; sh.k * sh.k * ci * co];
    for (t, ip, op) in taps(sh) {
        let (a, b) = (&x[ip * ci..], &dz[op * co..]);
        sgemm(ci, co, sh.n, a, [1, hw * ci], b, [hw * co, 1], &mut dw[t * ci * co..], co, true, true);
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
        // One image: products of one row each.
        assert!(!suits(&sh(1, 2, 2)));
        assert!(!suits(&sh(64, 4, 4)) && !suits(&sh(64, 3, 2)));
        assert!(!suits(&ConvShape { k: 1, ..sh(64, 2, 2) }));
    }
}
