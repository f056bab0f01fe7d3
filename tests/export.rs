//! `vgg export` and src/export: ONNX files run in a second runtime (tract) give the outputs of
//! burn's reference path; safetensors written with paper keys or in half precision load back
//! without `--arch`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use tract_onnx::prelude::*;
use vgg::config::Head;
use vgg::onnx::{OnnxOptions, to_onnx};
use vgg::weights::{Dtype, KeyStyle, Strict};
use vgg::{Vgg, VggConfig};

fn with_formula(config: &VggConfig) -> Vgg {
    let mut m = Vgg::new(config, &Device::default()).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    m
}

fn burn_forward(m: &Vgg, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let t = Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &Device::default());
    match m.config().head {
        Head::None => values(m.features(t)),
        _ => values(m.forward(t)),
    }
}

fn tract_run(bytes: &[u8], x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .expect("tract reads the file")
        .with_input_fact(0, f32::fact(dims).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimises the graph")
        .into_runnable()
        .unwrap();
    let input: tract_onnx::prelude::Tensor = tract_ndarray::Array4::from_shape_vec(dims, x.to_vec()).unwrap().into();
    let out = model.run(tvec!(input.into())).expect("tract runs the graph");
    out[0].to_array_view::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn onnx_files_run_in_tract_with_burns_outputs() {
    let small_imagenet = Head::Imagenet { hidden: 64, pool: [7, 7] };
    let cases: Vec<(VggConfig, [usize; 4], &str)> = vec![
        // BatchNorm, CIFAR head (GlobalAveragePool): one file for two input sizes.
        (
            VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25).with_head(Head::cifar()).with_num_classes(10),
            [2, 3, 32, 32],
            "cifar",
        ),
        // 1x1 convolutions and an ImageNet head over a 6x9 map pooled to 7x7 with overlapping bins.
        (
            VggConfig::from_arch("vgg16_c")
                .unwrap()
                .with_width(0.125)
                .with_head(small_imagenet.clone())
                .with_num_classes(5),
            [1, 3, 200, 300],
            "matmul pool",
        ),
        // Local response normalisation; a 14x14 map pooled by 2x2 windows.
        (
            VggConfig::from_arch("vgg11_lrn").unwrap().with_width(0.125).with_head(small_imagenet).with_num_classes(4),
            [2, 3, 448, 448],
            "averagepool",
        ),
        // The trunk alone.
        (VggConfig::from_arch("vgg13").unwrap().with_width(0.125).with_head(Head::None), [1, 3, 64, 96], "trunk"),
    ];
    for (config, dims, what) in cases {
        let m = with_formula(&config);
        let x = values(formula_input("export", dims, &Device::default()));
        let want: Vec<f64> = burn_forward(&m, &x, dims).iter().map(|&v| v as f64).collect();
        for fold in [false, true] {
            let opts = OnnxOptions { input: [dims[2], dims[3]], fold_batchnorm: fold };
            let (bytes, summary) = to_onnx(&config, &m.state_dict(), None, &opts).unwrap();
            let got = tract_run(&bytes, &x, dims);
            let err = rel_err(&got, &want);
            assert!(err < 1e-5, "{what} (fold {fold}): tract differs from burn by {err}");
            assert_eq!(summary.input[0], None, "dynamic batch");
            // The architecture travels in the metadata.
            let json = serde_json::to_string(&config).unwrap();
            assert!(bytes.windows(json.len()).any(|w| w == json.as_bytes()), "{what}: config in the metadata");
        }
    }
    // The CIFAR-style file takes another size and batch as well.
    let config =
        VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25).with_head(Head::cifar()).with_num_classes(10);
    let m = with_formula(&config);
    let (bytes, summary) = to_onnx(&config, &m.state_dict(), None, &OnnxOptions::default()).unwrap();
    assert_eq!(summary.input, [None, Some(3), None, None]);
    let dims = [3, 3, 48, 40];
    let x = values(formula_input("export2", dims, &Device::default()));
    let want: Vec<f64> = burn_forward(&m, &x, dims).iter().map(|&v| v as f64).collect();
    assert!(rel_err(&tract_run(&bytes, &x, dims), &want) < 1e-5);
}

