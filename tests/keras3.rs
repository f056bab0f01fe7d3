//! Keras 3 files, written by Keras 3.15 itself (torch backend) with `bench/keras3_vgg.py`:
//!
//! ```python
//! f = functional()   # keras.applications-style names: block1_conv1, block1_bn1, ..., fc1, fc2, predictions
//! f.save("functional.keras"); f.save_weights("functional.weights.h5"); f.save("functional_legacy.h5")
//! s = sequential()   # Keras' own names; Dense(24) -> BatchNormalization -> ReLU -> Dense(10) head
//! s.save("sequential.keras")
//! expected[name] = model.predict(formula_input("keras32", (1, 3, 32, 32)).transpose(0, 2, 3, 1))
//! ```
//!
//! VGG-11 with BatchNorm at 1/16 width, 32x32 inputs, BatchNorm statistics moved by training.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use vgg::engine::Engine;
use vgg::pretrained::{WeightsSpec, weights};
use vgg::weights::registry::Fetcher;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras3")
}

#[test]
fn keras3_archives_and_weights_give_keras_logits() {
    let want: Value = serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap();
    let x: Vec<f32> = vgg::formula::s("input:keras32", 3 * 32 * 32).into_iter().map(|v| v as f32).collect();
    for (file, model) in [
        ("functional.keras", "functional"),
        ("functional.weights.h5", "functional"),
        ("functional_legacy.h5", "functional"),
        ("sequential.keras", "sequential"),
    ] {
        let path = dir().join(file);
        let w = weights(&WeightsSpec::parse(path.to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(w.config.arch_name(), "vgg11_bn", "{file}");
        let engine = Engine::from_state_dict(&w.config, w.state_dict).unwrap();
        let out = engine.forward(&x, [1, 3, 32, 32]);
        let logits: Vec<f64> = want[model].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let err = common::rel_err(&out, &logits);
        println!("{file}: logits relative error {err:.2e} (notes: {:?})", w.notes);
        assert!(err <= 1e-5, "{file}: {err:e}");
    }
}
