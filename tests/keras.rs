//! Keras `.h5` weights: files in the layout of Keras' `save_weights` / `save` (built here with an
//! HDF5 writer, in both of Keras' weight-naming styles) import to a network whose outputs equal a
//! channels-last forward pass computed by hand from the file's own tensors — which is what Keras
//! computes from them. The project's `.h5` writer is checked the same way and by a round trip.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use hdf5_pure::{AttrValue, File, FileBuilder};
use vgg::VggConfig;
use vgg::config::Head;
use vgg::engine::Engine;
use vgg::weights::keras;

/// Deterministic values in [-scale, scale) (a 64-bit LCG), so the tests need no RNG crate.
fn draws(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// One Keras layer: its name and its weights (weight leaf name, shape, values).
type Layer = (String, Vec<(&'static str, Vec<usize>, Vec<f32>)>);

/// The layers of a Keras VGG (applications naming): `block{b}_conv{i}` with HWIO kernels, optional
/// `block{b}_bn{i}` (gamma, beta, moving mean, moving variance), `block{b}_pool`, `flatten`, and
/// dense layers with `[in, out]` kernels.
fn keras_layers(blocks: &[usize], widths: [usize; 5], in_ch: usize, bn: bool, dense: &[usize]) -> Vec<Layer> {
    let mut layers: Vec<Layer> = vec![("input_1".into(), vec![])];
    let mut ci = in_ch;
    let mut seed = 1;
    for (b, (&n, &co)) in blocks.iter().zip(&widths).enumerate() {
        for i in 1..=n {
            seed += 1;
            let fan = (9 * ci) as f32;
            layers.push((
                format!("block{}_conv{i}", b + 1),
                vec![
                    ("kernel", vec![3, 3, ci, co], draws(seed, 9 * ci * co, (3.0 / fan).sqrt())),
                    ("bias", vec![co], draws(seed + 100, co, 0.1)),
                ],
            ));
            if bn {
                let var: Vec<f32> = draws(seed + 300, co, 0.4).iter().map(|v| v + 0.6).collect();
                layers.push((
                    format!("block{}_bn{i}", b + 1),
                    vec![
                        ("gamma", vec![co], draws(seed + 200, co, 0.3).iter().map(|v| v + 1.0).collect()),
                        ("beta", vec![co], draws(seed + 250, co, 0.2)),
                        ("moving_mean", vec![co], draws(seed + 280, co, 0.2)),
                        ("moving_variance", vec![co], var),
                    ],
                ));
            }
            ci = co;
        }
        layers.push((format!("block{}_pool", b + 1), vec![]));
    }
    if !dense.is_empty() {
        layers.push(("flatten".into(), vec![]));
    }
    let mut inp = 0;
    for (j, &out) in dense.iter().enumerate() {
        if j == 0 {
            inp = dense[0];
            continue;
        }
        let name = if j + 1 == dense.len() { "predictions".to_string() } else { format!("fc{j}") };
        layers.push((
            name,
            vec![
                ("kernel", vec![inp, out], draws(1000 + j as u64, inp * out, (3.0 / inp as f32).sqrt())),
                ("bias", vec![out], draws(2000 + j as u64, out, 0.1)),
            ],
        ));
        inp = out;
    }
    layers
}

/// Writes `layers` as Keras does: root `layer_names`, per layer `weight_names` and the datasets.
/// `old_names`: the 2016 applications files' `block1_conv1_W_1:0` style instead of
/// `block1_conv1/kernel:0`. `model_config`: a whole saved model (`model_weights` group plus the
/// JSON configuration) instead of `save_weights`.
fn keras_file(layers: &[Layer], old_names: bool, model_config: Option<&str>) -> Vec<u8> {
    let mut b = FileBuilder::new();
    let names: Vec<String> = layers.iter().map(|(n, _)| n.clone()).collect();
    let mut top = match model_config {
        Some(json) => {
            b.set_attr("model_config", AttrValue::String(json.into()));
            b.create_group("model_weights")
        }
        None => b.create_group("unused"),
    };
    let groups: Vec<_> = layers
        .iter()
        .map(|(name, ws)| {
            let mut g = top.create_group(name);
            let wn: Vec<String> = ws
                .iter()
                .enumerate()
                .map(|(i, (leaf, ..))| {
                    if old_names {
                        format!("{name}_{}_1:0", if i == 0 { "W" } else { "b" })
                    } else {
                        format!("{name}/{leaf}:0")
                    }
                })
                .collect();
            g.set_attr("weight_names", AttrValue::AsciiStringArray(wn.clone()));
            // Keras' `create_dataset("block1_conv1/kernel:0")` nests the datasets in a group.
            let mut inner = (!old_names && !ws.is_empty()).then(|| g.create_group(name));
            for ((_, shape, data), n) in ws.iter().zip(&wn) {
                let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                match (&mut inner, n.split_once('/')) {
                    (Some(ig), Some((_, leaf))) => {
                        ig.create_dataset(leaf).with_f32_data(data).with_shape(&dims);
                    }
                    _ => {
                        g.create_dataset(n).with_f32_data(data).with_shape(&dims);
                    }
                }
            }
            if let Some(ig) = inner {
                g.add_group(ig.finish());
            }
            g.finish()
        })
        .collect();
    if model_config.is_some() {
        top.set_attr("layer_names", AttrValue::AsciiStringArray(names));
        top.set_attr("backend", AttrValue::AsciiString("tensorflow".into()));
        for g in groups {
            top.add_group(g);
        }
        b.add_group(top.finish());
    } else {
        b.set_attr("layer_names", AttrValue::AsciiStringArray(names));
        b.set_attr("backend", AttrValue::AsciiString("tensorflow".into()));
        for g in groups {
            b.add_group(g);
        }
    }
    b.finish().unwrap()
}

/// What Keras computes from a file of this layout, by hand, channels-last and in float64: the
/// layers in `layer_names` order, Conv2D 'same' + bias (+ BatchNormalization with `bn_eps`) + ReLU,
/// 2x2 max-pool for `*_pool`, Flatten in (h, w, c) order, Dense with ReLU except the last; a
/// BatchNormalization in the head comes after the ReLU (`relu_before_bn`, i.e.
/// `Dense(activation="relu")`) or between the Dense and its ReLU. `x` is NHWC.
fn keras_forward(file: &[u8], x: &[f32], [n, h, w, c]: [usize; 4], bn_eps: f64, relu_before_bn: bool) -> Vec<f64> {
    let f = File::from_bytes(file.to_vec()).unwrap();
    let top = if f.root().groups().unwrap().contains(&"model_weights".to_string()) {
        f.group("model_weights").unwrap()
    } else {
        f.root()
    };
    let list = |a: Option<&AttrValue>| match a {
        Some(AttrValue::AsciiStringArray(v) | AttrValue::StringArray(v)) => v.clone(),
        other => panic!("{other:?}"),
    };
    let names = list(top.attrs().unwrap().get("layer_names"));
    let mut out = Vec::new();
    for img in 0..n {
        let (mut hh, mut ww, mut cc) = (h, w, c);
        let mut a: Vec<f64> = x[img * h * w * c..][..h * w * c].iter().map(|&v| v as f64).collect();
        let mut flat = false;
        // (layer index, number of weights) of the weighted layers.
        let weighted: Vec<(usize, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, l)| (i, list(top.group(l).unwrap().attrs().unwrap().get("weight_names")).len()))
            .filter(|&(_, n)| n > 0)
            .collect();
        for (li, layer) in names.iter().enumerate() {
            let g = top.group(layer).unwrap();
            let wn = list(g.attrs().unwrap().get("weight_names"));
            let t: Vec<(Vec<usize>, Vec<f64>)> = wn
                .iter()
                .map(|n| {
                    let d = g.dataset(n).unwrap();
                    let s = d.shape().unwrap().iter().map(|&v| v as usize).collect();
                    (s, d.read_f32().unwrap().iter().map(|&v| v as f64).collect())
                })
                .collect();
            let next_is_bn = weighted.iter().find(|&&(i, _)| i > li).is_some_and(|&(_, n)| n == 4);
            let is_last = weighted.last().is_some_and(|&(i, _)| i == li);
            let relu = |v: &mut Vec<f64>| v.iter_mut().for_each(|x| *x = x.max(0.0));
            if layer.ends_with("_pool") {
                let (oh, ow) = (hh / 2, ww / 2);
                let mut o = vec![f64::MIN; oh * ow * cc];
                for y in 0..oh * 2 {
                    for x in 0..ow * 2 {
                        for ch in 0..cc {
                            let d = &mut o[((y / 2) * ow + x / 2) * cc + ch];
                            *d = d.max(a[(y * ww + x) * cc + ch]);
                        }
                    }
                }
                (a, hh, ww) = (o, oh, ow);
            } else if layer == "flatten" {
                flat = true;
            } else if t.len() == 2 && t[0].0.len() == 4 {
                let (k, b) = (&t[0].1, &t[1].1);
                let co = t[0].0[3];
                let mut o = vec![0f64; hh * ww * co];
                for y in 0..hh {
                    for x in 0..ww {
                        for oc in 0..co {
                            let mut s = b[oc];
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let (yy, xx) = (y as isize + dy as isize - 1, x as isize + dx as isize - 1);
                                    if yy < 0 || xx < 0 || yy >= hh as isize || xx >= ww as isize {
                                        continue;
                                    }
                                    for ic in 0..cc {
                                        s += a[(yy as usize * ww + xx as usize) * cc + ic]
                                            * k[((dy * 3 + dx) * cc + ic) * co + oc];
                                    }
                                }
                            }
                            o[(y * ww + x) * co + oc] = s;
                        }
                    }
                }
                a = o;
                cc = co;
                if !next_is_bn {
                    relu(&mut a);
                }
            } else if t.len() == 4 {
                let (g, be, m, v) = (&t[0].1, &t[1].1, &t[2].1, &t[3].1);
                for (i, x) in a.iter_mut().enumerate() {
                    let ch = i % cc;
                    *x = (*x - m[ch]) / (v[ch] + bn_eps).sqrt() * g[ch] + be[ch];
                }
                if !flat || !relu_before_bn {
                    relu(&mut a);
                }
            } else if t.len() == 2 {
                assert!(flat, "dense before flatten");
                let (k, b) = (&t[0].1, &t[1].1);
                let (inp, o) = (t[0].0[0], t[0].0[1]);
                assert_eq!(inp, a.len(), "{layer}");
                let mut r: Vec<f64> = b.clone();
                for (i, &av) in a.iter().enumerate() {
                    for j in 0..o {
                        r[j] += av * k[i * o + j];
                    }
                }
                a = r;
                if !is_last && (!next_is_bn || relu_before_bn) {
                    relu(&mut a);
                }
            }
        }
        out.extend(a);
    }
    out
}

