//! Fully connected layers (weights `[out, in]` as PyTorch stores them), dropout and the
//! cross-entropy loss.

use rayon::prelude::*;

use super::sgemm;

/// Up to this many rows, [`linear_forward`] streams `W` once as dot products instead of calling the
/// GEMM, which would first pack all of `W`: for fc6 (25088 -> 4096) that is 411 MB copied to read it
/// once. At batch 8 the GEMM path took fc6 61 ms on an Intel Xeon (family 6 model 207, 2 threads),
/// where reading `W` alone takes ~23 ms; 16 rows of fc6's input (1.6 MB) still stay in a 2 MB L2
/// while the rows of `W` stream past them.
pub(crate) const DOT_ROWS: usize = 16;

/// Large layers (fc6 of the ImageNet head) let the GEMM split the work over threads.
fn parallel(out: usize, inp: usize) -> bool {
    out * inp >= 1 << 18
}

/// `y = x·Wᵀ + b`; `x` `[n, in]`, `w` `[out, in]`, `y` `[n, out]`.
pub fn linear_forward(x: &[f32], w: &[f32], b: &[f32], n: usize, y: &mut [f32]) {
    let out = b.len();
    let inp = w.len() / out;
    if n <= DOT_ROWS {
        assert!(x.len() == n * inp && y.len() == n * out);
        return by_output_blocks(n, y, out, |o0, o1| dot_block(x, w, b, n, o0, o1));
    }
    for r in y.chunks_exact_mut(out) {
        r.copy_from_slice(b);
    }
    sgemm(n, out, inp, x, [inp, 1], w, [1, inp], y, out, true, parallel(out, inp));
}

/// Vector lanes of the dot products (one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;

super::isa::dispatch! {
    /// Outputs `o0..o1` of every row of `x` as `[o1 − o0, n]` (see [`dot_block_body`]).
    fn dot_block(x: &[f32], w: &[f32], b: &[f32], n: usize, o0: usize, o1: usize) -> Vec<f32> = dot_block_body;
}

/// Outputs `o0..o1` of `y = x·Wᵀ + b` for every row of `x`, as `[o1 − o0, n]`, in blocks of rows
/// of `W` against up to four rows of `x`, so that each vector of `W` loaded serves up to four
/// products and each vector of `x` several (one row against one row was bound by the loads). Two
/// rows of `W` per block on the AVX-512 path, four on the others: what the compiler vectorises
/// well on each (fc6 on an Intel Xeon family 6 model 207, 2 threads, b8 / b1: AVX-512 with two
/// 36 / 25 ms, with four 474 / 70 ms, its sums no longer in whole registers; AVX2 with two 68 /
/// 26 ms, with four 43 / 18 ms). Every output is the same sum in the same order whatever the batch:
/// an image's logits do not depend on the batch it came in.
#[inline(always)]
fn dot_block_body(x: &[f32], w: &[f32], b: &[f32], n: usize, o0: usize, o1: usize) -> Vec<f32> {
    if super::isa::active() == super::isa::Isa::Avx512 {
        dot_block_rows::<2>(x, w, b, n, o0, o1)
    } else {
        dot_block_rows::<4>(x, w, b, n, o0, o1)
    }
}

/// [`dot_block_body`] with `W` rows of `W` per block.
#[inline(always)]
fn dot_block_rows<const W: usize>(x: &[f32], w: &[f32], b: &[f32], n: usize, o0: usize, o1: usize) -> Vec<f32> {
    let inp = x.len() / n;
    let mut res = vec![0f32; (o1 - o0) * n];
    for o in (o0..o1).step_by(W) {
        let here = (o1 - o).min(W);
        let w_rows: [&[f32]; W] = std::array::from_fn(|i| &w[(o + i.min(here - 1)) * inp..][..inp]);
        for r0 in (0..n).step_by(4) {
            let x_row = |j: usize| &x[(r0 + j) * inp..][..inp];
            let mut put = |j: usize, sums: [f32; W]| {
                for (i, s) in sums.iter().enumerate().take(here) {
                    res[(o - o0 + i) * n + r0 + j] = b[o + i] + s;
                }
            };
            match n - r0 {
                1 => dots(w_rows, [x_row(0)]).into_iter().enumerate().for_each(|(j, s)| put(j, s)),
                2 => dots(w_rows, [x_row(0), x_row(1)]).into_iter().enumerate().for_each(|(j, s)| put(j, s)),
                3 => dots(w_rows, [0, 1, 2].map(x_row)).into_iter().enumerate().for_each(|(j, s)| put(j, s)),
                _ => dots(w_rows, [0, 1, 2, 3].map(x_row)).into_iter().enumerate().for_each(|(j, s)| put(j, s)),
            }
        }
    }
    res
}

