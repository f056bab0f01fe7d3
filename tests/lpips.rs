//! LPIPS and the perceptual loss against the real packages. The golden values in
//! `tests/fixtures/lpips/` were made by `bench/lpips_reference.py` (lpips 0.1.4, torchmetrics 1.9,
//! torch 2.15, float64), with the VGG-16 trunk set to the fixture formula weights:
//!
//! ```python
//! model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True)   # heads: the wheel's vgg.pth
//! formula_trunk(model); model = model.double().eval()             # net.slice{k}.{i} <- features.{i}
//! value, layers = model(im2tensor(a), im2tensor(b), retPerLayer=True)   # [0, 255] -> [-1, 1]
//! baseline = lpips.LPIPS(..., lpips=False); spatial = lpips.LPIPS(..., spatial=True)
//! metric = LearnedPerceptualImagePatchSimilarity(net_type="vgg")  # torchmetrics, same trunk
//! model(a.requires_grad_(), b).sum().backward()                   # grad.npy = a.grad[0]
//! ```
//!
//! on 64x64 crops of the fixture photos against blurred, noisy, JPEG-compressed and shifted
//! versions (stored as PNG, so both sides read the same pixels).

mod common;

use std::path::PathBuf;

use serde_json::Value;
use vgg::config::{Head, VggConfig};
use vgg::engine::Engine;
use vgg::perceptual::{Heads, Lpips, Norm, PerceptualConfig, PerceptualLoss};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lpips")
}

fn golden() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("golden.json")).unwrap()).unwrap()
}

/// VGG-16's trunk with the formula weights.
fn trunk() -> Engine {
    let mut config = VggConfig::from_arch("vgg16").unwrap();
    config.head = Head::None;
    Engine::from_state_dict_any_head(&config, vgg::formula::state_dict(&config.plan([224, 224]))).unwrap()
}

/// An image as `[3, h, w]` values of `pixel * scale + shift`.
fn image(name: &str, scale: f32, shift: f32) -> (Vec<f32>, [usize; 2]) {
    let img = vgg::image::open(&dir().join(name)).unwrap();
    let (h, w) = (img.height, img.width);
    let mut out = vec![0f32; 3 * h * w];
    for (p, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * h * w + p] = px[c] as f32 * scale + shift;
        }
    }
    (out, [h, w])
}

/// lpips.im2tensor: `pixel / 127.5 - 1`.
fn lpips_input(name: &str) -> (Vec<f32>, [usize; 2]) {
    image(name, 1.0 / 127.5, -1.0)
}

fn pairs(g: &Value) -> Vec<Value> {
    g["pairs"].as_array().unwrap().clone()
}

