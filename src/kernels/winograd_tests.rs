//! Tests of [`super`]: Winograd against im2col + GEMM.

use super::*;
use crate::kernels::conv;
use crate::kernels::test_data as data;

/// Against the im2col path (itself tested against the definition), on shapes with partial
/// tiles at the right and bottom, several images, channel counts that are not multiples of 8,
/// and enough tile rows to need several chunks; with and without the fused ReLU.
#[test]
fn matches_im2col() {
    for sh in [
        ConvShape { n: 2, h: 8, w: 8, ci: 8, co: 16, k: 3 },
        ConvShape { n: 3, h: 7, w: 10, ci: 12, co: 5, k: 3 },
        ConvShape { n: 1, h: 5, w: 3, ci: 9, co: 8, k: 3 },
        ConvShape { n: 2, h: 61, w: 45, ci: 256, co: 520, k: 3 },
    ] {
        let x = data(sh.n * sh.h * sh.w * sh.ci, 1);
        let wk = data(sh.kdim() * sh.co, 2);
        let b = data(sh.co, 3);
        let mut want = vec![0f32; sh.n * sh.h * sh.w * sh.co];
        conv::forward_im2col(&x, &wk, &b, &sh, &mut want);
        let u = transform_filter(&wk, sh.ci, sh.co);
        let scale = (sh.kdim() as f32).sqrt();
        let mut got = vec![f32::NAN; want.len()];
        forward_chunked(&x, &u, &b, false, &sh, &mut got);
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        assert!(worst <= 2e-5 * scale, "{sh:?}: worst difference {worst}");
        // The fused phases compute the same tiles: the same floats.
        let mut fused = vec![f32::NAN; want.len()];
        forward_fused(&x, &u, &b, false, &sh, &mut fused);
        assert_eq!(fused, got, "{sh:?}: fused");
        // The ReLU fused into the output transform: the same floats, clamped at zero (about half
        // of these outputs are negative).
        let clamped: Vec<f32> = got.iter().map(|v| v.max(0.0)).collect();
        for relu_in in [forward_chunked, forward_fused] {
            let mut with_relu = vec![f32::NAN; want.len()];
            relu_in(&x, &u, &b, true, &sh, &mut with_relu);
            assert_eq!(with_relu, clamped, "{sh:?}: with the ReLU");
        }
    }
}

/// The weight gradient against its definition in float64, on shapes with partial tiles, channel
/// counts that are not multiples of 8, and one with two chunks of tiles.
#[test]
fn weight_gradient_matches_the_definition() {
    for sh in [
        ConvShape { n: 2, h: 8, w: 8, ci: 8, co: 16, k: 3 },
        ConvShape { n: 3, h: 7, w: 10, ci: 12, co: 5, k: 3 },
        ConvShape { n: 1, h: 5, w: 3, ci: 3, co: 9, k: 3 },
        ConvShape { n: 1, h: 4, w: 4, ci: 16, co: 8, k: 3 },
        ConvShape { n: 2, h: 32, w: 35, ci: 64, co: 72, k: 3 },
    ] {
        let x = data(sh.n * sh.h * sh.w * sh.ci, 1);
        let dz = data(sh.n * sh.h * sh.w * sh.co, 3);
        let (h, w, ci, co) = (sh.h as isize, sh.w as isize, sh.ci, sh.co);
        let mut want = vec![0f64; 9 * ci * co];
        for s in 0..sh.n as isize {
            for y in 0..h {
                for xx in 0..w {
                    let g = &dz[(((s * h + y) * w + xx) as usize) * co..][..co];
                    for k9 in 0..9 {
                        let (iy, ix) = (y + k9 / 3 - 1, xx + k9 % 3 - 1);
                        if iy < 0 || ix < 0 || iy >= h || ix >= w {
                            continue;
                        }
                        let xin = &x[(((s * h + iy) * w + ix) as usize) * ci..][..ci];
                        for (i, xv) in xin.iter().enumerate() {
                            let row = &mut want[(k9 as usize * ci + i) * co..][..co];
                            for (d, gv) in row.iter_mut().zip(g) {
                                *d += *xv as f64 * *gv as f64;
                            }
                        }
                    }
                }
            }
        }
        let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
        let worst = |got: &[f32]| got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max) / rms;
        let winograd = worst(&weight_grad(&x, &dz, &sh));
        let im2col = worst(&conv::weight_grad_im2col(&x, &dz, &sh).0);
        // Measured: up to 3.9e-5 of the rms on the largest shape, ~16x the im2col path's error
        // (the transforms' constants up to 8 and 1/24 cancel in f32); the fixtures' gradient
        // tolerance is 1e-4 relative.
        assert!(winograd <= 1e-4, "{sh:?}: worst error {winograd:.2e} of the rms (im2col: {im2col:.2e})");
    }
}