/// The first [`LANES`] floats of `v`, by value (whole vectors to the compiler).
#[inline(always)]
fn lanes(v: &[f32]) -> [f32; LANES] {
    v[..LANES].try_into().expect("LANES floats")
}

/// `acc + a·b`, lane by lane (a multiply and an add: the portable path has no fused one).
#[inline(always)]
fn mul_add_lanes(acc: [f32; LANES], a: [f32; LANES], b: [f32; LANES]) -> [f32; LANES] {
    let mut r = acc;
    for l in 0..LANES {
        r[l] += a[l] * b[l];
    }
    r
}

/// `[w_rows[i] · xs[j]]` for `j` in `0..R`, as `[j][i]`: each product in [`LANES`] running sums
/// (vectorisable without reassociating one sum), added up at the end, then the tail.
#[inline(always)]
fn dots<const W: usize, const R: usize>(w_rows: [&[f32]; W], xs: [&[f32]; R]) -> [[f32; W]; R] {
    let inp = w_rows[0].len();
    let body = inp - inp % LANES;
    let mut acc = [[[0f32; LANES]; W]; R];
    for k in (0..body).step_by(LANES) {
        let wv = w_rows.map(|row| lanes(&row[k..]));
        for (acc_j, xj) in acc.iter_mut().zip(&xs) {
            let xv = lanes(&xj[k..]);
            for (acc_ji, wi) in acc_j.iter_mut().zip(wv) {
                *acc_ji = mul_add_lanes(*acc_ji, wi, xv);
            }
        }
    }
    let mut sums = [[0f32; W]; R];
    for (j, xj) in xs.iter().enumerate() {
        for (i, row) in w_rows.iter().enumerate() {
            let tail: f32 = row[body..].iter().zip(&xj[body..]).map(|(a, c)| a * c).sum();
            sums[j][i] = acc[j][i].iter().sum::<f32>() + tail;
        }
    }
    sums
}

/// Fills `y` (`[n, out]`) from blocks of 64 outputs computed in parallel: `block(o0, o1)` returns
/// outputs `o0..o1` of every row as `[o1 − o0, n]`.
pub(crate) fn by_output_blocks(n: usize, y: &mut [f32], out: usize, block: impl Fn(usize, usize) -> Vec<f32> + Sync) {
    const BLOCK: usize = 64;
    let blocks: Vec<Vec<f32>> =
        (0..out.div_ceil(BLOCK)).into_par_iter().map(|blk| block(blk * BLOCK, ((blk + 1) * BLOCK).min(out))).collect();
    for (blk, res) in blocks.iter().enumerate() {
        for (j, vals) in res.chunks_exact(n).enumerate() {
            for (r, v) in vals.iter().enumerate() {
                y[r * out + blk * BLOCK + j] = *v;
            }
        }
    }
}

/// Gradients of [`linear_forward`]: (dW, db), and dx if asked.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    out: usize,
    dx: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let inp = w.len() / out;
    let mut dw = vec![0f32; out * inp];
    sgemm(out, inp, n, dy, [1, out], x, [inp, 1], &mut dw, inp, false, parallel(out, inp));
    let mut db = vec![0f64; out];
    for r in dy.chunks_exact(out) {
        for (a, v) in db.iter_mut().zip(r) {
            *a += *v as f64;
        }
    }
    if let Some(dx) = dx {
        sgemm(n, inp, out, dy, [out, 1], w, [inp, 1], dx, inp, false, parallel(out, inp));
    }
    (dw, db.into_iter().map(|v| v as f32).collect())
}