/// Every pair stacked into one batch.
fn batch(pairs: &[Value]) -> (Vec<f32>, Vec<f32>, [usize; 4]) {
    let (mut a, mut b, mut size) = (vec![], vec![], [0, 0]);
    for p in pairs {
        let (x, s) = lpips_input(p["a"].as_str().unwrap());
        a.extend(x);
        b.extend(lpips_input(p["b"].as_str().unwrap()).0);
        size = s;
    }
    (a, b, [pairs.len(), 3, size[0], size[1]])
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn lpips_matches_the_lpips_package_and_torchmetrics_on_distorted_photos() {
    let (g, engine) = (golden(), trunk());
    let pairs = pairs(&g);
    let (a, b, dims) = batch(&pairs);
    let lpips = Lpips::new(&engine, Heads::v0_1()).unwrap();
    let got = lpips.distance(&a, &b, dims).unwrap();
    let baseline = Lpips::new(&engine, Heads::None).unwrap().distance(&a, &b, dims).unwrap();
    let mut worst = 0f64;
    for ((p, d), base) in pairs.iter().zip(&got).zip(&baseline) {
        let want = p["lpips"].as_f64().unwrap();
        println!("{} vs {}: {:.6} (lpips {want:.6}, torchmetrics {:.6})", p["a"], p["b"], d.value, p["torchmetrics"]);
        worst = worst
            .max(rel(d.value, want))
            .max(rel(d.value, p["torchmetrics"].as_f64().unwrap()))
            .max(rel(base.value, p["baseline"].as_f64().unwrap()));
        for (k, layer) in p["per_layer"].as_array().unwrap().iter().enumerate() {
            worst = worst.max(rel(d.per_layer[k], layer.as_f64().unwrap()));
        }
    }
    println!("worst relative difference: {worst:.2e}");
    assert!(worst <= 1e-5, "{worst:e}");
    // The metric orders the distortions as the package does within each photo.
    let order = |v: &[f64]| {
        let mut i: Vec<usize> = (0..v.len()).collect();
        i.sort_by(|&x, &y| v[x].total_cmp(&v[y]));
        i
    };
    for chunk in 0..pairs.len() / 4 {
        let ours: Vec<f64> = got[chunk * 4..chunk * 4 + 4].iter().map(|d| d.value).collect();
        let theirs: Vec<f64> = pairs[chunk * 4..chunk * 4 + 4].iter().map(|p| p["lpips"].as_f64().unwrap()).collect();
        assert_eq!(order(&ours), order(&theirs));
    }
}

#[test]
fn lpips_of_an_image_with_itself_is_exactly_zero() {
    let engine = trunk();
    let lpips = Lpips::new(&engine, Heads::v0_1()).unwrap();
    for name in ["chelsea.png", "coffee.png", "rocket.png"] {
        let (x, [h, w]) = lpips_input(name);
        let d = lpips.distance(&x, &x, [1, 3, h, w]).unwrap();
        assert_eq!(d[0].value, 0.0, "{name}");
        assert!(lpips.spatial(&x, &x, [1, 3, h, w]).unwrap().iter().all(|&v| v == 0.0));
    }
}

#[test]
fn the_spatial_map_and_the_input_gradient_match_the_package() {
    let (g, engine) = (golden(), trunk());
    let first = &pairs(&g)[0];
    let (a, [h, w]) = lpips_input(first["a"].as_str().unwrap());
    let b = lpips_input(first["b"].as_str().unwrap()).0;
    let lpips = Lpips::new(&engine, Heads::v0_1()).unwrap();
    let dims = [1, 3, h, w];

    let map = lpips.spatial(&a, &b, dims).unwrap();
    let want = vgg::npy::read(&dir().join("spatial.npy")).unwrap();
    assert_eq!(want.shape, vec![h, w]);
    let err = common::rel_err(&map, &want.data);
    println!("spatial map: relative error {err:.2e}");
    assert!(err <= 1e-5, "{err:e}");

    let (values, grad) = lpips.distance_and_gradient(&a, &b, dims).unwrap();
    assert!(rel(values[0], first["lpips"].as_f64().unwrap()) <= 1e-5);
    let want = vgg::npy::read(&dir().join("grad.npy")).unwrap();
    assert_eq!(want.shape, vec![3, h, w]);
    let err = common::rel_err(&grad, &want.data);
    println!("d LPIPS / d input: relative error {err:.2e}");
    assert!(err <= 1e-4, "{err:e}");
}

#[test]
fn the_perceptual_loss_and_its_gradient_match_torch() {
    let (g, engine) = (golden(), trunk());
    let p = &g["perceptual"];
    let load = |key: &str| {
        let mut all = vec![];
        let mut size = [0, 0];
        for name in p[key].as_array().unwrap() {
            let (x, s) = image(name.as_str().unwrap(), 1.0 / 255.0, 0.0);
            all.extend(x);
            size = s;
        }
        (all, size)
    };
    let ((x, [h, w]), (t, _)) = (load("images"), load("targets"));
    let dims = [1, 3, h, w];
    for (norm, key) in [(Norm::L2, "l2"), (Norm::L1, "l1")] {
        let config = PerceptualConfig {
            feature_layers: vec![("relu2_2".into(), 1.0), ("relu3_3".into(), 0.5)],
            style_layers: vec![("relu1_2".into(), 1e3), ("relu2_2".into(), 1e3)],
            norm,
        };
        let loss = PerceptualLoss::new(&engine, &config, &[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]).unwrap();
        let (value, grad) = loss.loss_and_gradient(&x, &t, dims).unwrap();
        let want = p[key].as_f64().unwrap();
        println!("perceptual {key}: {value:.8} (torch {want:.8})");
        assert!(rel(value, want) <= 1e-5, "{value} vs {want}");
        if norm == Norm::L2 {
            let want = vgg::npy::read(&dir().join("grad_perceptual.npy")).unwrap();
            let err = common::rel_err(&grad, &want.data);
            println!("d loss / d input: relative error {err:.2e}");
            assert!(err <= 1e-4, "{err:e}");
        }
    }
}

#[test]
fn wrong_heads_missing_taps_and_bad_inputs_are_refused_by_name() {
    let engine = trunk();
    let Heads::Linear(mut w) = Heads::v0_1() else { panic!("linear heads") };
    w[2].pop();
    let err = Lpips::new(&engine, Heads::Linear(w)).err().unwrap().to_string();
    assert!(err.contains("lin2.model.1.weight") && err.contains("255") && err.contains("256"), "{err}");
    // VGG-11 has no relu1_2.
    let mut config = VggConfig::from_arch("vgg11").unwrap();
    config.head = Head::None;
    let vgg11 = Engine::from_state_dict_any_head(&config, vgg::formula::state_dict(&config.plan([224, 224]))).unwrap();
    let err = Lpips::new(&vgg11, Heads::v0_1()).err().unwrap().to_string();
    assert!(err.contains("relu1_2"), "{err}");
    // Gray images are not RGB.
    let lpips = Lpips::new(&engine, Heads::v0_1()).unwrap();
    assert!(lpips.distance(&[0.0; 64], &[0.0; 64], [1, 1, 8, 8]).is_err());
    // Images too small for relu5_3 (four poolings before it) are refused, not run.
    let err = lpips.distance(&[0.0; 3 * 8 * 8], &[0.0; 3 * 8 * 8], [1, 3, 8, 8]).unwrap_err().to_string();
    assert!(err.contains("relu5_3") && err.contains("16x16"), "{err}");
    assert!(lpips.distance_and_gradient(&[0.0; 3 * 15 * 20], &[0.0; 3 * 15 * 20], [1, 3, 15, 20]).is_err());
    let config =
        PerceptualConfig { feature_layers: vec![("relu3_3".into(), 1.0)], style_layers: vec![], norm: Norm::L2 };
    let loss = PerceptualLoss::new(&engine, &config, &[0.5; 3], &[0.5; 3]).unwrap();
    let err = loss.loss_and_gradient(&[0.0; 3 * 2 * 2], &[0.0; 3 * 2 * 2], [1, 3, 2, 2]).unwrap_err().to_string();
    assert!(err.contains("relu3_3") && err.contains("4x4"), "{err}");
    assert!(loss.loss_and_gradient(&[0.0; 3 * 4 * 4], &[0.0; 3 * 4 * 4], [1, 3, 4, 4]).is_ok());
}

/// `got` equals `want` to 1e-6 of `want`'s largest magnitude.
fn assert_same_gradient(got: &[f32], want: &[f32]) {
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(worst <= 1e-6 * scale, "{worst} of {scale}");
}

#[test]
fn a_batch_gives_each_image_its_own_loss_and_gradient() {
    // Two different photos in one batch: the batch's loss is the mean of each image's own, and each
    // image's gradient is its own gradient over the batch size (the means are over the batch).
    let engine = trunk();
    let config = PerceptualConfig {
        feature_layers: vec![("relu3_3".into(), 1.0)],
        style_layers: vec![("relu2_2".into(), 1e3)],
        norm: Norm::L1,
    };
    let loss = PerceptualLoss::new(&engine, &config, &[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]).unwrap();
    let lpips = Lpips::new(&engine, Heads::v0_1()).unwrap();
    let one = |name: &str, scale: f32, shift: f32| image(name, scale, shift).0;
    let (_, [h, w]) = image("chelsea.png", 1.0, 0.0);
    let single = [1, 3, h, w];
    let pairs = [("chelsea.png", "chelsea-noise.png"), ("coffee.png", "coffee-jpeg.png")];
    let (mut xs, mut ts, mut ls, mut gs, mut ds, mut dgs) = (vec![], vec![], 0f64, vec![], vec![], vec![]);
    let (mut xa, mut xb) = (vec![], vec![]);
    for (a, b) in pairs {
        let (x, t) = (one(a, 1.0 / 255.0, 0.0), one(b, 1.0 / 255.0, 0.0));
        let (l, g) = loss.loss_and_gradient(&x, &t, single).unwrap();
        ls += l / 2.0;
        gs.extend(g.iter().map(|v| v / 2.0));
        xs.extend(x);
        ts.extend(t);
        let (a, b) = (one(a, 1.0 / 127.5, -1.0), one(b, 1.0 / 127.5, -1.0));
        let (d, g) = lpips.distance_and_gradient(&a, &b, single).unwrap();
        ds.extend(d);
        dgs.extend(g);
        xa.extend(a);
        xb.extend(b);
    }
    let (l, g) = loss.loss_and_gradient(&xs, &ts, [2, 3, h, w]).unwrap();
    assert!(rel(l, ls) < 1e-9, "{l} vs {ls}");
    assert_same_gradient(&g, &gs);
    let (d, g) = lpips.distance_and_gradient(&xa, &xb, [2, 3, h, w]).unwrap();
    assert!(d.iter().zip(&ds).all(|(a, b)| rel(*a, *b) < 1e-9), "{d:?} vs {ds:?}");
    assert_same_gradient(&g, &dgs);
}

fn vgg_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).output().expect("run vgg")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vgg-lpips-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_cli_compares_files_and_paired_folders_with_the_packages_values() {
    let g = golden();
    let d = scratch("cli");
    let (fa, fb) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&fa).unwrap();
    std::fs::create_dir_all(&fb).unwrap();
    // Folder A holds the photos, folder B their JPEG versions under the same names.
    let jpeg: Vec<&Value> =
        g["pairs"].as_array().unwrap().iter().filter(|p| p["b"].as_str().unwrap().ends_with("-jpeg.png")).collect();
    for p in &jpeg {
        let name = p["a"].as_str().unwrap();
        std::fs::copy(dir().join(name), fa.join(name)).unwrap();
        std::fs::copy(dir().join(p["b"].as_str().unwrap()), fb.join(name)).unwrap();
    }
    let spatial = d.join("maps");
    let o = vgg_cli(&[
        "lpips",
        fa.to_str().unwrap(),
        fb.to_str().unwrap(),
        "--weights",
        "formula",
        "--json",
        "--spatial",
        spatial.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> =
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), jpeg.len());
    for (line, p) in lines.iter().zip(&jpeg) {
        assert!(line["a"].as_str().unwrap().ends_with(p["a"].as_str().unwrap()));
        assert!(rel(line["lpips"].as_f64().unwrap(), p["lpips"].as_f64().unwrap()) <= 1e-5, "{line} vs {p}");
        let stem = p["a"].as_str().unwrap().trim_end_matches(".png");
        assert!(spatial.join(format!("{stem}.png")).is_file());
        let map = vgg::npy::read(&spatial.join(format!("{stem}.npy"))).unwrap();
        assert_eq!(map.shape, vec![64, 64]);
    }
    // The first pair's map against lpips(spatial=True).
    let first = &g["pairs"][0];
    let map = d.join("first.png");
    let o = vgg_cli(&[
        "lpips",
        dir().join(first["a"].as_str().unwrap()).to_str().unwrap(),
        dir().join(first["b"].as_str().unwrap()).to_str().unwrap(),
        "--weights",
        "formula",
        "--spatial",
        map.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = vgg::npy::read(&map.with_extension("npy")).unwrap();
    let want = vgg::npy::read(&dir().join("spatial.npy")).unwrap();
    assert!(common::rel_err(&got.data.iter().map(|&v| v as f32).collect::<Vec<_>>(), &want.data) <= 1e-5);

    // A partner missing, sizes that differ, a file against a folder: errors that say so.
    std::fs::copy(dir().join("rocket-blur.png"), fa.join("extra.png")).unwrap();
    let o = vgg_cli(&["lpips", fa.to_str().unwrap(), fb.to_str().unwrap(), "--weights", "formula"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("extra.png") && err.contains("no partner"), "{err}");
    let camera = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/images/camera.png");
    if camera.exists() {
        let o = vgg_cli(&[
            "lpips",
            dir().join("rocket.png").to_str().unwrap(),
            camera.to_str().unwrap(),
            "--weights",
            "formula",
        ]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains("--size"), "{err}");
        let o = vgg_cli(&[
            "lpips",
            dir().join("rocket.png").to_str().unwrap(),
            camera.to_str().unwrap(),
            "--weights",
            "formula",
            "--size",
            "48",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o =
        vgg_cli(&["lpips", fa.to_str().unwrap(), dir().join("rocket.png").to_str().unwrap(), "--weights", "formula"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("two files or two folders"));
    let o = vgg_cli(&[
        "lpips",
        dir().join("golden.json").to_str().unwrap(),
        dir().join("rocket.png").to_str().unwrap(),
        "--weights",
        "formula",
    ]);
    assert_eq!(o.status.code(), Some(1), "an undecodable image is an error, not a panic");
    let _ = std::fs::remove_dir_all(&d);
}
