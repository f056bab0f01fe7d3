//! Fashion-MNIST from Debian's `dataset-fashion-mnist` (installed by .ci/run), and damaged files.

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
    let dir = std::env::temp_dir().join(format!("vgg-data-{}", std::process::id()));
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
