//! The fast CPU engine (src/engine.rs, src/kernels) against PyTorch's float64 references and against
//! burn's autodiff path, which it replaces for training and batch inference.
//!
//! Training fixtures, as in tests/train.rs:
//! ```python
//! model = fill(CifarVgg()).train()            # vgg11_bn features, Linear(512,512)-ReLU-Linear(512,10)
//! x = formula_input("cifar_train", (8, 3, 32, 32)); labels = [3, 1, 4, 1, 5, 9, 2, 6]
//! loss = F.cross_entropy(model(x), labels); loss.backward()    # manifest loss, grad_l2; grad.*.npy
//! opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
//! for _ in range(3): opt.zero_grad(); loss = F.cross_entropy(model(x), labels); loss.backward(); opt.step()
//! ```
//! Tolerances are a multiple of PyTorch's own float32 error (tests/common/mod.rs). The fixture
//! tests run on every kernel path the CPU has (`VGG_ISA`, src/kernels/isa.rs): this process takes
//! the best, [`fixture_tests_on_every_other_kernel_path`] reruns them on the others.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use vgg::config::{Depth, Head};
use vgg::engine::Engine;
use vgg::kernels::conv::ConvAlgos;
use vgg::train::OptimizerConfig;
use vgg::train::SgdConfig;
use vgg::train::engine_optim::{OptimizerState, clip_grad_norm};
use vgg::weights::Strict;
use vgg::{Vgg, VggConfig};

const LABELS: [usize; 8] = [3, 1, 4, 1, 5, 9, 2, 6];

fn with_formula(config: &VggConfig) -> Vgg {
    let mut m = Vgg::new(config, &Device::default()).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    m
}

fn input(tag: &str, shape: [usize; 4]) -> Vec<f32> {
    values(formula_input(tag, shape, &Device::default()))
}

#[test]
fn eval_forward_matches_torchvision() {
    for (arch, tag, shape, reference) in [
        ("vgg11_bn", "imagenet224", [2, 3, 224, 224], "forward/vgg11_bn_224.npy"),
        // 6x9 trunk map pooled to 7x7 with overlapping bins, flattened in (c, h, w) order.
        ("vgg16", "imagenet200x300", [1, 3, 200, 300], "forward/vgg16_200x300.npy"),
        ("vgg16", "imagenet32x32", [1, 3, 32, 32], "forward/vgg16_32x32.npy"),
    ] {
        let engine = Engine::new(&with_formula(&VggConfig::from_arch(arch).unwrap())).unwrap();
        let y = engine.forward(&input(tag, shape), shape);
        let err = rel_err(&y, &npy(reference).data);
        assert_near_torch_f32(&format!("engine {arch} {tag}"), &format!("forward.{arch}.{tag}"), err);
    }
}

fn fixture_config() -> VggConfig {
    VggConfig::new(Depth::A, true).with_head(Head::cifar()).with_num_classes(10).with_dropout(0.0)
}