fn engine_of(bytes: &[u8]) -> (VggConfig, Engine, keras::KerasImport) {
    let imported = keras::read(bytes, "test.h5").unwrap();
    let config = match &imported.config {
        Some(c) => c.clone(),
        None => vgg::weights::infer::infer_config(&imported.imported.state_dict).expect("a VGG"),
    };
    let engine = Engine::from_state_dict(&config, imported.imported.state_dict.clone()).unwrap();
    (config, engine, imported)
}

/// VGG-11 at width 1/8 with torchvision's three-layer head over a 2x2 map (64x64 input), so that
/// the flatten order matters: Keras' (h, w, c) rows must land in torchvision's (c, h, w) order.
#[test]
fn keras_weights_import_and_compute_what_keras_computes() {
    let widths = [8, 16, 32, 64, 64];
    let layers = keras_layers(&[1, 1, 2, 2, 2], widths, 3, false, &[64 * 4, 16, 16, 5]);
    for old_names in [false, true] {
        let file = keras_file(&layers, old_names, None);
        assert!(keras::looks_like(&file));
        let (config, engine, imported) = engine_of(&file);
        assert_eq!(config.arch_name(), "vgg11");
        assert_eq!(config.head, Head::Imagenet { hidden: 16, pool: [2, 2] });
        assert_eq!(config.num_classes, 5);
        let notes = imported.imported.notes.join("; ");
        assert!(notes.contains("(h, w, c)") && notes.contains("Caffe"), "{notes}");
        assert_eq!(imported.imported.preprocess.map(|p| p.normalize), Some(vgg::image::Normalize::Caffe));
        let dims = [2, 3, 64, 64];
        let x = draws(7, 2 * 3 * 64 * 64, 1.0);
        let want = keras_forward(&file, &to_nhwc(&x, dims), [2, 64, 64, 3], 1e-3, true);
        let err = rel_err(&engine.forward(&x, dims), &want);
        assert!(err < 1e-5, "old names {old_names}: {err:e}");
    }
}

