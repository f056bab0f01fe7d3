//! torchvision's `VGG16_Weights.IMAGENET1K_V1.transforms()` on real photos, against
//! ../shared/fixtures/preprocess:
//! ```python
//! tf = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
//! t = tf(Image.open(path).convert("RGB"))                   # preprocess/<stem>.npy, float32
//! y = fill(vgg16()).eval()(t.double().unsqueeze(0))         # preprocess/<stem>_vgg16_logits.npy
//! top5 = np.argsort(-y[0])[:5]                              # manifest "vgg16_top5"
//! ```

mod common;

use burn::tensor::Device;
use common::*;
use vgg::image::Preprocess;
use vgg::weights::Strict;
use vgg::{Vgg, VggConfig};

/// One 8-bit step in normalised space is 1/255/std ≈ 0.0175 at most.
const STEP: f64 = 1.0 / 255.0 / 0.224;

#[test]
fn photos_match_torchvision_preprocessing() {
    let m = manifest();
    for entry in m["preprocess"].as_array().unwrap() {
        let image = entry["image"].as_str().unwrap();
        let got = Preprocess::imagenet().load(&fixtures().join(image)).unwrap();
        let want = npy(entry["tensor"].as_str().unwrap());
        assert_eq!(want.shape, vec![3, 224, 224]);
        assert_eq!(got.shape, [3, 224, 224]);
        let diffs: Vec<f64> = got.data.iter().zip(&want.data).map(|(&a, &b)| (a as f64 - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0.0, f64::max);
        let exact = diffs.iter().filter(|&&d| d < 1e-6).count() as f64 / diffs.len() as f64;
        let max_steps = max / STEP;
        println!("{image}: max |diff| {max:.4} ({max_steps:.2} 8-bit steps), {:.3}% exact", exact * 100.0);
        // PNG and JPEG alike: JPEG goes through libjpeg-turbo's decoder as PIL's does (it was 99.3%
        // exact, up to 2 steps off, with the image crate's decoder).
        assert!(max <= STEP * 1.01, "{image}: max difference {max} is more than one 8-bit step");
        assert!(exact > 0.99, "{image}: only {:.2}% exact", exact * 100.0);
    }
}

#[test]
fn vgg16_top5_on_the_photos_matches_torchvision() {
    let device = Device::default();
    let config = VggConfig::from_arch("vgg16").unwrap();
    let mut model = Vgg::new(&config, &device).unwrap();
    model.load_state_dict(&formula_state_dict(model.plan()), Strict::Yes).unwrap();
    let m = manifest();
    for entry in m["preprocess"].as_array().unwrap() {
        let image = entry["image"].as_str().unwrap();
        let x = Preprocess::imagenet().load(&fixtures().join(image)).unwrap().to_tensor(&device);
        let logits = values(model.forward(x));
        let want = npy(entry["vgg16_logits"].as_str().unwrap());
        let err = rel_err(&logits, &want.data);
        let top5: Vec<usize> =
            entry["vgg16_top5"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let ours: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        println!("{image}: logits relative error {err:.2e}, top-5 {:?}", &argsort_desc(&ours)[..5]);
        assert_eq!(argsort_desc(&ours)[..5], top5[..], "{image}");
        assert_eq!(argsort_desc(&want.data)[..5], top5[..]);
    }
}

#[test]
fn corrupt_and_missing_images_give_clear_errors() {
    let dir = scratch("vgg-img");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.png");
    let png = std::fs::read(fixtures().join("images/chelsea.png")).unwrap();
    std::fs::write(&bad, &png[..png.len() / 2]).unwrap();
    let err = Preprocess::imagenet().load(&bad).unwrap_err();
    assert!(matches!(err, vgg::image::ImageError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("broken.png"));
    let err = Preprocess::imagenet().load(&dir.join("nope.jpg")).unwrap_err();
    assert!(matches!(err, vgg::image::ImageError::Io { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
