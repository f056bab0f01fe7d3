//! Stride-1 "same" convolution (k x k, padding k/2; k = 3 or 1) on NHWC activations.
//!
//! Weights are kept as a `[k·k·cin, cout]` matrix in (ky, kx, ci) row order, so that a patch row of
//! the im2col matrix is nine contiguous channel runs copied from the input. [`to_torch`] and
//! [`from_torch`] convert to and from PyTorch's `[cout, cin, k, k]`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::half::{HalfBuf, HalfKind};
use super::packed::PackedB;
pub use super::shape::ConvShape;
use super::{add_bias, direct, implicit, sgemm, small, winograd};

thread_local! {
    /// Each worker thread's im2col buffer, kept between calls: allocating and zeroing a fresh one
    /// per call cost ~3% of a training step.
    static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a patch buffer of at least `len` floats (contents unspecified; im2col overwrites
/// what it uses). The buffer is taken out of the thread's slot for the call, so a nested use (a
/// parallel GEMM can run another job on this thread while it waits) gets its own.
fn with_patches<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = PATCHES.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    PATCHES.with(|p| {
        let mut slot = p.borrow_mut();
        if slot.len() < buf.len() {
            *slot = buf;
        }
    });
    r
}

/// Forms of a convolution's filter derived from its weights (Winograd-transformed, packed for the
/// implicit GEMM), each computed on first use and kept until the weights change: the owner replaces
/// the cache then.
#[derive(Debug, Default)]
pub struct FilterCache {
    winograd: OnceLock<Vec<PackedB>>,
    packed: OnceLock<PackedB>,
}

/// A convolution's weights, `[(ky, kx, ci), co]`, as their owner holds them: f32, or 16-bit storage
/// that is widened only where a kernel reads the weights themselves. The derived filters a
/// [`FilterCache`] keeps for 16-bit weights are 16-bit too (the Winograd ones; the implicit GEMM's,
/// used in inference only for 5 to 7 input channels, stay f32).
#[derive(Debug, Clone, Copy)]
pub enum Filter<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 or f16 values.
    Half(&'a HalfBuf),
}

impl<'a> Filter<'a> {
    /// The values as f32: borrowed, or widened.
    pub fn values(self) -> Cow<'a, [f32]> {
        match self {
            Filter::F32(v) => Cow::Borrowed(v),
            Filter::Half(h) => Cow::Owned(h.decode()),
        }
    }

    /// The 16-bit format, `None` for f32.
    fn half_kind(self) -> Option<HalfKind> {
        match self {
            Filter::F32(_) => None,
            Filter::Half(h) => Some(h.kind),
        }
    }

    /// The Winograd-transformed filter of these weights, `flip`ped first for the input gradient;
    /// for 16-bit weights held in 16 bits too (see [`winograd_storage`]).
    fn winograd(self, sh: &ConvShape, flip: bool) -> Vec<PackedB> {
        let values = self.values();
        let u = if flip {
            winograd::transform_filter(&flipped(&values, sh.ci, sh.co, sh.k), sh.co, sh.ci)
        } else {
            winograd::transform_filter(&values, sh.ci, sh.co)
        };
        let store = self.half_kind().and_then(|_| winograd_storage(&u));
        u.into_iter().map(|p| p.narrowed(store)).collect()
    }
}