/// A `…_notop.h5` file (the trunk only): a VGG without a head, whose output is pool5.
#[test]
fn notop_files_import_as_the_trunk() {
    let layers = keras_layers(&[2, 2, 4, 4, 4], [8, 16, 32, 64, 64], 3, false, &[]);
    let file = keras_file(&layers, true, None);
    let imported = keras::read(&file, "notop.h5").unwrap().imported;
    let config = vgg::weights::infer::infer_config(&imported.state_dict).unwrap();
    assert_eq!((config.arch_name().as_str(), &config.head), ("vgg19", &Head::None));
    let device = burn::tensor::Device::default();
    let mut model = vgg::Vgg::new(&config, &device).unwrap();
    model.load_state_dict(&imported.state_dict, vgg::weights::Strict::Yes).unwrap();
    let dims = [1, 3, 64, 64];
    let x = draws(17, 3 * 64 * 64, 1.0);
    let nhwc_out = keras_forward(&file, &to_nhwc(&x, dims), [1, 64, 64, 3], 1e-3, true);
    // pool5 is 2x2x64: Keras' (h, w, c) to (c, h, w).
    let want: Vec<f64> = (0..64 * 4).map(|i| nhwc_out[(i % 4) * 64 + i / 4]).collect();
    let t = burn::tensor::Tensor::<4>::from_data(burn::tensor::TensorData::new(x.clone(), dims), &device);
    let err = rel_err(&values(model.features(t)), &want);
    assert!(err < 1e-5, "{err:e}");
}

