//! Training pieces with PyTorch's semantics: the loss and the optimiser settings that reproduce
//! `torch.optim.SGD` (burn's momentum dampens by 0.1 unless told otherwise; PyTorch does not).

use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, SgdConfig, decay::WeightDecayConfig};
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

/// `torch.optim.SGD(lr, momentum, weight_decay, nesterov)`: decay added to the gradient, the
/// momentum buffer starting at the first gradient, no dampening.
pub fn sgd(momentum: f64, weight_decay: f64, nesterov: bool) -> ModuleOptimizer {
    let mut c = SgdConfig::new();
    if momentum > 0.0 {
        c = c.with_momentum(Some(MomentumConfig { momentum, dampening: 0.0, nesterov }));
    }
    if weight_decay > 0.0 {
        c = c.with_weight_decay(Some(WeightDecayConfig { penalty: weight_decay as f32 }));
    }
    c.init()
}

/// `torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay)`.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .init()
}
