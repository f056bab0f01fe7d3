//! Training with PyTorch's semantics: the loss, and `torch.optim.SGD` written out so that its
//! momentum buffers can be checkpointed (burn's own SGD also dampens momentum by 0.1 by default;
//! PyTorch does not).

pub mod fit;
pub mod optim;
pub mod sgd;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// Mean cross-entropy of `logits` `[N, C]` against class indices, with optional label smoothing
/// (`torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)`). Returns `[1]`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize], smoothing: f64) -> Tensor<1> {
    let [n, _] = logits.dims();
    assert_eq!(n, labels.len(), "one label per row");
    let device = logits.device();
    let logp = log_softmax(logits, 1);
    let idx: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [n, 1]), &device);
    let nll = logp.clone().gather(1, idx).neg().mean();
    if smoothing == 0.0 {
        return nll;
    }
    // PyTorch: (1 - ε) · NLL + ε · mean over classes of −log p.
    let uniform = logp.neg().mean_dim(1).mean();
    nll.mul_scalar(1.0 - smoothing).add(uniform.mul_scalar(smoothing))
}
