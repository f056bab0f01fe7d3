//! Whole pickled modules (`torch.save(model)`, what many tutorials write and what PyTorch >= 2.6
//! refuses to `torch.load` by default), read as data. The files in `tests/fixtures/pth/` were
//! written by torch 2.15 / torchvision 0.29 (`bench/whole_module_pth.py`):
//!
//! ```python
//! model = VGG(make_layers([4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"], batch_norm=True))
//! model.classifier = nn.Sequential(nn.Linear(32 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(),
//!                                  nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
//! torch.save(model, "whole_vgg.pth")                                    # torchvision.models.vgg.VGG
//! torch.save(tutorial, "whole_tutorial.pth")                            # __main__.Net, same weights
//! torch.save({"epoch": 3, "model": nn.DataParallel(model)}, "whole_in_checkpoint.pth")
//! logits = model.eval()(x)                                              # whole_expected.json
//! ```

mod common;

use std::path::PathBuf;

use serde_json::Value;
use vgg::engine::Engine;
use vgg::pretrained::{WeightsSpec, weights};
use vgg::weights::registry::Fetcher;

const FILES: [&str; 3] = ["whole_vgg.pth", "whole_tutorial.pth", "whole_in_checkpoint.pth"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("whole_expected.json")).unwrap()).unwrap()
}

#[test]
fn whole_modules_give_torchs_tensors_and_logits_and_say_how_they_were_read() {
    let want = expected();
    let keys: Vec<String> = want["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    let x: Vec<f32> = want["input"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let logits: Vec<f64> = want["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for f in FILES {
        let path = dir().join(f);
        let w = weights(&WeightsSpec::parse(path.to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        let mut got: Vec<&String> = w.state_dict.keys().collect();
        got.sort();
        let mut all: Vec<&String> = keys.iter().collect();
        all.sort();
        assert_eq!(got, all, "{f}: the state dict's keys");
        assert!(
            w.notes.iter().any(|n| n.contains("whole pickled module") && n.contains("without executing")),
            "{f}: {:?}",
            w.notes
        );
        assert_eq!(w.config.arch_name(), "vgg11_bn", "{f}");
        let engine = Engine::from_state_dict(&w.config, w.state_dict).unwrap();
        let out = engine.forward(&x, [1, 3, 32, 32]);
        let err = common::rel_err(&out, &logits);
        println!("{f}: {} tensors, logits relative error {err:.2e}", keys.len());
        assert!(err <= 1e-5, "{f}: {err:e}");
    }
    // The class is named in the note: torchvision's, the tutorial's own, and the wrapper's.
    let note = |f: &str| {
        weights(&WeightsSpec::parse(dir().join(f).to_str().unwrap()), None, &Fetcher::from_env(), &mut |_, _| {})
            .unwrap()
            .notes
            .join(" ")
    };
    assert!(note("whole_vgg.pth").contains("torchvision.models.vgg.VGG"));
    assert!(note("whole_tutorial.pth").contains("__main__.Net"));
    assert!(note("whole_in_checkpoint.pth").contains("DataParallel"));
}

#[test]
fn a_state_dict_file_is_read_without_the_note() {
    let bytes = std::fs::read(common::fixtures().join("checkpoints/small.pth")).unwrap();
    let (sd, notes) = vgg::weights::pth::read_noting(&bytes, "small.pth").unwrap();
    assert!(!sd.is_empty());
    assert!(notes.is_empty(), "{notes:?}");
}
