//! ImageFolder: `root/<class>/*.{png,jpg,jpeg}`, how people bring their own images. With
//! `root/train` and `root/val` (ImageNet's layout) those are the splits; otherwise a seeded share of
//! each class is held out for validation. Images are decoded once, resized (shorter side) and
//! center-cropped to a square, and kept as bytes.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::{DataError, Dataset};
use crate::image::{Filter, center_crop, open, resize_shorter};

fn list(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>, DataError> {
    let io = |err| DataError::Io { path: root.display().to_string(), err };
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if !p.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                f.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            })
            .collect();
        files.sort();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        classes.push((name, files));
    }
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Format {
            path: root.display().to_string(),
            what: "no class folders (expected root/<class>/*.png|jpg)".into(),
        });
    }
    Ok(classes)
}

fn load(files: &[(PathBuf, u8)], classes: &[String], size: usize) -> Result<Dataset, DataError> {
    let mut images = Vec::with_capacity(files.len() * 3 * size * size);
    let mut labels = Vec::with_capacity(files.len());
    for (path, label) in files {
        let img =
            open(path).map_err(|e| DataError::Format { path: path.display().to_string(), what: e.to_string() })?;
        let img = center_crop(&resize_shorter(&img, size, Filter::Bilinear), size, size);
        for c in 0..3 {
            images.extend(img.data.iter().skip(c).step_by(3));
        }
        labels.push(*label);
    }
    Ok(Dataset { images, labels, shape: [3, size, size], classes: classes.to_vec() })
}

/// Reads an image folder as (train, validation), images `size`x`size`; `val_fraction` of each
/// class (at least one image when the fraction is positive) is held out, chosen by `seed`, unless
/// `root/train` and `root/val` exist.
pub fn image_folder(root: &Path, size: usize, val_fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
    let labelled = |classes: &[(String, Vec<PathBuf>)]| -> Vec<(PathBuf, u8)> {
        classes.iter().enumerate().flat_map(|(i, (_, fs))| fs.iter().map(move |f| (f.clone(), i as u8))).collect()
    };
    if root.join("train").is_dir() && root.join("val").is_dir() {
        let train = list(&root.join("train"))?;
        let val = list(&root.join("val"))?;
        let names: Vec<String> = train.iter().map(|(n, _)| n.clone()).collect();
        if val.iter().map(|(n, _)| n).ne(names.iter()) {
            return Err(DataError::Format {
                path: root.display().to_string(),
                what: "train/ and val/ have different class folders".into(),
            });
        }
        return Ok((load(&labelled(&train), &names, size)?, load(&labelled(&val), &names, size)?));
    }
    let classes = list(root)?;
    if classes.len() > 256 {
        return Err(DataError::Format { path: root.display().to_string(), what: "more than 256 classes".into() });
    }
    let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, (_, files)) in classes.iter().enumerate() {
        let mut files = files.clone();
        files.shuffle(&mut rng);
        let k = if val_fraction > 0.0 {
            ((files.len() as f64 * val_fraction).round() as usize).max(1).min(files.len())
        } else {
            0
        };
        val.extend(files[..k].iter().map(|f| (f.clone(), i as u8)));
        train.extend(files[k..].iter().map(|f| (f.clone(), i as u8)));
    }
    Ok((load(&train, &names, size)?, load(&val, &names, size)?))
}
