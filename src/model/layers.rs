//! The building blocks, each storing its tensors in torchvision's layout so that `state_dict` keys
//! and shapes map one to one: conv weight `[out, in, k, k]`, linear weight `[out, in]`.

use burn::backend::DispatchDevice;
use burn::module::{Module, Param, RunningState};
use burn::tensor::module::{batch_norm, batch_norm_train, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor, TensorData};

/// A stride-1 convolution with `kernel / 2` padding (3x3 pad 1, or the 1x1 of configuration C).
#[derive(Module, Debug)]
pub struct Conv {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Kernel side.
    pub kernel: usize,
}

impl Conv {
    /// torchvision's VGG initialisation: Kaiming normal (fan_out, ReLU gain), zero bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, device: &Device) -> Self {
        let fan_out = (out_channels * kernel * kernel) as f64;
        let std = (2.0 / fan_out).sqrt();
        let weight =
            Tensor::random([out_channels, in_channels, kernel, kernel], Distribution::Normal(0.0, std), device);
        Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(Tensor::zeros([out_channels], device)),
            kernel,
        }
    }

    /// Applies the convolution; on the CPU an f32 convolution accumulates in f64 (see
    /// [`accumulates_wide`]), so forward and both gradients round once, at the end.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.kernel / 2;
        let options = ConvOptions::new([1, 1], [p, p], [1, 1], 1);
        if accumulates_wide(&x) {
            let wide = FloatDType::F64;
            let y = conv2d(x.cast(wide), self.weight.val().cast(wide), Some(self.bias.val().cast(wide)), options);
            return y.cast(FloatDType::F32);
        }
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }
}

/// Whether a convolution of `x` runs in f64: f32 tensors on burn's CPU backend (flex).
///
/// burn-flex sums each output's `9·C_in` products in one f32 chain, so its rounding error grows with
/// the channel count: on the fixture model's layers about 2x PyTorch's (oneDNN) from exact inputs,
/// 3.3-4.5e-7 against 1.5-2.1e-7 (the 3-channel first layer: 1.0e-7 for both). Through a deep BatchNorm stack that was enough to flip a max-pool
/// window whose two largest values differ by 3.5e-6, routing a gradient to the other pixel (first-layer
/// gradient 1.4e-2 from the float64 reference on an AVX-512 Xeon, PyTorch f32 1.2e-3). In f64 the
/// same layers land at 4e-8, and the forward and both gradients at or below PyTorch's f32 error on
/// every CPU. It costs 1.5-2.4x the f32 convolution (flex, 2 cores); the fast CPU path is the engine,
/// and GPU backends keep f32. Measured with `bench/fixture_f32_errors.py` (PyTorch's side).
pub fn accumulates_wide<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && matches!(x.device().as_dispatch().clone().inner(), DispatchDevice::Flex(_))
}

/// BatchNorm2d with PyTorch's semantics: eps 1e-5, momentum 0.1, running variance updated with the
/// *unbiased* batch variance (burn's own BatchNorm uses the biased one).
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// γ, `[C]`.
    pub weight: Param<Tensor<1>>,
    /// β, `[C]`.
    pub bias: Param<Tensor<1>>,
    /// `[C]`.
    pub running_mean: RunningState<Tensor<1>>,
    /// `[C]`.
    pub running_var: RunningState<Tensor<1>>,
    /// PyTorch's `num_batches_tracked`, kept as a one-element float so it can be a running state.
    pub num_batches_tracked: RunningState<Tensor<1>>,
    /// Numerical stabiliser.
    pub eps: f64,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f64,
}

impl BatchNorm2d {
    /// γ = 1, β = 0, mean 0, variance 1, as torchvision initialises it.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            num_batches_tracked: RunningState::new(Tensor::zeros([1], device)),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Normalises with the running statistics.
    pub fn forward_eval(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        batch_norm(
            x,
            self.weight.val(),
            self.bias.val(),
            self.running_mean.value_sync().to_device(&device),
            self.running_var.value_sync().to_device(&device),
            self.eps,
        )
    }

    /// Normalises with the batch statistics and updates the running ones as PyTorch does.
    pub fn forward_train(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, _, h, w] = x.dims();
        let count = (n * h * w) as f64;
        let device = x.device();
        let out = batch_norm_train(x, self.weight.val(), self.bias.val(), self.eps);
        let unbiased = if count > 1.0 { out.variance.mul_scalar(count / (count - 1.0)) } else { out.variance };
        let m = self.momentum;
        let rm = self.running_mean.value_sync().to_device(&device);
        let rv = self.running_var.value_sync().to_device(&device);
        self.running_mean.update(rm.mul_scalar(1.0 - m).add(out.mean.mul_scalar(m)).detach());
        self.running_var.update(rv.mul_scalar(1.0 - m).add(unbiased.mul_scalar(m)).detach());
        let nbt = self.num_batches_tracked.value_sync();
        self.num_batches_tracked.update(nbt.add_scalar(1.0));
        out.output
    }
}

