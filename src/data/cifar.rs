//! CIFAR-10 and CIFAR-100 in their binary versions: records of label byte(s) then 3072 bytes of a
//! 32x32 image, red plane, green plane, blue plane.

use std::path::Path;

use super::{DataError, Dataset};

/// CIFAR-10's classes, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const PIXELS: usize = 3 * 32 * 32;

/// Parses the records of one binary file; `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100: coarse
/// then fine, of which the fine label is used).
pub fn parse(
    bytes: &[u8],
    label_bytes: usize,
    path: &str,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<(), DataError> {
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(DataError::Format {
            path: path.to_string(),
            what: format!("{} bytes is not a whole number of {rec}-byte records (truncated file?)", bytes.len()),
        });
    }
    for r in bytes.chunks_exact(rec) {
        labels.push(r[label_bytes - 1]);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

fn read(dir: &Path, files: &[&str], label_bytes: usize, classes: Vec<String>) -> Result<Dataset, DataError> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        let p = dir.join(f);
        let bytes = crate::file::read(&p)?;
        parse(&bytes, label_bytes, &p.display().to_string(), &mut images, &mut labels)?;
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
        return Err(DataError::Format { path: dir.display().to_string(), what: format!("label {bad} out of range") });
    }
    Ok(Dataset { images, labels, shape: [3, 32, 32], classes })
}

/// Class names from a `*.txt` file of the archive if present, else `class N`.
fn names(dir: &Path, file: &str, n: usize) -> Vec<String> {
    let listed: Vec<String> = std::fs::read_to_string(dir.join(file))
        .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    if listed.len() == n { listed } else { (0..n).map(|i| format!("class {i}")).collect() }
}

/// CIFAR-10 (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`) from `dir`
/// (`cifar-10-batches-bin`).
pub fn cifar10(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let classes: Vec<String> = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    let train = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect::<Vec<_>>();
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    Ok((read(dir, &train, 1, classes.clone())?, read(dir, &["test_batch.bin"], 1, classes)?))
}

/// CIFAR-100 (`train.bin`, `test.bin`, fine labels) from `dir` (`cifar-100-binary`).
pub fn cifar100(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let classes = names(dir, "fine_label_names.txt", 100);
    Ok((read(dir, &["train.bin"], 2, classes.clone())?, read(dir, &["test.bin"], 2, classes)?))
}
