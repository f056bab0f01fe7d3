//! The `vgg` binary end to end: summaries against torchvision's published counts, classification
//! and features with files this test writes, and the errors a user meets.

mod common;

use std::path::{Path, PathBuf};

use std::process::{Command, Output};

use burn::tensor::Device;
use common::*;
use vgg::weights::safetensors::Meta;
use vgg::weights::{self, Dtype, Strict};
use vgg::{Vgg, VggConfig};

fn vgg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).env("VGG_CACHE_DIR", tmp("cache")).output().expect("run vgg")
}

fn tmp(name: &str) -> PathBuf {
    let d = scratch("vgg-cli");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn summary_counts_match_torchvision() {
    // torchvision's documented num_params and GFLOPS (MACs) for each variant.
    let expected = [
        ("vgg11", 132_863_336u64, 7.609),
        ("vgg11_bn", 132_868_840, 7.609),
        ("vgg13", 133_047_848, 11.308),
        ("vgg13_bn", 133_053_736, 11.308),
        ("vgg16", 138_357_544, 15.470),
        ("vgg16_bn", 138_365_992, 15.470),
        ("vgg19", 143_667_240, 19.632),
        ("vgg19_bn", 143_678_248, 19.632),
    ];
    for (arch, params, gmacs) in expected {
        let o = vgg(&["summary", "--arch", arch, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(j["params"].as_u64(), Some(params), "{arch}");
        let macs = j["macs"].as_u64().unwrap() as f64 / 1e9;
        assert!((macs - gmacs).abs() < 5e-4, "{arch}: {macs} GMACs");
    }
    // Paper Table 2: C has 134M parameters; A-LRN the same as A (LRN has none).
    let j: serde_json::Value = serde_json::from_str(&stdout(&vgg(&["summary", "--arch", "C", "--json"]))).unwrap();
    assert_eq!((j["params"].as_u64().unwrap() as f64 / 1e6).round(), 134.0);
    let j: serde_json::Value = serde_json::from_str(&stdout(&vgg(&["summary", "--arch", "A-LRN", "--json"]))).unwrap();
    assert_eq!(j["params"].as_u64(), Some(132_863_336));
    // The first FC layer alone: 102,764,544.
    let j: serde_json::Value = serde_json::from_str(&stdout(&vgg(&["summary", "--arch", "vgg16", "--json"]))).unwrap();
    let fc6 = j["layers"].as_array().unwrap().iter().find(|l| l["name"] == "fc6").unwrap();
    assert_eq!(fc6["params"].as_u64(), Some(102_764_544));
    assert_eq!(fc6["key"], "classifier.0");
}

#[test]
fn summary_table_names_layers_both_ways() {
    let o = vgg(&["summary", "--arch", "vgg16_bn", "--head", "cifar", "--num-classes", "10", "--input", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("conv5_3") && s.contains("features.40") && s.contains("512x2x2"), "{s}");
    assert!(s.contains("14,990,922"), "the bench's CIFAR VGG-16-BN has 14,990,922 parameters:\n{s}");
    let o = vgg(&["summary", "--arch", "vgg16", "--input", "20"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("32x32"), "{}", stderr(&o));
}

/// A small VGG-11 with formula weights, saved as safetensors with its architecture recorded.
fn small_model_file(name: &str) -> (PathBuf, Vgg) {
    let device = Device::default();
    let config = VggConfig::from_arch("vgg11")
        .unwrap()
        .with_width(0.25)
        .with_head(vgg::Head::Imagenet { hidden: 64, pool: [7, 7] });
    let mut m = Vgg::new(&config, &device).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    let path = tmp(&format!("{name}.safetensors"));
    let meta = Meta { config: Some(config), ..Default::default() };
    weights::safetensors::write(&path, &m.state_dict(), &meta, Dtype::F32).unwrap();
    (path, m)
}

#[test]
fn classify_prints_json_lines_matching_the_library() {
    let (path, model) = small_model_file("m1");
    let imgs = [fixtures().join("images/chelsea.png"), fixtures().join("images/rocket.jpg")];
    let o = vgg(&[
        "classify",
        imgs[0].to_str().unwrap(),
        imgs[1].to_str().unwrap(),
        "--weights",
        path.to_str().unwrap(),
        "--json",
        "--top",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (line, img) in lines.iter().zip(&imgs) {
        assert_eq!(line["image"], img.to_str().unwrap());
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Same numbers as the library computes directly.
        let x = vgg::image::Preprocess::imagenet().load(img).unwrap().to_tensor(&model.devices());
        let probs = values(burn::tensor::activation::softmax(model.forward(x), 1));
        let order = argsort_desc(&probs.iter().map(|&p| p as f64).collect::<Vec<_>>());
        for (k, t) in top.iter().enumerate() {
            let i = t["index"].as_u64().unwrap() as usize;
            assert_eq!(i, order[k]);
            assert_eq!(t["label"], vgg::labels::imagenet()[i]);
            assert!((t["prob"].as_f64().unwrap() - probs[i] as f64).abs() < 1e-6);
        }
        assert!(top[0]["prob"].as_f64() >= top[1]["prob"].as_f64());
    }
}

#[test]
fn classify_mixes_image_sizes_in_one_call() {
    let (path, _) = small_model_file("mixed");
    // Without resize and crop the photos keep their own sizes (451x300, 600x400, 512x512).
    let imgs: Vec<String> = ["chelsea.png", "coffee.png", "camera.png"]
        .iter()
        .map(|f| fixtures().join("images").join(f).display().to_string())
        .collect();
    let mut args = vec!["classify"];
    args.extend(imgs.iter().map(String::as_str));
    args.extend(["--weights", path.to_str().unwrap(), "--resize", "0", "--crop", "0", "--json", "--batch", "3"]);
    let o = vgg(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    assert_eq!(names, imgs.iter().map(String::as_str).collect::<Vec<_>>(), "results come in input order");
}

fn features(img: &Path, weights: &Path, layers: &str, out: &Path) -> Output {
    let a = |p: &Path| p.to_str().unwrap().to_string();
    vgg(&["features", &a(img), "--weights", &a(weights), "--layers", layers, "--out", &a(out)])
}

#[test]
fn features_writes_named_activations() {
    let (path, model) = small_model_file("m2");
    let img = fixtures().join("images/coffee.png");
    let out = tmp("feats.safetensors");
    let o = features(&img, &path, "conv1_1,relu1_1,pool5,fc7", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sd, meta) = weights::safetensors::read(&std::fs::read(&out).unwrap(), "feats").unwrap();
    assert_eq!(meta.config.as_ref(), Some(model.config()));
    assert_eq!(meta.extra, vec![("vgg.image".to_string(), img.display().to_string())]);
    assert_eq!(sd["conv1_1"].shape, vec![1, 16, 224, 224]);
    assert_eq!(sd["pool5"].shape, vec![1, 128, 7, 7]);
    assert_eq!(sd["fc7"].shape, vec![1, 64]);
    // The preprocessed image rides along, to feed another runtime the same tensor.
    let seen = meta.preprocess.as_ref().unwrap().load(&img).unwrap();
    assert_eq!((sd["input"].shape.as_slice(), &sd["input"].data), (&[1, 3, 224, 224][..], &seen.data));
    // The tap on conv1_1 is taken before the ReLU: it keeps negative values, relu1_1 is their clamp.
    assert!(sd["conv1_1"].data.iter().any(|&v| v < 0.0));
    for (c, r) in sd["conv1_1"].data.iter().zip(&sd["relu1_1"].data) {
        assert_eq!(c.max(0.0), *r);
    }
    let o = features(&img, &path, "conv9_9", &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("conv9_9") && stderr(&o).contains("conv1_1"), "{}", stderr(&o));
}

/// Several images: one file, each activation stacked along the batch dimension in input order, row
/// i equal to image i's activation alone, the images listed in the metadata.
#[test]
fn features_of_several_images_are_stacked_in_order() {
    let (path, _) = small_model_file("m2s");
    let w = path.to_str().unwrap();
    let imgs = [fixtures().join("images/coffee.png"), fixtures().join("images/coffee.png")];
    let mut flipped = image::open(&imgs[0]).unwrap();
    flipped = flipped.fliph();
    let second = tmp("flipped.png");
    flipped.save(&second).unwrap();
    let imgs = [imgs[0].clone(), second];
    let out = tmp("stacked.safetensors");
    let o = vgg(&[
        "features",
        imgs[0].to_str().unwrap(),
        imgs[1].to_str().unwrap(),
        "--weights",
        w,
        "--layers",
        "pool5,fc7",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sd, meta) = weights::safetensors::read(&std::fs::read(&out).unwrap(), "stacked").unwrap();
    let listed: Vec<String> = imgs.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(meta.extra, vec![("vgg.images".to_string(), serde_json::to_string(&listed).unwrap())]);
    assert_eq!(sd["fc7"].shape, vec![2, 64]);
    for (i, img) in imgs.iter().enumerate() {
        let one = tmp(&format!("one{i}.safetensors"));
        assert!(features(img, &path, "pool5,fc7", &one).status.success());
        let (alone, _) = weights::safetensors::read(&std::fs::read(&one).unwrap(), "one").unwrap();
        for key in ["pool5", "fc7", "input"] {
            let row = alone[key].data.len();
            assert_eq!(&sd[key].data[i * row..(i + 1) * row], &alone[key].data[..], "{key} of image {i}");
        }
    }
    assert_ne!(sd["fc7"].data[..64], sd["fc7"].data[64..], "the two images differ");
}

#[test]
fn bad_input_gives_messages_and_exit_codes_not_panics() {
    let (path, _) = small_model_file("m3");
    let w = path.to_str().unwrap();
    let broken = tmp("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let good = fixtures().join("images/chelsea.png");
    let out = tmp("swa-run");
    let out = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["classify", "missing.png", "--weights", w], "missing.png"),
        (vec!["classify", broken.to_str().unwrap(), "--weights", w], "broken.jpg"),
        (vec!["classify", good.to_str().unwrap(), "--weights", "nope.pth"], "nope.pth"),
        (vec!["classify", good.to_str().unwrap(), "--arch", "vgg17", "--weights", "random"], "vgg17"),
        (
            vec!["classify", good.to_str().unwrap(), "--arch", "vgg13", "--weights", w],
            "shape mismatch for 'features.0.weight'",
        ),
        (vec!["classify", good.to_str().unwrap(), "--weights", "torchvision:vgg99"], "vgg99"),
        (vec!["summary", "--arch", "vgg16", "--head", "transformer"], "transformer"),
        (vec!["train", "--epochs", "2", "--swa", "2", "--limit", "64", "--out", out], "averaging must start before"),
        (
            vec!["train", "--epochs", "3", "--swa", "1", "--time-budget", "5m", "--limit", "64", "--out", out],
            "--time-budget and --swa",
        ),
    ];
    for (args, needle) in cases {
        let o = vgg(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: message should mention {needle}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A malformed option is a usage error (clap's exit code 2), with the reason.
    let o = vgg(&["train", "--time-budget", "soon", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'soon' is not a duration"), "{}", stderr(&o));
    for (args, needle) in [
        (vec!["train", "--schedule", "step:x", "--out", out], "unknown schedule 'step:x'"),
        (vec!["train", "--crop", "jitter:512,256", "--out", out], "unknown crop 'jitter:512,256'"),
        (vec!["convert", "fashion-mnist", "x.safetensors", "--dtype", "f8"], "unknown dtype 'f8'"),
        (vec!["classify", good.to_str().unwrap(), "--half", "f8"], "unknown 16-bit format 'f8'"),
    ] {
        let o = vgg(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    // One bad image among good ones: the good ones are still classified, the run still fails.
    let o = vgg(&["classify", good.to_str().unwrap(), "missing.png", "--weights", w, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).lines().count(), 1);
    assert!(stderr(&o).contains("1 of 2 images"));
}

#[test]
fn named_weights_offline_say_what_to_fetch_and_where() {
    // Point the download at a local port that refuses connections.
    let o = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["classify", fixtures().join("images/chelsea.png").to_str().unwrap(), "--weights", "torchvision:vgg16"])
        .env("VGG_CACHE_DIR", tmp("offline-cache"))
        .env("VGG_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models/")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("vgg16-397923af.pth") && err.contains(tmp("offline-cache").to_str().unwrap()), "{err}");
    assert!(!Path::new(&tmp("offline-cache").join("vgg16-397923af.pth")).exists());
}

#[test]
fn classify_without_weights_uses_the_built_in_fashion_mnist_model() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 10, "one example per class");
    let mut args = vec!["classify", "--json", "--top", "1"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let o = vgg(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut right = 0;
    for (line, file) in stdout(&o).lines().zip(&files) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        // Files are named <class index>-<name>.png.
        let want: u64 = file.file_name().unwrap().to_str().unwrap()[..1].parse().unwrap();
        right += usize::from(v["top"][0]["index"].as_u64() == Some(want));
        assert_eq!(
            v["top"][0]["label"].as_str().unwrap(),
            vgg::labels::FASHION_MNIST[v["top"][0]["index"].as_u64().unwrap() as usize]
        );
    }
    assert!(right >= 9, "{right} of 10 examples classified correctly");
    // 16-bit weights: the same classes, probabilities within the rounding.
    let o = vgg(&["classify", dir.join("3-dress.png").to_str().unwrap(), "--half", "f16", "--json", "--top", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let half: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(half["top"][0]["label"], "Dress");
}

#[test]
fn bench_reports_one_json_object() {
    for extra in [&[][..], &["--train"][..], &["--half", "bf16"][..], &["--train", "--layers"][..]] {
        let mut args =
            vec!["bench", "--arch", "vgg11_bn", "--width", "0.125", "--head", "cifar", "--num-classes", "10"];
        args.extend(["--size", "32", "--batch", "2", "--iters", "2", "--warmup", "1", "--json"]);
        args.extend(extra);
        let o = vgg(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["arch"], "vgg11_bn");
        assert_eq!(v["mode"], if extra.contains(&"--train") { "train" } else { "infer" });
        assert_eq!(v["weights"], if extra.contains(&"bf16") { "bf16" } else { "f32" });
        let (median, p90) = (v["median_s"].as_f64().unwrap(), v["p90_s"].as_f64().unwrap());
        assert!(median > 0.0 && p90 >= median);
        assert!((v["img_per_s"].as_f64().unwrap() - 2.0 / median).abs() < 1e-6 * (2.0 / median));
        assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0);
        // The path this test process takes: the CPU's best, or what VGG_ISA forces (the child inherits it).
        assert_eq!(v["isa"], vgg::kernels::isa::active().name());
        assert!(!v["cpu"].as_str().unwrap().is_empty());
        if extra.contains(&"--layers") {
            // Every layer's forward in order, the loss, the backward from the top down, the update.
            let names: Vec<&str> =
                v["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
            let at = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("no {n} in {names:?}"));
            assert!(at("conv1_1 fwd") < at("conv5_2 fwd") && at("conv5_2 fwd") < at("fc7 fwd"));
            assert!(at("fc7 fwd") < at("loss") && at("loss") < at("fc7 bwd"));
            assert!(at("conv5_2 bwd") < at("conv1_1 bwd") && names.last() == Some(&"optimizer"));
            assert_eq!(names.len(), 2 * names.iter().filter(|n| n.ends_with(" fwd")).count() + 2);
        }
    }
}

#[test]
fn dense_evaluation_averages_the_classifier_over_every_window() {
    use burn::tensor::{Tensor, TensorData};
    let (path, model) = small_model_file("dense");
    let img_path = fixtures().join("images/chelsea.png");
    let run = |img: &Path, flip: bool| -> Vec<f64> {
        let mut args = vec!["classify", img.to_str().unwrap(), "--weights", path.to_str().unwrap()];
        args.extend(["--protocol", "dense", "--scales", "240", "--json", "--top", "1000"]);
        if flip {
            args.push("--flip");
        }
        let o = vgg(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        let mut p = vec![0f64; 1000];
        for t in v["top"].as_array().unwrap() {
            p[t["index"].as_u64().unwrap() as usize] = t["prob"].as_f64().unwrap();
        }
        p
    };
    // Independently: the trunk's map of the image rescaled to a shorter side of 240, the classifier
    // (burn's modules) applied to every 7x7 window of it, logits averaged, then soft-max.
    let img = vgg::image::open(&img_path).unwrap();
    let t = vgg::image::to_tensor(
        &vgg::image::resize_shorter(&img, 240, vgg::image::Filter::Bilinear),
        &vgg::image::Normalize::imagenet(),
    );
    let device = model.devices();
    let fmap = model.features(Tensor::from_data(TensorData::new(t.data.clone(), t.dims()), &device));
    let [_, c, h, w] = fmap.dims();
    assert!(h > 7 || w > 7, "several windows: {h}x{w}");
    let mut sum = vec![0f64; 1000];
    let mut windows = 0;
    for y in 0..=h - 7 {
        for x in 0..=w - 7 {
            let win = fmap.clone().slice([0..1, 0..c, y..y + 7, x..x + 7]).reshape([1, c * 49]);
            let mut a = win;
            for (i, fc) in model.fcs.iter().enumerate() {
                a = fc.forward(a);
                if i + 1 < model.fcs.len() {
                    a = burn::tensor::activation::relu(a);
                }
            }
            for (s, v) in sum.iter_mut().zip(values(a)) {
                *s += v as f64;
            }
            windows += 1;
        }
    }
    let logits: Vec<f64> = sum.iter().map(|s| s / windows as f64).collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    let want: Vec<f64> = logits.iter().map(|l| (l - max).exp() / z).collect();
    let got = run(&img_path, false);
    let err = rel_err(&got.iter().map(|&v| v as f32).collect::<Vec<_>>(), &want);
    assert!(err < 1e-4, "dense posteriors differ from the window-by-window computation: {err:e}");
    // With --flip the posteriors average the image and its mirror, so a mirrored file gives the
    // same answer (up to resampling rounding).
    let mirrored = tmp("chelsea-mirrored.png");
    image::imageops::flip_horizontal(&image::open(&img_path).unwrap().to_rgb8()).save(&mirrored).unwrap();
    let (a, b) = (run(&img_path, true), run(&mirrored, true));
    let err = rel_err(&a.iter().map(|&v| v as f32).collect::<Vec<_>>(), &b);
    assert!(err < 1e-3, "flip-averaged posteriors of an image and its mirror: {err:e}");
    assert!(rel_err(&got.iter().map(|&v| v as f32).collect::<Vec<_>>(), &a) > 1e-4, "--flip changes the answer");
}

#[test]
fn protocols_refuse_scales_too_small_for_the_network() {
    let good = fixtures().join("images/chelsea.png");
    for args in [
        vec!["--protocol", "dense", "--scales", "16"],
        vec!["--protocol", "multicrop", "--scales", "256,8"],
        vec!["--protocol", "center", "--flip", "--resize", "20", "--crop", "0"],
        vec!["--protocol", "sideways"],
        vec!["--protocol", "dense", "--scales", "a,b"],
    ] {
        let mut all =
            vec!["classify", good.to_str().unwrap(), "--arch", "vgg11", "--width", "0.125", "--weights", "random"];
        all.extend(args.iter());
        let o = vgg(&all);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("error") && !err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn feature_grids_tile_the_first_channels_each_stretched_to_its_range() {
    let (path, model) = small_model_file("grid");
    let img = fixtures().join("images/chelsea.png");
    let out = tmp("grid.png");
    let o = vgg(&["features", img.to_str().unwrap(), "--weights", path.to_str().unwrap(), "--grid", "relu3_1"]
        .into_iter()
        .chain(["--channels", "10", "--out", out.to_str().unwrap()])
        .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    // relu3_1 of a 224x224 input is 56x56 (magnified once): 10 tiles on a 4-column grid, 3 rows.
    let png = image::open(&out).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (4 * 58 + 2, 3 * 58 + 2));
    let acts = vgg::features::extract(
        &model,
        vgg::image::Preprocess::imagenet().load(&img).unwrap().to_tensor(&model.devices()),
        &["relu3_1"],
    )
    .unwrap();
    let plane = &acts["relu3_1"].data[..56 * 56];
    // Tile 0: its brightest and darkest pixels sit where channel 0 is largest and smallest.
    let (imax, imin) = (0..plane.len())
        .fold((0, 0), |(a, b), i| (if plane[i] > plane[a] { i } else { a }, if plane[i] < plane[b] { i } else { b }));
    let px = |i: usize| png.get_pixel(2 + (i % 56) as u32, 2 + (i / 56) as u32)[0];
    if plane[imax] > plane[imin] {
        assert_eq!((px(imax), px(imin)), (255, 0));
    }
    // Tiles past the tenth are left white.
    assert_eq!(png.get_pixel(2 + 3 * 58 + 10, 2 + 2 * 58 + 10)[0], 255);
}

/// `vgg convert`: the built-in model to bf16 safetensors (metadata kept), to an f16 `.pth` with the
/// paper's keys and back, to ONNX; values are exactly the roundings of the f32 ones.
#[test]
fn convert_between_formats_and_precisions() {
    let (orig, meta) = weights::safetensors::read(vgg::pretrained::FASHION_MNIST, "built-in").unwrap();
    let round = |v: f32, d: Dtype| match d {
        Dtype::F16 => half::f16::from_f32(v).to_f32(),
        Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    };
    let st = tmp("conv-bf16.safetensors");
    let o = vgg(&["convert", "fashion-mnist", st.to_str().unwrap(), "--dtype", "bf16", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["tensors"].as_array().unwrap().len(), orig.len());
    let bytes = std::fs::read(&st).unwrap();
    let (back, back_meta) = weights::safetensors::read(&bytes, "converted").unwrap();
    assert_eq!(back_meta.config, meta.config, "the architecture travels in the metadata");
    for (k, t) in &orig {
        let want: Vec<f32> =
            t.data.iter().map(|&v| round(v, if t.dtype == Dtype::I64 { Dtype::I64 } else { Dtype::BF16 })).collect();
        assert_eq!(back[k].data, want, "{k}");
        assert_eq!(back[k].dtype, if t.dtype == Dtype::I64 { Dtype::I64 } else { Dtype::BF16 }, "{k}");
    }
    // f16 .pth with the paper's keys (no metadata there: the architecture is given back by flags).
    let pth = tmp("conv-f16.pth");
    let o = vgg(&["convert", "fashion-mnist", pth.to_str().unwrap(), "--dtype", "f16", "--keys", "paper"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("features.0.weight") && stdout(&o).contains("conv1_1.weight"), "{}", stdout(&o));
    let raw = weights::load_file(&pth).unwrap();
    assert!(raw.contains_key("conv1_1.weight") && raw.contains_key("bn1_1.running_var"));
    let again = tmp("conv-again.safetensors");
    // No dropout in the built-in head, so its last layer is classifier.2.
    let arch = "--arch vgg13_bn --width 0.375 --head cifar --num-classes 10 --in-channels 1 --dropout 0";
    let mut args = vec!["convert", pth.to_str().unwrap(), again.to_str().unwrap()];
    args.extend(arch.split(' '));
    let o = vgg(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = weights::load_file(&again).unwrap();
    for (k, t) in &orig {
        let d = if t.dtype == Dtype::I64 { Dtype::I64 } else { Dtype::F16 };
        let want: Vec<f32> = t.data.iter().map(|&v| round(v, d)).collect();
        assert_eq!(back[k].data, want, "{k}");
    }
    let onnx = tmp("conv.onnx");
    let o = vgg(&["convert", "fashion-mnist", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1_000_000);
    // And back: the ONNX graph imports to the same tensors, its preprocessing from the metadata.
    let from_onnx = tmp("conv-from-onnx.safetensors");
    let o = vgg(&["convert", onnx.to_str().unwrap(), from_onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (back, back_meta) = weights::safetensors::read(&std::fs::read(&from_onnx).unwrap(), "from onnx").unwrap();
    assert_eq!(back_meta.config, meta.config);
    assert_eq!(back_meta.preprocess, meta.preprocess);
    // BatchNorm's step counter is not part of an inference graph.
    for (k, t) in orig.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")) {
        assert_eq!(back[k].data, t.data, "{k}");
    }
    // What it cannot do says so.
    for (args, needle) in [
        (vec!["convert", "fashion-mnist", onnx.to_str().unwrap(), "--dtype", "f16"], "f32"),
        (vec!["convert", "model.keras", "out.safetensors"], "model.keras"),
        (vec!["convert", "fashion-mnist", "out.npz"], "unknown output format 'npz'"),
        (vec!["convert", "nope.pth", "out.safetensors"], "nope.pth"),
    ] {
        let o = vgg(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

/// `VGG_ISA` forces a kernel path for any verb (reported by `vgg bench`); an unknown one is refused
/// with a message naming the paths, before anything runs.
#[test]
fn vgg_isa_forces_the_kernel_path_or_is_refused() {
    let run = |isa: &str| {
        Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args(["bench", "--arch", "vgg11_bn", "--width", "0.125", "--head", "cifar", "--num-classes", "10"])
            .args(["--size", "32", "--batch", "1", "--iters", "1", "--warmup", "0", "--json"])
            .env("VGG_ISA", isa)
            .output()
            .expect("run vgg")
    };
    let o = run("generic");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["isa"], "generic");
    let o = run("avx9");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("VGG_ISA") && err.contains("avx9") && err.contains("generic"), "{err}");
    assert!(stdout(&o).is_empty() && !err.contains("panicked"), "{err}");
}

/// `vgg eval` without `--weights` evaluates the built-in model, as `vgg classify` classifies with it.
#[test]
fn eval_defaults_to_the_built_in_model() {
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "--limit-test", "200", "--json"];
        args.extend(extra);
        let o = vgg(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(stdout(&o).trim()).unwrap()
    };
    let default = run(&[]);
    assert_eq!(default["weights"], "fashion-mnist");
    assert_eq!(default["images"], 200);
    // The shipped model reaches 94.46% on the whole test set.
    assert!(default["top1"].as_f64().unwrap() > 0.85, "{default}");
    assert_eq!(run(&["--weights", "fashion-mnist"])["top1"], default["top1"]);
}

#[test]
fn classify_on_burns_path_says_why_and_refuses_what_needs_the_engine() {
    // Local response normalisation has no kernel in the engine: burn runs the model, and says so.
    let config = VggConfig::from_arch("vgg11_lrn")
        .unwrap()
        .with_width(0.125)
        .with_head(vgg::Head::Imagenet { hidden: 32, pool: [7, 7] });
    let mut m = Vgg::new(&config, &Device::default()).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    let path = tmp("lrn.safetensors");
    let meta = Meta { config: Some(config), ..Default::default() };
    weights::safetensors::write(&path, &m.state_dict(), &meta, Dtype::F32).unwrap();
    let img = fixtures().join("images/chelsea.png");
    let (img, path) = (img.to_str().unwrap(), path.to_str().unwrap());
    let o = vgg(&["classify", img, "--weights", path, "--json", "--top", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("running on burn's path") && stderr(&o).contains("local response normalisation"));
    let x = vgg::image::Preprocess::imagenet().load(img.as_ref()).unwrap().to_tensor(&m.devices());
    let probs = values(burn::tensor::activation::softmax(m.forward(x), 1));
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let best = argsort_desc(&probs.iter().map(|&p| p as f64).collect::<Vec<_>>())[0];
    assert_eq!(line["top"][0]["index"].as_u64(), Some(best as u64));
    // 16-bit storage and dense evaluation are the engine's: clear errors, exit code 1.
    let o = vgg(&["classify", img, "--weights", path, "--half", "bf16"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("16-bit weight storage runs on the fast CPU engine"), "{}", stderr(&o));
    let o = vgg(&["classify", img, "--weights", path, "--protocol", "dense", "--scales", "64"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("dense evaluation runs on the fast CPU engine"), "{}", stderr(&o));
}

/// A build without the `mpi` feature started by mpirun as several copies refuses to run (each copy
/// would do the whole job and write the same files) and says how to build one that works.
#[cfg(not(feature = "mpi"))]
#[test]
fn copies_started_by_mpirun_without_the_mpi_feature_refuse() {
    let o = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["eval", "--limit-test", "10"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .expect("run vgg");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("2 copies") && err.contains("--features mpi"), "{err}");
}
