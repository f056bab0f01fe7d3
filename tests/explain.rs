//! Grad-CAM, saliency and style transfer (src/explain.rs, src/style.rs, `vgg explain`, `vgg style`):
//! the engine's evaluation-mode gradients against burn's autodiff and finite differences, the maps'
//! invariants, and the commands' files.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use vgg::config::Head;
use vgg::engine::Engine;
use vgg::explain::{Method, explain};
use vgg::style::{Image, Objective, Optimizer, StyleConfig, transfer};
use vgg::weights::Strict;
use vgg::{Vgg, VggConfig};

fn with_formula(config: &VggConfig) -> Vgg {
    let mut m = Vgg::new(config, &Device::default()).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    m
}

fn nhwc_to_nchw(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for s in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[((s * c + ch) * h + y) * w + xx] = x[((s * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    out
}

/// ∂(Σ_i logit[i, class_i])/∂x from burn's autodiff, evaluation mode.
fn burn_input_gradient(m: &Vgg, x: &[f32], dims: [usize; 4], classes: &[usize]) -> Vec<f32> {
    let device = Device::default().autodiff();
    let mut mm = Vgg::new(m.config(), &device).unwrap();
    mm.load_state_dict(&m.state_dict(), Strict::Yes).unwrap();
    let xt = Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &device).require_grad();
    let logits = mm.forward(xt.clone());
    let k = m.config().num_classes;
    let mut onehot = vec![0f32; dims[0] * k];
    for (i, &c) in classes.iter().enumerate() {
        onehot[i * k + c] = 1.0;
    }
    let score = (logits * Tensor::<2>::from_data(TensorData::new(onehot, [dims[0], k]), &device)).sum();
    let grads = score.backward();
    values(xt.grad(&grads).expect("input gradient"))
}

#[test]
fn input_gradients_match_burn_autodiff() {
    // BatchNorm in evaluation mode (the formula's running statistics) with a CIFAR head; and a
    // network without BatchNorm whose ImageNet-style head pools a 2x1 map up to 2x2.
    let bn = VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25).with_head(Head::cifar()).with_num_classes(10);
    let plain = VggConfig::from_arch("vgg11")
        .unwrap()
        .with_width(0.125)
        .with_head(Head::Imagenet { hidden: 32, pool: [2, 2] })
        .with_num_classes(7);
    for (config, dims, classes) in [(bn, [2, 3, 32, 32], vec![3, 7]), (plain, [2, 3, 64, 32], vec![6, 0])] {
        let m = with_formula(&config);
        let x = values(formula_input("explain", dims, &Device::default()));
        let engine = Engine::new(&m).unwrap();
        let top = engine.activation_index("logits").unwrap();
        let trace = engine.trace(&x, dims, top);
        let k = config.num_classes;
        let mut seed = vec![0f32; dims[0] * k];
        for (i, &c) in classes.iter().enumerate() {
            seed[i * k + c] = 1.0;
        }
        let g = engine.gradient(&trace, vec![(top, seed)], 0);
        let (_, [n, h, w, c]) = trace.activation_nhwc(0);
        let ours = nhwc_to_nchw(&g, [n, h, w, c]);
        let reference: Vec<f64> = burn_input_gradient(&m, &x, dims, &classes).iter().map(|&v| v as f64).collect();
        let err = rel_err(&ours, &reference);
        assert!(err < 1e-4, "{}: input gradient differs from burn's by {err}", config.arch_name());
        // Saliency is its channel-wise maximum of magnitudes.
        let maps = explain(&engine, &x, dims, &Method::Saliency, Some(&classes)).unwrap();
        let plane = h * w;
        for (i, e) in maps.iter().enumerate() {
            assert_eq!(e.size, [h, w]);
            for p in (0..plane).step_by(37) {
                let want = (0..c).map(|ch| ours[(i * c + ch) * plane + p].abs()).fold(0f32, f32::max);
                assert_eq!(e.map[p], want);
            }
        }
    }
}

#[test]
fn layer_gradients_match_finite_differences() {
    // The directional derivative of the class score at relu3_2 along a fixed direction, against
    // the engine's own forward from that layer (checked against torchvision in tests/engine.rs).
    let config =
        VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25).with_head(Head::cifar()).with_num_classes(10);
    let m = with_formula(&config);
    let engine = Engine::new(&m).unwrap();
    let dims = [1, 3, 32, 32];
    let x = values(formula_input("explain", dims, &Device::default()));
    let top = engine.activation_index("logits").unwrap();
    let at = engine.activation_index("relu3_2").unwrap();
    let trace = engine.trace(&x, dims, top);
    let class = 4;
    let mut seed = vec![0f32; 10];
    seed[class] = 1.0;
    let g = engine.gradient(&trace, vec![(top, seed)], at);
    let (a, _) = trace.activation_nhwc(at);
    // One unit at a time, the units the score depends on most that are on (max-pooling is not
    // differentiable where a window's zeros tie; a single small move rarely crosses a kink).
    let mut units: Vec<usize> = (0..a.len()).filter(|&i| a[i] > 0.0).collect();
    units.sort_by(|&i, &j| g[j].abs().total_cmp(&g[i].abs()));
    for &u in units.iter().take(8) {
        let score = |eps: f32| -> f64 {
            let mut moved = a.to_vec();
            moved[u] += eps;
            engine.forward_from(&trace, at, moved)[class] as f64
        };
        let eps = 1e-2;
        let numeric = (score(eps) - score(-eps)) / (2.0 * eps as f64);
        let analytic = g[u] as f64;
        assert!((numeric - analytic).abs() < 0.02 * analytic.abs() + 1e-4, "unit {u}: {numeric} vs {analytic}");
    }
}

