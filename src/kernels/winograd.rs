//! Winograd F(4x4, 3x3) for the 3x3 stride-1 pad-1 convolutions (Lavin & Gray, 2015), on NHWC.
//!
//! Each 4x4 block of outputs is computed from a 6x6 input tile with 36 multiplications per channel
//! pair instead of 144: the tile is transformed (`Bᵀ d B`), multiplied element-wise with the
//! transformed filter (`G g Gᵀ`, computed once per weight update and cached by the engine) and
//! transformed back (`Aᵀ m A`). Summed over input channels, the element-wise products become 36
//! independent GEMMs `[tiles, ci] · [ci, co]`, which is where the time goes. The weight gradient
//! runs the same transforms backwards: transformed input tiles times transformed output-gradient
//! tiles (`A dz Aᵀ`), summed over tiles in 36 GEMMs `[ci, tiles] · [tiles, co]`, then `Gᵀ · G`.
//!
//! The transforms use the interpolation points 0, ±1, ±2, ±½ (the matrices of `wincnn`), whose
//! rounding error stays around 1e-6 relative in f32, well inside the fixture tolerances. Channels are
//! processed 8 or 16 at a time in fixed-size arrays (one AVX or AVX-512 register); the transforms
//! are compiled for each kernel path ([`super::isa::dispatch`]) and picked at run time.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::packed;
pub use super::packed::PackedB;
use super::shape::ConvShape;

/// Outputs per tile side.
const M: usize = 4;
/// Input tile side (m + r - 1).
const T: usize = 6;
/// Elements of a transformed tile.
const E: usize = T * T;
/// Fewest input channels Winograd takes (one 8-lane transform step).
const MIN_CHANNELS: usize = 8;
/// Bytes of transformed inputs and products kept per chunk of tiles: enough rows per GEMM to
/// amortise streaming the 36 filter matrices, small enough to stay in the last-level cache.
const CHUNK_BYTES: usize = 24 << 20;

/// Fewest tiles (over the batch) for which the weight gradient goes through Winograd: with fewer,
/// its 36 GEMMs reduce over too few tiles to beat im2col. Since the fixed-size lane copies, the
/// 4x4 maps of a 32x32 input at batch 64 (64 tiles) already gain: 46-70 against 88-124 ms at
/// 512 channels, 7-10 against 12-18 ms at 192 (`examples/kernel_bench`, 2026-11-29; it was 60
/// against 55 ms before them, with a threshold of 128).
const GRAD_MIN_TILES: usize = 32;
/// Fewest tiles per chunk of [`weight_grad`]: 32, the threshold above, left the
/// 8x8 and 16x16 maps of a 32x32 input at batch 64 with two to eight chunks of 32 tiles, each
/// reading and writing all 36 planes of `S` (256 channels: 8.6 against 11.3 ms with 128, 128
/// channels: 10.6 against 13.5; Intel Xeon family 6 model 167, 2 threads).
const GRAD_CHUNK_MIN_TILES: usize = 128;

/// `G`, 6x3: the filter transform.
const G: [[f64; 3]; T] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

