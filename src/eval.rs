//! Evaluation of a classifier on a dataset: loss, top-1/top-5 accuracy and the confusion matrix,
//! optionally with the paper's test-time flip, on any [`Network`]. `vgg
//! eval` and the training loop's per-epoch evaluation both call it.

use std::path::Path;

use burn::tensor::Device;

use crate::data::Dataset;
use crate::data::batch::{PixelNorm, make_batch};
use crate::model::Vgg;
use crate::net::Network;
use crate::pretrained::LoadError;
use crate::weights::Strict;
use crate::weights::registry::Fetcher;

/// Loss, top-1 accuracy and the confusion matrix (`[true][predicted]`) of a model on a dataset.
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy.
    pub acc: f64,
    /// Top-5 accuracy.
    pub acc5: f64,
    /// Counts, `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates in evaluation mode, `batch` images at a time, on the fast engine where it runs the
/// model (burn otherwise).
pub fn evaluate(
    model: &Vgg,
    ds: &Dataset,
    canvas: usize,
    norm: PixelNorm,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Evaluation {
    evaluate_tta(model, ds, canvas, norm, batch, false, progress)
}

/// [`evaluate`], optionally averaging the class probabilities of each image and its horizontal
/// mirror (the flip half of the paper's test-time protocol).
pub fn evaluate_tta(
    model: &Vgg,
    ds: &Dataset,
    canvas: usize,
    norm: PixelNorm,
    batch: usize,
    flip: bool,
    progress: &mut dyn FnMut(usize),
) -> Evaluation {
    evaluate_net(&*crate::net::for_model(model), ds, canvas, norm, batch, flip, progress)
}

/// [`evaluate_tta`] on any network.
pub fn evaluate_net(
    net: &dyn Network,
    ds: &Dataset,
    canvas: usize,
    norm: PixelNorm,
    batch: usize,
    flip: bool,
    progress: &mut dyn FnMut(usize),
) -> Evaluation {
    let forward = |x: Vec<f32>, dims| net.logits(&x, dims);
    evaluate_with(&forward, net.config().num_classes, ds, canvas, norm, batch, flip, progress)
}

/// Mirrors an NCHW batch left to right.
pub fn flip_horizontal(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, i) in out.chunks_exact_mut(w).zip(x.chunks_exact(w)).take(n * c * h) {
        for (a, b) in o.iter_mut().zip(i.iter().rev()) {
            *a = *b;
        }
    }
    out
}

fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f64> {
    logits.chunks_exact(classes).flat_map(crate::kernels::dense::softmax).collect()
}

/// [`evaluate`] with any function from an NCHW batch to its logits. The loss is the mean negative
/// log of the (averaged) probability of the true class.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with(
    forward: &dyn Fn(Vec<f32>, [usize; 4]) -> Vec<f32>,
    classes: usize,
    ds: &Dataset,
    canvas: usize,
    norm: PixelNorm,
    batch: usize,
    flip: bool,
    progress: &mut dyn FnMut(usize),
) -> Evaluation {
    let k = ds.classes.len().max(classes);
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut loss, mut hit5) = (0f64, 0usize);
    let [c, _, _] = ds.shape;
    let order: Vec<usize> = (0..ds.len()).collect();
    for chunk in order.chunks(batch.max(1)) {
        let dims = [chunk.len(), c, canvas, canvas];
        let (x, labels) = make_batch(ds, chunk, canvas, 0, norm, None);
        let mut probs = softmax_rows(&forward(x.clone(), dims), classes);
        if flip {
            let mirrored = softmax_rows(&forward(flip_horizontal(&x, dims), dims), classes);
            probs.iter_mut().zip(mirrored).for_each(|(p, q)| *p = (*p + q) / 2.0);
        }
        for (row, &label) in probs.chunks_exact(classes).zip(&labels) {
            loss -= row[label].max(f64::MIN_POSITIVE).ln();
            let mut idx: Vec<usize> = (0..classes).collect();
            // Stable: equal scores keep class order, as argmax does.
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            confusion[label][idx[0]] += 1;
            hit5 += idx.iter().take(5).any(|&i| i == label) as usize;
        }
        progress(chunk.len());
    }
    let n = ds.len().max(1) as f64;
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    Evaluation { loss: loss / n, acc: correct as f64 / n, acc5: hit5 as f64 / n, confusion }
}

/// Loads a weights file for evaluation with the preprocessing it records.
pub fn load_for_eval(path: &Path, device: &Device) -> Result<(Vgg, crate::image::Preprocess), LoadError> {
    let loaded = crate::pretrained::load(
        // `fashion-mnist` names the built-in model; anything else is a file.
        &match path.to_str() {
            Some("fashion-mnist") => crate::pretrained::WeightsSpec::FashionMnist,
            _ => crate::pretrained::WeightsSpec::File(path.to_path_buf()),
        },
        None,
        Strict::Yes,
        &Fetcher::from_env(),
        device,
        &mut |_, _| {},
    )?;
    Ok((loaded.model, loaded.preprocess))
}