#[test]
fn export_refuses_weights_that_do_not_fit() {
    let config = VggConfig::from_arch("vgg11").unwrap().with_width(0.125).with_head(Head::cifar()).with_num_classes(3);
    let mut sd = with_formula(&config).state_dict();
    sd.remove("features.3.bias");
    let e = to_onnx(&config, &sd, None, &OnnxOptions::default()).unwrap_err().to_string();
    assert!(e.contains("features.3.bias"), "{e}");
    let other = VggConfig::from_arch("vgg11").unwrap().with_width(0.25).with_head(Head::cifar()).with_num_classes(3);
    let e =
        to_onnx(&other, &with_formula(&config).state_dict(), None, &OnnxOptions::default()).unwrap_err().to_string();
    assert!(e.contains("features.0.weight") && e.contains("[16, 3, 3, 3]") && e.contains("[8, 3, 3, 3]"), "{e}");
}

fn tmp(name: &str) -> PathBuf {
    let d = scratch("vgg-export");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn safetensors_exports_load_back_without_arch() {
    let config =
        VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.25).with_head(Head::cifar()).with_num_classes(10);
    let m = with_formula(&config);
    let dims = [2, 3, 32, 32];
    let x = values(formula_input("export", dims, &Device::default()));
    let want: Vec<f64> = burn_forward(&m, &x, dims).iter().map(|&v| v as f64).collect();
    for (keys, dtype, tol) in [(KeyStyle::Paper, Dtype::F32, 1e-6), (KeyStyle::Torchvision, Dtype::BF16, 3e-2)] {
        let path = tmp(&format!("{keys:?}-{dtype:?}.safetensors"));
        vgg::export::write_safetensors(&path, &config, &m.state_dict(), None, keys, dtype).unwrap();
        let sd = vgg::weights::load_file(&path).unwrap();
        let paper =
            sd.contains_key("conv1_1.weight") && sd.contains_key("bn1_1.running_var") && sd.contains_key("fc6.weight");
        assert_eq!(paper, keys == KeyStyle::Paper, "{:?}", sd.keys().take(3).collect::<Vec<_>>());
        let loaded = vgg::pretrained::load(
            &vgg::pretrained::WeightsSpec::parse(path.to_str().unwrap()),
            None,
            Strict::Yes,
            &vgg::weights::registry::Fetcher::from_env(),
            &Device::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(loaded.model.config(), &config);
        let err = rel_err(&burn_forward(&loaded.model, &x, dims), &want);
        assert!(err < tol, "{keys:?} {dtype:?}: {err}");
    }
}

#[test]
fn the_export_command_writes_onnx_and_says_what() {
    let out = tmp("fm.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["export", "--out", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["format"], "onnx");
    assert_eq!(v["input"], serde_json::json!([null, 1, null, null]));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(v["bytes"], bytes.len());
    // The built-in model in tract classifies a trouser as a trouser.
    let loaded = builtin_model();
    let img = loaded
        .preprocess
        .load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist/1-trouser.png"))
        .unwrap();
    let logits = tract_run(&bytes, &img.data, [1, 1, 32, 32]);
    let best = (0..10).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
    assert_eq!(best, 1);
    let o = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["export", "--out", tmp("x.bin").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown format"));
}

// ---------------------------------------------------------------------------------------------
// Import.

use vgg::onnx::proto::Msg;
use vgg::weights::StateDict;

fn attr_ints(name: &str, v: &[i64]) -> Msg {
    Msg::new().str(1, name).ints(8, v).int(20, 7)
}

fn init(name: &str, dims: &[usize], data: &[f32]) -> Msg {
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    Msg::new().ints(1, &dims).int(2, 1).str(8, name).bytes(9, &raw)
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: &[Msg]) -> Msg {
    let mut m = Msg::new();
    for i in inputs {
        m = m.str(1, i);
    }
    m = m.str(2, output).str(3, output).str(4, op);
    for a in attrs {
        m = m.msg(5, a);
    }
    m
}

fn value_info(name: &str, dims: &[i64]) -> Msg {
    let mut shape = Msg::new();
    for &d in dims {
        shape = shape.msg(1, &if d < 0 { Msg::new().str(2, "batch") } else { Msg::new().int(1, d) });
    }
    Msg::new().str(1, name).msg(2, &Msg::new().msg(1, &Msg::new().int(1, 1).msg(2, &shape)))
}

/// A VGG as tf2onnx writes a Keras model: NHWC input and a Transpose to NCHW, Conv (`auto_pad`
/// SAME)/Relu/MaxPool,
/// a Transpose back to NHWC and a Reshape (so the first dense layer's rows are in (h, w, c)
/// order), dense layers as MatMul with `[in, out]` weights plus Add, and a Softmax.
/// `head_bn`: a BatchNorm1d after each hidden dense layer as tf2onnx folds it (Mul, Add), before
/// its ReLU (`Some(false)`) or after it (`Some(true)`).
fn keras_style_onnx(config: &VggConfig, sd: &StateDict, [h, w]: [usize; 2], head_bn: Option<bool>) -> Vec<u8> {
    let (mut nodes, mut inits) = (Vec::new(), Vec::new());
    nodes.push(node("Transpose", &["input_1"], "nchw", &[attr_ints("perm", &[0, 3, 1, 2])]));
    let mut cur = "nchw".to_string();
    let plan = config.plan([h, w]);
    let mut linears = Vec::new();
    for (i, l) in plan.layers.iter().enumerate() {
        let out = format!("t{i}");
        match l.kind {
            vgg::config::LayerKind::Conv { .. } => {
                let (wk, b) = (&sd[&format!("{}.weight", l.key)], &sd[&format!("{}.bias", l.key)]);
                inits.push(init(&format!("{}/kernel", l.name), &wk.shape, &wk.data));
                inits.push(init(&format!("{}/bias", l.name), &b.shape, &b.data));
                // tf2onnx writes SAME padding as `auto_pad`.
                let same = Msg::new().str(1, "auto_pad").bytes(4, b"SAME_UPPER").int(20, 3);
                let attrs = [attr_ints("kernel_shape", &[3, 3]), same];
                let (kn, bn) = (format!("{}/kernel", l.name), format!("{}/bias", l.name));
                nodes.push(node("Conv", &[&cur, &kn, &bn], &out, &attrs));
            }
            vgg::config::LayerKind::Relu if linears.is_empty() => nodes.push(node("Relu", &[&cur], &out, &[])),
            vgg::config::LayerKind::MaxPool => {
                let attrs = [attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])];
                nodes.push(node("MaxPool", &[&cur], &out, &attrs));
            }
            vgg::config::LayerKind::Linear { .. } => {
                linears.push(l.key.clone());
                continue;
            }
            _ => continue,
        }
        cur = out;
    }
    let c = config.out_channels();
    let hw = sd[&format!("{}.weight", linears[0])].shape[1] / c;
    nodes.push(node("Transpose", &[&cur], "nhwc", &[attr_ints("perm", &[0, 2, 3, 1])]));
    let shape_bytes: Vec<u8> = [-1i64, (hw * c) as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    inits.push(Msg::new().ints(1, &[2]).int(2, 7).str(8, "flatten/shape").bytes(9, &shape_bytes));
    nodes.push(node("Reshape", &["nhwc", "flatten/shape"], "flat", &[]));
    cur = "flat".into();
    for (j, key) in linears.iter().enumerate() {
        let (wt, b) = (&sd[&format!("{key}.weight")], &sd[&format!("{key}.bias")]);
        let (out, inp) = (wt.shape[0], wt.shape[1]);
        let mut kernel = vec![0f32; inp * out];
        for o in 0..out {
            for i in 0..inp {
                // Row i of Keras' kernel is flat feature i in (h, w, c) order on the first layer.
                let src = if j == 0 { (i % c) * hw + i / c } else { i };
                kernel[i * out + o] = wt.data[o * inp + src];
            }
        }
        let (kn, bn) = (format!("dense_{j}/kernel"), format!("dense_{j}/bias"));
        inits.push(init(&kn, &[inp, out], &kernel));
        inits.push(init(&bn, &[out], &b.data));
        nodes.push(node("MatMul", &[&cur, &kn], &format!("mm{j}"), &[]));
        nodes.push(node("Add", &[&format!("mm{j}"), &bn], &format!("add{j}"), &[]));
        cur = format!("add{j}");
        let bn = |cur: &mut String, nodes: &mut Vec<Msg>, inits: &mut Vec<Msg>| {
            let s: Vec<f32> = (0..out).map(|k| 0.5 + 0.07 * (k % 9) as f32).collect();
            let t: Vec<f32> = (0..out).map(|k| 0.05 * (k % 5) as f32 - 0.1).collect();
            inits.push(init(&format!("bn_{j}/scale"), &[out], &s));
            inits.push(init(&format!("bn_{j}/shift"), &[out], &t));
            nodes.push(node("Mul", &[cur, &format!("bn_{j}/scale")], &format!("bnm{j}"), &[]));
            nodes.push(node("Add", &[&format!("bnm{j}"), &format!("bn_{j}/shift")], &format!("bna{j}"), &[]));
            *cur = format!("bna{j}");
        };
        if j + 1 < linears.len() {
            if head_bn == Some(false) {
                bn(&mut cur, &mut nodes, &mut inits);
            }
            nodes.push(node("Relu", &[&cur], &format!("relu{j}"), &[]));
            cur = format!("relu{j}");
            if head_bn == Some(true) {
                bn(&mut cur, &mut nodes, &mut inits);
            }
        }
    }
    nodes.push(node("Softmax", &[&cur], "predictions", &[Msg::new().str(1, "axis").int(3, -1).int(20, 2)]));
    let mut g = Msg::new().str(2, "keras_vgg");
    for n in &nodes {
        g = g.msg(1, n);
    }
    for i in &inits {
        g = g.msg(5, i);
    }
    g = g.msg(11, &value_info("input_1", &[-1, h as i64, w as i64, config.in_channels as i64]));
    g = g.msg(12, &value_info("predictions", &[-1, config.num_classes as i64]));
    Msg::new().int(1, 8).str(2, "tf2onnx").msg(7, &g).msg(8, &Msg::new().str(1, "").int(2, 13)).0
}

/// A Keras-layout graph (built here from the same tensors) imports to exactly those tensors in
/// torchvision's layout, and the imported model's soft-max equals the source graph's output as
/// tract runs it on the NHWC input.
#[test]
fn keras_style_onnx_imports_with_the_flatten_order_undone() {
    let config = VggConfig::from_arch("vgg11")
        .unwrap()
        .with_width(0.125)
        .with_head(Head::Imagenet { hidden: 16, pool: [2, 2] })
        .with_num_classes(5);
    let sd = formula_state_dict(&config.plan([64, 64]));
    let bytes = keras_style_onnx(&config, &sd, [64, 64], None);
    let imported = vgg::onnx::read(&bytes, "keras.onnx").unwrap();
    assert!(imported.notes.iter().any(|n| n.contains("(h, w, c)")), "{:?}", imported.notes);
    assert_eq!(imported.preprocess.as_ref().map(|p| p.normalize), Some(vgg::image::Normalize::Caffe));
    let inferred = vgg::weights::infer::infer_config(&imported.state_dict).unwrap();
    assert_eq!(inferred.arch_name(), "vgg11");
    assert_eq!(inferred.head, config.head);
    for (k, t) in &sd {
        assert_eq!(imported.state_dict[k].data, t.data, "{k}");
    }
    let dims = [2, 3, 64, 64];
    let x = values(formula_input("keras", dims, &Device::default()));
    let nhwc = to_nhwc(&x, dims);
    let source = tract_run(&bytes, &nhwc, [2, 64, 64, 3]);
    let engine = vgg::engine::Engine::from_state_dict(&inferred, imported.state_dict).unwrap();
    let logits = engine.forward(&x, dims);
    let probs: Vec<f64> = logits.chunks(5).flat_map(vgg::kernels::dense::softmax).collect();
    let src64: Vec<f64> = source.iter().map(|&v| v as f64).collect();
    let err = rel_err(&probs.iter().map(|&v| v as f32).collect::<Vec<_>>(), &src64);
    assert!(err < 1e-5, "{err:e}");
}

/// A Keras dense head of unequal widths over the pooled map, with BatchNorm1d as tf2onnx writes
/// it (Mul, Add) before or after each ReLU: imported as an MLP head with the BatchNorms folded
/// into the dense layers, giving the soft-max tract computes from the source graph.
#[test]
fn keras_dense_heads_with_batchnorm_import_folded() {
    let config = VggConfig::from_arch("vgg11")
        .unwrap()
        .with_width(0.125)
        .with_head(Head::mlp(vec![16, 12], [2, 2]))
        .with_num_classes(5)
        .with_dropout(0.0);
    let sd = formula_state_dict(&config.plan([64, 64]));
    let dims = [2, 3, 64, 64];
    let x = values(formula_input("keras-bn", dims, &Device::default()));
    let nhwc = to_nhwc(&x, dims);
    let mut outputs = Vec::new();
    for after_relu in [false, true] {
        let bytes = keras_style_onnx(&config, &sd, [64, 64], Some(after_relu));
        let imported = vgg::onnx::read(&bytes, "keras-bn.onnx").unwrap();
        assert!(imported.notes.iter().any(|n| n.contains("folded")), "{:?}", imported.notes);
        let inferred = vgg::weights::infer::infer_config(&imported.state_dict).unwrap();
        assert_eq!(inferred.head, config.head);
        let source = tract_run(&bytes, &nhwc, [2, 64, 64, 3]);
        let engine = vgg::engine::Engine::from_state_dict(&inferred, imported.state_dict).unwrap();
        let probs: Vec<f32> =
            engine.forward(&x, dims).chunks(5).flat_map(vgg::kernels::dense::softmax).map(|v| v as f32).collect();
        let src64: Vec<f64> = source.iter().map(|&v| v as f64).collect();
        let err = rel_err(&probs, &src64);
        assert!(err < 1e-5, "after relu {after_relu}: {err:e}");
        outputs.push(probs);
    }
    assert_ne!(outputs[0], outputs[1], "the two placements are different networks");
}

/// This project's own ONNX files (BatchNorm kept or folded) import back to the same network.
#[test]
fn exported_onnx_imports_back() {
    // An inference graph has no dropout, so the import numbers the head as PyTorch does without it.
    let config = VggConfig::from_arch("vgg11_bn")
        .unwrap()
        .with_width(0.125)
        .with_head(Head::cifar())
        .with_num_classes(4)
        .with_dropout(0.0);
    let m = with_formula(&config);
    let dims = [2, 3, 32, 32];
    let x = values(formula_input("export", dims, &Device::default()));
    let want: Vec<f64> = burn_forward(&m, &x, dims).iter().map(|&v| v as f64).collect();
    for fold in [false, true] {
        let opts = OnnxOptions { input: [32, 32], fold_batchnorm: fold };
        let (bytes, _) = to_onnx(&config, &m.state_dict(), None, &opts).unwrap();
        let imported = vgg::onnx::read(&bytes, "own.onnx").unwrap();
        let inferred = vgg::weights::infer::infer_config(&imported.state_dict).unwrap();
        assert_eq!(inferred.batch_norm, !fold, "folded BatchNorm leaves a plain VGG");
        if !fold {
            for (k, t) in m.state_dict() {
                assert_eq!(imported.state_dict[&k].data, t.data, "{k}");
            }
        }
        let engine = vgg::engine::Engine::from_state_dict(&inferred, imported.state_dict).unwrap();
        let err = rel_err(&engine.forward(&x, dims), &want);
        assert!(err < 1e-5, "fold {fold}: {err:e}");
    }
    // What is not a VGG is refused, naming the node.
    let config = VggConfig::from_arch("vgg11").unwrap().with_width(0.125).with_head(Head::cifar()).with_num_classes(3);
    let (bytes, _) = to_onnx(&config, &with_formula(&config).state_dict(), None, &OnnxOptions::default()).unwrap();
    let mut bytes = bytes;
    let at = bytes.windows(4).position(|w| w == b"Relu").expect("a Relu node");
    bytes[at..at + 4].copy_from_slice(b"Tanh");
    let e = vgg::onnx::read(&bytes, "tanh.onnx").unwrap_err().to_string();
    assert!(e.contains("Tanh"), "{e}");
}
