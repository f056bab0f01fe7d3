//! Model behaviour beyond the eval fixtures: train-mode BatchNorm against PyTorch, LRN against its
//! formula, the configurations torchvision lacks (A-LRN, C), any batch size and grayscale input.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use vgg::config::{Depth, Head};
use vgg::model::layers::local_response_norm;
use vgg::weights::Strict;
use vgg::{Vgg, VggConfig};

/// The fixtures' CIFAR-style model: vgg11_bn features, Linear(512,512)-ReLU-Linear(512,10), no dropout.
fn cifar_fixture_config() -> VggConfig {
    VggConfig::new(Depth::A, true).with_head(Head::cifar()).with_num_classes(10).with_dropout(0.0)
}

/// ```python
/// model = fill(CifarVgg()).train()
/// logits = model(formula_input("cifar_train", (8, 3, 32, 32)))     # train/logits.npy
/// model.state_dict()["features.1.running_var"]                      # train/after_forward.*.npy
/// ```
#[test]
fn train_mode_batchnorm_matches_pytorch() {
    let device = Device::default();
    let mut m = Vgg::new(&cifar_fixture_config(), &device).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    let y = values(m.forward_train(formula_input("cifar_train", [8, 3, 32, 32], &device)));
    let err = rel_err(&y, &npy("train/logits.npy").data);
    assert_near_torch_f32("train-mode logits", "train.logits", err);
    let sd = m.state_dict();
    for key in
        ["features.1.running_mean", "features.1.running_var", "features.26.running_mean", "features.26.running_var"]
    {
        let want = npy(&format!("train/after_forward.{key}.npy"));
        // PyTorch updates running_var with the unbiased variance (burn's own BatchNorm does not).
        let err = rel_err(&sd[key].data, &want.data);
        assert_near_torch_f32(key, &format!("train.after_forward.{key}"), err);
    }
    assert_eq!(sd["features.1.num_batches_tracked"].data, vec![1.0]);
}

#[test]
fn lrn_follows_pytorch_local_response_norm() {
    let device = Device::default();
    let (n, c, h, w) = (2, 7, 3, 2);
    let x: Vec<f32> = s("lrn", n * c * h * w).into_iter().map(|v| v as f32 * 3.0).collect();
    let y = values(local_response_norm(
        Tensor::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device),
        5,
        1e-4,
        0.75,
        2.0,
    ));
    // b_c = a_c / (k + alpha/n * sum_{c' = c-2..c+2} a_c'^2)^beta
    let at = |b: usize, ch: usize, i: usize| x[(b * c + ch) * h * w + i] as f64;
    for b in 0..n {
        for ch in 0..c {
            for i in 0..h * w {
                let lo = ch.saturating_sub(2);
                let hi = (ch + 2).min(c - 1);
                let sum: f64 = (lo..=hi).map(|cc| at(b, cc, i).powi(2)).sum();
                let want = at(b, ch, i) / (2.0 + 1e-4 / 5.0 * sum).powf(0.75);
                let got = y[(b * c + ch) * h * w + i] as f64;
                assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "{got} vs {want}");
            }
        }
    }
}

#[test]
fn every_configuration_runs_any_batch_and_input_size() {
    let device = Device::default();
    for depth in Depth::ALL {
        for bn in [false, true] {
            let config = VggConfig::new(depth, bn)
                .with_width(0.125)
                .with_head(Head::Imagenet { hidden: 32, pool: [7, 7] })
                .with_num_classes(5);
            let m = Vgg::new(&config, &device).unwrap();
            assert_eq!(m.num_params(), config.plan([224, 224]).params(), "{config}");
            for (batch, h, w) in [(3, 32, 32), (1, 45, 70)] {
                let y = m.forward(formula_input("any", [batch, 3, h, w], &device));
                assert_eq!(y.dims(), [batch, 5], "{config}");
                assert!(values(y).iter().all(|v| v.is_finite()));
            }
        }
    }
}

#[test]
fn grayscale_input_and_features_only_head() {
    let device = Device::default();
    let config = VggConfig::new(Depth::B, true)
        .with_width(0.25)
        .with_in_channels(1)
        .with_head(Head::cifar())
        .with_num_classes(10);
    let m = Vgg::new(&config, &device).unwrap();
    assert_eq!(m.forward(formula_input("g", [4, 1, 32, 32], &device)).dims(), [4, 10]);
    assert!(m.check_input([4, 3, 32, 32]).is_err());
    assert!(m.check_input([4, 1, 31, 64]).is_err());
    let config = VggConfig::new(Depth::E, false).with_width(0.125).with_head(Head::None);
    let m = Vgg::new(&config, &device).unwrap();
    assert_eq!(m.forward(formula_input("f", [2, 3, 64, 96], &device)).dims(), [2, 64 * 2 * 3]);
}

#[test]
fn taps_return_every_named_layer_in_order_of_the_plan() {
    let device = Device::default();
    let config =
        VggConfig::new(Depth::D, true).with_width(0.125).with_head(Head::Imagenet { hidden: 16, pool: [7, 7] });
    let m = Vgg::new(&config, &device).unwrap();
    let names: Vec<String> = m.plan().layers.iter().map(|l| l.name.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let x = formula_input("t", [2, 3, 64, 64], &device);
    let taps = m.taps(x.clone(), &refs).unwrap();
    assert_eq!(taps.len(), names.len());
    let plan = config.plan([64, 64]);
    for l in &plan.layers {
        let mut want = vec![2];
        want.extend(&l.out_shape);
        assert_eq!(taps[&l.name].dims(), want, "{}", l.name);
    }
    // The last tap is the logits; torchvision keys name the same layers.
    let logits = values(m.forward(x.clone()));
    let e = rel_err(&values(taps["fc8"].clone().flat()), &logits.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(e < 1e-6, "fc8 tap vs forward: {e}");
    let by_key = m.taps(x, &["features.3"]).unwrap();
    let a = values(by_key["features.3"].clone().map());
    let b: Vec<f64> = values(taps["bn1_2"].clone().map()).into_iter().map(f64::from).collect();
    assert!(rel_err(&a, &b) < 1e-5, "features.3 is bn1_2");
    assert!(m.taps(formula_input("t", [1, 3, 32, 32], &device), &["fc9"]).is_err());
}
