//! Winograd F(4x4, 3x3) for the 3x3 stride-1 pad-1 convolutions (Lavin & Gray, 2015), on NHWC.
//!
//! Each 4x4 block of outputs is computed from a 6x6 input tile with 36 multiplications per channel
//! pair instead of 144: the tile is transformed (`Bᵀ d B`), multiplied element-wise with the
//! transformed filter (`G g Gᵀ`, computed once per weight update and cached by the engine) and
//! transformed back (`Aᵀ m A`). Summed over input channels, the element-wise products become 36
//! independent GEMMs `[tiles, ci] · [ci, co]`, which is where the time goes.
//!
//! The transforms use the interpolation points 0, ±1, ±2, ±½ (the matrices of `wincnn`), whose
//! rounding error stays around 1e-6 relative in f32, well inside the fixture tolerances. Channels are
//! processed eight at a time in fixed-size arrays (one AVX register); the transforms are compiled
//! twice, for AVX2+FMA and for the baseline, and picked at run time.

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::ConvShape;
use super::packed;
pub use super::packed::PackedB;

/// Outputs per tile side.
const M: usize = 4;
/// Input tile side (m + r - 1).
const T: usize = 6;
/// Elements of a transformed tile.
const E: usize = T * T;
/// Channels per transform step.
const L: usize = 8;
/// Bytes of transformed inputs and products kept per chunk of tiles: enough rows per GEMM to
/// amortise streaming the 36 filter matrices, small enough to stay in the last-level cache.
const CHUNK_BYTES: usize = 24 << 20;

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
}

/// Whether Winograd pays for this convolution: a 3x3 kernel, at least eight input channels (the
/// transforms work on eight at a time; the first layer's 1 or 3 channels make a cheap im2col
/// anyway), and a map large enough that partial tiles do not eat the 4x saving (a 2x2 map computes
/// a whole 4x4 tile: no gain).
pub fn suits(sh: &ConvShape) -> bool {
    let tiles = sh.h.div_ceil(M) * sh.w.div_ceil(M);
    sh.k == 3 && sh.ci >= L && tiles * E * 2 <= sh.h * sh.w * 9
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

type Lanes = [f32; L];

/// `Bᵀ d` for six vectors of lanes.
#[inline(always)]
fn bt(d: &[Lanes; T]) -> [Lanes; T] {
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
fn at(m: &[Lanes; T]) -> [Lanes; M] {
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

/// Where tile `t` of a map of `th x tw` tiles per image sits: (image, first output row, column).
fn tile_origin(t: usize, th: usize, tw: usize) -> (usize, usize, usize) {
    let s = t / (th * tw);
    let r = t % (th * tw);
    (s, (r / tw) * M, (r % tw) * M)
}

/// Transforms the input tiles `t0..t0 + v.len() / (36·ci)` of `x` into `v`, `[tile][36][ci]`.
#[inline(always)]
fn input_tiles(x: &[f32], sh: &ConvShape, t0: usize, v: &mut [f32]) {
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
                        px[..lanes].copy_from_slice(&img[(y * w + xx) * ci + c0..][..lanes]);
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
                    vt[(a * T + b) * ci + c0..][..lanes].copy_from_slice(&r[a][..lanes]);
                }
            }
        }
    }
}