/// The 16-bit format for the Winograd filters `u` of 16-bit weights: f16 whenever their largest
/// magnitude lies in [2^-8, 65504], whatever the weights' own format, else none (f32).
///
/// The transformed values of 16-bit weights need more bits than the weights (`G` has thirds and
/// 24ths), so keeping them in 16 bits rounds a second time, and F(4x4, 3x3)'s output transform
/// (coefficients up to 8) amplifies that rounding. Measured on VGG-16's logits (formula weights,
/// float64 reference, 32x32 input): bf16 weights with bf16 filters 1.4e-2 against 5.0e-3 for the
/// rounded weights alone, with f16 filters 5.3e-3; f16 weights with f16 filters 1.8e-3 against
/// 6.5e-4 (PyTorch's own float32 error there: 5.0e-3 and 6.5e-4). f16's 11 significant bits make the
/// second rounding small next to bf16's first; its range is why the bound: below 2^-14 values
/// lose bits, and with the largest at 2^-8 or more those are under 2^-6 of it, whose rounding
/// (at most 2^-25) is far under the largest values' (2^-19).
fn winograd_storage(u: &[PackedB]) -> Option<HalfKind> {
    let largest = u.iter().map(PackedB::max_abs).fold(0f32, f32::max);
    ((2f32.powi(-8)..=65504.0).contains(&largest)).then_some(HalfKind::F16)
}

/// PyTorch `[cout, cin, k, k]` → `[(ky, kx, ci), cout]`.
pub fn from_torch(w: &[f32], co: usize, ci: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    out[((ky * k + kx) * ci + i) * co + o] = w[((o * ci + i) * k + ky) * k + kx];
                }
            }
        }
    }
    out
}

