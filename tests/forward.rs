//! Eval-mode forward passes against torchvision's float64 references (../shared/fixtures/forward).
//!
//! The references were produced by `make_fixtures.py`:
//! ```python
//! model = fill(getattr(torchvision.models, arch)(weights=None)).eval()   # FORMULA.md weights, float64
//! x = formula_input("imagenet224", (2, 3, 224, 224))
//! y = model(x).numpy()                        # forward/<arch>_224.npy
//! f = model.features(x).numpy()               # forward/vgg16_224_features.npy (vgg16 only)
//! ys = model(formula_input("imagenet200x300", (1, 3, 200, 300)))   # and 64x64, 32x32
//! ```

mod common;

use burn::tensor::Device;
use common::*;
use vgg::weights::Strict;
use vgg::{Vgg, VggConfig};

fn model(arch: &str, device: &Device) -> Vgg {
    let config = VggConfig::from_arch(arch).unwrap();
    let mut m = Vgg::new(&config, device).unwrap();
    let report = m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    assert!(report.is_complete());
    m
}

fn check(arch: &str, m: &Vgg, tag: &str, shape: [usize; 4], reference: &str, device: &Device) -> f64 {
    let y = values(m.forward(formula_input(tag, shape, device)));
    let r = npy(reference);
    assert_eq!(y.len(), r.data.len());
    let err = rel_err(&y, &r.data);
    assert_near_torch_f32(&format!("{arch} {tag}"), &format!("forward.{arch}.{tag}"), err);
    err
}

#[test]
fn all_eight_torchvision_variants_at_224() {
    let device = Device::default();
    for arch in ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"] {
        let m = model(arch, &device);
        check(arch, &m, "imagenet224", [2, 3, 224, 224], &format!("forward/{arch}_224.npy"), &device);
    }
}

#[test]
fn vgg16_features_and_odd_input_sizes() {
    let device = Device::default();
    let m = model("vgg16", &device);
    let f = values(m.features(formula_input("imagenet224", [2, 3, 224, 224], &device)));
    let err = rel_err(&f, &npy("forward/vgg16_224_features.npy").data);
    assert_near_torch_f32("vgg16 features", "forward.vgg16.imagenet224.features", err);
    // 200x300 → a 6x9 map pooled to 7x7 (overlapping bins); 64x64 → 2x2; 32x32 → 1x1 (replicated).
    check("vgg16", &m, "imagenet200x300", [1, 3, 200, 300], "forward/vgg16_200x300.npy", &device);
    check("vgg16", &m, "imagenet64x64", [1, 3, 64, 64], "forward/vgg16_64x64.npy", &device);
    check("vgg16", &m, "imagenet32x32", [1, 3, 32, 32], "forward/vgg16_32x32.npy", &device);
}
