//! The training loop on real Fashion-MNIST images: it learns, it resumes to the same result, and
//! a diverging run stops with a clear error.

mod common;

use std::ops::ControlFlow;

use burn::tensor::Device;
use common::*;
use vgg::config::Head;
use vgg::train::SgdConfig;
use vgg::train::{self as fit, Event, FitConfig, RunDir, RunOptions, Schedule, SwaConfig, TrainError};
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
        crop: Default::default(),
        lighting: 0.0,
        erase: 0.0,
        swa: None,
        precise_bn: false,
        time_budget_s: None,
    }
}

fn data(n_train: usize, n_test: usize) -> (vgg::data::Dataset, vgg::data::Dataset) {
    let (train, test) = vgg::data::fashion_mnist(None).expect("dataset-fashion-mnist (installed by .ci/run)");
    (train.take(n_train), test.take(n_test))
}

fn tmpdir(name: &str) -> RunDir {
    let d = scratch(&format!("vgg-train-{name}"));
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
    let (_, state) = fit::fit(model(1), &train, &test, &fit_config(2, 0.05), &dir, &RunOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let last = state.history.last().unwrap();
    println!("after 2 epochs on 3000 images: test accuracy {:.1}%", last.test_acc * 100.0);
    assert!(last.test_acc > 0.6, "chance is 10%; got {}", last.test_acc);
    assert!(state.history[1].train_loss < state.history[0].train_loss);
    // The best weights reload for evaluation with the preprocessing they record.
    let (m, pre) = vgg::eval::load_for_eval(&dir.best(), &Device::default()).unwrap();
    let norm = match pre.normalize {
        vgg::image::Normalize::Gray { mean, std } => vgg::data::batch::PixelNorm::gray(mean, std),
        other => panic!("{other:?}"),
    };
    let ev = vgg::eval::evaluate(&m, &test, 32, norm, 100, &mut |_| {});
    assert!((ev.acc - state.best_acc).abs() < 1e-9, "{} vs {}", ev.acc, state.best_acc);
    // A test image saved as PNG and classified from the file gives the same logits as the
    // training pipeline's own batch: the recorded preprocessing (resize 28, pad to 32) matches.
    let png = dir.0.join("img0.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec()).unwrap().save(&png).unwrap();
    let from_file = values(m.forward(pre.load(&png).unwrap().to_tensor(&m.devices())));
    let (x, _) = vgg::data::batch::make_batch(&test, &[0], 32, 0, norm, None);
    let x = burn::tensor::Tensor::<4>::from_data(burn::tensor::TensorData::new(x, [1, 1, 32, 32]), &m.devices());
    let from_batch: Vec<f64> = values(m.forward(x)).into_iter().map(f64::from).collect();
    assert!(rel_err(&from_file, &from_batch) < 1e-5, "file and batch paths disagree");
    let metrics = std::fs::read_to_string(dir.metrics()).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    // The curves and the confusion matrix are pictures too.
    assert_eq!(image::image_dimensions(dir.0.join("curves.png")).unwrap(), (960, 400));
    assert!(image::open(dir.0.join("confusion.png")).is_ok());
    // Test-time flip averages an image with its mirror, so it cannot tell a mirrored test set from
    // the original; without it the two differ.
    let mut mirrored = test.clone();
    for (img, orig) in mirrored.images.chunks_exact_mut(28).zip(test.images.chunks_exact(28)) {
        img.iter_mut().zip(orig.iter().rev()).for_each(|(a, b)| *a = *b);
    }
    let tta = vgg::eval::evaluate_tta(&m, &test, 32, norm, 100, true, &mut |_| {});
    let tta_mirrored = vgg::eval::evaluate_tta(&m, &mirrored, 32, norm, 100, true, &mut |_| {});
    assert_eq!(tta.confusion, tta_mirrored.confusion);
    assert!((tta.loss - tta_mirrored.loss).abs() < 1e-9);
    let plain_mirrored = vgg::eval::evaluate(&m, &mirrored, 32, norm, 100, &mut |_| {});
    assert_ne!(plain_mirrored.confusion, ev.confusion);
    println!("test accuracy {:.1}%, with flip {:.1}%", ev.acc * 100.0, tta.acc * 100.0);
}

/// A model with given weights: burn's RNG is global and other tests draw from it concurrently, so
/// runs that must agree start from one state dict. (The engine's dropout draws depend only on the
/// seed, epoch and step, so dropout stays on.)
fn model_from(init: &vgg::weights::StateDict) -> Vgg {
    let mut m = Vgg::new(&config(), &Device::default().autodiff()).unwrap();
    m.load_state_dict(init, vgg::weights::Strict::Yes).unwrap();
    m
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let (train, test) = data(640, 200);
    // With random erasing, whose draws must also resume where they stopped.
    let cfg = FitConfig { erase: 0.5, ..fit_config(2, 0.05) };
    let init = Vgg::new(&config(), &Device::default()).unwrap().state_dict();
    let straight = tmpdir("straight");
    let (a, sa) = fit::fit(model_from(&init), &train, &test, &cfg, &straight, &RunOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    // Interrupted in the middle of epoch 2: only epoch 1's checkpoint survives.
    let broken = tmpdir("broken");
    let _ = fit::fit(model_from(&init), &train, &test, &cfg, &broken, &RunOptions::default(), &mut |e| match e {
        Event::Step(5, ..) if std::fs::metadata(broken.last()).is_ok() => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    let (_, partial) = fit::load_last(&broken.last(), &mut model_from(&init)).unwrap();
    assert_eq!(partial.epochs_done, 1);
    // A fresh process would build a new model: its random init is replaced by the checkpoint.
    let fresh = Vgg::new(&config(), &Device::default()).unwrap().state_dict();
    let (b, sb) = fit::fit(model_from(&fresh), &train, &test, &cfg, &broken, &RunOptions::resuming(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(sb.history.len(), 2);
    // The engine's reductions run in a fixed order, so the resumed run repeats the straight one.
    for (x, y) in sa.history.iter().zip(&sb.history) {
        assert!((x.train_loss - y.train_loss).abs() < 1e-6 * x.train_loss.abs().max(1.0), "{x:?} vs {y:?}");
        assert_eq!(x.test_acc, y.test_acc, "{x:?} vs {y:?}");
    }
    let (wa, wb) = (a.state_dict(), b.state_dict());
    for (k, t) in &wa {
        let reference: Vec<f64> = t.data.iter().map(|&v| v as f64).collect();
        if reference.iter().all(|&v| v == 0.0) {
            continue;
        }
        let e = rel_err(&wb[k].data, &reference);
        assert!(e < 1e-6, "{k}: resumed weights differ by {e}");
    }
}

/// Stochastic weight averaging: the average of the snapshots is the final model, its BatchNorm
/// statistics recomputed; the average travels in the checkpoint, so an interrupted run resumes to the
/// same result.
#[test]
fn weight_averaging_averages_the_late_epochs_and_resumes() {
    let (train, test) = data(640, 200);
    let swa = SwaConfig { start: 1, lr: 0.01, anneal_epochs: 1, per_epoch: 1 };
    let cfg = FitConfig { swa: Some(swa), ..fit_config(3, 0.05) };
    // SWALR: the schedule's rate at the start of averaging, cosine down to the constant rate.
    let base = fit_config(3, 0.05);
    assert!((cfg.lr_at(10, 30, 10, &[]) - base.lr_at(10, 30, 10, &[])).abs() < 1e-12);
    assert!(cfg.lr_at(15, 30, 10, &[]) < base.lr_at(10, 30, 10, &[]) && cfg.lr_at(15, 30, 10, &[]) > 0.01);
    assert_eq!(cfg.lr_at(20, 30, 10, &[]), 0.01);
    assert_eq!(cfg.lr_at(5, 30, 10, &[]), base.lr_at(5, 30, 10, &[]));
    let four = SwaConfig { per_epoch: 4, ..swa };
    assert_eq!((1..=10).filter(|&s| four.averages_after(s, 10)).collect::<Vec<_>>(), [3, 5, 8, 10]);

    let init = Vgg::new(&config(), &Device::default()).unwrap().state_dict();
    let straight = tmpdir("swa-straight");
    let (a, sa) = fit::fit(model_from(&init), &train, &test, &cfg, &straight, &RunOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(sa.swa_count, 2);
    let last = sa.history.last().unwrap();
    assert!(last.last_weights_test_acc.is_some() && sa.history[1].last_weights_test_acc.is_none());
    // Stopped after epoch 2: one snapshot, which is that epoch's weights.
    let broken = tmpdir("swa-broken");
    let _ = fit::fit(model_from(&init), &train, &test, &cfg, &broken, &RunOptions::default(), &mut |e| match e {
        Event::EpochEnd(m) if m.epoch == 2 => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    let mut m2 = model_from(&init);
    let (opt, partial) = fit::load_last(&broken.last(), &mut m2).unwrap();
    assert_eq!((partial.epochs_done, partial.swa_count), (2, 1));
    let w2 = m2.state_dict();
    let is_param = |k: &str| !k.contains("running_") && !k.ends_with("num_batches_tracked");
    for (k, t) in w2.iter().filter(|(k, _)| is_param(k)) {
        assert_eq!(opt[&format!("{}{k}", fit::SWA_PREFIX)].data, t.data, "{k}");
    }
    let fresh = Vgg::new(&config(), &Device::default()).unwrap().state_dict();
    let (b, _) = fit::fit(model_from(&fresh), &train, &test, &cfg, &broken, &RunOptions::resuming(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let (wa, wb) = (a.state_dict(), b.state_dict());
    for (k, t) in &wa {
        let reference: Vec<f64> = t.data.iter().map(|&v| v as f64).collect();
        if reference.iter().any(|&v| v != 0.0) {
            assert!(rel_err(&wb[k].data, &reference) < 1e-6, "{k}: resumed run differs");
        }
    }
    // The final weights are the mean of epochs 2 and 3; the BatchNorm statistics come from one
    // pass over the 640 training images in batches of 64.
    let (m3, _) = vgg::eval::load_for_eval(&straight.unaveraged(), &Device::default()).unwrap();
    let w3 = m3.state_dict();
    for (k, t) in wa.iter().filter(|(k, _)| is_param(k)) {
        let mean: Vec<f64> = w2[k].data.iter().zip(&w3[k].data).map(|(p, q)| (*p as f64 + *q as f64) / 2.0).collect();
        if mean.iter().any(|&v| v != 0.0) {
            assert!(rel_err(&t.data, &mean) < 1e-6, "{k} is not the average");
        }
    }
    assert_eq!(wa["features.1.num_batches_tracked"].data, vec![10.0]);
    assert_ne!(wa["features.1.running_mean"].data, w3["features.1.running_mean"].data);
    // What evaluation reports for the final epoch is the averaged model.
    assert_eq!(vgg::eval::evaluate(&a, &test, 32, sa.norm, 100, &mut |_| {}).acc, last.test_acc);
}

/// Precise BatchNorm: the same training as without it, then the statistics recomputed over the
/// training images (one pass in batches of 64: ten batches tracked); the metrics keep the accuracy
/// before the recomputation.
#[test]
fn precise_batchnorm_recomputes_the_statistics_after_the_last_epoch() {
    let (train, test) = data(640, 200);
    let init = Vgg::new(&config(), &Device::default()).unwrap().state_dict();
    let run = |precise_bn: bool, name: &str| {
        let cfg = FitConfig { precise_bn, ..fit_config(2, 0.05) };
        fit::fit(model_from(&init), &train, &test, &cfg, &tmpdir(name), &RunOptions::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
    };
    let (plain, sp) = run(false, "precise-off");
    let (precise, sq) = run(true, "precise-on");
    let (wp, wq) = (plain.state_dict(), precise.state_dict());
    for (k, t) in &wp {
        if k.contains("running_") {
            assert_ne!(t.data, wq[k].data, "{k} was not recomputed");
        } else if k.ends_with("num_batches_tracked") {
            assert_eq!(wq[k].data, vec![10.0], "{k}");
        } else {
            assert_eq!(t.data, wq[k].data, "{k}: precise BatchNorm changed a parameter");
        }
    }
    let (lp, lq) = (sp.history.last().unwrap(), sq.history.last().unwrap());
    assert_eq!(lq.last_weights_test_acc, Some(lp.test_acc));
    assert_eq!(vgg::eval::evaluate(&precise, &test, 32, sq.norm, 100, &mut |_| {}).acc, lq.test_acc);
    assert!(sq.history[0].last_weights_test_acc.is_none());
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_good_checkpoint() {
    let (train, test) = data(256, 64);
    let dir = tmpdir("nan");
    let cfg = FitConfig { schedule: Schedule::Constant, ..fit_config(2, 1e12) };
    let err = fit::fit(model(5), &train, &test, &cfg, &dir, &RunOptions::default(), &mut |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { epoch: 1, .. }), "{err}");
    assert!(err.to_string().contains("lower learning rate"));
    assert!(!dir.last().exists(), "no checkpoint claims a state that diverged");
}

#[test]
fn freezing_the_trunk_trains_only_the_head() {
    let (train, test) = data(256, 64);
    let init = Vgg::new(&config(), &Device::default()).unwrap().state_dict();
    let cfg = FitConfig { freeze: Some("features".into()), ..fit_config(1, 0.05) };
    let (m, _) =
        fit::fit(model_from(&init), &train, &test, &cfg, &tmpdir("freeze"), &RunOptions::default(), &mut |_| {
            ControlFlow::Continue(())
        })
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

#[test]
fn step_multistep_and_plateau_schedules_follow_pytorch() {
    use vgg::train::{EpochMetrics, plateau_cuts};
    // ReduceLROnPlateau(mode="max", patience=2): cut after the third epoch without improvement.
    assert_eq!(plateau_cuts(&[0.5, 0.6, 0.6, 0.6, 0.6], 2), 1);
    assert_eq!(plateau_cuts(&[0.5, 0.6, 0.6, 0.6], 2), 0);
    assert_eq!(plateau_cuts(&[0.5, 0.6, 0.6, 0.61, 0.61, 0.61, 0.61, 0.6, 0.6, 0.6], 2), 2);
    // An improvement smaller than the relative threshold (1e-4) is no improvement.
    assert_eq!(plateau_cuts(&[0.5, 0.50001, 0.50002, 0.50003], 2), 1);
    let metrics = |acc: &[f64]| -> Vec<EpochMetrics> {
        acc.iter().enumerate().map(|(i, &a)| EpochMetrics { epoch: i + 1, test_acc: a, ..Default::default() }).collect()
    };
    let base = fit_config(10, 0.1);
    let plateau = FitConfig { schedule: Schedule::Plateau { patience: 2 }, ..base.clone() };
    assert!((plateau.lr_at(500, 1000, 100, &metrics(&[0.5, 0.6, 0.6, 0.6, 0.6])) - 0.01).abs() < 1e-12);
    assert_eq!(plateau.lr_at(500, 1000, 100, &metrics(&[0.5, 0.6, 0.7])), 0.1);
    let multi = FitConfig { schedule: Schedule::MultiStep { milestones: vec![3, 6] }, ..base.clone() };
    let lrs: Vec<f64> = (0..9).map(|e| multi.lr_at(e * 100, 900, 100, &[])).collect();
    assert!((lrs[2] - 0.1).abs() < 1e-12 && (lrs[3] - 0.01).abs() < 1e-12 && (lrs[6] - 0.001).abs() < 1e-12);
    let step = FitConfig { schedule: Schedule::Step { step: 4 }, ..base };
    assert!(
        (step.lr_at(399, 1000, 100, &[]) - 0.1).abs() < 1e-12 && (step.lr_at(400, 1000, 100, &[]) - 0.01).abs() < 1e-12
    );
}

fn timed(seconds: &[f64]) -> Vec<vgg::train::EpochMetrics> {
    seconds
        .iter()
        .enumerate()
        .map(|(i, &s)| vgg::train::EpochMetrics { epoch: i + 1, seconds: s, ..Default::default() })
        .collect()
}

#[test]
fn a_time_budget_replans_the_epochs_at_the_pace_so_far() {
    let fixed = fit_config(5, 0.1);
    assert_eq!(fixed.planned_epochs(&timed(&[100.0, 900.0])), 5, "without a budget the plan is --epochs");
    let budget = FitConfig { time_budget_s: Some(1000.0), ..fixed };
    assert_eq!(budget.planned_epochs(&[]), 5, "--epochs is the first plan");
    // 100 s per epoch: nine more fit in the 900 s left.
    assert_eq!(budget.planned_epochs(&timed(&[100.0])), 10);
    assert_eq!(budget.planned_epochs(&timed(&[100.0, 100.0])), 10);
    // The machine slows: 600 s spent, 200 s per epoch over the last three, two more fit.
    assert_eq!(budget.planned_epochs(&timed(&[100.0, 200.0, 300.0])), 5);
    // The pace is the last three epochs', not the first one's.
    assert_eq!(budget.planned_epochs(&timed(&[10.0, 100.0, 100.0, 100.0])), 10);
    // Less than an epoch left, but the planned last epoch has not run: one more, to anneal.
    assert_eq!(budget.planned_epochs(&timed(&[100.0, 200.0, 300.0, 200.0])), 5);
    // The planned last epoch has run: done, whatever time is left.
    assert_eq!(budget.planned_epochs(&timed(&[100.0, 200.0, 300.0, 200.0, 10.0])), 5);
    // Over budget already: still one more epoch, never an unannealed stop.
    assert_eq!(budget.planned_epochs(&timed(&[2000.0])), 2);
}

/// A budget that the first epoch already exceeds: the plan becomes one more epoch, whatever the
/// machine's speed, so the run is two epochs long and its schedule ends annealed (OneCycle's last
/// rate, not the rate of epoch 2 of the four first planned); resuming keeps the plan.
#[test]
fn a_spent_time_budget_ends_the_run_annealed_after_one_more_epoch() {
    let (train, test) = data(512, 128);
    let init = model(5).state_dict();
    let cfg = FitConfig { time_budget_s: Some(1e-3), ..fit_config(4, 0.05) };
    let dir = tmpdir("budget");
    let mut planned = vec![];
    let (_, state) = fit::fit(model_from(&init), &train, &test, &cfg, &dir, &RunOptions::default(), &mut |e| {
        if let Event::EpochStart(epoch, plan, _) = e {
            planned.push((epoch, plan));
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(planned, vec![(1, 4), (2, 2)]);
    assert_eq!(state.history.len(), 2);
    // The metrics record the plan each epoch ran under.
    let plans: Vec<_> = state.history.iter().map(|m| m.planned_epochs).collect();
    assert_eq!(plans, vec![Some(4), Some(2)]);
    let line = std::fs::read_to_string(dir.metrics()).unwrap();
    assert!(line.lines().next().unwrap().contains("\"planned_epochs\":4"), "{line}");
    let steps = 512 / 64;
    let last_lr = state.history[1].lr;
    assert!((last_lr - cfg.lr_at(2 * steps - 1, 2 * steps, steps, &[])).abs() < 1e-15, "{last_lr}");
    assert!(last_lr < 0.05 / 25.0, "the schedule did not end annealed: {last_lr}");
    // Stopped after the first epoch and resumed, the run plans and ends the same.
    let dir2 = tmpdir("budget-resume");
    fit::fit(model_from(&init), &train, &test, &cfg, &dir2, &RunOptions::default(), &mut |e| match e {
        Event::EpochEnd(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    let (_, resumed) = fit::fit(model_from(&init), &train, &test, &cfg, &dir2, &RunOptions::resuming(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(resumed.history.len(), 2);
    assert_eq!(resumed.history[1].test_acc, state.history[1].test_acc);
    assert_eq!(resumed.history[1].train_loss, state.history[1].train_loss);
}

/// The model shipped in the binary (`vgg classify`'s default), on the 10,000 Fashion-MNIST test
/// images through the same evaluation as `vgg eval`, beats the published Keras VGG16 result (93.5%)
/// and meets issue #3's target (94.0%) on a single view.
#[test]
fn the_built_in_fashion_mnist_model_beats_the_published_keras_vgg16_and_the_target() {
    let loaded = common::builtin_model();
    let (_, test) = vgg::data::fashion_mnist(None).expect("dataset-fashion-mnist (installed by .ci/run)");
    let norm = match loaded.preprocess.normalize {
        vgg::image::Normalize::Gray { mean, std } => vgg::data::batch::PixelNorm::gray(mean, std),
        other => panic!("{other:?}"),
    };
    let ev = vgg::eval::evaluate(&loaded.model, &test, 32, norm, 500, &mut |_| {});
    let tta = vgg::eval::evaluate_tta(&loaded.model, &test, 32, norm, 500, true, &mut |_| {});
    println!("built-in model: top-1 {:.2}%, with flip {:.2}%", ev.acc * 100.0, tta.acc * 100.0);
    assert!(ev.acc >= 0.940, "single-view top-1 {} is below the 94.0% target", ev.acc);
    assert!(tta.acc >= ev.acc - 0.002, "the mirror adds information: {} vs {}", tta.acc, ev.acc);
}

#[test]
fn burns_reference_path_trains_the_same_run_as_the_engine() {
    // The training loop holds a learner and does not know what runs it: the same run (no dropout,
    // no augmentation, so that no draw differs) on burn's autodiff and on the engine ends with the
    // same weights, and each says what it ran on.
    let (train, test) = data(128, 64);
    let device = Device::default().autodiff();
    device.seed(3);
    let init = Vgg::new(&config().with_dropout(0.0), &device).unwrap().state_dict();
    let from = |sd: &vgg::weights::StateDict| {
        let mut m = Vgg::new(&config().with_dropout(0.0), &device).unwrap();
        m.load_state_dict(sd, vgg::weights::Strict::Yes).unwrap();
        m
    };
    let cfg = FitConfig { augment: false, label_smoothing: 0.0, ..fit_config(1, 0.02) };
    let mut weights = vec![];
    for burn_reference in [false, true] {
        let cfg = FitConfig { burn_reference, ..cfg.clone() };
        let mut runs_on = None;
        let (m, state) = fit::fit(
            from(&init),
            &train,
            &test,
            &cfg,
            &tmpdir(&format!("ref{burn_reference}")),
            &RunOptions::default(),
            &mut |e| {
                if let Event::RunsOn(r) = e {
                    runs_on = Some(r);
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        let runs_on = runs_on.expect("the loop says what runs it");
        assert_eq!(matches!(runs_on, vgg::net::RunsOn::Burn { .. }), burn_reference, "{runs_on}");
        assert_eq!(runs_on.fallback(), None, "nothing fell back");
        assert_eq!(state.history.len(), 1);
        weights.push(m.state_dict());
    }
    for (k, t) in &weights[0] {
        // A convolution's bias before BatchNorm has a zero gradient (the normalisation removes
        // it), so it starts at zero and moves by rounding noise alone on either path.
        let before_bn = k.starts_with("features.")
            && k.ends_with(".bias")
            && t.shape.len() == 1
            && weights[0].contains_key(&k.replace(".bias", ".weight"))
            && weights[0][&k.replace(".bias", ".weight")].shape.len() == 4;
        if k.ends_with("num_batches_tracked") || before_bn {
            continue;
        }
        let want: Vec<f64> = weights[1][k].data.iter().map(|&v| v as f64).collect();
        let err = rel_err(&t.data, &want);
        assert!(err < 1e-4, "{k}: engine and burn differ by {err:e} after two SGD steps");
    }
    // What burn's path does not do is refused before any step, saying what and why.
    let adamw = FitConfig {
        burn_reference: true,
        optimizer: Some(vgg::train::OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }),
        ..cfg
    };
    let err = fit::fit(from(&init), &train, &test, &adamw, &tmpdir("ref-adamw"), &RunOptions::default(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("AdamW runs on the fast CPU engine only"), "{err}");
}
