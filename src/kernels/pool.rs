//! 2x2/2 max- and average pooling, adaptive average pooling on NHWC activations, and the (c, h, w) flatten
//! order PyTorch's classifier expects.

use rayon::prelude::*;

/// Offsets in one image's `[h, w, c]` map of the four inputs of 2x2 window (`y`, `x`), in (dy, dx)
/// order.
fn window(y: usize, x: usize, w: usize, c: usize) -> [usize; 4] {
    [(2 * y, 2 * x), (2 * y, 2 * x + 1), (2 * y + 1, 2 * x), (2 * y + 1, 2 * x + 1)].map(|(iy, ix)| (iy * w + ix) * c)
}

/// `[n, h, w, c]` → `[n, h/2, w/2, c]` (floor, as PyTorch); `arg` records which of the four
/// inputs won (0..4 in (dy, dx) order; the first of equal values, as PyTorch).
pub fn max2_forward(x: &[f32], [n, h, w, c]: [usize; 4], out: &mut [f32], arg: &mut [u8]) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), n * h * w * c);
    assert_eq!(out.len(), n * oh * ow * c);
    assert_eq!(arg.len(), out.len());
    let (ilen, olen) = (h * w * c, oh * ow * c);
    out.par_chunks_mut(olen).zip(arg.par_chunks_mut(olen)).zip(x.par_chunks(ilen)).for_each(|((o, a), xs)| {
        for y in 0..oh {
            for xx in 0..ow {
                let base = window(y, xx, w, c);
                let orow = (y * ow + xx) * c;
                for ch in 0..c {
                    let mut best = xs[base[0] + ch];
                    let mut bi = 0u8;
                    for (q, b) in base.iter().enumerate().skip(1) {
                        let v = xs[b + ch];
                        // NaN propagates, as in PyTorch.
                        if v > best || v.is_nan() {
                            best = v;
                            bi = q as u8;
                        }
                    }
                    o[orow + ch] = best;
                    a[orow + ch] = bi;
                }
            }
        }
    });
}

/// Routes each output gradient to the input that won; everything else gets zero.
pub fn max2_backward(dout: &[f32], arg: &[u8], [n, h, w, c]: [usize; 4], dx: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    let (ilen, olen) = (h * w * c, oh * ow * c);
    assert_eq!(dx.len(), n * ilen);
    dx.par_chunks_mut(ilen).zip(dout.par_chunks(olen).zip(arg.par_chunks(olen))).for_each(|(d, (g, a))| {
        d.fill(0.0);
        for y in 0..oh {
            for xx in 0..ow {
                let orow = (y * ow + xx) * c;
                for ch in 0..c {
                    let q = a[orow + ch] as usize;
                    let (iy, ix) = (2 * y + q / 2, 2 * xx + q % 2);
                    d[(iy * w + ix) * c + ch] = g[orow + ch];
                }
            }
        }
    });
}

/// `[n, h, w, c]` → `[n, h/2, w/2, c]`, each output the mean of its 2x2 window (PyTorch's
/// `AvgPool2d(2, 2)`: a last odd row or column is dropped).
pub fn avg2_forward(x: &[f32], [n, h, w, c]: [usize; 4], out: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    assert_eq!(x.len(), n * h * w * c);
    assert_eq!(out.len(), n * oh * ow * c);
    let (ilen, olen) = (h * w * c, oh * ow * c);
    out.par_chunks_mut(olen).zip(x.par_chunks(ilen)).for_each(|(o, xs)| {
        for y in 0..oh {
            for xx in 0..ow {
                let base = window(y, xx, w, c);
                let orow = (y * ow + xx) * c;
                for ch in 0..c {
                    o[orow + ch] = 0.25 * (xs[base[0] + ch] + xs[base[1] + ch] + xs[base[2] + ch] + xs[base[3] + ch]);
                }
            }
        }
    });
}

/// Backward of [`avg2_forward`]: a quarter of each output gradient to each of its four inputs.
pub fn avg2_backward(dout: &[f32], [n, h, w, c]: [usize; 4], dx: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    let (ilen, olen) = (h * w * c, oh * ow * c);
    assert_eq!(dx.len(), n * ilen);
    dx.par_chunks_mut(ilen).zip(dout.par_chunks(olen)).for_each(|(d, g)| {
        d.fill(0.0);
        for y in 0..oh {
            for xx in 0..ow {
                let orow = (y * ow + xx) * c;
                for drow in window(y, xx, w, c) {
                    for ch in 0..c {
                        d[drow + ch] = 0.25 * g[orow + ch];
                    }
                }
            }
        }
    });
}

/// PyTorch's adaptive-average-pool bins along one axis: `[start, end)` for each output index.
pub fn bins(len: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out).map(|i| ((i * len) / out, ((i + 1) * len).div_ceil(out))).collect()
}

/// `[n, h, w, c]` → `[n, oh, ow, c]` by averaging PyTorch's adaptive bins.
pub fn adaptive_avg_forward(x: &[f32], [n, h, w, c]: [usize; 4], [oh, ow]: [usize; 2], out: &mut [f32]) {
    let (by, bx) = (bins(h, oh), bins(w, ow));
    out.par_chunks_mut(oh * ow * c).zip(x.par_chunks(h * w * c)).take(n).for_each(|(o, xs)| {
        for (oy, &(y0, y1)) in by.iter().enumerate() {
            for (ox, &(x0, x1)) in bx.iter().enumerate() {
                let dst = &mut o[(oy * ow + ox) * c..][..c];
                dst.fill(0.0);
                for y in y0..y1 {
                    for xx in x0..x1 {
                        for (d, v) in dst.iter_mut().zip(&xs[(y * w + xx) * c..][..c]) {
                            *d += v;
                        }
                    }
                }
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                dst.iter_mut().for_each(|d| *d *= inv);
            }
        }
    });
}

/// Gradient of [`adaptive_avg_forward`].
pub fn adaptive_avg_backward(dout: &[f32], [n, h, w, c]: [usize; 4], [oh, ow]: [usize; 2], dx: &mut [f32]) {
    let (by, bx) = (bins(h, oh), bins(w, ow));
    dx.par_chunks_mut(h * w * c).zip(dout.par_chunks(oh * ow * c)).take(n).for_each(|(d, g)| {
        d.fill(0.0);
        for (oy, &(y0, y1)) in by.iter().enumerate() {
            for (ox, &(x0, x1)) in bx.iter().enumerate() {
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                let src = &g[(oy * ow + ox) * c..][..c];
                for y in y0..y1 {
                    for xx in x0..x1 {
                        for (d, v) in d[(y * w + xx) * c..][..c].iter_mut().zip(src) {
                            *d += v * inv;
                        }
                    }
                }
            }
        }
    });
}

/// `[n, h, w, c]` → `[n, c, h, w]` (`inverse`: back), per sample.
pub fn nhwc_to_nchw(x: &[f32], [n, h, w, c]: [usize; 4], out: &mut [f32], inverse: bool) {
    let len = h * w * c;
    out.par_chunks_mut(len).zip(x.par_chunks(len)).take(n).for_each(|(o, xs)| {
        for p in 0..h * w {
            for ch in 0..c {
                if inverse {
                    o[p * c + ch] = xs[ch * h * w + p];
                } else {
                    o[ch * h * w + p] = xs[p * c + ch];
                }
            }
        }
    });
}
