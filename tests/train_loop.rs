//! The training loop on real Fashion-MNIST images: it learns, it resumes to the same result, and
//! a diverging run stops with a clear error.

mod common;

use std::ops::ControlFlow;

use burn::tensor::Device;
use common::*;
use vgg::config::Head;
use vgg::train::fit::{self, Event, FitConfig, RunDir, Schedule, TrainError};
use vgg::train::sgd::SgdConfig;
use vgg::{Vgg, VggConfig};

fn config() -> VggConfig {
    VggConfig::from_arch("vgg11_bn")
        .unwrap()
        .with_width(0.25)
        .with_head(Head::cifar())
        .with_in_channels(1)
        .with_num_classes(10)
}

fn fit_config(epochs: usize, lr: f64) -> FitConfig {
    FitConfig {
        epochs,
        batch_size: 64,
        lr,
        schedule: Schedule::OneCycle,
        warmup_epochs: 0.0,
        sgd: SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        label_smoothing: 0.1,
        augment: true,
        canvas: 32,
        shift: 2,
        seed: 7,
        freeze: None,
        optimizer: None,
        clip_grad_norm: None,
        burn_reference: false,
    }
}

fn data(n_train: usize, n_test: usize) -> (vgg::data::Dataset, vgg::data::Dataset) {
    let (train, test) = vgg::data::fashion_mnist(None).expect("dataset-fashion-mnist (installed by .ci/run)");
    (train.take(n_train), test.take(n_test))
}