/// AlexNet's local response normalisation across channels, as `torch.nn.LocalResponseNorm`:
/// `b_c = a_c / (k + alpha / n · Σ_{c' in window} a_c'²)^beta`, window of `n` channels centred on
/// `c`, zero outside.
pub fn local_response_norm(x: Tensor<4>, size: usize, alpha: f64, beta: f64, k: f64) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let sq = x.clone().powf_scalar(2.0);
    let device = x.device();
    let front = size / 2;
    let back = (size - 1) / 2;
    let padded =
        Tensor::cat(vec![Tensor::zeros([n, front, h, w], &device), sq, Tensor::zeros([n, back, h, w], &device)], 1);
    let mut sum = padded.clone().narrow(1, 0, c);
    for s in 1..size {
        sum = sum.add(padded.clone().narrow(1, s, c));
    }
    let div = sum.mul_scalar(alpha / size as f64).add_scalar(k).powf_scalar(beta);
    x.div(div)
}

/// 2x2 stride-2 max-pool (floor mode, as torchvision).
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]))
}

/// The averaging matrix of PyTorch's adaptive average pool along one axis: row `i` averages
/// `[floor(i·len/out), ceil((i+1)·len/out))`. Bins may overlap (6 → 7) or repeat (1 → 7).
pub fn adaptive_pool_matrix(len: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * len];
    for i in 0..out {
        let start = (i * len) / out;
        let end = ((i + 1) * len).div_ceil(out);
        let weight = 1.0 / (end - start) as f32;
        for j in start..end {
            m[i * len + j] = weight;
        }
    }
    m
}

/// PyTorch's `adaptive_avg_pool2d`, written as two small matrix products so that every bin rule of
/// PyTorch holds by construction (burn's kernel is not relied on).
pub fn adaptive_avg_pool(x: Tensor<4>, out: [usize; 2]) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    if [h, w] == out {
        return x;
    }
    let device = x.device();
    let ph = Tensor::<2>::from_data(TensorData::new(adaptive_pool_matrix(h, out[0]), [out[0], h]), &device);
    let pw = Tensor::<2>::from_data(TensorData::new(adaptive_pool_matrix(w, out[1]), [out[1], w]), &device);
    // [n·c·h, w] · [w, ow] → [n·c, h, ow] → transpose → [n·c·ow, h] · [h, oh] → [n, c, ow, oh]
    let y = x.reshape([n * c * h, w]).matmul(pw.transpose());
    let y = y.reshape([n * c, h, out[1]]).swap_dims(1, 2).reshape([n * c * out[1], h]);
    let y = y.matmul(ph.transpose());
    y.reshape([n, c, out[1], out[0]]).swap_dims(2, 3)
}

/// A fully connected layer with the weight stored `[out, in]` as PyTorch does.
#[derive(Module, Debug)]
pub struct Fc {
    /// `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Fc {
    /// torchvision's VGG initialisation: normal(0, 0.01), zero bias.
    pub fn new(in_features: usize, out_features: usize, device: &Device) -> Self {
        let weight = Tensor::random([out_features, in_features], Distribution::Normal(0.0, 0.01), device);
        Self { weight: Param::from_tensor(weight), bias: Param::from_tensor(Tensor::zeros([out_features], device)) }
    }

    /// `x · Wᵀ + b`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.val().transpose()).add(self.bias.val().unsqueeze_dim(0))
    }
}

/// Inverted dropout, active only when asked for (training).
pub fn dropout(x: Tensor<2>, p: f64) -> Tensor<2> {
    if p == 0.0 {
        return x;
    }
    let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
    x.mul(keep).mul_scalar(1.0 / (1.0 - p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_matrix_bins_follow_pytorch() {
        // 6 → 7: bins [0,1) [0,2) [1,3) [2,4) [3,5) [4,6) [5,6): overlapping, as PyTorch.
        let m = adaptive_pool_matrix(6, 7);
        let rows: Vec<Vec<f32>> = m.chunks(6).map(|r| r.to_vec()).collect();
        assert_eq!(rows[0], vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(rows[1], vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(rows[6], vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        // 1 → 7 replicates; 9 → 7 bins of 2.
        assert!(adaptive_pool_matrix(1, 7).iter().all(|&v| v == 1.0));
        let m = adaptive_pool_matrix(9, 7);
        assert_eq!(m[0..9].to_vec(), vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(m[9..18].to_vec(), vec![0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
