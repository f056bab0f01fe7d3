//! Caffe `.caffemodel` files in both formats, against an independent Caffe reader: OpenCV 4.14's
//! `cv2.dnn.readNetFromCaffe`. The files in `tests/fixtures/caffe/` come from `bench/caffe_vgg.py`
//! (encoded from caffe.proto's field numbers, as no Caffe is installed):
//!
//! ```python
//! net = layers()   # VGG-11 (A) at 1/16 width, the paper's names conv1_1 ... fc8, 224x224 BGR input
//! open("vgg11_tiny_v1.caffemodel", "wb").write(caffemodel(net, v1=True))    # V1 `layers`, legacy dims
//! open("vgg11_tiny_v2.caffemodel", "wb").write(caffemodel(net, v1=False))   # V2 `layer`, BlobShape
//! dnn = cv2.dnn.readNetFromCaffe("vgg11_tiny.prototxt", path); dnn.setInput(x); dnn.forward()
//! ```
//!
//! with `x` the fixture formula's input "caffe224", fed to both sides as it is (Caffe preprocessing
//! is the caller's: these weights expect BGR planes in 0-255 with the mean pixel subtracted).

mod common;

use std::path::PathBuf;

use serde_json::Value;
use vgg::engine::Engine;
use vgg::image::Normalize;
use vgg::pretrained::{WeightsSpec, weights};
use vgg::weights::registry::Fetcher;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caffe")
}

#[test]
fn caffemodels_in_both_formats_give_opencvs_outputs() {
    let want: Value = serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap();
    let x: Vec<f32> = vgg::formula::s("input:caffe224", 3 * 224 * 224).into_iter().map(|v| v as f32).collect();
    for (file, out) in want["outputs"].as_object().unwrap() {
        let path = dir().join(file);
        let w = weights(&WeightsSpec::parse(path.to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(w.config.arch_name(), "vgg11", "{file}");
        assert_eq!(w.preprocess.normalize, Normalize::Caffe, "{file}");
        assert!(w.notes.iter().any(|n| n.contains("Caffe")), "{file}: {:?}", w.notes);
        let engine = Engine::from_state_dict(&w.config, w.state_dict).unwrap();
        let got = engine.forward(&x, [1, 3, 224, 224]);
        let reference: Vec<f64> = out.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let err = common::rel_err(&got, &reference);
        println!("{file}: relative error against OpenCV {err:.2e}");
        assert!(err <= 1e-5, "{file}: {err:e}");
    }
}
