//! Evaluation of a classifier on a dataset: loss, top-1/top-5 accuracy and the confusion matrix,
//! optionally with the paper's test-time flip, on any [`Network`]. `vgg
//! eval` and the training loop's per-epoch evaluation both call it.

use std::path::Path;

use burn::tensor::Device;

use crate::data::Dataset;
use crate::data::batch::{PixelNorm, make_batch};
use crate::dist::{Collective, Single};
use crate::model::Vgg;
use crate::net::Network;
use crate::pretrained::LoadError;
use crate::weights::Strict;
use crate::weights::registry::Fetcher;

/// Loss, top-1 accuracy and the confusion matrix (`[true][predicted]`) of a model on a dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    evaluate_net(&*crate::net::for_model(model), ds, canvas, norm, batch, flip, &Single, progress)
}

/// [`evaluate_tta`] on any network, over the processes of `group`: each evaluates every
/// `size`-th batch, and every process gets the result one process would compute, exactly.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_net(
    net: &dyn Network,
    ds: &Dataset,
    canvas: usize,
    norm: PixelNorm,
    batch: usize,
    flip: bool,
    group: &dyn Collective,
    progress: &mut dyn FnMut(usize),
) -> Evaluation {
    let forward = |x: Vec<f32>, dims| net.logits(&x, dims);
    evaluate_sharded(&forward, net.config().num_classes, ds, canvas, norm, batch, flip, group, progress)
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
    evaluate_sharded(forward, classes, ds, canvas, norm, batch, flip, &Single, progress)
}

/// What the evaluation keeps of one image: −ln p(true class), the top-1 class, whether the true
/// class is in the top five. 13 bytes, so that processes exchange these rather than probabilities.
#[derive(Clone, Copy)]
struct Verdict {
    nll: f64,
    top1: u32,
    hit5: bool,
}

impl Verdict {
    const BYTES: usize = 13;

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nll.to_le_bytes());
        out.extend_from_slice(&self.top1.to_le_bytes());
        out.push(u8::from(self.hit5));
    }

    fn get(b: &[u8]) -> Self {
        Verdict {
            nll: f64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            top1: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            hit5: b[12] != 0,
        }
    }
}

/// [`evaluate_with`] over the processes of `group` (batch `b` on rank `b % size`, so each image is
/// in the same batch as in one process), the verdicts gathered by rank 0 and summed there in the
/// dataset's order, the result broadcast.
#[allow(clippy::too_many_arguments)]
fn evaluate_sharded(
    forward: &dyn Fn(Vec<f32>, [usize; 4]) -> Vec<f32>,
    classes: usize,
    ds: &Dataset,
    canvas: usize,
    norm: PixelNorm,
    batch: usize,
    flip: bool,
    group: &dyn Collective,
    progress: &mut dyn FnMut(usize),
) -> Evaluation {
    let [c, _, _] = ds.shape;
    let order: Vec<usize> = (0..ds.len()).collect();
    let chunks: Vec<&[usize]> = order.chunks(batch.max(1)).collect();
    let (rank, size) = (group.rank(), group.size());
    let mut mine = Vec::new();
    for chunk in chunks.iter().skip(rank).step_by(size) {
        let dims = [chunk.len(), c, canvas, canvas];
        let (x, labels) = make_batch(ds, chunk, canvas, 0, norm, None);
        let mut probs = softmax_rows(&forward(x.clone(), dims), classes);
        if flip {
            let mirrored = softmax_rows(&forward(flip_horizontal(&x, dims), dims), classes);
            probs.iter_mut().zip(mirrored).for_each(|(p, q)| *p = (*p + q) / 2.0);
        }
        for (row, &label) in probs.chunks_exact(classes).zip(&labels) {
            let mut idx: Vec<usize> = (0..classes).collect();
            // Stable: equal scores keep class order, as argmax does.
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            Verdict {
                nll: -row[label].max(f64::MIN_POSITIVE).ln(),
                top1: idx[0] as u32,
                hit5: idx.iter().take(5).any(|&i| i == label),
            }
            .put(&mut mine);
        }
        progress(chunk.len());
    }
    let parts = group.gather_bytes(0, &mine);
    let mut summary = Vec::new();
    if group.is_root() {
        let k = ds.classes.len().max(classes);
        let mut confusion = vec![vec![0usize; k]; k];
        let (mut loss, mut hit5) = (0f64, 0usize);
        let mut at = vec![0usize; size];
        for (b, chunk) in chunks.iter().enumerate() {
            let (part, pos) = (&parts[b % size], &mut at[b % size]);
            for &i in chunk.iter() {
                let v = Verdict::get(&part[*pos..*pos + Verdict::BYTES]);
                *pos += Verdict::BYTES;
                loss += v.nll;
                confusion[ds.labels[i] as usize][v.top1 as usize] += 1;
                hit5 += usize::from(v.hit5);
            }
        }
        let n = ds.len().max(1) as f64;
        let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
        let ev = Evaluation { loss: loss / n, acc: correct as f64 / n, acc5: hit5 as f64 / n, confusion };
        if size == 1 {
            return ev;
        }
        summary = serde_json::to_vec(&ev).expect("an evaluation serialises");
    }
    group.broadcast_bytes(0, &mut summary);
    serde_json::from_slice(&summary).expect("rank 0's evaluation")
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