#[test]
fn loss_gradients_and_sgd_steps_match_pytorch() {
    let m = with_formula(&fixture_config());
    let mut engine = Engine::new(&m).unwrap();
    let x = input("cifar_train", [8, 3, 32, 32]);
    let manifest = manifest();
    let r = engine.train_step(&x, [8, 3, 32, 32], &LABELS, 0.0, &[0; 8], &|_| false);
    let want = manifest["train"]["loss"].as_f64().unwrap();
    assert_near_torch_f32("loss", "train.loss", ((r.loss - want) / want).abs());
    let grad = |key: &str| {
        let p = engine.params().iter().find(|p| p.key == key).unwrap_or_else(|| panic!("no {key}"));
        p.to_torch(&p.grad)
    };
    for key in ["features.0.weight", "features.1.weight", "classifier.2.weight", "classifier.2.bias"] {
        let err = rel_err(&grad(key), &npy(&format!("train/grad.{key}.npy")).data);
        // See tests/train.rs: the first layer's gradient is ill-conditioned in f32.
        assert_near_torch_f32(&format!("grad {key}"), &format!("train.grad.{key}"), err);
    }
    let norms = manifest["train"]["grad_l2"].as_object().unwrap();
    assert_eq!(norms.len(), engine.params().len());
    let mut worst = 0f64;
    for (key, want) in norms {
        let want = want.as_f64().unwrap();
        let n = grad(key).iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        if want < 1e-12 {
            // A conv bias before BatchNorm: the true gradient is 0.
            let tolerance = torch_f32_tolerance("train.grad_l2.zero_bias_max");
            assert!(n < tolerance, "{key}: |grad| {n} should be ~0 (tolerance {tolerance:e})");
            continue;
        }
        let e = ((n - want) / want).abs();
        worst = worst.max(e);
        // Each norm against PyTorch's worst over all parameters (features.1.bias, 7.5e-5: the
        // first blocks' BatchNorm gradients are the ill-conditioned ones).
        let tolerance = torch_f32_tolerance("train.grad_l2.worst");
        assert!(e < tolerance, "{key}: |grad| {n} vs {want} (tolerance {tolerance:e})");
    }
    println!("gradient L2 norms of all {} parameters: worst relative error {worst:.2e}", norms.len());

    // Three SGD steps from the start.
    let mut engine = Engine::new(&m).unwrap();
    let cfg = OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false });
    let mut opt = OptimizerState::default();
    let losses: Vec<f64> =
        manifest["train"]["sgd"]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (step, want) in losses.iter().enumerate() {
        let r = engine.train_step(&x, [8, 3, 32, 32], &LABELS, 0.0, &[0; 8], &|_| false);
        let err = ((r.loss - want) / want).abs();
        assert_near_torch_f32(&format!("step {step} loss"), &format!("train.sgd.loss{step}"), err);
        opt.step(&mut engine, &cfg, 0.002, &|_| false);
    }
    let sd = engine.state_dict();
    for key in ["classifier.2.weight", "features.0.weight"] {
        let err = rel_err(&sd[key].data, &npy(&format!("train/after_sgd3.{key}.npy")).data);
        assert_near_torch_f32(&format!("{key} after 3 steps"), &format!("train.after_sgd3.{key}"), err);
    }
    // Running statistics after one training forward.
    let mut engine = Engine::new(&m).unwrap();
    engine.train_step(&x, [8, 3, 32, 32], &LABELS, 0.0, &[0; 8], &|_| false);
    let sd = engine.state_dict();
    for key in
        ["features.1.running_mean", "features.1.running_var", "features.26.running_mean", "features.26.running_var"]
    {
        let err = rel_err(&sd[key].data, &npy(&format!("train/after_forward.{key}.npy")).data);
        assert_near_torch_f32(key, &format!("train.after_forward.{key}"), err);
    }
}

/// Gradients of every parameter from burn's autodiff for the same model, batch and loss.
fn burn_grads(
    m: &Vgg,
    x: &[f32],
    dims: [usize; 4],
    labels: &[usize],
    smoothing: f64,
) -> (f64, Vec<(String, Vec<f32>)>) {
    let device = Device::default().autodiff();
    let mut mm = Vgg::new(m.config(), &device).unwrap();
    mm.load_state_dict(&m.state_dict(), Strict::Yes).unwrap();
    let xt = Tensor::<4>::from_data(burn::tensor::TensorData::new(x.to_vec(), dims), &device);
    let loss = vgg::train::cross_entropy(mm.forward_train(xt), labels, smoothing);
    let lv = values(loss.clone())[0] as f64;
    let grads = loss.backward();
    let mut out = vec![];
    for (key, slot) in mm.param_slots() {
        let g = match slot {
            vgg::model::ParamSlot::P1(p) => p.val().grad(&grads).map(values),
            vgg::model::ParamSlot::P2(p) => p.val().grad(&grads).map(values),
            vgg::model::ParamSlot::P4(p) => p.val().grad(&grads).map(values),
        };
        out.push((key, g.expect("every parameter has a gradient")));
    }
    (lv, out)
}