/// A whole saved model (`model.save("x.h5")`: weights under `model_weights`, the architecture as
/// JSON) with BatchNormalization: its epsilon is read from the JSON and folded into the variance.
#[test]
fn saved_keras_models_with_batchnorm_import() {
    let widths = [4, 8, 16, 32, 32];
    let layers = keras_layers(&[1, 1, 2, 2, 2], widths, 1, true, &[32, 24, 10]);
    let json = r#"{"class_name": "Sequential", "config": {"layers": [
        {"class_name": "BatchNormalization", "config": {"name": "block1_bn1", "epsilon": 0.01}}]}}"#;
    let file = keras_file(&layers, false, Some(json));
    let (config, engine, _) = engine_of(&file);
    assert_eq!(config.arch_name(), "vgg11_bn");
    assert_eq!(config.head, Head::mlp(vec![24], [1, 1]));
    assert_eq!(config.in_channels, 1);
    let dims = [3, 1, 32, 32];
    let x = draws(9, 3 * 32 * 32, 1.0);
    // block1_bn1 with epsilon 0.01 from the JSON, the others with Keras' default 1e-3: the hand
    // computation uses one epsilon, so compare against a file whose JSON sets 1e-3 for all …
    let json_default = r#"{"class_name": "Sequential", "config": {"layers": []}}"#;
    let file_default = keras_file(&layers, false, Some(json_default));
    let (_, engine_default, _) = engine_of(&file_default);
    let want = keras_forward(&file_default, &to_nhwc(&x, dims), [3, 32, 32, 1], 1e-3, true);
    let err = rel_err(&engine_default.forward(&x, dims), &want);
    assert!(err < 1e-5, "{err:e}");
    // … and check that the recorded 0.01 was used where the JSON gave it.
    let sd = keras::read(&file, "a.h5").unwrap().imported.state_dict;
    let sd_default = keras::read(&file_default, "b.h5").unwrap().imported.state_dict;
    let (v, v0) = (&sd["features.1.running_var"].data, &sd_default["features.1.running_var"].data);
    assert!(v.iter().zip(v0).all(|(a, b)| (a - b - 0.009).abs() < 1e-6));
    assert_eq!(sd["features.5.running_var"].data, sd_default["features.5.running_var"].data);
    assert_ne!(engine.forward(&x, dims), engine_default.forward(&x, dims));
}

