//! Weight files: the four formats in ../shared/fixtures/checkpoints load to the formula values, and
//! damaged or mismatched files give the documented errors.
//!
//! The fixtures were written by `make_fixtures.py`:
//! ```python
//! sd = {k: v for k, v in fill(vgg11_bn()).float().state_dict().items() if k in keep}
//! torch.save(sd, "small.pth")                                            # zip
//! torch.save(sd, "small_legacy.pth", _use_new_zipfile_serialization=False)
//! torch.save({"epoch": 3, "best_acc": 0.91,
//!             "state_dict": {"module." + k: v for k, v in sd.items()}}, "small_training_ckpt.pth")
//! save_file(sd, "small.safetensors")
//! ```

mod common;

use burn::tensor::Device;
use common::*;
use vgg::weights::{self, Dtype, FileError, Strict, WeightsError};
use vgg::{Vgg, VggConfig};

const FILES: [&str; 4] = ["small.pth", "small_legacy.pth", "small_training_ckpt.pth", "small.safetensors"];

#[test]
fn all_four_formats_load_to_the_formula_values() {
    let keys = [
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "features.1.running_mean",
        "features.1.running_var",
    ];
    let shapes: [&[usize]; 6] = [&[64, 3, 3, 3], &[64], &[64], &[64], &[64], &[64]];
    let mut loaded = Vec::new();
    for f in FILES {
        let sd = weights::load_file(&fixtures().join("checkpoints").join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(sd.len(), 7, "{f}: {:?}", sd.keys().collect::<Vec<_>>());
        for (key, shape) in keys.iter().zip(shapes) {
            let t = &sd[*key];
            assert_eq!(t.shape, shape, "{f} {key}");
            assert_eq!(t.dtype, Dtype::F32);
            let want = formula(key, shape, key.starts_with("features.1"));
            for (a, b) in t.data.iter().zip(&want) {
                assert_eq!(*a, *b as f32, "{f} {key}: the file holds the formula cast to f32");
            }
        }
        let nbt = &sd["features.1.num_batches_tracked"];
        assert_eq!((nbt.dtype, nbt.shape.as_slice(), nbt.data.as_slice()), (Dtype::I64, &[][..], &[0.0][..]));
        loaded.push(sd);
    }
    assert!(loaded.windows(2).all(|w| w[0] == w[1]), "all formats give the same tensors");
}

#[test]
fn partial_files_load_non_strictly_and_report_the_rest() {
    let device = Device::default();
    let mut m = Vgg::new(&VggConfig::from_arch("vgg11_bn").unwrap(), &device).unwrap();
    let sd = weights::load_file(&fixtures().join("checkpoints/small_legacy.pth")).unwrap();
    match m.load_state_dict(&sd, Strict::Yes) {
        Err(WeightsError::MissingKey { key, expected, .. }) => {
            assert_eq!(key, "features.4.weight");
            assert_eq!(expected, vec![128, 64, 3, 3]);
        }
        other => panic!("expected a missing key, got {other:?}"),
    }
    let report = m.load_state_dict(&sd, Strict::No).unwrap();
    assert_eq!(report.loaded.len(), 7);
    assert!(report.unexpected.is_empty() && report.mismatched.is_empty());
    assert_eq!(report.missing.len(), m.state_dict().len() - 7);
    let back = m.state_dict();
    assert_eq!(back["features.0.weight"].data, sd["features.0.weight"].data);
    assert_eq!(back["features.1.running_var"].data, sd["features.1.running_var"].data);
}

#[test]
fn shape_mismatch_names_the_key_and_both_shapes() {
    let device = Device::default();
    let config = VggConfig::from_arch("vgg11_bn").unwrap().with_width(0.5);
    let mut m = Vgg::new(&config, &device).unwrap();
    let sd = weights::load_file(&fixtures().join("checkpoints/small.pth")).unwrap();
    let mut full = m.state_dict();
    full.insert("features.0.weight".into(), sd["features.0.weight"].clone());
    let err = m.load_state_dict(&full, Strict::Yes).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("features.0.weight") && msg.contains("[32, 3, 3, 3]") && msg.contains("[64, 3, 3, 3]"),
        "{msg}"
    );
    // Strict failure leaves the model untouched; non-strict reports the mismatch and loads the rest.
    let before = m.state_dict();
    assert_eq!(before["features.0.weight"].shape, vec![32, 3, 3, 3]);
    let report = m.load_state_dict(&full, Strict::No).unwrap();
    assert_eq!(report.mismatched, vec![("features.0.weight".to_string(), vec![32, 3, 3, 3], vec![64, 3, 3, 3])]);
}