#[test]
fn training_gradients_agree_with_burn_on_other_layouts() {
    // Configuration C (1x1 convolutions), no BatchNorm, a small ImageNet-style head whose 2x3 trunk
    // map is pooled up to 3x3 and flattened in (c, h, w) order; and a CIFAR head over a 2x2 map
    // (averaged to 1x1); label smoothing on.
    let configs = [
        (
            VggConfig::new(Depth::C, false)
                .with_width(0.125)
                .with_head(Head::Imagenet { hidden: 32, pool: [3, 3] })
                .with_num_classes(7)
                .with_dropout(0.0),
            [3, 3, 64, 96],
        ),
        (
            VggConfig::new(Depth::B, true)
                .with_width(0.125)
                .with_head(Head::cifar())
                .with_num_classes(5)
                .with_dropout(0.0),
            [4, 1, 64, 64],
        ),
    ];
    for (config, dims) in configs {
        let config = config.with_in_channels(dims[1]);
        let device = Device::default();
        device.seed(3);
        let m = Vgg::new(&config, &device).unwrap();
        let x: Vec<f32> =
            s(&format!("engine:{}", config.arch_name()), dims.iter().product()).iter().map(|&v| v as f32).collect();
        let labels: Vec<usize> = (0..dims[0]).map(|i| (i * 3) % config.num_classes).collect();
        let (want_loss, want) = burn_grads(&m, &x, dims, &labels, 0.1);
        let mut engine = Engine::new(&m).unwrap();
        let r = engine.train_step(&x, dims, &labels, 0.1, &vec![0; dims[0]], &|_| false);
        println!("{}: loss {} vs burn {want_loss}", config.arch_name(), r.loss);
        assert!(((r.loss - want_loss) / want_loss).abs() < 1e-5);
        for (key, g) in want {
            let p = engine.params().iter().find(|p| p.key == key).unwrap();
            let got = p.to_torch(&p.grad);
            let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let diff = got.iter().zip(&g).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            // Conv biases before BatchNorm have a zero true gradient: compare those absolutely.
            let tol = if norm < 1e-6 { 1e-6 } else { 1e-3 * norm };
            assert!(diff <= tol, "{key}: |Δ| {diff:e}, |grad| {norm:e}");
        }
        // The logits of evaluation mode agree too (from the untrained running statistics).
        let logits = Engine::new(&m).unwrap().forward(&x, dims);
        let burn_logits = values(m.forward(Tensor::from_data(burn::tensor::TensorData::new(x.clone(), dims), &device)));
        let err = rel_err(&logits, &burn_logits.iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!(err < 1e-5, "eval logits: {err:e}");
    }
}

#[test]
fn adamw_first_step_and_gradient_clipping_follow_pytorch() {
    let config = VggConfig::new(Depth::A, true).with_width(0.125).with_head(Head::cifar()).with_num_classes(3);
    let m = Vgg::new(&config.clone().with_in_channels(1), &Device::default()).unwrap();
    let x: Vec<f32> = s("engine:adamw", 2 * 32 * 32).iter().map(|&v| v as f32).collect();
    let mut engine = Engine::new(&m).unwrap();
    engine.train_step(&x, [2, 1, 32, 32], &[0, 2], 0.0, &[1, 2], &|_| false);
    let before = engine.params().to_vec();
    // clip_grad_norm_: the returned norm is the global one, and afterwards it is max_norm.
    let global = |e: &Engine| e.params().iter().flat_map(|p| &p.grad).map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
    let total = global(&engine);
    assert!((clip_grad_norm(&mut engine, total / 2.0, &|_| false) - total).abs() < 1e-9 * total.max(1.0));
    assert!((global(&engine) - total / 2.0).abs() < 1e-4 * total);
    // AdamW's first step: m̂ = g and v̂ = g², so p ← p·(1 − lr·wd) − lr·g/(|g| + ε).
    let (lr, wd, eps) = (0.01, 0.05, 1e-8);
    let cfg = OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps, weight_decay: wd };
    let frozen = |k: &str| k.starts_with("features.0.");
    let grads: Vec<Vec<f32>> = engine.params().iter().map(|p| p.grad.clone()).collect();
    OptimizerState::default().step(&mut engine, &cfg, lr, &frozen);
    for ((p, old), g) in engine.params().iter().zip(&before).zip(&grads) {
        for ((new, old), g) in p.value.iter().zip(&old.value).zip(g) {
            let want = if frozen(&p.key) {
                *old as f64
            } else {
                *old as f64 * (1.0 - lr * wd) - lr * *g as f64 / ((*g as f64).abs() + eps)
            };
            assert!((*new as f64 - want).abs() < 1e-6, "{}: {new} vs {want}", p.key);
        }
    }
}

/// The engine caches Winograd-transformed filters; changing the weights through `params_mut` (as
/// the optimizers do) must drop them, so that the next forward sees the new weights.
#[test]
fn changed_weights_reach_the_next_forward() {
    let config = fixture_config();
    let mut engine = Engine::new(&with_formula(&config)).unwrap();
    let x = input("cifar_train", [8, 3, 32, 32]);
    let before = engine.forward(&x, [8, 3, 32, 32]);
    // features.8 is conv3_1 (64 → 128 channels on 8x8 maps: a Winograd layer).
    let p = engine.params_mut().iter_mut().find(|p| p.key == "features.8.weight").unwrap();
    p.value.iter_mut().for_each(|v| *v *= -1.5);
    let after = engine.forward(&x, [8, 3, 32, 32]);
    let fresh = Engine::from_state_dict(&config, engine.state_dict()).unwrap().forward(&x, [8, 3, 32, 32]);
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let stale = rel_err(&after, &f64s(&fresh));
    assert!(stale < 1e-6, "stale filters: {stale:e}");
    assert!(rel_err(&after, &f64s(&before)) > 1e-2, "the change should move the logits");
}