/// A fine-tuning head as Keras code writes it (Flatten → Dense → BatchNormalization → … over the
/// 2x2 map): an MLP head over the pooled map with the BatchNorms folded into the dense layers. The
/// BatchNorm before or after the ReLU is told by the saved model's JSON (the Dense layer's
/// activation); a weights-only file is assumed `Dense(activation="relu")` and says so.
#[test]
fn keras_dense_heads_with_batchnorm_import_folded() {
    let mut layers = keras_layers(&[1, 1, 2, 2, 2], [8, 16, 32, 64, 64], 3, false, &[256]);
    let bn = |name: &str, n: usize, seed: u64| -> Layer {
        (
            name.into(),
            vec![
                ("gamma", vec![n], draws(seed, n, 0.3).iter().map(|v| v + 1.0).collect()),
                ("beta", vec![n], draws(seed + 1, n, 0.2)),
                ("moving_mean", vec![n], draws(seed + 2, n, 0.3)),
                ("moving_variance", vec![n], draws(seed + 3, n, 0.4).iter().map(|v| v + 0.6).collect()),
            ],
        )
    };
    let dense = |name: &str, i: usize, o: usize, seed: u64| -> Layer {
        (
            name.into(),
            vec![
                ("kernel", vec![i, o], draws(seed, i * o, (3.0 / i as f32).sqrt())),
                ("bias", vec![o], draws(seed + 1, o, 0.1)),
            ],
        )
    };
    layers.push(dense("dense", 256, 16, 50));
    layers.push(bn("batch_normalization", 16, 60));
    layers.push(dense("dense_1", 16, 12, 70));
    layers.push(bn("batch_normalization_1", 12, 80));
    layers.push(dense("dense_2", 12, 5, 90));
    let dims = [2, 3, 64, 64];
    let x = draws(13, 2 * 3 * 64 * 64, 1.0);
    let mut outs = vec![];
    for activation in [Some("linear"), Some("relu"), None] {
        let json = activation.map(|a| {
            format!(
                r#"{{"class_name": "Functional", "config": {{"layers": [
                {{"class_name": "Dense", "config": {{"name": "dense", "activation": "{a}"}}}},
                {{"class_name": "Dense", "config": {{"name": "dense_1", "activation": "{a}"}}}}]}}}}"#
            )
        });
        let file = keras_file(&layers, false, json.as_deref());
        let (config, engine, imported) = engine_of(&file);
        assert_eq!(config.head, Head::mlp(vec![16, 12], [2, 2]), "{activation:?}");
        let notes = imported.imported.notes.join("; ");
        assert!(notes.contains("folded into a dense layer"), "{notes}");
        assert_eq!(activation.is_none(), notes.contains("assumed"), "{notes}");
        let relu_first = activation != Some("linear");
        let want = keras_forward(&file, &to_nhwc(&x, dims), [2, 64, 64, 3], 1e-3, relu_first);
        let got = engine.forward(&x, dims);
        let err = rel_err(&got, &want);
        assert!(err < 1e-5, "{activation:?}: {err:e}");
        outs.push(got);
    }
    assert_ne!(outs[0], outs[1], "BatchNorm before and after the ReLU are different networks");
}

/// The project's `.h5` writer: Keras' layout (checked by the hand computation above, reading the
/// written file) and a lossless round trip that restores the architecture and preprocessing.
#[test]
fn written_h5_files_read_back_and_compute_the_same() {
    for (arch, head, size, in_ch) in
        [("vgg13", Head::Imagenet { hidden: 16, pool: [2, 2] }, 64, 3), ("vgg11_bn", Head::cifar(), 32, 1)]
    {
        let config = VggConfig::from_arch(arch)
            .unwrap()
            .with_width(0.125)
            .with_head(head)
            .with_num_classes(6)
            .with_in_channels(in_ch);
        let sd = formula_state_dict(&config.plan([size, size]));
        let pre = vgg::pretrained::default_preprocess(&config);
        let (bytes, map) = keras::write(&sd, &config, &pre).unwrap();
        assert!(map.iter().any(|(k, p)| k == "features.0.weight" && p == "block1_conv1/block1_conv1/kernel:0"));
        let back = keras::read(&bytes, "own.h5").unwrap();
        assert_eq!(back.config.as_ref(), Some(&config));
        assert_eq!(back.imported.preprocess.as_ref(), Some(&pre));
        for (k, t) in &sd {
            if k.ends_with("num_batches_tracked") {
                continue;
            }
            assert_eq!(back.imported.state_dict[k].data, t.data, "{arch} {k}");
        }
        let engine = Engine::from_state_dict(&config, sd.clone()).unwrap();
        let dims = [2, in_ch, size, size];
        let x = draws(11, 2 * in_ch * size * size, 1.0);
        let want = keras_forward(&bytes, &to_nhwc(&x, dims), [2, size, size, in_ch], 1e-5, true);
        let err = rel_err(&engine.forward(&x, dims), &want);
        assert!(err < 1e-5, "{arch}: {err:e}");
    }
}

