//! Fully connected layers (weights `[out, in]` as PyTorch stores them), dropout and the
//! cross-entropy loss.

use rayon::prelude::*;

use super::sgemm;

/// Up to this many rows, [`linear_forward`] streams `W` once as dot products instead of calling the
/// GEMM (which would first pack all of `W`: for fc6 at batch 1, 411 MB copied to read it once).
pub(crate) const DOT_ROWS: usize = 4;

/// Large layers (fc6 of the ImageNet head) let the GEMM split the work over threads.
fn parallel(out: usize, inp: usize) -> bool {
    out * inp >= 1 << 18
}

/// `y = x·Wᵀ + b`; `x` `[n, in]`, `w` `[out, in]`, `y` `[n, out]`.
pub fn linear_forward(x: &[f32], w: &[f32], b: &[f32], n: usize, y: &mut [f32]) {
    let out = b.len();
    let inp = w.len() / out;
    if n <= DOT_ROWS {
        return linear_forward_dots(x, w, b, n, y);
    }
    for r in y.chunks_exact_mut(out) {
        r.copy_from_slice(b);
    }
    sgemm(n, out, inp, x, [inp, 1], w, [1, inp], y, out, true, parallel(out, inp));
}

/// [`linear_forward`] for a few rows: every output is `n` dot products over one contiguous row of
/// `W`, which is read exactly once; outputs are split over threads in blocks.
fn linear_forward_dots(x: &[f32], w: &[f32], b: &[f32], n: usize, y: &mut [f32]) {
    let out = b.len();
    let inp = w.len() / out;
    assert!(x.len() == n * inp && y.len() == n * out);
    by_output_blocks(n, y, out, |o0, o1| {
        let mut res = vec![0f32; (o1 - o0) * n];
        for o in o0..o1 {
            let row = &w[o * inp..(o + 1) * inp];
            for r in 0..n {
                res[(o - o0) * n + r] = b[o] + dot(row, &x[r * inp..(r + 1) * inp]);
            }
        }
        res
    });
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

/// `a · b` in eight independent lanes (vectorisable without reassociating one running sum).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
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
    /// `DOT_ROWS`, with an input length that is not a multiple of the lane count.
    #[test]
    fn linear_forward_matches_the_definition() {
        let (inp, out) = (37, 150);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 / 100.0).collect();
        for n in [1, 3, DOT_ROWS, DOT_ROWS + 1] {
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
}