/// `[(ky, kx, ci), cout]` → PyTorch `[cout, cin, k, k]`.
pub fn to_torch(w: &[f32], co: usize, ci: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for ky in 0..k {
                for kx in 0..k {
                    out[((o * ci + i) * k + ky) * k + kx] = w[((ky * k + kx) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// The weights of the input-gradient convolution: kernel rotated by 180° and channels swapped,
/// `[(ky, kx, co), ci]`, so that dX = conv(dZ) with them.
pub fn flipped(wk: &[f32], ci: usize, co: usize, k: usize) -> Vec<f32> {
    // A transpose of each (ky, kx) plane, in 32x32 blocks: element by element, the writes strode
    // through the whole plane (~20 ms per step for the 512-channel layers).
    const B: usize = 32;
    let mut out = vec![0f32; wk.len()];
    let plane = ci * co;
    out.par_chunks_mut(plane).enumerate().for_each(|(kk, dst)| {
        let (ky, kx) = (kk / k, kk % k);
        let src = &wk[((k - 1 - ky) * k + (k - 1 - kx)) * plane..][..plane];
        for i0 in (0..ci).step_by(B) {
            for o0 in (0..co).step_by(B) {
                for o in o0..(o0 + B).min(co) {
                    for i in i0..(i0 + B).min(ci) {
                        dst[o * ci + i] = src[i * co + o];
                    }
                }
            }
        }
    });
    out
}

/// Patches of output rows `r0..r0 + rows` (rows run over samples, then y, then x) of the batch `x`,
/// `[n, h, w, ci]`, into `p`, `[rows, k·k·ci]` (zeros outside the image).
fn im2col(x: &[f32], sh: &ConvShape, r0: usize, rows: usize, p: &mut [f32]) {
    let (h, w, ci, k) = (sh.h, sh.w, sh.ci, sh.k);
    let pad = (k / 2) as isize;
    let kd = sh.kdim();
    for (j, row) in p[..rows * kd].chunks_exact_mut(kd).enumerate() {
        let r = r0 + j;
        let (s, pix) = (r / (h * w), r % (h * w));
        let (y, xx) = (pix / w, pix % w);
        let xs = &x[s * h * w * ci..(s + 1) * h * w * ci];
        for ky in 0..k {
            let iy = y as isize + ky as isize - pad;
            for kx in 0..k {
                let ix = xx as isize + kx as isize - pad;
                let dst = &mut row[(ky * k + kx) * ci..][..ci];
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    dst.fill(0.0);
                } else {
                    copy_run(dst, &xs[(iy as usize * w + ix as usize) * ci..][..ci]);
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` in whole eight-float moves: with a length known only at run time,
/// `copy_from_slice` is a `memcpy` call per channel run, nine per output pixel in [`im2col`].
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: [f32; 8] = s.try_into().expect("eight floats");
        let d: &mut [f32; 8] = d.try_into().expect("eight floats");
        *d = s;
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Which algorithms the convolutions may take: the fastest that suits each layer (Winograd
/// F(4x4, 3x3), the implicit GEMM, direct loops, products per pixel pair for tiny maps), or im2col + GEMM
/// wherever a layer is not one of the special shapes (the reference, for A/B measurements:
/// `vgg bench --engine im2col`). Chosen per network ([`crate::engine::Engine::set_conv_algos`]),
/// not per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgos {
    /// The fastest algorithm for each layer's shape.
    #[default]
    Fastest,
    /// im2col + GEMM instead of Winograd and the implicit GEMM.
    Im2col,
}

impl ConvAlgos {
    fn fast(self) -> bool {
        self == ConvAlgos::Fastest
    }
}

/// `out = conv(x, w) + bias`; `x` is `[n, h, w, ci]`, `out` `[n, h, w, co]`. Goes through Winograd
/// F(4x4, 3x3) where that pays (see [`winograd::suits`]), transforming the filter for this call.
pub fn forward(x: &[f32], wk: &[f32], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    forward_cached(x, Filter::F32(wk), &FilterCache::default(), bias, false, sh, out, ConvAlgos::Fastest)
}

/// [`forward`] with the derived filters kept in `cache` (filled on first use; the caller replaces
/// it when the weights change), followed by a ReLU when `relu`: Winograd applies it as it writes
/// the outputs, the other paths in a pass of their own.
#[allow(clippy::too_many_arguments)]
pub fn forward_cached(
    x: &[f32],
    filter: Filter,
    cache: &FilterCache,
    bias: &[f32],
    relu: bool,
    sh: &ConvShape,
    out: &mut [f32],
    algos: ConvAlgos,
) {
    if !small::suits(sh) && algos.fast() && winograd::suits(sh) {
        let u = cache.winograd.get_or_init(|| filter.winograd(sh, false));
        winograd::forward(x, u, bias, relu, sh, out);
    } else {
        forward_exact(x, filter, cache, bias, sh, out, algos);
        if relu {
            super::norm::relu_inplace(out);
        }
    }
}

/// [`forward`] without Winograd's rounding (training's forward, where train-mode BatchNorm amplifies
/// it): products per pixel pair for maps of at most 2x2, the implicit GEMM for 3x3 kernels (direct loops
/// for the first layer's few input channels on the im2col engine), im2col + GEMM otherwise (1x1).
pub fn forward_exact(
    x: &[f32],
    filter: Filter,
    cache: &FilterCache,
    bias: &[f32],
    sh: &ConvShape,
    out: &mut [f32],
    algos: ConvAlgos,
) {
    if small::suits(sh) {
        small::forward(x, &filter.values(), bias, sh, out);
    } else if algos.fast() && implicit::suits(sh) {
        // The first layer too: with its 1-3 input channels the implicit GEMM measured 2.5-3x the
        // direct loops' speed on a Zen 4 core (VGG-16 conv1_1 at batch 8: 11.8 against 29.9 ms;
        // Fashion-MNIST's 1->24 at batch 64: 0.28 against 0.82 ms, `examples/kernel_bench`).
        let p = cache.packed.get_or_init(|| implicit::pack_filter(&filter.values(), sh));
        implicit::forward(x, p, bias, sh, out);
    } else if direct::suits(sh) {
        direct::forward(x, &filter.values(), bias, sh, out);
    } else {
        forward_im2col(x, &filter.values(), bias, sh, out);
    }
}

/// [`forward`] as im2col + GEMM, for every kernel size and map (the reference the Winograd path is
/// tested against).
pub fn forward_im2col(x: &[f32], wk: &[f32], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    let (kd, co) = (sh.kdim(), sh.co);
    assert_eq!(x.len(), sh.n * sh.hw() * sh.ci);
    assert_eq!(out.len(), sh.n * sh.hw() * co);
    assert_eq!(wk.len(), kd * co);
    let (per, par) = sh.split();
    let block = sh.block_rows();
    out.par_chunks_mut(per * co).enumerate().for_each(|(t, o)| {
        let rows_here = o.len() / co;
        let need = if sh.k == 1 { 0 } else { block.min(rows_here) * kd };
        with_patches(need, |p| {
            for b0 in (0..rows_here).step_by(block) {
                let rows = block.min(rows_here - b0);
                let r0 = t * per + b0;
                let ob = &mut o[b0 * co..(b0 + rows) * co];
                let pm: &[f32] = if sh.k == 1 {
                    &x[r0 * kd..(r0 + rows) * kd]
                } else {
                    im2col(x, sh, r0, rows, p);
                    &p[..rows * kd]
                };
                sgemm(rows, co, kd, pm, [kd, 1], wk, [co, 1], ob, co, false, par);
                // The bias after the product: one pass, instead of a small copy per row before it.
                add_bias(ob, bias);
            }
        });
    });
}

/// Gradients of [`forward`]: returns (dW `[(ky,kx,ci), co]`, dbias `[co]`) and, when `dx` is given,
/// writes the input gradient into it (as a convolution of `dz` with the rotated kernel, so that
/// every thread writes only its own rows).
pub fn backward(x: &[f32], wk: &[f32], dz: &[f32], sh: &ConvShape, dx: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
    backward_cached(x, wk, &FilterCache::default(), dz, sh, dx, ConvAlgos::Fastest)
}

/// [`backward`] with the input-gradient convolution's transformed filter kept in `cache` (see
/// [`forward_cached`]).
pub fn backward_cached(
    x: &[f32],
    wk: &[f32],
    cache: &FilterCache,
    dz: &[f32],
    sh: &ConvShape,
    dx: Option<&mut [f32]>,
    algos: ConvAlgos,
) -> (Vec<f32>, Vec<f32>) {
    let (dw, db) = if small::suits(sh) {
        (small::weight_grad(x, dz, sh), bias_grad(dz, sh.co))
    } else if direct::suits(sh) {
        (direct::weight_grad(x, dz, sh), bias_grad(dz, sh.co))
    } else if algos.fast() && winograd::suits_weight_grad(sh) {
        (winograd::weight_grad(x, dz, sh), bias_grad(dz, sh.co))
    } else {
        weight_grad_im2col(x, dz, sh)
    };
    if let Some(dx) = dx {
        backward_input_cached(Filter::F32(wk), cache, dz, sh, dx, algos);
    }
    (dw, db)
}

/// The weight and bias gradients of [`forward`] as im2col + GEMM (`dW = Pᵀ · dZ`), for every
/// kernel size and map (the reference the Winograd weight gradient is tested against).
pub fn weight_grad_im2col(x: &[f32], dz: &[f32], sh: &ConvShape) -> (Vec<f32>, Vec<f32>) {
    let (kd, co) = (sh.kdim(), sh.co);
    let total = sh.n * sh.hw();
    assert_eq!(x.len(), total * sh.ci);
    assert_eq!(dz.len(), total * co);
    let (per, par) = sh.split();
    let block = sh.block_rows();
    let parts: Vec<Vec<f32>> = dz
        .par_chunks(per * co)
        .enumerate()
        .map(|(t, dzi)| {
            let rows_here = dzi.len() / co;
            let mut dw = vec![0f32; kd * co];
            let need = if sh.k == 1 { 0 } else { block.min(rows_here) * kd };
            with_patches(need, |p| {
                for b0 in (0..rows_here).step_by(block) {
                    let rows = block.min(rows_here - b0);
                    let r0 = t * per + b0;
                    let dzb = &dzi[b0 * co..(b0 + rows) * co];
                    let pm: &[f32] = if sh.k == 1 {
                        &x[r0 * kd..(r0 + rows) * kd]
                    } else {
                        im2col(x, sh, r0, rows, p);
                        &p[..rows * kd]
                    };
                    // dW += Pᵀ · dZ
                    sgemm(kd, co, rows, pm, [1, kd], dzb, [co, 1], &mut dw, co, true, par);
                }
            });
            dw
        })
        .collect();
    let mut dw = vec![0f32; kd * co];
    for pw in parts {
        for (a, v) in dw.iter_mut().zip(pw) {
            *a += v;
        }
    }
    (dw, bias_grad(dz, co))
}

/// Per-channel sums of `dz` (`[rows, co]`): the bias gradient, summed in f64 per thread's range of
/// rows and reduced in order.
fn bias_grad(dz: &[f32], co: usize) -> Vec<f32> {
    let rows = dz.len() / co.max(1);
    let per = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    super::channel_sums::<1>(dz, co, per, |chunk, _, acc| {
        for r in chunk.chunks_exact(co) {
            for (a, v) in acc.iter_mut().zip(r) {
                a[0] += *v as f64;
            }
        }
    })
    .into_iter()
    .map(|[v]| v as f32)
    .collect()
}

/// The input gradient of [`forward`] alone: `dx = conv(dz, rotated kernel)`.
pub fn backward_input(wk: &[f32], dz: &[f32], sh: &ConvShape, dx: &mut [f32]) {
    backward_input_cached(Filter::F32(wk), &FilterCache::default(), dz, sh, dx, ConvAlgos::Fastest)
}

/// [`backward_input`] with the transformed rotated filter kept in `cache` (see [`forward_cached`]).
pub fn backward_input_cached(
    filter: Filter,
    cache: &FilterCache,
    dz: &[f32],
    sh: &ConvShape,
    dx: &mut [f32],
    algos: ConvAlgos,
) {
    let back = ConvShape { ci: sh.co, co: sh.ci, ..*sh };
    let zero = vec![0.0; sh.ci];
    if small::suits(sh) {
        small::input_grad(&filter.values(), dz, sh, dx);
    } else if algos.fast() && winograd::suits(&back) {
        let u = cache.winograd.get_or_init(|| filter.winograd(sh, true));
        winograd::forward(dz, u, &zero, false, &back, dx);
    } else if algos.fast() && implicit::suits(&back) {
        let p =
            cache.packed.get_or_init(|| implicit::pack_filter(&flipped(&filter.values(), sh.ci, sh.co, sh.k), &back));
        implicit::forward(dz, p, &zero, &back, dx);
    } else {
        forward_im2col(dz, &flipped(&filter.values(), sh.ci, sh.co, sh.k), &zero, &back, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data as data;

    /// Direct convolution, by definition.
    fn reference(x: &[f32], w: &[f32], b: &[f32], sh: &ConvShape) -> Vec<f32> {
        let pad = (sh.k / 2) as isize;
        let mut out = vec![0f32; sh.n * sh.h * sh.w * sh.co];
        for n in 0..sh.n {
            for y in 0..sh.h {
                for xx in 0..sh.w {
                    for o in 0..sh.co {
                        let mut acc = b[o] as f64;
                        for i in 0..sh.ci {
                            for ky in 0..sh.k {
                                for kx in 0..sh.k {
                                    let iy = y as isize + ky as isize - pad;
                                    let ix = xx as isize + kx as isize - pad;
                                    if iy < 0 || ix < 0 || iy >= sh.h as isize || ix >= sh.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * sh.h + iy as usize) * sh.w + ix as usize) * sh.ci + i];
                                    acc += xv as f64 * w[((o * sh.ci + i) * sh.k + ky) * sh.k + kx] as f64;
                                }
                            }
                        }
                        out[((n * sh.h + y) * sh.w + xx) * sh.co + o] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        for sh in [
            ConvShape { n: 5, h: 7, w: 6, ci: 3, co: 4, k: 3 },
            ConvShape { n: 3, h: 2, w: 2, ci: 5, co: 2, k: 3 },
            ConvShape { n: 4, h: 3, w: 5, ci: 4, co: 3, k: 1 },
            // One image of more rows than a block, split between threads mid-image.
            ConvShape { n: 1, h: 50, w: 47, ci: 2, co: 3, k: 3 },
        ] {
            let x = data(sh.n * sh.h * sh.w * sh.ci, 1);
            let w = data(sh.co * sh.kdim(), 2);
            let b = data(sh.co, 3);
            let wk = from_torch(&w, sh.co, sh.ci, sh.k);
            assert_eq!(to_torch(&wk, sh.co, sh.ci, sh.k), w);
            let mut out = vec![0f32; sh.n * sh.h * sh.w * sh.co];
            forward(&x, &wk, &b, &sh, &mut out);
            assert!(close(&out, &reference(&x, &w, &b, &sh)), "{sh:?}");
            // Gradients of L = Σ g·out by finite differences of the (linear) reference.
            let g = data(out.len(), 4);
            let mut dx = vec![0f32; x.len()];
            let (dw, db) = backward(&x, &wk, &g, &sh, Some(&mut dx));
            let dw = to_torch(&dw, sh.co, sh.ci, sh.k);
            let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
                reference(x, w, b, &sh).iter().zip(&g).map(|(o, g)| *o as f64 * *g as f64).sum()
            };
            let base = loss(&x, &w, &b);
            for (i, want) in dw.iter().enumerate().step_by(5) {
                let mut w2 = w.clone();
                w2[i] += 1.0;
                assert!(((loss(&x, &w2, &b) - base) as f32 - want).abs() < 1e-2, "dw[{i}] {sh:?}");
            }
            for (i, want) in dx.iter().enumerate().step_by(7) {
                let mut x2 = x.clone();
                x2[i] += 1.0;
                assert!(((loss(&x2, &w, &b) - base) as f32 - want).abs() < 1e-2, "dx[{i}] {sh:?}");
            }
            let sums: Vec<f32> = (0..sh.co).map(|o| g.iter().skip(o).step_by(sh.co).sum()).collect();
            assert!(close(&db, &sums));
        }
    }

    /// 16-bit weights keep their Winograd filters in f16 while the largest value lies in
    /// [2^-8, 65504], in f32 outside it; f32 weights keep f32 filters. Checked through the cache.
    #[test]
    fn winograd_filters_of_16_bit_weights_are_f16_within_its_range() {
        let sh = ConvShape { n: 1, h: 8, w: 8, ci: 8, co: 8, k: 3 };
        let x = data(sh.n * sh.h * sh.w * sh.ci, 1);
        let mut out = vec![0f32; sh.n * sh.h * sh.w * sh.co];
        let mut stored = |scale: f32, kind: Option<HalfKind>| {
            let wk: Vec<f32> = data(9 * sh.ci * sh.co, 2).iter().map(|v| v * scale).collect();
            let half = kind.map(|k| HalfBuf::encode(k, &wk));
            let filter = half.as_ref().map_or(Filter::F32(&wk), Filter::Half);
            let cache = FilterCache::default();
            forward_cached(&x, filter, &cache, &vec![0.0; sh.co], false, &sh, &mut out, ConvAlgos::Fastest);
            let u = cache.winograd.get().expect("an 8x8 map with 8 channels takes Winograd");
            assert!(u.iter().all(|p| p.half_kind() == u[0].half_kind()));
            u[0].half_kind()
        };
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            assert_eq!(stored(1.0, Some(kind)), Some(HalfKind::F16), "{kind:?}");
            assert_eq!(stored(1e-4, Some(kind)), None, "{kind:?}: too small for f16's precision");
        }
        assert_eq!(stored(1e6, Some(HalfKind::Bf16)), None, "beyond f16's range");
        assert_eq!(stored(1.0, None), None);
    }
}