/// What is not a VGG, or not whole, is refused with the layer or the damage named.
#[test]
fn keras_files_that_do_not_fit_are_refused_clearly() {
    let mut layers = keras_layers(&[1, 1, 2, 2, 2], [8, 16, 32, 64, 64], 3, false, &[64, 10]);
    // A 5x5 kernel.
    layers[1].1[0] = ("kernel", vec![5, 5, 3, 8], draws(3, 5 * 5 * 3 * 8, 0.1));
    let e = keras::read(&keras_file(&layers, false, None), "x.h5").unwrap_err().to_string();
    assert!(e.contains("block1_conv1") && e.contains("5x5"), "{e}");
    // A missing convolution: no configuration's trunk.
    let mut layers = keras_layers(&[1, 1, 2, 2, 2], [8, 16, 32, 64, 64], 3, false, &[64, 10]);
    layers.remove(3);
    let e = keras::read(&keras_file(&layers, false, None), "x.h5").unwrap_err().to_string();
    assert!(e.contains("do not form any VGG configuration"), "{e}");
    // A truncated file.
    let layers = keras_layers(&[1, 1, 2, 2, 2], [8, 16, 32, 64, 64], 3, false, &[64, 10]);
    let file = keras_file(&layers, false, None);
    let e = keras::read(&file[..file.len() / 2], "cut.h5").unwrap_err().to_string();
    assert!(e.starts_with("cut.h5: "), "{e}");
    // HDF5 that is not Keras'.
    let mut b = FileBuilder::new();
    b.create_dataset("x").with_f32_data(&[1.0]);
    let e = keras::read(&b.finish().unwrap(), "other.h5").unwrap_err().to_string();
    assert!(e.contains("layer_names"), "{e}");
}

fn vgg_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vgg"))
}

fn tmp(name: &str) -> PathBuf {
    let d = scratch("vgg-keras");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// `vgg convert` writes the built-in model as Keras weights and reads them back; `vgg classify`
/// takes the `.h5` file and gives the built-in model's answer.
#[test]
fn convert_and_classify_with_h5_files() {
    let h5 = tmp("fmnist.h5");
    let out = vgg_bin().args(["convert", "fashion-mnist"]).arg(&h5).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["format"], "h5");
    let rows = j["tensors"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["from"] == "features.1.running_var" && r["to"] == "block1_bn1/block1_bn1/moving_variance:0")
    );
    let back = tmp("back.safetensors");
    let out = vgg_bin().args(["convert"]).arg(&h5).arg(&back).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion-mnist/3-dress.png");
    let top = |extra: &[&std::ffi::OsStr]| -> Vec<(u64, f64)> {
        let out = vgg_bin().args(["classify", image, "--json"]).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["index"].as_u64().unwrap(), t["prob"].as_f64().unwrap()))
            .collect()
    };
    let weights = std::ffi::OsStr::new("--weights");
    let (from_h5, from_back, builtin) = (top(&[weights, h5.as_os_str()]), top(&[weights, back.as_os_str()]), top(&[]));
    // The same tensors: the same classes, probabilities equal up to f32 summation order.
    for other in [&from_back, &builtin] {
        assert_eq!(from_h5.len(), other.len());
        for (a, b) in from_h5.iter().zip(other) {
            assert_eq!(a.0, b.0);
            assert!((a.1 - b.1).abs() <= 1e-6 * b.1, "{from_h5:?} vs {other:?}");
        }
    }
}