#[test]
fn grad_cam_finds_the_object_on_a_wide_canvas() {
    // The built-in Fashion-MNIST model sees a trouser on the left half of a 32x64 canvas (the CIFAR
    // head averages any map); the right half is background. The map of "Trouser" must lie on the
    // left.
    let loaded = builtin_model();
    let engine = Engine::new(&loaded.model).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist/1-trouser.png");
    let img = loaded.preprocess.load(&path).unwrap();
    assert_eq!(img.shape, [1, 32, 32]);
    let background = img.data[0];
    let mut x = vec![background; 32 * 64];
    for y in 0..32 {
        x[y * 64..y * 64 + 32].copy_from_slice(&img.data[y * 32..(y + 1) * 32]);
    }
    let method = Method::GradCam { layer: "relu3_2".into() };
    let e = &explain(&engine, &x, [1, 1, 32, 64], &method, Some(&[1])).unwrap()[0];
    assert_eq!((e.size, e.layer_size), ([32, 64], [8, 16]));
    assert!(e.map.iter().all(|&v| v >= 0.0));
    let (mut left, mut right) = (0f64, 0f64);
    for y in 0..32 {
        for xx in 0..64 {
            if xx < 32 {
                left += e.map[y * 64 + xx] as f64;
            } else {
                right += e.map[y * 64 + xx] as f64;
            }
        }
    }
    assert!(left > 3.0 * right, "left {left}, right {right}");
    // A vector layer has no map to show.
    assert!(explain(&engine, &x, [1, 1, 32, 64], &Method::GradCam { layer: "fc1".into() }, None).is_err());
    assert!(explain(&engine, &x, [1, 1, 32, 64], &Method::Saliency, Some(&[10])).is_err());
}

fn vgg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).output().expect("run vgg")
}