fn tmpdir(name: &str) -> RunDir {
    let d = std::env::temp_dir().join(format!("vgg-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    RunDir(d)
}

fn model(seed: u64) -> Vgg {
    let device = Device::default().autodiff();
    device.seed(seed);
    Vgg::new(&config(), &device).unwrap()
}

#[test]
fn a_short_run_learns_far_above_chance_and_eval_reproduces_it() {
    let (train, test) = data(3000, 500);
    let dir = tmpdir("learn");
    let (_, state) =
        fit::fit(model(1), &train, &test, &fit_config(2, 0.05), &dir, false, &mut |_| ControlFlow::Continue(()))
            .unwrap();
    let last = state.history.last().unwrap();
    println!("after 2 epochs on 3000 images: test accuracy {:.1}%", last.test_acc * 100.0);
    assert!(last.test_acc > 0.6, "chance is 10%; got {}", last.test_acc);
    assert!(state.history[1].train_loss < state.history[0].train_loss);
    // The best weights reload for evaluation with the preprocessing they record.
    let (m, pre) = fit::load_for_eval(&dir.best(), &Device::default()).unwrap();
    let norm = match pre.normalize {
        vgg::image::Normalize::Gray { mean, std } => fit::PixelNorm { mean, std },
        other => panic!("{other:?}"),
    };
    let ev = fit::evaluate(&m, &test, 32, norm, 100, &mut |_| {});
    assert!((ev.acc - state.best_acc).abs() < 1e-9, "{} vs {}", ev.acc, state.best_acc);
    // A test image saved as PNG and classified from the file gives the same logits as the
    // training pipeline's own batch: the recorded preprocessing (resize 28, pad to 32) matches.
    let png = dir.0.join("img0.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec()).unwrap().save(&png).unwrap();
    let from_file = values(m.forward(pre.load(&png).unwrap().to_tensor(&m.devices())));
    let (x, _) = fit::make_batch(&test, &[0], 32, 0, norm, None);
    let x = burn::tensor::Tensor::<4>::from_data(burn::tensor::TensorData::new(x, [1, 1, 32, 32]), &m.devices());
    let from_batch: Vec<f64> = values(m.forward(x)).into_iter().map(f64::from).collect();
    assert!(rel_err(&from_file, &from_batch) < 1e-5, "file and batch paths disagree");
    let metrics = std::fs::read_to_string(dir.metrics()).unwrap();
    assert_eq!(metrics.lines().count(), 2);
}

/// A model with given weights: burn's RNG is global and other tests draw from it concurrently, so
/// runs that must agree start from one state dict (and use no dropout).
fn model_from(init: &vgg::weights::StateDict) -> Vgg {
    let mut m = Vgg::new(&config().with_dropout(0.0), &Device::default().autodiff()).unwrap();
    m.load_state_dict(init, vgg::weights::Strict::Yes).unwrap();
    m
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let (train, test) = data(640, 200);
    let cfg = fit_config(2, 0.05);
    let init = Vgg::new(&config().with_dropout(0.0), &Device::default()).unwrap().state_dict();
    let straight = tmpdir("straight");
    let (a, sa) =
        fit::fit(model_from(&init), &train, &test, &cfg, &straight, false, &mut |_| ControlFlow::Continue(())).unwrap();
    // Interrupted in the middle of epoch 2: only epoch 1's checkpoint survives.
    let broken = tmpdir("broken");
    let _ = fit::fit(model_from(&init), &train, &test, &cfg, &broken, false, &mut |e| match e {
        Event::Step(5, ..) if std::fs::metadata(broken.last()).is_ok() => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    let (_, partial) = fit::load_last(&broken.last(), &mut model_from(&init)).unwrap();
    assert_eq!(partial.epochs_done, 1);
    // A fresh process would build a new model: its random init is replaced by the checkpoint.
    let fresh = Vgg::new(&config().with_dropout(0.0), &Device::default()).unwrap().state_dict();
    let (b, sb) =
        fit::fit(model_from(&fresh), &train, &test, &cfg, &broken, true, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(sb.history.len(), 2);
    for (x, y) in sa.history.iter().zip(&sb.history) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-4 * x.train_loss.abs().max(1.0), "{x:?} vs {y:?}");
        assert!((x.test_acc - y.test_acc).abs() <= 0.01, "{x:?} vs {y:?}");
    }
    let (wa, wb) = (a.state_dict(), b.state_dict());
    for (k, t) in &wa {
        let reference: Vec<f64> = t.data.iter().map(|&v| v as f64).collect();
        if reference.iter().all(|&v| v == 0.0) {
            continue;
        }
        let e = rel_err(&wb[k].data, &reference);
        assert!(e < 1e-3, "{k}: resumed weights differ by {e}");
    }
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_good_checkpoint() {
    let (train, test) = data(256, 64);
    let dir = tmpdir("nan");
    let cfg = FitConfig { schedule: Schedule::Constant, ..fit_config(2, 1e12) };
    let err = fit::fit(model(5), &train, &test, &cfg, &dir, false, &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { epoch: 1, .. }), "{err}");
    assert!(err.to_string().contains("lower --lr"));
    assert!(!dir.last().exists(), "no checkpoint claims a state that diverged");
}

#[test]
fn freezing_the_trunk_trains_only_the_head() {
    let (train, test) = data(256, 64);
    let init = Vgg::new(&config().with_dropout(0.0), &Device::default()).unwrap().state_dict();
    let cfg = FitConfig { freeze: Some("features".into()), ..fit_config(1, 0.05) };
    let (m, _) =
        fit::fit(model_from(&init), &train, &test, &cfg, &tmpdir("freeze"), false, &mut |_| ControlFlow::Continue(()))
            .unwrap();
    let after = m.state_dict();
    for (k, t) in &init {
        let trainable = !k.contains("running_") && !k.ends_with("num_batches_tracked");
        if k.starts_with("features.") && trainable {
            assert_eq!(after[k].data, t.data, "{k} is frozen");
        }
        if k.starts_with("classifier.") && k.ends_with("weight") {
            assert_ne!(after[k].data, t.data, "{k} trains");
        }
    }
    // Freezing up to a named layer covers exactly the layers before it and itself.
    let keys = fit::frozen_keys(&m, Some("conv2_1")).unwrap();
    assert!(
        keys.contains("features.0.weight")
            && keys.contains("features.1.running_var")
            && keys.contains("features.4.bias")
    );
    assert!(!keys.contains("features.5.weight"), "bn2_1 (features.5) follows conv2_1");
    assert!(fit::frozen_keys(&m, Some("conv9_1")).is_err());
}