/// Inference passes write into the previous pass's two activation buffers (src/engine/infer.rs):
/// a pass after a larger or a smaller one gives exactly what a fresh engine gives, so nothing of
/// the earlier pass's values leaks into the next.
#[test]
fn passes_of_other_shapes_do_not_see_each_others_buffers() {
    let config = fixture_config();
    let engine = Engine::new(&with_formula(&config)).unwrap();
    let x8 = input("cifar_train", [8, 3, 32, 32]);
    let x1 = &x8[..3 * 32 * 32];
    let first8 = engine.forward(&x8, [8, 3, 32, 32]);
    let after_large = engine.forward(x1, [1, 3, 32, 32]);
    let fresh1 = engine.clone().forward(x1, [1, 3, 32, 32]);
    assert_eq!(after_large, fresh1, "a batch of one after a batch of eight");
    let again8 = engine.forward(&x8, [8, 3, 32, 32]);
    assert_eq!(again8, first8, "a batch of eight after a batch of one");
    // The logits come in an allocation of their own, not in one of the kept buffers (the first
    // layer's output: 8 x 32 x 32 x 64 floats).
    assert_eq!(first8.len(), 8 * 10);
    assert!(first8.capacity() < 1024, "logits held in a {}-float buffer", first8.capacity());
    assert!(first8.iter().all(|v| v.is_finite()));
}

/// 16-bit weight storage (`--half`) is f32 arithmetic on the rounded weights — without Winograd,
/// the same logits as an f32 engine given those rounded weights, through both fully connected
/// paths (dot products for ≤ 4 rows, widened blocks and the GEMM above); with it, the transformed
/// filters are kept in f16, a second rounding that stays under 3.5e-3 of the logits (bf16 filters
/// would give 1.3e-2 here) — and its error against torchvision's float64 logits is within the
/// fixture tolerance of PyTorch's own with the same rounded weights.
#[test]
fn half_storage_is_f32_arithmetic_on_rounded_weights() {
    use vgg::kernels::half::HalfKind;
    let config = VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25);
    let sd = formula_state_dict(&config.plan([224, 224]));
    for kind in [HalfKind::Bf16, HalfKind::F16] {
        let round = |v: f32| match kind {
            HalfKind::Bf16 => half::bf16::from_f32(v).to_f32(),
            HalfKind::F16 => half::f16::from_f32(v).to_f32(),
        };
        let mut rounded = sd.clone();
        for (k, e) in rounded.iter_mut() {
            if k.ends_with(".weight") && e.shape.len() > 1 {
                e.data.iter_mut().for_each(|v| *v = round(*v));
            }
        }
        let reference = Engine::from_state_dict(&config, rounded).unwrap();
        let half = Engine::load(&config, sd.clone(), Strict::Yes, Some(kind)).unwrap();
        assert_eq!(half.half_storage(), Some(kind));
        let mut half_im2col = half.clone();
        half_im2col.set_conv_algos(ConvAlgos::Im2col);
        for n in [1, 5] {
            let dims = [n, 3, 32, 32];
            let x = input("imagenet32x32", dims);
            let want: Vec<f64> = reference.forward(&x, dims).iter().map(|&v| v as f64).collect();
            let exact = rel_err(&half_im2col.forward(&x, dims), &want);
            assert!(exact < 1e-5, "{kind:?} batch {n} without Winograd: {exact:e}");
            let err = rel_err(&half.forward(&x, dims), &want);
            println!("{kind:?} batch {n}: f16 Winograd filters move the logits by {err:.2e}");
            assert!(err < 3.5e-3, "{kind:?} batch {n}: {err:e}");
        }
        // Training needs f32 weights: a step widens them back.
        let mut trained = half.clone();
        trained.params_mut();
        assert_eq!(trained.half_storage(), None);
        let x = input("imagenet32x32", [1, 3, 32, 32]);
        let want: Vec<f64> = reference.forward(&x, [1, 3, 32, 32]).iter().map(|&v| v as f64).collect();
        assert!(rel_err(&trained.forward(&x, [1, 3, 32, 32]), &want) < 1e-5);
    }
    let vgg16 = VggConfig::from_arch("vgg16").unwrap();
    let x = input("imagenet32x32", [1, 3, 32, 32]);
    for (kind, name) in [(HalfKind::Bf16, "bf16"), (HalfKind::F16, "f16")] {
        let e = Engine::load(&vgg16, formula_state_dict(&vgg16.plan([224, 224])), Strict::Yes, Some(kind)).unwrap();
        let err = rel_err(&e.forward(&x, [1, 3, 32, 32]), &npy("forward/vgg16_32x32.npy").data);
        assert_near_torch_f32(
            &format!("vgg16 32x32 with {kind:?} weights"),
            &format!("forward.vgg16.imagenet32x32.{name}_weights"),
            err,
        );
    }
}

