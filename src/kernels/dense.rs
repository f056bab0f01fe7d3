//! Fully connected layers (weights `[out, in]` as PyTorch stores them), dropout and the
//! cross-entropy loss.

use super::sgemm;

/// Large layers (fc6 of the ImageNet head) let the GEMM split the work over threads.
fn parallel(out: usize, inp: usize) -> bool {
    out * inp >= 1 << 18
}

/// `y = x·Wᵀ + b`; `x` `[n, in]`, `w` `[out, in]`, `y` `[n, out]`.
pub fn linear_forward(x: &[f32], w: &[f32], b: &[f32], n: usize, y: &mut [f32]) {
    let out = b.len();
    let inp = w.len() / out;
    for r in y.chunks_exact_mut(out) {
        r.copy_from_slice(b);
    }
    sgemm(n, out, inp, x, [inp, 1], w, [1, inp], y, out, true, parallel(out, inp));
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
