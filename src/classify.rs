//! Classification: probabilities, top-k, and batches of image files of any sizes.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;

use crate::image::{ImageError, ImageTensor, Preprocess};
use crate::model::Vgg;
use crate::net::Network;
pub use crate::protocol::ClassifyError;

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scored {
    /// Class index.
    pub index: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// The prediction for one image (the JSON Lines record of `vgg classify --json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    /// The path as given.
    pub image: String,
    /// Most probable first.
    pub top: Vec<Scored>,
}

/// The `k` largest entries of each row, as (index, value), largest first; ties keep index order.
pub fn top_k(probs: &Tensor<2>, k: usize) -> Vec<Vec<(usize, f32)>> {
    let [_, c] = probs.dims();
    top_k_rows(&crate::model::to_f32(probs.to_data()), c, k)
}

/// [`top_k`] of rows of `c` values.
pub fn top_k_rows(v: &[f32], c: usize, k: usize) -> Vec<Vec<(usize, f32)>> {
    v.chunks_exact(c.max(1))
        .map(|row| {
            let mut idx: Vec<usize> = (0..c).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.into_iter().take(k.min(c)).map(|j| (j, row[j])).collect()
        })
        .collect()
}

/// Soft-max of each row of `c` logits.
pub fn softmax_rows(v: &[f32], c: usize) -> Vec<f32> {
    v.chunks_exact(c.max(1)).flat_map(crate::kernels::dense::softmax).map(|p| p as f32).collect()
}

/// Classifies image files one at a time under a test protocol of the paper (dense or multi-crop,
/// several scales, flips).
#[allow(clippy::too_many_arguments)]
pub fn classify_files_with(
    net: &dyn Network,
    pre: &Preprocess,
    views: &crate::protocol::Views,
    labels: &[String],
    paths: &[PathBuf],
    k: usize,
    on_done: &mut dyn FnMut(usize),
) -> Vec<Result<Prediction, ClassifyError>> {
    paths
        .iter()
        .map(|path| {
            let img = crate::image::open(path)?;
            let p = crate::protocol::posteriors(net, &img, pre, views)?;
            let p: Vec<f32> = p.into_iter().map(|v| v as f32).collect();
            let top = top_k_rows(&p, p.len(), k).remove(0);
            on_done(1);
            Ok(prediction(path, top, labels))
        })
        .collect()
}

fn prediction(path: &Path, top: Vec<(usize, f32)>, labels: &[String]) -> Prediction {
    Prediction {
        image: path.display().to_string(),
        top: top
            .into_iter()
            .map(|(index, prob)| Scored {
                index,
                label: labels.get(index).cloned().unwrap_or_else(|| format!("class {index}")),
                prob,
            })
            .collect(),
    }
}

/// Classifies image files, `batch` at a time; images of the same preprocessed size share a forward
/// pass, others run separately. Each result is in input order; a file that fails to load gives its
/// own error without stopping the rest.
pub fn classify_files(
    net: &dyn Network,
    pre: &Preprocess,
    labels: &[String],
    paths: &[PathBuf],
    k: usize,
    batch: usize,
    on_done: &mut dyn FnMut(usize),
) -> Vec<Result<Prediction, ClassifyError>> {
    let config = net.config();
    let classes = config.num_classes;
    let mut out: Vec<Option<Result<Prediction, ClassifyError>>> = (0..paths.len()).map(|_| None).collect();
    let batch = batch.max(1);
    for chunk_start in (0..paths.len()).step_by(batch) {
        let idx: Vec<usize> = (chunk_start..(chunk_start + batch).min(paths.len())).collect();
        let mut loaded: Vec<(usize, ImageTensor)> = Vec::new();
        for &i in &idx {
            match pre.load(&paths[i]).and_then(|t| {
                let [c, h, w] = t.shape;
                config
                    .check_input([1, c, h, w])
                    .map_err(|e| ImageError::Invalid(format!("{}: {e}", paths[i].display())))
                    .map(|_| t)
            }) {
                Ok(t) => loaded.push((i, t)),
                Err(e) => out[i] = Some(Err(e.into())),
            }
        }
        // Group by shape so that each group is one forward pass.
        while !loaded.is_empty() {
            let shape = loaded[0].1.shape;
            let (group, rest): (Vec<_>, Vec<_>) = loaded.into_iter().partition(|(_, t)| t.shape == shape);
            loaded = rest;
            let [c, h, w] = shape;
            let data: Vec<f32> = group.iter().flat_map(|(_, t)| t.data.iter().copied()).collect();
            let logits = net.logits(&data, [group.len(), c, h, w]);
            let tops = top_k_rows(&softmax_rows(&logits, classes), classes, k);
            for ((i, _), top) in group.iter().zip(tops) {
                out[*i] = Some(Ok(prediction(&paths[*i], top, labels)));
            }
        }
        on_done(idx.len());
    }
    out.into_iter().map(|r| r.expect("every image has a result")).collect()
}

/// Classifies one preprocessed image file (a convenience for library users).
pub fn classify_file(
    model: &Vgg,
    pre: &Preprocess,
    labels: &[String],
    path: &Path,
    k: usize,
) -> Result<Prediction, ClassifyError> {
    classify_files(&*crate::net::for_model(model), pre, labels, &[path.to_path_buf()], k, 1, &mut |_| {}).remove(0)
}

/// The results for a list of files, in their order.
pub type Predictions = Vec<Result<Prediction, ClassifyError>>;

/// Runs `classify` (one of the functions above, on a list of files) over the processes of
/// `group`: each takes every `size`-th batch of `batch` files, so that each file is in the batch it
/// would be in one process. Rank 0 gets every result in input order, a failure as its message;
/// the others get nothing.
pub fn classify_sharded(
    group: &dyn crate::dist::Collective,
    paths: &[PathBuf],
    batch: usize,
    classify: &mut dyn FnMut(&[PathBuf]) -> Predictions,
) -> Vec<Result<Prediction, String>> {
    let mine = crate::dist::batches_of(paths.len(), batch, group.rank(), group.size());
    let my_paths: Vec<PathBuf> = mine.iter().map(|&i| paths[i].clone()).collect();
    let results = classify(&my_paths).into_iter().map(|r| r.map_err(|e| e.to_string()));
    crate::dist::gather_ordered(group, 0, mine.into_iter().zip(results).collect())
}