/// `torch.optim.swa_utils.update_bn` (BatchNorm with `momentum=None` over a loader, statistics
/// reset first): on one batch, the running statistics are that batch's mean and unbiased variance,
/// which the PyTorch fixture gives through one training forward from known statistics
/// (`running = 0.9 * before + 0.1 * batch`); over several batches, the mean of each batch's.
#[test]
fn update_bn_recomputes_running_statistics_as_pytorch() {
    let m = with_formula(&fixture_config());
    let before = m.state_dict();
    let x = input("cifar_train", [8, 3, 32, 32]);
    let mut engine = Engine::new(&m).unwrap();
    assert_eq!(engine.update_bn(&mut std::iter::once((x.clone(), [8, 3, 32, 32]))), 1);
    let sd = engine.state_dict();
    for key in
        ["features.1.running_mean", "features.1.running_var", "features.26.running_mean", "features.26.running_var"]
    {
        let after = npy(&format!("train/after_forward.{key}.npy")).data;
        let batch: Vec<f64> = after.iter().zip(&before[key].data).map(|(a, b)| (a - 0.9 * *b as f64) / 0.1).collect();
        let err = rel_err(&sd[key].data, &batch);
        assert_near_torch_f32(&format!("{key} (batch statistic)"), &format!("train.batch_stat.{key}"), err);
    }
    assert_eq!(sd["features.1.num_batches_tracked"].data, vec![1.0]);
    // Two batches: the equally weighted mean of what each gives alone (not a momentum average).
    let (x1, x2) = (x[..4 * 3 * 32 * 32].to_vec(), x[4 * 3 * 32 * 32..].to_vec());
    let alone = |x: &[f32]| {
        let mut e = Engine::new(&m).unwrap();
        e.update_bn(&mut std::iter::once((x.to_vec(), [4, 3, 32, 32])));
        e.state_dict()
    };
    let (a, b) = (alone(&x1), alone(&x2));
    let mut e = Engine::new(&m).unwrap();
    assert_eq!(e.update_bn(&mut [(x1, [4, 3, 32, 32]), (x2, [4, 3, 32, 32])].into_iter()), 2);
    let both = e.state_dict();
    for key in ["features.5.running_mean", "features.5.running_var", "features.26.running_var"] {
        let mean: Vec<f64> = a[key].data.iter().zip(&b[key].data).map(|(p, q)| (*p as f64 + *q as f64) / 2.0).collect();
        let err = rel_err(&both[key].data, &mean);
        assert!(err < 1e-6, "{key}: {err}");
        assert!(rel_err(&both[key].data, &a[key].data.iter().map(|&v| v as f64).collect::<Vec<_>>()) > 1e-3);
    }
    assert_eq!(both["features.26.num_batches_tracked"].data, vec![2.0]);
    // The weights themselves are untouched.
    assert_eq!(both["features.0.weight"].data, before["features.0.weight"].data);
}

/// The engine's fixture tests above.
const FIXTURE_TESTS: [&str; 4] = [
    "eval_forward_matches_torchvision",
    "loss_gradients_and_sgd_steps_match_pytorch",
    "half_storage_is_f32_arithmetic_on_rounded_weights",
    "update_bn_recomputes_running_statistics_as_pytorch",
];

/// [`FIXTURE_TESTS`] on each kernel path this CPU runs besides the one this process took, each in
/// a child run of this test binary with `VGG_ISA` set (the path is chosen once per process).
#[test]
fn fixture_tests_on_every_other_kernel_path() {
    use vgg::kernels::isa::{self, Isa};
    let this = isa::active();
    let others: Vec<Isa> = Isa::supported().filter(|&other| other != this).collect();
    println!("this process: {this}; also on: {others:?}");
    for other in others {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(FIXTURE_TESTS)
            .args(["--exact", "--test-threads", "2"])
            .env(isa::ENV, other.name())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "VGG_ISA={other}:\n{stdout}\n{stderr}");
        let passed = format!("{} passed", FIXTURE_TESTS.len());
        assert!(stdout.contains(&passed), "VGG_ISA={other} ran other than the fixture tests:\n{stdout}");
        println!("VGG_ISA={other}: {passed}");
    }
}
