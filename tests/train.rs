//! Training exactness against PyTorch (../shared/fixtures/train):
//! ```python
//! model = fill(CifarVgg()).train()            # vgg11_bn features, Linear(512,512)-ReLU-Linear(512,10)
//! x = formula_input("cifar_train", (8, 3, 32, 32)); labels = [3, 1, 4, 1, 5, 9, 2, 6]
//! loss = F.cross_entropy(model(x), labels); loss.backward()    # manifest loss, grad_l2; grad.*.npy
//! opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
//! for _ in range(3): opt.zero_grad(); loss = F.cross_entropy(model(x), labels); loss.backward(); opt.step()
//! # manifest sgd.losses; after_sgd3.*.npy
//! ```

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use vgg::config::{Depth, Head};
use vgg::train::SgdConfig;
use vgg::train::burn_sgd::SgdState;
use vgg::train::cross_entropy;
use vgg::weights::Strict;
use vgg::{Vgg, VggConfig};

const LABELS: [usize; 8] = [3, 1, 4, 1, 5, 9, 2, 6];

fn fixture_model(device: &Device) -> Vgg {
    let config = VggConfig::new(Depth::A, true).with_head(Head::cifar()).with_num_classes(10).with_dropout(0.0);
    let mut m = Vgg::new(&config, device).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    m
}

fn scalar(t: Tensor<1>) -> f64 {
    values(t)[0] as f64
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let device = Device::default().autodiff();
    let m = fixture_model(&device);
    let x = formula_input("cifar_train", [8, 3, 32, 32], &device);
    let loss = cross_entropy(m.forward_train(x), &LABELS, 0.0);
    let manifest = manifest();
    let want = manifest["train"]["loss"].as_f64().unwrap();
    let got = scalar(loss.clone());
    assert_near_torch_f32("loss", "train.loss", ((got - want) / want).abs());
    let grads = loss.backward();
    // Full tensors for four parameters.
    let g = |t: Tensor<4>| values(t.grad(&grads).expect("gradient"));
    let g1 = |t: Tensor<1>| values(t.grad(&grads).expect("gradient"));
    let g2 = |t: Tensor<2>| values(t.grad(&grads).expect("gradient"));
    let checks = [
        ("features.0.weight", g(m.convs[0].conv.weight.val())),
        ("features.1.weight", g1(m.convs[0].bn.as_ref().unwrap().weight.val())),
        ("classifier.2.weight", g2(m.fcs[1].weight.val())),
        ("classifier.2.bias", g1(m.fcs[1].bias.val())),
    ];
    for (key, got) in checks {
        let err = rel_err(&got, &npy(&format!("train/grad.{key}.npy")).data);
        // The first layer's gradients are ill-conditioned: a max-pool window whose two values
        // differ by less than f32's rounding routes a gradient either way, and the BatchNorm stack
        // above cancels most of each sum, so PyTorch's own f32 lands at 1.2e-3 there.
        assert_near_torch_f32(&format!("grad {key}"), &format!("train.grad.{key}"), err);
    }
    // L2 norms of every parameter's gradient.
    let norms = manifest["train"]["grad_l2"].as_object().unwrap();
    let mut worst = 0f64;
    let mut check = |key: String, v: Vec<f32>| {
        let n = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let want = norms[&key].as_f64().unwrap();
        // A conv bias followed by BatchNorm has a zero gradient (BN removes any shift): PyTorch
        // records rounding noise of ~1e-17 in float64, so compare it absolutely.
        if want < 1e-12 {
            let tolerance = torch_f32_tolerance("train.grad_l2.zero_bias_max");
            assert!(n < tolerance, "{key}: |grad| {n} should be ~0 (tolerance {tolerance:e})");
            return;
        }
        let e = ((n - want) / want).abs();
        worst = worst.max(e);
        // Each norm against PyTorch's worst over all parameters.
        let tolerance = torch_f32_tolerance("train.grad_l2.worst");
        assert!(e < tolerance, "{key}: |grad| {n} vs {want} (tolerance {tolerance:e})");
    };
    let plan = m.plan().clone();
    let convs: Vec<&str> = plan
        .layers
        .iter()
        .filter(|l| matches!(l.kind, vgg::config::LayerKind::Conv { .. }))
        .map(|l| l.key.as_str())
        .collect();
    let bns: Vec<&str> = plan
        .layers
        .iter()
        .filter(|l| matches!(l.kind, vgg::config::LayerKind::BatchNorm { .. }))
        .map(|l| l.key.as_str())
        .collect();
    for (i, u) in m.convs.iter().enumerate() {
        check(format!("{}.weight", convs[i]), g(u.conv.weight.val()));
        check(format!("{}.bias", convs[i]), g1(u.conv.bias.val()));
        let bn = u.bn.as_ref().unwrap();
        check(format!("{}.weight", bns[i]), g1(bn.weight.val()));
        check(format!("{}.bias", bns[i]), g1(bn.bias.val()));
    }
    for (i, f) in m.fcs.iter().enumerate() {
        let k = ["classifier.0", "classifier.2"][i];
        check(format!("{k}.weight"), g2(f.weight.val()));
        check(format!("{k}.bias"), g1(f.bias.val()));
    }
    println!("gradient L2 norms of all {} parameters: worst relative error {worst:.2e}", norms.len());
}

#[test]
fn three_sgd_steps_match_pytorch() {
    let device = Device::default().autodiff();
    let mut m = fixture_model(&device);
    let config = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
    let mut state = SgdState::default();
    let x = formula_input("cifar_train", [8, 3, 32, 32], &device);
    let manifest = manifest();
    let want: Vec<f64> =
        manifest["train"]["sgd"]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (step, want) in want.iter().enumerate() {
        let loss = cross_entropy(m.forward_train(x.clone()), &LABELS, 0.0);
        let got = scalar(loss.clone());
        // By step 2 the loss is 0.0079: a log-probability near 0, so f32 rounding of the logits
        // shows at ~2.5e-3 of it in PyTorch.
        assert_near_torch_f32(
            &format!("step {step} loss"),
            &format!("train.sgd.loss{step}"),
            ((got - want) / want).abs(),
        );
        let grads = loss.backward();
        state.step(&mut m, &grads, &config, 0.002, &|_| false);
    }
    let sd = m.state_dict();
    for key in ["classifier.2.weight", "features.0.weight"] {
        let err = rel_err(&sd[key].data, &npy(&format!("train/after_sgd3.{key}.npy")).data);
        assert_near_torch_f32(&format!("{key} after 3 steps"), &format!("train.after_sgd3.{key}"), err);
    }
}