#[test]
fn unexpected_keys_are_refused_when_strict() {
    let device = Device::default();
    let config = VggConfig::from_arch("vgg11").unwrap().with_width(0.125);
    let mut m = Vgg::new(&config, &device).unwrap();
    let mut sd = m.state_dict();
    sd.insert("features.99.weight".into(), vgg::weights::TensorEntry::f32(vec![1], vec![0.0]));
    let err = m.load_state_dict(&sd, Strict::Yes).unwrap_err();
    assert!(err.to_string().contains("features.99.weight"), "{err}");
    let report = m.load_state_dict(&sd, Strict::No).unwrap();
    assert_eq!(report.unexpected, vec!["features.99.weight".to_string()]);
}

#[test]
fn truncated_files_give_errors_not_panics() {
    let dir = scratch("vgg-trunc");
    std::fs::create_dir_all(&dir).unwrap();
    for f in FILES {
        let bytes = std::fs::read(fixtures().join("checkpoints").join(f)).unwrap();
        for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 100, bytes.len() - 1] {
            let path = dir.join(format!("cut-{cut}-{f}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            match weights::load_file(&path) {
                Err(WeightsError::File(FileError::Format { path: p, what })) => {
                    assert!(p.contains("cut-"), "the error names the file: {p}");
                    assert!(!what.is_empty());
                }
                other => panic!("{f} cut at {cut}: expected a format error, got {other:?}"),
            }
        }
    }
    let missing = weights::load_file(&dir.join("does-not-exist.pth")).unwrap_err();
    assert!(matches!(missing, WeightsError::File(FileError::Io { .. })), "{missing}");
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"this is not a weights file at all").unwrap();
    assert!(matches!(weights::load_file(&junk), Err(WeightsError::File(FileError::Format { .. }))));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn safetensors_round_trip_keeps_keys_values_and_architecture() {
    let device = Device::default();
    let config =
        VggConfig::from_arch("vgg13_bn").unwrap().with_width(0.125).with_head(vgg::Head::cifar()).with_num_classes(10);
    let m = Vgg::new(&config, &device).unwrap();
    let sd = m.state_dict();
    let dir = scratch("vgg-st");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    let meta = weights::safetensors::Meta { config: Some(config.clone()), ..Default::default() };
    weights::safetensors::write(&path, &sd, &meta, Dtype::F32).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (back, meta) = weights::safetensors::read(&bytes, "m").unwrap();
    assert_eq!(meta.config.as_ref(), Some(&config));
    assert_eq!(back, sd);
    assert!(back.contains_key("features.1.running_var") && back.contains_key("classifier.3.weight"));
    // Paper names are understood on load too.
    let paper = weights::keys::rename(&sd, m.plan(), weights::KeyStyle::Paper);
    assert!(
        paper.contains_key("conv1_1.weight")
            && paper.contains_key("bn1_1.running_mean")
            && paper.contains_key("fc7.bias")
    );
    let mut m2 = Vgg::new(&config, &device).unwrap();
    assert!(m2.load_state_dict(&paper, Strict::Yes).unwrap().is_complete());
    assert_eq!(m2.state_dict(), sd);
    std::fs::remove_dir_all(&dir).ok();
}

/// The writer's files read back bit for bit (f32) or as the rounding of each value (f16, bf16),
/// starting from a file PyTorch wrote (`torch.save(model.state_dict(), "small.pth")`).
#[test]
fn pth_writer_round_trips_a_torch_file_in_every_dtype() {
    let sd = weights::load_file(&fixtures().join("checkpoints/small.pth")).unwrap();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let bytes = weights::pth::write(&sd, dtype).unwrap();
        assert!(bytes.starts_with(b"PK\x03\x04"));
        let back = weights::pth::read(&bytes, "written.pth").unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), sd.keys().collect::<Vec<_>>());
        for (k, t) in &sd {
            let b = &back[k];
            assert_eq!(b.shape, t.shape, "{k}");
            if t.dtype == Dtype::I64 {
                assert_eq!(b.dtype, Dtype::I64, "{k}");
                assert_eq!(b.data, t.data, "{k}");
                continue;
            }
            assert_eq!(b.dtype, dtype, "{k}");
            let round = |v: f32| match dtype {
                Dtype::F16 => half::f16::from_f32(v).to_f32(),
                Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
                _ => v,
            };
            let want: Vec<f32> = t.data.iter().map(|&v| round(v)).collect();
            assert_eq!(b.data, want, "{k}");
        }
    }
}
