//! Fashion-MNIST from Debian's `dataset-fashion-mnist` (installed by .ci/run), and damaged files.

mod common;

use common::scratch;

use std::io::Write;

use vgg::data::{self, DataError};

#[test]
fn fashion_mnist_has_its_published_shape_and_balance() {
    let (train, test) = data::fashion_mnist(None).expect("install Debian's dataset-fashion-mnist (.ci/run does)");
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.shape, [1, 28, 28]);
    // Every class has 6,000 training and 1,000 test images.
    for (d, per) in [(&train, 6000), (&test, 1000)] {
        let mut counts = [0usize; 10];
        d.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [per; 10]);
    }
    assert_eq!(train.classes[9], "Ankle boot");
    // Real pictures: dark background, bright object.
    let img = test.image(0);
    assert!(img[0] == 0 && img.iter().any(|&v| v > 200));
}

#[test]
fn damaged_files_name_the_file_and_the_problem() {
    let dir = scratch("vgg-data");
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new(data::FASHION_MNIST_DIR);
    for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // A test-images file cut short, uncompressed.
    let mut gz = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&std::fs::read(src.join("t10k-images-idx3-ubyte.gz")).unwrap()[..])
        .read_to_end(&mut gz)
        .unwrap();
    std::fs::File::create(dir.join("t10k-images-idx3-ubyte")).unwrap().write_all(&gz[..gz.len() - 100]).unwrap();
    match data::fashion_mnist(Some(&dir)) {
        Err(DataError::Format { path, what }) => {
            assert!(path.ends_with("t10k-images-idx3-ubyte"), "{path}");
            assert!(what.contains("truncated"), "{what}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // A missing directory says what to install.
    let err = data::fashion_mnist(Some(&dir.join("nope"))).unwrap_err().to_string();
    assert!(err.contains("dataset-fashion-mnist"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes CIFAR-style binary files: record r of file f has label (f + r) % 10 and pixel values
/// derived from (f, r, plane) so that order and planes can be checked.
fn write_cifar(dir: &std::path::Path, files: &[&str], label_bytes: usize, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, name) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        for r in 0..per_file {
            if label_bytes == 2 {
                bytes.push(99); // coarse label, ignored
            }
            bytes.push(((f + r) % 10) as u8);
            for plane in 0..3 {
                bytes.extend(std::iter::repeat_n((f * 50 + r * 10 + plane) as u8, 1024));
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn cifar_binary_files_load_in_order_with_rgb_planes() {
    let dir = scratch("vgg-cifar");
    let files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    write_cifar(&dir, &files, 1, 3);
    let (train, test) = data::cifar::cifar10(&dir).unwrap();
    assert_eq!((train.len(), test.len(), train.shape), (15, 3, [3, 32, 32]));
    assert_eq!(train.labels[..4], [0, 1, 2, 1]);
    let img = train.image(4); // file 1, record 1
    assert_eq!((img[0], img[1024], img[2048]), (60, 61, 62));
    assert_eq!(train.classes[3], "cat");
    // CIFAR-100 uses the second (fine) label byte.
    let dir100 = dir.join("c100");
    write_cifar(&dir100, &["train.bin", "test.bin"], 2, 2);
    let (train, _) = data::cifar::cifar100(&dir100).unwrap();
    assert_eq!(train.labels, vec![0, 1]);
    assert_eq!(train.classes.len(), 100);
    // A truncated file is refused with its name.
    let bytes = std::fs::read(dir.join("test_batch.bin")).unwrap();
    std::fs::write(dir.join("test_batch.bin"), &bytes[..bytes.len() - 7]).unwrap();
    let err = data::cifar::cifar10(&dir).unwrap_err().to_string();
    assert!(err.contains("test_batch.bin") && err.contains("truncated"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn batches_centre_shift_and_flip_images() {
    use rand::SeedableRng;
    use vgg::data::batch::{PixelNorm, make_batch};
    // One 2x2 image with a single bright pixel at the top left.
    let ds = data::Dataset { images: vec![255, 0, 0, 0], labels: vec![3], shape: [1, 2, 2], classes: vec![] };
    let norm = PixelNorm::gray(0.0, 1.0);
    let (x, y) = make_batch(&ds, &[0], 4, 0, norm, None);
    assert_eq!(y, vec![3]);
    let lit: Vec<usize> = x.iter().enumerate().filter(|(_, v)| **v > 0.5).map(|(i, _)| i).collect();
    assert_eq!(lit, vec![5], "centred: row 1, column 1 of the 4x4 canvas");
    // Shifts of up to 1 move it over rows 0-2; a flip puts it in image column 1, so columns 0-3.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (x, _) = make_batch(&ds, &[0], 4, 1, norm, Some(&mut rng));
        let lit: Vec<usize> = x.iter().enumerate().filter(|(_, v)| **v > 0.5).map(|(i, _)| i).collect();
        assert!(lit.len() <= 1);
        seen.extend(lit);
    }
    assert!(seen.contains(&6), "a flip moves the pixel to column 2: {seen:?}");
    assert_eq!(seen, (0..12).collect(), "every reachable place, and no other");
}

#[test]
fn random_erasing_blanks_one_rectangle_of_torchvisions_size_range() {
    use rand::SeedableRng;
    use vgg::data::augment::CropAug;
    use vgg::data::batch::{Augment, PixelNorm, make_batch_with};
    let ds = data::Dataset { images: vec![255; 32 * 32], labels: vec![0], shape: [1, 32, 32], classes: vec![] };
    let norm = PixelNorm::gray(0.0, 1.0);
    let aug = |erase| Augment { crop: CropAug::Shift, shift: 0, lighting: 0.0, erase };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut erased = 0;
    for _ in 0..400 {
        let (x, _) = make_batch_with(&ds, &[0], 32, &aug(0.5), norm, Some(&mut rng));
        let zeros: Vec<(usize, usize)> =
            x.iter().enumerate().filter(|(_, v)| **v == 0.0).map(|(i, _)| (i / 32, i % 32)).collect();
        if zeros.is_empty() {
            continue;
        }
        erased += 1;
        // One solid rectangle: its bounding box is all zeros.
        let (y0, y1) = (zeros.iter().map(|p| p.0).min().unwrap(), zeros.iter().map(|p| p.0).max().unwrap());
        let (x0, x1) = (zeros.iter().map(|p| p.1).min().unwrap(), zeros.iter().map(|p| p.1).max().unwrap());
        let (h, w) = (y1 - y0 + 1, x1 - x0 + 1);
        assert_eq!(zeros.len(), h * w, "not a rectangle");
        assert!(h < 32 && w < 32);
        // 2–33% of the area and aspect 0.3–3.3, up to the rounding of each side.
        let share = (h * w) as f64 / 1024.0;
        assert!((0.01..=0.37).contains(&share), "{h}x{w}");
        let aspect = h as f64 / w as f64;
        assert!((0.2..=5.0).contains(&aspect), "{h}x{w}");
    }
    assert!((150..=250).contains(&erased), "p = 0.5 erased {erased} of 400");
    // Always on: only the rare image whose ten tries all fail is left whole.
    let always =
        (0..400).filter(|_| make_batch_with(&ds, &[0], 32, &aug(1.0), norm, Some(&mut rng)).0.contains(&0.0)).count();
    assert!(always >= 390, "p = 1 erased {always} of 400");
}

#[test]
fn image_folders_split_by_class_and_resize() {
    let root = scratch("vgg-folder");
    for (class, rgb) in [("blue", [0u8, 0, 255]), ("red", [255u8, 0, 0])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..5 {
            let img = image::RgbImage::from_pixel(50, 40, image::Rgb(rgb));
            img.save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("red").join("notes.txt"), "not an image").unwrap();
    let (train, val) = data::folder::image_folder(&root, 32, 0.2, 1).unwrap();
    assert_eq!((train.len(), val.len()), (8, 2));
    assert_eq!(train.classes, vec!["blue".to_string(), "red".to_string()]);
    assert_eq!(train.shape, [3, 32, 32]);
    let mut val_labels = val.labels.clone();
    val_labels.sort();
    assert_eq!(val_labels, vec![0, 1], "one held-out image per class");
    for i in 0..train.len() {
        let img = train.image(i);
        let (r, b) = (img[0], img[2 * 1024]);
        if train.labels[i] == 0 { assert_eq!((r, b), (0, 255)) } else { assert_eq!((r, b), (255, 0)) }
    }
    // A file that is not an image, under an image name, is reported by name.
    std::fs::write(root.join("red").join("broken.png"), "not a png").unwrap();
    let err = data::folder::image_folder(&root, 32, 0.2, 1).unwrap_err().to_string();
    assert!(err.contains("broken.png"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn rgb_batches_normalise_per_channel_and_jitter_scale_and_lighting() {
    use rand::SeedableRng;
    use vgg::data::augment::CropAug;
    use vgg::data::batch::{Augment, PixelNorm, make_batch_with};
    // Two 8x8 RGB images of flat colours: channel means 0.25/0.5/0.75-ish, known exactly.
    let mut images = vec![];
    for rgb in [[0u8, 100, 200], [50, 150, 250]] {
        for v in rgb {
            images.extend(std::iter::repeat_n(v, 64));
        }
    }
    let ds = data::Dataset { images, labels: vec![0, 1], shape: [3, 8, 8], classes: vec!["a".into(), "b".into()] };
    let norm = PixelNorm::of(&ds);
    for (c, want) in [25.0f32, 125.0, 225.0].iter().enumerate() {
        assert!((norm.mean[c] - want / 255.0).abs() < 1e-6, "channel {c}: {}", norm.mean[c]);
        assert!((norm.std[c] - 25.0 / 255.0).abs() < 1e-6);
    }
    let pca = norm.pca.expect("RGB datasets get principal components");
    // All the variance lies along (1, 1, 1)/√3.
    assert!(pca.eigval[1] < 1e-6 && (pca.eigvec[0][0].abs() - 1.0 / 3f32.sqrt()).abs() < 1e-4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for crop in [CropAug::Shift, CropAug::ScaleJitter { smin: 8, smax: 16 }, CropAug::ResizedCrop { min_scale: 0.2 }] {
        let aug = Augment { crop, shift: 0, lighting: 0.1, erase: 0.0 };
        let mut offsets = vec![];
        for _ in 0..50 {
            let (x, _) = make_batch_with(&ds, &[0], 8, &aug, norm, Some(&mut rng));
            // A flat image stays flat under any crop; lighting moves each channel by one offset.
            for c in 0..3 {
                let plane = &x[c * 64..(c + 1) * 64];
                assert!(plane.iter().all(|v| (v - plane[0]).abs() < 1e-4), "{crop:?}");
            }
            let r = x[0] * norm.std[0] + norm.mean[0] - 0.0;
            offsets.push(r);
        }
        let spread = offsets.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(spread > 1e-4, "{crop:?}: lighting noise is applied");
        assert!(spread < 0.1, "{crop:?}: lighting noise is small ({spread})");
    }
    // Without rng (evaluation), no lighting: the first channel of image 0 is exactly 0/255 normalised.
    let (x, _) = make_batch_with(
        &ds,
        &[0],
        8,
        &Augment { crop: CropAug::Shift, shift: 0, lighting: 0.1, erase: 0.0 },
        norm,
        None,
    );
    assert!((x[0] - (0.0 - norm.mean[0]) / norm.std[0]).abs() < 1e-6);
}