fn tmp(name: &str) -> PathBuf {
    let d = scratch("vgg-explain");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn explain_writes_overlays_and_reports_bad_files() {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let (a, b) = (assets.join("1-trouser.png"), assets.join("8-bag.png"));
    let bad = tmp("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let out = tmp("maps");
    let o = vgg(&[
        "explain",
        a.to_str().unwrap(),
        bad.to_str().unwrap(),
        b.to_str().unwrap(),
        "--layer",
        "relu3_2",
        "--raw",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "a bad file makes the exit status non-zero");
    assert!(String::from_utf8_lossy(&o.stderr).contains("broken.png"));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "the good files are still explained");
    assert_eq!(lines[0]["label"], "Trouser");
    assert_eq!(lines[1]["label"], "Bag");
    assert_eq!(lines[0]["map_size"], serde_json::json!([8, 8]));
    for stem in ["1-trouser", "8-bag"] {
        let png = image::open(out.join(format!("{stem}-gradcam.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (256, 256), "32x32 inputs are shown 8x larger");
        let raw = vgg::npy::read(&out.join(format!("{stem}-gradcam.npy"))).unwrap();
        assert_eq!(raw.shape, vec![32, 32]);
    }
    let single = tmp("sal.png");
    let o = vgg(&["explain", a.to_str().unwrap(), "--method", "saliency", "--out", single.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(image::open(&single).is_ok());
    let o = vgg(&["explain", a.to_str().unwrap(), "--layer", "bn1_1", "--out", single.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("relu"), "{}", String::from_utf8_lossy(&o.stderr));
}

fn picture(seed: u32, [h, w]: [usize; 2]) -> Image {
    let data = (0..3 * h * w)
        .map(|i| 0.1 + 0.8 * (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 9) % 1000) as f32 / 1000.0)
        .collect();
    Image { size: [h, w], data }
}

fn style_setup() -> (Engine, StyleConfig) {
    let config = VggConfig::from_arch("vgg11").unwrap().with_width(0.25).with_head(Head::None);
    let m = with_formula(&config);
    let engine = Engine::from_state_dict_any_head(&config, m.state_dict()).unwrap();
    let cfg = StyleConfig {
        content_layer: "conv3_1".into(),
        style_layers: vec!["conv1_1".into(), "conv2_1".into(), "relu3_2".into()],
        style_weight: 1e3,
        steps: 15,
        ..StyleConfig::default()
    };
    (engine, cfg)
}

#[test]
fn style_loss_gradient_matches_finite_differences() {
    let (engine, cfg) = style_setup();
    let (content, style) = (picture(1, [16, 12]), picture(2, [12, 16]));
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let obj = Objective::new(&engine, &content, &style, &cfg, &mean, &std).unwrap();
    let x = picture(3, [16, 12]);
    let (l, g) = obj.evaluate(&x);
    assert!(l.content > 0.0 && l.style > 0.0);
    let v: Vec<f32> = (0..x.data.len()).map(|i| (i * 31 % 17) as f32 / 8.0 - 1.0).collect();
    let analytic: f64 = g.iter().zip(&v).map(|(g, v)| *g as f64 * *v as f64).sum();
    let at = |eps: f32| {
        let moved = Image { size: x.size, data: x.data.iter().zip(&v).map(|(a, v)| a + eps * v).collect() };
        obj.evaluate(&moved).0.total()
    };
    // The Gram matrices make the loss quartic in the activations: a small step.
    let eps = 3e-4;
    let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
    assert!((numeric - analytic).abs() < 0.01 * analytic.abs(), "{numeric} vs {analytic}");
}

#[test]
fn style_objective_refuses_images_of_another_channel_count() {
    let (engine, cfg) = style_setup();
    let (content, style) = (picture(1, [16, 12]), picture(2, [12, 16]));
    let gray = Image { size: [12, 16], data: style.data[..12 * 16].to_vec() };
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let err =
        Objective::new(&engine, &content, &gray, &cfg, &mean, &std).err().expect("a gray style for an RGB network");
    assert!(err.to_string().contains("the style 1"), "{err}");
}

#[test]
fn style_transfer_lowers_the_loss_with_either_optimizer() {
    let (mut engine, cfg) = style_setup();
    engine.use_average_pooling();
    let (content, style) = (picture(1, [16, 16]), picture(2, [16, 16]));
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let obj = Objective::new(&engine, &content, &style, &cfg, &mean, &std).unwrap();
    for optimizer in [Optimizer::Lbfgs { lr: 1.0 }, Optimizer::Adam { lr: 0.02 }] {
        // From white noise, far from both targets.
        let cfg = StyleConfig { optimizer, from_noise: true, steps: 30, ..cfg.clone() };
        let mut seen = 0;
        let mut start = 0.0;
        let (img, l) = transfer(&obj, &content, &cfg, &mut |step, l, _| {
            seen += 1;
            if step == 1 {
                start = l.total();
            }
        })
        .unwrap();
        assert_eq!(seen, cfg.steps);
        assert!(l.total() < 0.5 * start, "{optimizer:?}: {start} -> {}", l.total());
        assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn style_command_writes_the_result_and_intermediates() {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let out = tmp("styled.png");
    let o = vgg(&[
        "style",
        assets.join("1-trouser.png").to_str().unwrap(),
        assets.join("8-bag.png").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "40",
        "--steps",
        "4",
        "--every",
        "2",
        "--arch",
        "vgg11",
        "--weights",
        "random",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["size"], serde_json::json!([40, 40]));
    for p in [out.clone(), tmp("styled-step2.png"), tmp("styled-step4.png")] {
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (40, 40));
    }
    // The built-in model is gray: gray in, gray out, the architecture read from the weights.
    let gray = tmp("styled-gray.png");
    let o = vgg(&[
        "style",
        assets.join("3-dress.png").to_str().unwrap(),
        assets.join("8-bag.png").to_str().unwrap(),
        "--out",
        gray.to_str().unwrap(),
        "--size",
        "32",
        "--steps",
        "3",
        "--weights",
        "fashion-mnist",
        "--sheet",
        tmp("style-sheet.png").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["arch"], "vgg13_bn");
    let img = image::open(&gray).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (32, 32));
    assert!(img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    let sheet = image::open(tmp("style-sheet.png")).unwrap();
    assert!(sheet.width() > 3 * 32 && sheet.height() > 32, "three 32x32 tiles with captions");
    let o = vgg(&["style", "nope.png", "nope2.png", "--out", out.to_str().unwrap(), "--weights", "random"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.png"));
}
