//! Datasets held in memory as 8-bit images: Fashion-MNIST (IDX), with the batching and
//! augmentation the training loop needs.

pub mod augment;
pub mod batch;
pub mod cifar;
pub mod folder;
pub mod idx;

use std::path::{Path, PathBuf};

/// A file that could not be read, or is damaged or of another format.
pub type DataError = crate::file::FileError;

/// Images `[n, c, h, w]` as bytes with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `n * c * h * w` bytes, image after image, channel-major.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// `[c, h, w]`.
    pub shape: [usize; 3],
    /// Class names.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.iter().product::<usize>();
        &self.images[i * n..(i + 1) * n]
    }
    /// The first `n` images (for quick runs).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * self.shape.iter().product::<usize>());
        self.labels.truncate(n);
        self
    }
}

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's train and test splits from `dir` (default [`FASHION_MNIST_DIR`]); files may be
/// gzipped (`train-images-idx3-ubyte.gz`) or not.
pub fn fashion_mnist(dir: Option<&Path>) -> Result<(Dataset, Dataset), DataError> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
    let find = |stem: &str| -> Result<PathBuf, DataError> {
        for name in [format!("{stem}.gz"), stem.to_string()] {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
        Err(DataError::Io {
            path: dir.join(stem).display().to_string(),
            err: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not found (install Debian's dataset-fashion-mnist, or give the directory holding the IDX files)",
            ),
        })
    };
    let classes: Vec<String> = crate::labels::FASHION_MNIST.iter().map(|s| s.to_string()).collect();
    let split = |img: &str, lab: &str| -> Result<Dataset, DataError> {
        let (images, [h, w]) = idx::read_images(&find(img)?)?;
        let labels = idx::read_labels(&find(lab)?)?;
        if labels.len() * h * w != images.len() {
            return Err(DataError::Format {
                path: dir.display().to_string(),
                what: format!("{img} holds {} images but {lab} {} labels", images.len() / (h * w), labels.len()),
            });
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(DataError::Format {
                path: dir.join(lab).display().to_string(),
                what: format!("label {bad} out of range"),
            });
        }
        Ok(Dataset { images, labels, shape: [1, h, w], classes: classes.clone() })
    };
    Ok((
        split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    ))
}
