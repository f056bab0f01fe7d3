//! ONNX graphs as the real exporters write them, against onnxruntime's outputs on them. The files
//! in `tests/fixtures/onnx/` come from `bench/onnx_exporters.sh`:
//!
//! ```python
//! # TensorFlow side (tensorflow-cpu 2.21, Keras 3.15): a functional VGG-11-BN at 1/16 width on
//! # NHWC 64x64 inputs, BatchNorm in the dense head, Softmax at the end
//! tf2onnx.convert.from_function(tf.function(lambda t: m(t, training=False)), input_signature=spec,
//!                               opset=13, output_path="tf2onnx_keras3.onnx")   # tf2onnx 1.17
//! m.export("keras_export.onnx", format="onnx")
//! # PyTorch side (torch 2.15): torchvision's VGG class, VGG-11-BN at 1/16 width, 224x224
//! torch.onnx.export(m, (x,), "torch_script.onnx", dynamo=False, opset_version=17, dynamic_axes=...)
//! torch.onnx.export(m, (x,), dynamo=True, dynamic_shapes=...).save("torch_dynamo.onnx")
//! onnx.save(onnxsim.simplify(onnx.load("torch_script.onnx"))[0], "torch_script_sim.onnx")
//! expected[name] = ort.InferenceSession(name).run(None, {input: x})   # x: formula input "onnx64"/"onnx224"
//! ```
//!
//! tf2onnx computes the flatten's shape at run time (`Shape → Gather → Cast → Slice → Concat` of
//! INT32 constants `→ Cast → Reshape`, after a `Transpose` back to NHWC) and writes each trunk
//! BatchNorm as `Mul` and `Add`; the torch exporters fold BatchNorm into the convolutions.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use vgg::engine::Engine;
use vgg::pretrained::{WeightsSpec, weights};
use vgg::weights::registry::Fetcher;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = logits.iter().map(|&v| ((v - m) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

#[test]
fn graphs_from_tf2onnx_keras_and_torch_exporters_give_onnxruntimes_outputs() {
    let mut checked = 0;
    for (manifest, side) in [("expected_tf.json", 64usize), ("expected_torch.json", 224)] {
        let want: Value = serde_json::from_slice(&std::fs::read(dir().join(manifest)).unwrap()).unwrap();
        let tag = want["input"].as_str().unwrap();
        let x: Vec<f32> =
            vgg::formula::s(&format!("input:{tag}"), 3 * side * side).into_iter().map(|v| v as f32).collect();
        for (file, out) in want["outputs"].as_object().unwrap() {
            let path = dir().join(file);
            let w = weights(&WeightsSpec::parse(path.to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let engine = Engine::from_state_dict(&w.config, w.state_dict).unwrap();
            let logits = engine.forward(&x, [1, 3, side, side]);
            let got = if out["softmax"].as_bool().unwrap() { softmax(&logits) } else { logits };
            let reference: Vec<f64> = out["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let err = common::rel_err(&got, &reference);
            println!("{file} ({}): relative error against onnxruntime {err:.2e}", w.config.arch_name());
            assert!(err <= 1e-5, "{file}: {err:e}");
            checked += 1;
        }
    }
    assert_eq!(checked, 5, "every exporter's file was checked");
}
