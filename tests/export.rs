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
use vgg::export::onnx::{OnnxOptions, to_onnx};
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
    let d = std::env::temp_dir().join(format!("vgg-export-{}", std::process::id()));
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
