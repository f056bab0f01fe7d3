//! timm's VGG checkpoints, read and written (`--keys timm`), against timm 1.0.31 itself. The files
//! in `tests/fixtures/timm/` were written by `bench/timm_vgg.py`:
//!
//! ```python
//! model = timm.models.vgg.VGG([4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"],
//!                             num_classes=10, norm_layer=nn.BatchNorm2d)
//! model.pre_logits = ConvMlp(32, 32, kernel_size=7); model.head = ClassifierHead(32, 10)
//! safetensors.torch.save_file(model.state_dict(), "vgg11_bn_tiny.safetensors")
//! torch.save(model.state_dict(), "vgg11_bn_tiny.pth")
//! logits_224 = model.eval()(formula_input("timm224", (1, 3, 224, 224)))   # also at 32x32
//! keys_vgg16 = [[k, shape] for k, v in timm.create_model("vgg16").state_dict().items()]
//! ```

mod common;

use std::path::PathBuf;

use serde_json::Value;
use vgg::config::VggConfig;
use vgg::engine::Engine;
use vgg::pretrained::{WeightsSpec, weights};
use vgg::weights::registry::Fetcher;
use vgg::weights::{KeyStyle, StateDict, TensorEntry};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/timm")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap()
}

fn key_shapes(v: &Value) -> Vec<(String, Vec<usize>)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect()
}

fn formula_input(tag: &str, n: usize) -> Vec<f32> {
    vgg::formula::s(&format!("input:{tag}"), n).into_iter().map(|v| v as f32).collect()
}

#[test]
fn timm_checkpoints_give_timms_logits_in_safetensors_and_pth() {
    let want = expected();
    for f in ["vgg11_bn_tiny.safetensors", "vgg11_bn_tiny.pth"] {
        let path = dir().join(f);
        let w = weights(&WeightsSpec::parse(path.to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(w.notes.iter().any(|n| n.contains("timm")), "{f}: {:?}", w.notes);
        assert_eq!(w.config.arch_name(), "vgg11_bn");
        let engine = Engine::from_state_dict(&w.config, w.state_dict).unwrap();
        for side in [224, 32] {
            let x = formula_input(&format!("timm{side}"), 3 * side * side);
            let out = engine.forward(&x, [1, 3, side, side]);
            let logits: Vec<f64> =
                want[format!("logits_{side}")].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let err = common::rel_err(&out, &logits);
            println!("{f} at {side}x{side}: logits relative error {err:.2e}");
            assert!(err <= 1e-5, "{f} at {side}: {err:e}");
        }
    }
}

#[test]
fn writing_timm_keys_gives_timms_own_names_and_shapes() {
    let want = expected();
    // The tiny model, read and written back: timm's keys, shapes and values.
    let path = dir().join("vgg11_bn_tiny.safetensors");
    let w = weights(&WeightsSpec::parse(path.to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {}).unwrap();
    let plan = w.config.plan([224, 224]);
    let written = vgg::weights::keys::rename(&w.state_dict, &plan, KeyStyle::Timm);
    let original = vgg::weights::load_file(&path).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = written.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
    names.sort();
    let mut timm = key_shapes(&want["keys"]);
    timm.sort();
    assert_eq!(names, timm);
    for (k, v) in &written {
        assert_eq!(v.data, original[k].data, "{k}");
    }
    // timm.create_model("vgg16") and ("vgg11_bn"): the same keys and shapes as this writer gives
    // torchvision's full-size models (shapes only: no tensor is allocated).
    for (arch, key) in [("vgg16", "keys_vgg16"), ("vgg11_bn", "keys_vgg11_bn")] {
        let config = VggConfig::from_arch(arch).unwrap();
        let empty: StateDict = vgg::weights::keys::expected_shapes(&config)
            .into_iter()
            .map(|(k, shape)| (k, TensorEntry::f32(shape, vec![])))
            .collect();
        let renamed = vgg::weights::keys::rename(&empty, &config.plan([224, 224]), KeyStyle::Timm);
        let mut ours: Vec<(String, Vec<usize>)> = renamed.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
        ours.sort();
        let mut theirs = key_shapes(&want[key]);
        theirs.sort();
        assert_eq!(ours, theirs, "{arch}");
    }
}

#[test]
fn vgg_convert_writes_timm_keys_and_refuses_heads_timm_cannot_hold() {
    let out = std::env::temp_dir().join(format!("vgg-timm-{}.safetensors", std::process::id()));
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_vgg")).args(args).output().unwrap();
    let src = dir().join("vgg11_bn_tiny.pth");
    let o = run(&["convert", src.to_str().unwrap(), out.to_str().unwrap(), "--keys", "timm"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sd = vgg::weights::load_file(&out).unwrap();
    assert_eq!(sd["pre_logits.fc1.weight"].shape, vec![32, 32, 7, 7]);
    assert_eq!(sd["head.fc.weight"].shape, vec![10, 32]);
    assert!(!sd.contains_key("classifier.0.weight"));
    // The built-in model has a CIFAR head, which timm's VGG has no names for.
    let o = run(&["convert", "fashion-mnist", out.to_str().unwrap(), "--keys", "timm"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timm's VGG has torchvision's ImageNet head"));
    let _ = std::fs::remove_file(&out);
}