thread_local! {
    /// The caller's transformed-input and product buffers, kept between calls (tens of megabytes
    /// that would otherwise be allocated per layer).
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// The weight gradient's 36 planes of products, kept between calls: 38 MB at 512 channels,
    /// which a fresh allocation per call faulted in and zeroed page by page before the GEMMs
    /// overwrote it (CIFAR VGG-16-BN's conv4_2 weight gradient at batch 64: 25 → 16 ms, Intel Xeon
    /// family 6 model 167). The `gemm` crate stores without reading what the buffer held.
    static PRODUCTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether Winograd pays for this convolution: a 3x3 kernel, at least eight input channels (the
/// transforms work on eight at a time; the first layer's 1 or 3 channels make a cheap im2col
/// anyway), and a map large enough that partial tiles do not eat the 4x saving (a 2x2 map computes
/// a whole 4x4 tile: no gain).
pub fn suits(sh: &ConvShape) -> bool {
    let tiles = sh.h.div_ceil(M) * sh.w.div_ceil(M);
    sh.k == 3 && sh.ci >= MIN_CHANNELS && tiles * E * 2 <= sh.h * sh.w * 9
}

/// `U = G g Gᵀ` for every channel pair, from weights in the engine's `[(ky, kx, ci), co]` layout:
/// one `[ci, co]` matrix per element of the 6x6 tile, packed for [`packed::gemm`].
pub fn transform_filter(wk: &[f32], ci: usize, co: usize) -> Vec<PackedB> {
    let plane = ci * co;
    assert_eq!(wk.len(), 9 * plane);
    // Element (a, b) of every transformed filter is a fixed combination of the nine contiguous
    // (ky, kx) planes: nine scaled vector additions per element, vectorised over all channel pairs.
    (0..E)
        .into_par_iter()
        .map(|e| {
            let (a, b) = (e / T, e % T);
            let mut dst = vec![0f32; plane];
            for ky in 0..3 {
                for kx in 0..3 {
                    let c = (G[a][ky] * G[b][kx]) as f32;
                    if c == 0.0 {
                        continue;
                    }
                    let src = &wk[(ky * 3 + kx) * plane..][..plane];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += c * s;
                    }
                }
            }
            PackedB::new(&dst, ci, co, [co, 1])
        })
        .collect()
}

/// One transform step's channels: 8 (a 256-bit vector), or 16 on the AVX-512 path when the channel
/// count is a multiple of 16 (a partial step's variable-length copies cost more than the wider
/// vectors gain).
type Lanes<const L: usize> = [f32; L];

/// The lanes per transform step for `channels` on the chosen kernel path.
fn wide_lanes(channels: usize) -> bool {
    channels.is_multiple_of(16) && super::avx512()
}

/// Reads `lanes` channels from the front of `src` into `dst` (a fixed-size copy, i.e. one vector
/// move, in the common full case: a variable-length copy is a `memcpy` call per pixel).
#[inline(always)]
fn load<const L: usize>(dst: &mut Lanes<L>, src: &[f32], lanes: usize) {
    if lanes == L {
        *dst = src[..L].try_into().expect("L lanes");
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// Writes the first `lanes` of `src` to the front of `dst` (see [`load`]).
#[inline(always)]
fn store<const L: usize>(dst: &mut [f32], src: &Lanes<L>, lanes: usize) {
    if lanes == L {
        dst[..L].copy_from_slice(src);
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// `Bᵀ d` for six vectors of lanes.
#[inline(always)]
fn bt<const L: usize>(d: &[Lanes<L>; T]) -> [Lanes<L>; T] {
    let mut r = [[0f32; L]; T];
    for l in 0..L {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `Aᵀ m` for six vectors of lanes.
#[inline(always)]
fn at<const L: usize>(m: &[Lanes<L>; T]) -> [Lanes<L>; M] {
    let mut r = [[0f32; L]; M];
    for l in 0..L {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        r[0][l] = m0 + s12 + s34;
        r[1][l] = d12 + 2.0 * d34;
        r[2][l] = s12 + 4.0 * s34;
        r[3][l] = d12 + 8.0 * d34 + m5;
    }
    r
}

/// The adjoint of [`at`] (`A d`): four vectors of lanes (a row or column of an output-gradient
/// tile) to the six of a transformed tile. It carries gradients from the outputs back onto the
/// element-wise products, for the weight gradient.
#[inline(always)]
fn a_adj<const L: usize>(d: &[Lanes<L>; M]) -> [Lanes<L>; T] {
    let mut r = [[0f32; L]; T];
    for l in 0..L {
        let [d0, d1, d2, d3] = [d[0][l], d[1][l], d[2][l], d[3][l]];
        let (s02, s13) = (d0 + d2, d1 + d3);
        r[0][l] = d0;
        r[1][l] = s02 + s13;
        r[2][l] = s02 - s13;
        r[3][l] = d0 + 2.0 * d1 + 4.0 * d2 + 8.0 * d3;
        r[4][l] = d0 - 2.0 * d1 + 4.0 * d2 - 8.0 * d3;
        r[5][l] = d3;
    }
    r
}

/// Where tile `t` of a map of `th x tw` tiles per image sits: (image, first output row, column).
fn tile_origin(t: usize, th: usize, tw: usize) -> (usize, usize, usize) {
    let s = t / (th * tw);
    let r = t % (th * tw);
    (s, (r / tw) * M, (r % tw) * M)
}

/// Transforms the input tiles `t0..t0 + v.len() / (36·ci)` of `x` into `v`, `[tile][36][ci]`.
#[inline(always)]
fn input_tiles<const L: usize>(x: &[f32], sh: &ConvShape, t0: usize, v: &mut [f32]) {
    let (h, w, ci) = (sh.h, sh.w, sh.ci);
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    for (j, vt) in v.chunks_exact_mut(E * ci).enumerate() {
        let (s, y0, x0) = tile_origin(t0 + j, th, tw);
        let img = &x[s * h * w * ci..(s + 1) * h * w * ci];
        for c0 in (0..ci).step_by(L) {
            let lanes = L.min(ci - c0);
            // d[i][j]: input pixel (y0 - 1 + i, x0 - 1 + j), zero outside the image.
            let mut d = [[[0f32; L]; T]; T];
            for (i, row) in d.iter_mut().enumerate() {
                let y = (y0 + i).wrapping_sub(1);
                if y >= h {
                    continue;
                }
                for (jj, px) in row.iter_mut().enumerate() {
                    let xx = (x0 + jj).wrapping_sub(1);
                    if xx < w {
                        load(px, &img[(y * w + xx) * ci + c0..], lanes);
                    }
                }
            }
            // Rows, then columns.
            let mut t = [[[0f32; L]; T]; T];
            for i in 0..T {
                t[i] = bt(&d[i]);
            }
            for b in 0..T {
                let col = [t[0][b], t[1][b], t[2][b], t[3][b], t[4][b], t[5][b]];
                let r = bt(&col);
                for a in 0..T {
                    store(&mut vt[(a * T + b) * ci + c0..], &r[a], lanes);
                }
            }
        }
    }
}

/// Transforms the output-gradient tiles `t0..t0 + g.len() / (36·co)` of `dz` (`[n, h, w, co]`, 4x4
/// per tile, zero beyond the map) into `g`, `[tile][36][co]`: `A dz Aᵀ`, the gradient with respect
/// to each tile's element-wise products.
#[inline(always)]
fn grad_tiles<const L: usize>(dz: &[f32], sh: &ConvShape, t0: usize, g: &mut [f32]) {
    let (h, w, co) = (sh.h, sh.w, sh.co);
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    for (j, gt) in g.chunks_exact_mut(E * co).enumerate() {
        let (s, y0, x0) = tile_origin(t0 + j, th, tw);
        let img = &dz[s * h * w * co..(s + 1) * h * w * co];
        let (rows, cols) = (M.min(h - y0), M.min(w - x0));
        for c0 in (0..co).step_by(L) {
            let lanes = L.min(co - c0);
            let mut d = [[[0f32; L]; M]; M];
            for (i, row) in d.iter_mut().enumerate().take(rows) {
                for (jj, px) in row.iter_mut().enumerate().take(cols) {
                    load(px, &img[((y0 + i) * w + x0 + jj) * co + c0..], lanes);
                }
            }
            let mut t = [[[0f32; L]; T]; M];
            for i in 0..M {
                t[i] = a_adj(&d[i]);
            }
            for b in 0..T {
                let r = a_adj(&[t[0][b], t[1][b], t[2][b], t[3][b]]);
                for a in 0..T {
                    store(&mut gt[(a * T + b) * co + c0..], &r[a], lanes);
                }
            }
        }
    }
}

/// Transforms the products of the tiles of one tile row back and writes the output band `out`
/// (rows `y0..y0 + 4` of image `s`, clipped to the map), adding `bias` (and applying a ReLU when
/// `RELU`: fused here, it costs nothing, where a pass of its own over the outputs took 3% of a
/// VGG-16 inference pass). `m` is `[36][tiles][co]`
/// for the whole chunk; `first` is this band's first tile within the chunk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_band<const L: usize, const RELU: bool>(
    m: &[f32],
    chunk: usize,
    first: usize,
    sh: &ConvShape,
    y0: usize,
    txs: Range<usize>,
    bias: &[f32],
    out: &mut [f32],
) {
    let (h, w, co) = (sh.h, sh.w, sh.co);
    let rows = M.min(h - y0);
    for tx in txs.clone() {
        let t = first + tx - txs.start;
        let x0 = tx * M;
        let cols = M.min(w - x0);
        for c0 in (0..co).step_by(L) {
            let lanes = L.min(co - c0);
            let mut g = [[[0f32; L]; T]; T];
            for (e, px) in g.iter_mut().flatten().enumerate() {
                load(px, &m[(e * chunk + t) * co + c0..], lanes);
            }
            let mut t = [[[0f32; L]; M]; T];
            for a in 0..T {
                t[a] = at(&g[a]);
            }
            let mut b = [0f32; L];
            load(&mut b, &bias[c0..], lanes);
            for j in 0..cols {
                let col = [t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]];
                let r = at(&col);
                for (i, ri) in r.iter().enumerate().take(rows) {
                    let mut v = [0f32; L];
                    for l in 0..L {
                        v[l] = ri[l] + b[l];
                        if RELU {
                            v[l] = v[l].max(0.0);
                        }
                    }
                    store(&mut out[(i * w + x0 + j) * co + c0..], &v, lanes);
                }
            }
        }
    }
}

#[inline(always)]
fn input_tiles_lanes(x: &[f32], sh: &ConvShape, t0: usize, v: &mut [f32]) {
    if wide_lanes(sh.ci) { input_tiles::<16>(x, sh, t0, v) } else { input_tiles::<8>(x, sh, t0, v) }
}

#[inline(always)]
fn grad_tiles_lanes(dz: &[f32], sh: &ConvShape, t0: usize, g: &mut [f32]) {
    if wide_lanes(sh.co) { grad_tiles::<16>(dz, sh, t0, g) } else { grad_tiles::<8>(dz, sh, t0, g) }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_band_lanes(
    m: &[f32],
    chunk: usize,
    first: usize,
    sh: &ConvShape,
    y0: usize,
    txs: Range<usize>,
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    match (wide_lanes(sh.co), relu) {
        (true, false) => output_band::<16, false>(m, chunk, first, sh, y0, txs, bias, out),
        (true, true) => output_band::<16, true>(m, chunk, first, sh, y0, txs, bias, out),
        (false, false) => output_band::<8, false>(m, chunk, first, sh, y0, txs, bias, out),
        (false, true) => output_band::<8, true>(m, chunk, first, sh, y0, txs, bias, out),
    }
}

super::isa::dispatch! {
    /// Transforms the input tiles `t0..` of `x` into `v` (see [`input_tiles`]).
    fn transform_input(x: &[f32], sh: &ConvShape, t0: usize, v: &mut [f32]) = input_tiles_lanes;
}

super::isa::dispatch! {
    /// Transforms the output-gradient tiles `t0..` of `dz` into `g` (see [`grad_tiles`]).
    fn transform_grad(dz: &[f32], sh: &ConvShape, t0: usize, g: &mut [f32]) = grad_tiles_lanes;
}

super::isa::dispatch! {
    /// Transforms products back into an output band (see [`output_band`]).
    fn transform_output(
        m: &[f32],
        chunk: usize,
        first: usize,
        sh: &ConvShape,
        y0: usize,
        txs: Range<usize>,
        bias: &[f32],
        relu: bool,
        out: &mut [f32],
    ) = output_band_lanes;
}

/// Largest `ci · co` for which [`forward`] fuses its phases per tile row ([`forward_fused`]): every
/// task reads all 36 filter matrices again, which is cheap at 64x64 and 64x128 (0.6 and 1.2 MB) and
/// not beyond. Measured on VGG-16's layers at batch 1 (`examples/kernel_bench`, 2026-11-29): conv1_2
/// 42.7 → 31.2 ms, conv2_1 14.2 → 12.7 ms, conv2_2 (128x128) level, conv3_1 and wider slower.
const FUSE_MAX_PLANE: usize = 64 * 128;

/// Bytes of transformed tiles and products per segment of [`forward_fused`]'s tile rows: a
/// conv1_2 tile row at 224x224 is 1 MB of them; in segments of 18 tiles, conv1_2 took 32-43 ms
/// against 37-67 ms for whole rows, measured alternately on this VM.
const FUSE_SEGMENT_BYTES: usize = 384 << 10;

/// `out = conv(x, w) + bias`, then a ReLU when `relu`, with `u = transform_filter(w)`; `x` is
/// `[n, h, w, ci]`, `out` `[n, h, w, co]`. Requires [`suits`]`(sh)` apart from the size rule (any
/// 3x3 works).
pub fn forward(x: &[f32], u: &[PackedB], bias: &[f32], relu: bool, sh: &ConvShape, out: &mut [f32]) {
    if sh.ci * sh.co <= FUSE_MAX_PLANE {
        forward_fused(x, u, bias, relu, sh, out)
    } else {
        forward_chunked(x, u, bias, relu, sh, out)
    }
}

/// The shapes [`forward_chunked`] and [`forward_fused`] require.
fn check_forward(x: &[f32], u: &[PackedB], bias: &[f32], sh: &ConvShape, out: &[f32]) {
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    assert_eq!(sh.k, 3, "Winograd F(4x4, 3x3) needs a 3x3 kernel");
    assert_eq!(x.len(), sh.n * h * w * ci);
    assert_eq!(out.len(), sh.n * h * w * co);
    assert!(u.len() == E && u.iter().all(|p| p.k() == ci && p.n() == co), "filters of another shape");
    assert_eq!(bias.len(), co);
}

/// The output bands of tile rows `rows` (over the batch), in order: (tile row, first image row of
/// the band, the band: four image rows of `out`, fewer at the bottom of an image). They are one
/// contiguous stretch of `out`.
fn tile_row_bands<'a>(out: &'a mut [f32], sh: &ConvShape, rows: Range<usize>) -> Vec<(usize, usize, &'a mut [f32])> {
    let (h, w, co) = (sh.h, sh.w, sh.co);
    let th = h.div_ceil(M);
    let start = ((rows.start / th) * h + (rows.start % th) * M) * w * co;
    let mut rest = &mut out[start..];
    let mut bands = Vec::with_capacity(rows.len());
    for r in rows {
        let y0 = (r % th) * M;
        let (band, tail) = rest.split_at_mut(M.min(h - y0) * w * co);
        bands.push((r, y0, band));
        rest = tail;
    }
    bands
}

/// [`forward`] in chunks of tile rows of up to [`CHUNK_BYTES`], each phase parallel over the chunk.
pub fn forward_chunked(x: &[f32], u: &[PackedB], bias: &[f32], relu: bool, sh: &ConvShape, out: &mut [f32]) {
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    check_forward(x, u, bias, sh, out);
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    let tile_rows = sh.n * th;
    // Chunks of whole tile rows, so that each chunk's output is one contiguous band per tile row.
    let per_tile = E * (ci + co) * 4;
    let rows_per_chunk = (CHUNK_BYTES / (per_tile * tw)).clamp(1, tile_rows);
    let max_tiles = rows_per_chunk * tw;
    let mut bufs = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let (vbuf, mbuf) = &mut bufs;
    if vbuf.len() < max_tiles * E * ci {
        vbuf.resize(max_tiles * E * ci, 0.0);
    }
    if mbuf.len() < max_tiles * E * co {
        mbuf.resize(max_tiles * E * co, 0.0);
    }
    for r0 in (0..tile_rows).step_by(rows_per_chunk) {
        let rows = rows_per_chunk.min(tile_rows - r0);
        let tiles = rows * tw;
        let t0 = r0 * tw;
        let v = &mut vbuf[..tiles * E * ci];
        let m = &mut mbuf[..tiles * E * co];
        v.par_chunks_mut(E * ci).with_min_len(4).enumerate().for_each(|(j, vt)| transform_input(x, sh, t0 + j, vt));
        let v = &*v;
        // One GEMM per tile element: [tiles, ci] (rows 36·ci apart) · [ci, co] → [tiles, co].
        m.par_chunks_mut(tiles * co).enumerate().for_each(|(e, me)| {
            packed::gemm(tiles, &v[e * ci..], E * ci, &u[e], 0..u[e].panels(), me, co, false);
        });
        let m = &*m;
        tile_row_bands(out, sh, r0..r0 + rows)
            .into_par_iter()
            .for_each(|(r, y0, band)| transform_output(m, tiles, (r - r0) * tw, sh, y0, 0..tw, bias, relu, band));
    }
    BUFFERS.with(|b| *b.borrow_mut() = bufs);
}

/// [`forward`] with the three phases fused per tile row: each task transforms one row of tiles,
/// runs its 36 GEMMs and transforms the products back while they are still in its core's cache,
/// instead of each phase streaming a whole chunk of tens of megabytes through memory. It pays for
/// few channels (large maps, little arithmetic per byte of transformed tiles), where the filters
/// that every task reads again are small.
pub fn forward_fused(x: &[f32], u: &[PackedB], bias: &[f32], relu: bool, sh: &ConvShape, out: &mut [f32]) {
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    check_forward(x, u, bias, sh, out);
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    // Segments of a tile row small enough for their transformed tiles and products to stay in
    // the core's L2 cache, in multiples of the micro-kernel's six rows.
    let seg = (FUSE_SEGMENT_BYTES / (E * (ci + co) * 4)).max(6) / 6 * 6;
    let seg = seg.min(tw);
    tile_row_bands(out, sh, 0..sh.n * th).into_par_iter().for_each(|(r, y0, band)| {
        let mut bufs = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let (vbuf, mbuf) = &mut bufs;
        vbuf.resize(vbuf.len().max(seg * E * ci), 0.0);
        mbuf.resize(mbuf.len().max(seg * E * co), 0.0);
        for tx0 in (0..tw).step_by(seg) {
            let n = seg.min(tw - tx0);
            let (v, m) = (&mut vbuf[..n * E * ci], &mut mbuf[..n * E * co]);
            transform_input(x, sh, r * tw + tx0, v);
            for (e, me) in m.chunks_exact_mut(n * co).enumerate() {
                packed::gemm(n, &v[e * ci..], E * ci, &u[e], 0..u[e].panels(), me, co, false);
            }
            transform_output(m, n, 0, sh, y0, tx0..tx0 + n, bias, relu, band);
        }
        BUFFERS.with(|b| *b.borrow_mut() = bufs);
    });
}

/// Whether [`weight_grad`] pays for this convolution: [`suits`], and enough tiles over the batch.
pub fn suits_weight_grad(sh: &ConvShape) -> bool {
    suits(sh) && sh.n * sh.h.div_ceil(M) * sh.w.div_ceil(M) >= GRAD_MIN_TILES
}

/// The weight gradient of the convolution, `dW = Σ x ⋆ dz`, in the engine's `[(ky, kx, ci), co]`
/// layout: per tile element, `S[e] = Σ_tiles V[e]ᵀ · D[e]` (`V` the transformed input tiles, `D`
/// the transformed output-gradient tiles), then `dW = Gᵀ S G` per channel pair. 36 GEMMs
/// `[ci, tiles] · [tiles, co]` do the work, each on one thread and accumulated over chunks of tiles
/// in order, so the result does not depend on scheduling.
pub fn weight_grad(x: &[f32], dz: &[f32], sh: &ConvShape) -> Vec<f32> {
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    assert_eq!(sh.k, 3, "Winograd F(4x4, 3x3) needs a 3x3 kernel");
    assert_eq!(x.len(), sh.n * h * w * ci);
    assert_eq!(dz.len(), sh.n * h * w * co);
    let total = sh.n * h.div_ceil(M) * w.div_ceil(M);
    // Chunks of tiles small enough for their transforms to stay in cache (2 MB), but of at least
    // 128 tiles: every chunk reads and writes all of S once, which must be amortised over enough
    // products (measured on the CIFAR VGG-16's layers: 24 MB chunks were 1.2-1.6x slower at 64
    // and 128 channels).
    let chunk = ((2 << 20) / (E * (ci + co) * 4)).max(GRAD_CHUNK_MIN_TILES).min(total.max(1));
    let plane = ci * co;
    // Every element is written by the first chunk's GEMMs (which do not accumulate) before it is
    // read, so the kept buffer needs no clearing.
    let mut products = PRODUCTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    products.resize(E * plane, 0.0);
    let s = &mut products[..E * plane];
    let mut bufs = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let (vbuf, gbuf) = &mut bufs;
    if vbuf.len() < chunk * E * ci {
        vbuf.resize(chunk * E * ci, 0.0);
    }
    if gbuf.len() < chunk * E * co {
        gbuf.resize(chunk * E * co, 0.0);
    }
    for t0 in (0..total).step_by(chunk) {
        let tiles = chunk.min(total - t0);
        let v = &mut vbuf[..tiles * E * ci];
        let g = &mut gbuf[..tiles * E * co];
        v.par_chunks_mut(E * ci).with_min_len(4).enumerate().for_each(|(j, vt)| transform_input(x, sh, t0 + j, vt));
        g.par_chunks_mut(E * co).with_min_len(4).enumerate().for_each(|(j, gt)| transform_grad(dz, sh, t0 + j, gt));
        let (v, g) = (&*v, &*g);
        s.par_chunks_mut(plane).enumerate().for_each(|(e, se)| {
            let (a, b) = (&v[e * ci..], &g[e * co..]);
            super::sgemm(ci, co, tiles, a, [1, E * ci], b, [E * co, 1], se, co, t0 > 0, false);
        });
    }
    BUFFERS.with(|b| *b.borrow_mut() = bufs);
    // dW[ky, kx] = Σ_a G[a][ky] Σ_b G[b][kx] S[a, b], separably, over blocks of channel pairs so
    // that S is read once (it is 36 planes: tens of megabytes for 512 channels).
    const BLOCK: usize = 64;
    let g: [[f32; 3]; T] = G.map(|row| row.map(|v| v as f32));
    let parts: Vec<Vec<f32>> = (0..plane.div_ceil(BLOCK))
        .into_par_iter()
        .with_min_len(16)
        .map(|blk| {
            let p0 = blk * BLOCK;
            let len = BLOCK.min(plane - p0);
            let mut half = [[[0f32; BLOCK]; 3]; T];
            for (a, ha) in half.iter_mut().enumerate() {
                for b in 0..T {
                    let src = &s[(a * T + b) * plane + p0..][..len];
                    for (kx, hk) in ha.iter_mut().enumerate() {
                        let c = g[b][kx];
                        if c != 0.0 {
                            for (d, v) in hk.iter_mut().zip(src) {
                                *d += c * v;
                            }
                        }
                    }
                }
            }
            let mut out = vec![0f32; 9 * len];
            for ky in 0..3 {
                for kx in 0..3 {
                    let dst = &mut out[(ky * 3 + kx) * len..][..len];
                    for (a, ha) in half.iter().enumerate() {
                        let c = g[a][ky];
                        if c != 0.0 {
                            for (d, v) in dst.iter_mut().zip(&ha[kx]) {
                                *d += c * v;
                            }
                        }
                    }
                }
            }
            out
        })
        .collect();
    PRODUCTS.with(|p| *p.borrow_mut() = products);
    let mut dw = vec![0f32; 9 * plane];
    for (blk, out) in parts.iter().enumerate() {
        let p0 = blk * BLOCK;
        let len = out.len() / 9;
        for k9 in 0..9 {
            dw[k9 * plane + p0..][..len].copy_from_slice(&out[k9 * len..][..len]);
        }
    }
    dw
}

#[cfg(test)]
#[path = "winograd_tests.rs"]
mod tests;