/// Transforms the products of the tiles of one tile row back and writes the output band `out`
/// (rows `y0..y0 + 4` of image `s`, clipped to the map), adding `bias`. `m` is `[36][tiles][co]`
/// for the whole chunk; `first` is this band's first tile within the chunk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_band(m: &[f32], chunk: usize, first: usize, sh: &ConvShape, y0: usize, bias: &[f32], out: &mut [f32]) {
    let (h, w, co) = (sh.h, sh.w, sh.co);
    let tw = w.div_ceil(M);
    let rows = M.min(h - y0);
    for tx in 0..tw {
        let t = first + tx;
        let x0 = tx * M;
        let cols = M.min(w - x0);
        for c0 in (0..co).step_by(L) {
            let lanes = L.min(co - c0);
            let mut g = [[[0f32; L]; T]; T];
            for (e, px) in g.iter_mut().flatten().enumerate() {
                px[..lanes].copy_from_slice(&m[(e * chunk + t) * co + c0..][..lanes]);
            }
            let mut t = [[[0f32; L]; M]; T];
            for a in 0..T {
                t[a] = at(&g[a]);
            }
            let mut b = [0f32; L];
            b[..lanes].copy_from_slice(&bias[c0..c0 + lanes]);
            for j in 0..cols {
                let col = [t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]];
                let r = at(&col);
                for (i, ri) in r.iter().enumerate().take(rows) {
                    let dst = &mut out[(i * w + x0 + j) * co + c0..][..lanes];
                    for l in 0..lanes {
                        dst[l] = ri[l] + b[l];
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn input_tiles_avx2(x: &[f32], sh: &ConvShape, t0: usize, v: &mut [f32]) {
    input_tiles(x, sh, t0, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn output_band_avx2(m: &[f32], chunk: usize, first: usize, sh: &ConvShape, y0: usize, bias: &[f32], out: &mut [f32]) {
    output_band(m, chunk, first, sh, y0, bias, out)
}

fn transform_input(x: &[f32], sh: &ConvShape, t0: usize, v: &mut [f32], fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is only true when the CPU has AVX2 and FMA (see `avx2_fma`).
        return unsafe { input_tiles_avx2(x, sh, t0, v) };
    }
    let _ = fast;
    input_tiles(x, sh, t0, v)
}

#[allow(clippy::too_many_arguments)]
fn transform_output(
    m: &[f32],
    chunk: usize,
    first: usize,
    sh: &ConvShape,
    y0: usize,
    bias: &[f32],
    out: &mut [f32],
    fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `transform_input`.
        return unsafe { output_band_avx2(m, chunk, first, sh, y0, bias, out) };
    }
    let _ = fast;
    output_band(m, chunk, first, sh, y0, bias, out)
}

/// `out = conv(x, w) + bias` with `u = transform_filter(w)`; `x` is `[n, h, w, ci]`, `out`
/// `[n, h, w, co]`. Requires [`suits`]`(sh)` apart from the size rule (any 3x3 works).
pub fn forward(x: &[f32], u: &[PackedB], bias: &[f32], sh: &ConvShape, out: &mut [f32]) {
    let (h, w, ci, co) = (sh.h, sh.w, sh.ci, sh.co);
    assert_eq!(sh.k, 3, "Winograd F(4x4, 3x3) needs a 3x3 kernel");
    assert_eq!(x.len(), sh.n * h * w * ci);
    assert_eq!(out.len(), sh.n * h * w * co);
    assert!(u.len() == E && u.iter().all(|p| p.k() == ci && p.n() == co), "filters of another shape");
    assert_eq!(bias.len(), co);
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    let tile_rows = sh.n * th;
    // Chunks of whole tile rows, so that each chunk's output is one contiguous band per tile row.
    let per_tile = E * (ci + co) * 4;
    let rows_per_chunk = (CHUNK_BYTES / (per_tile * tw)).clamp(1, tile_rows);
    let fast = super::avx2_fma();
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
        v.par_chunks_mut(E * ci)
            .with_min_len(4)
            .enumerate()
            .for_each(|(j, vt)| transform_input(x, sh, t0 + j, vt, fast));
        let v = &*v;
        // One GEMM per tile element: [tiles, ci] (rows 36·ci apart) · [ci, co] → [tiles, co].
        m.par_chunks_mut(tiles * co).enumerate().for_each(|(e, me)| {
            packed::gemm(tiles, &v[e * ci..], E * ci, &u[e], 0..u[e].panels(), me, co, false);
        });
        let m = &*m;
        // The output bands of this chunk's tile rows, in order: one contiguous stretch of `out`.
        let mut bands: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(rows);
        let start = {
            let (s, y0) = ((r0) / th, (r0 % th) * M);
            (s * h + y0) * w * co
        };
        let mut rest = &mut out[start..];
        for r in r0..r0 + rows {
            let (s, y0) = (r / th, (r % th) * M);
            let _ = s;
            let len = M.min(h - y0) * w * co;
            let (band, tail) = rest.split_at_mut(len);
            bands.push(((r - r0) * tw, y0, band));
            rest = tail;
        }
        bands.into_par_iter().for_each(|(first, y0, band)| transform_output(m, tiles, first, sh, y0, bias, band, fast));
    }
    BUFFERS.with(|b| *b.borrow_mut() = bufs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv;
    use crate::kernels::test_data as data;

    /// Against the im2col path (itself tested against the definition), on shapes with partial
    /// tiles at the right and bottom, several images, channel counts that are not multiples of 8,
    /// and enough tile rows to need several chunks.
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
            let mut got = vec![f32::NAN; want.len()];
            forward(&x, &transform_filter(&wk, sh.ci, sh.co), &b, &sh, &mut got);
            let scale = (sh.kdim() as f32).sqrt();
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(worst <= 2e-5 * scale, "{sh:?}: worst difference {worst}");
        }
    }
}