/// The input gradient of [`linear_forward`] alone: `dx = dy·W`.
pub fn linear_backward_input(w: &[f32], dy: &[f32], n: usize, out: usize, dx: &mut [f32]) {
    let inp = w.len() / out;
    sgemm(n, inp, out, dy, [out, 1], w, [inp, 1], dx, inp, false, parallel(out, inp));
}

/// Mean cross-entropy of `logits` `[n, classes]` against `labels`, with PyTorch's label smoothing
/// (target `(1−ε)·onehot + ε/classes`). Returns the loss, the gradient of the logits and the
/// number of correct top-1 predictions.
pub fn cross_entropy(logits: &[f32], labels: &[usize], classes: usize, smoothing: f64) -> (f64, Vec<f32>, usize) {
    let n = labels.len();
    let mut grad = vec![0f32; logits.len()];
    let mut loss = 0f64;
    let mut hits = 0;
    for (i, (&label, row)) in labels.iter().zip(logits.chunks_exact(classes)).enumerate() {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let mut row_loss = 0f64;
        for (j, &v) in row.iter().enumerate() {
            let q = smoothing / classes as f64 + if j == label { 1.0 - smoothing } else { 0.0 };
            let logp = v as f64 - lse;
            row_loss -= q * logp;
            grad[i * classes + j] = ((logp.exp() - q) / n as f64) as f32;
        }
        loss += row_loss;
        // The first of equal maxima, as argmax does.
        let best = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
        hits += usize::from(best == label);
    }
    (loss / n as f64, grad, hits)
}

/// Soft-max of one row of logits, in f64.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Multiplies `x` by a dropout mask: each element kept with probability `1 − p` and scaled by
/// `1/(1 − p)`, as PyTorch does in training. Returns the mask (the factor per element).
pub fn dropout(x: &mut [f32], p: f64, rng: &mut impl rand::Rng) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.len()).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    for (v, m) in x.iter_mut().zip(&mask) {
        *v *= m;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The few-row dot-product path and the GEMM path against float64, on both sides of
    /// `DOT_ROWS`, with an input length that is not a multiple of the lane count and an odd
    /// number of outputs (a last row of `W` without a partner).
    #[test]
    fn linear_forward_matches_the_definition() {
        let (inp, out) = (37, 151);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 / 100.0).collect();
        for n in [1, 3, 5, DOT_ROWS, DOT_ROWS + 1] {
            let x: Vec<f32> = (0..n * inp).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
            let mut y = vec![f32::NAN; n * out];
            linear_forward(&x, &w, &b, n, &mut y);
            for r in 0..n {
                for o in 0..out {
                    let want =
                        b[o] as f64 + (0..inp).map(|i| x[r * inp + i] as f64 * w[o * inp + i] as f64).sum::<f64>();
                    assert!((y[r * out + o] as f64 - want).abs() < 1e-4, "n {n} [{r},{o}]");
                }
            }
        }
    }

    /// Up to `DOT_ROWS`, an image's outputs are bit for bit the same whichever batch it is in and
    /// wherever in the batch (the server batches requests from different clients).
    #[test]
    fn few_row_outputs_do_not_depend_on_the_batch() {
        let (inp, out) = (301, 70);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 / 100.0).collect();
        let n = DOT_ROWS;
        let x: Vec<f32> = (0..n * inp).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
        let mut whole = vec![0f32; n * out];
        linear_forward(&x, &w, &b, n, &mut whole);
        for r in [0, 1, n / 2 + 1, n - 1] {
            let mut alone = vec![0f32; out];
            linear_forward(&x[r * inp..(r + 1) * inp], &w, &b, 1, &mut alone);
            assert_eq!(alone, whole[r * out..(r + 1) * out], "row {r}");
        }
    }
}
