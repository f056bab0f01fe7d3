//! Batch assembly: 8-bit images of a dataset normalised into an NCHW f32 batch, with the training
//! augmentations (crop, shift, flip, lighting, erasing) drawn per image, and the epoch's order.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::Dataset;
use super::augment::{self, CropAug, Pca};

/// Per-channel normalisation of 8-bit pixels, and the principal components of RGB datasets (for
/// lighting noise).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelNorm {
    /// Mean of v/255, per channel (a gray image uses the first).
    pub mean: [f32; 3],
    /// Standard deviation of v/255, per channel.
    pub std: [f32; 3],
    /// Principal components of the RGB values.
    #[serde(default)]
    pub pca: Option<Pca>,
}

impl PixelNorm {
    /// One mean and standard deviation for every channel.
    pub fn gray(mean: f32, std: f32) -> Self {
        Self { mean: [mean; 3], std: [std; 3], pca: None }
    }

    /// The normalisation of a preprocessing, as a dataset's images get it; `None` for Caffe's
    /// (BGR, 0-255), which the datasets' images are never given.
    pub fn from_normalize(n: &crate::image::Normalize) -> Option<Self> {
        use crate::image::Normalize;
        match *n {
            Normalize::Gray { mean, std } => Some(Self::gray(mean, std)),
            Normalize::MeanStd { mean, std } => Some(Self { mean, std, pca: None }),
            Normalize::Caffe => None,
        }
    }

    /// Means and standard deviations of each channel over a whole dataset (and, for RGB, its
    /// principal components, from at most about 2000 images).
    pub fn of(ds: &Dataset) -> Self {
        let [c, h, w] = ds.shape;
        let hw = h * w;
        let mut out = Self::gray(0.0, 1.0);
        for ch in 0..c.min(3) {
            let values = || ds.images.chunks_exact(c * hw).flat_map(move |img| &img[ch * hw..(ch + 1) * hw]);
            let n = (ds.len() * hw).max(1) as f64;
            let mean = values().map(|&v| v as f64 / 255.0).sum::<f64>() / n;
            let var = values().map(|&v| (v as f64 / 255.0 - mean).powi(2)).sum::<f64>() / n;
            out.mean[ch] = mean as f32;
            out.std[ch] = (var.sqrt() as f32).max(1e-6);
        }
        if c == 1 {
            out = Self::gray(out.mean[0], out.std[0]);
        }
        if c == 3 {
            out.pca = Some(Pca::of(&ds.images, hw, ds.len().div_ceil(2000)));
        }
        out
    }
}

/// The augmentation of a training batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// How images are cropped.
    pub crop: CropAug,
    /// Largest shift of [`CropAug::Shift`].
    pub shift: usize,
    /// Standard deviation of PCA lighting noise (0: none; AlexNet and the paper: 0.1).
    pub lighting: f64,
    /// Probability of random erasing ([`augment::erase_box`]; 0: none).
    pub erase: f64,
}

/// Places images centred on the canvas, normalised. With `rng`, each is shifted by up to `shift`
/// pixels each way (the padded random crop of CIFAR-style training; pixels shifted out are lost,
/// the gap is background) and flipped horizontally with probability 1/2.
pub fn make_batch(
    ds: &Dataset,
    idx: &[usize],
    canvas: usize,
    shift: usize,
    norm: PixelNorm,
    rng: Option<&mut StdRng>,
) -> (Vec<f32>, Vec<usize>) {
    make_batch_with(ds, idx, canvas, &Augment { crop: CropAug::Shift, shift, lighting: 0.0, erase: 0.0 }, norm, rng)
}

/// [`make_batch`] with any augmentation (applied only when `rng` is given), the images drawing one
/// after another from `rng`.
pub fn make_batch_with(
    ds: &Dataset,
    idx: &[usize],
    canvas: usize,
    aug: &Augment,
    norm: PixelNorm,
    mut rng: Option<&mut StdRng>,
) -> (Vec<f32>, Vec<usize>) {
    let [c, _, _] = ds.shape;
    let labels = idx.iter().map(|&i| ds.labels[i] as usize).collect();
    let mut x = vec![0f32; idx.len() * c * canvas * canvas];
    for (&i, out) in idx.iter().zip(x.chunks_exact_mut(c * canvas * canvas)) {
        place_image(ds, i, canvas, aug, &norm, rng.as_deref_mut(), out);
    }
    (x, labels)
}

/// [`make_batch_with`] where image `b` draws its augmentation from its own seed `seeds[b]`, so that
/// an image is augmented the same whichever batch or process assembles it (the shards of a
/// data-parallel batch concatenate to the batch one process would assemble).
pub fn make_batch_seeded(
    ds: &Dataset,
    idx: &[usize],
    canvas: usize,
    aug: &Augment,
    norm: PixelNorm,
    seeds: &[u64],
) -> (Vec<f32>, Vec<usize>) {
    assert_eq!(idx.len(), seeds.len(), "one seed per image");
    let [c, _, _] = ds.shape;
    let labels = idx.iter().map(|&i| ds.labels[i] as usize).collect();
    let mut x = vec![0f32; idx.len() * c * canvas * canvas];
    for ((&i, &seed), out) in idx.iter().zip(seeds).zip(x.chunks_exact_mut(c * canvas * canvas)) {
        place_image(ds, i, canvas, aug, &norm, Some(&mut StdRng::seed_from_u64(seed)), out);
    }
    (x, labels)
}

/// Image `i` of `ds` normalised onto its `[c, canvas, canvas]` slot `out`, augmented from `rng`
/// when given (draws in a fixed order: the crop or shift, the flip, the lighting, the erasing).
fn place_image(
    ds: &Dataset,
    i: usize,
    canvas: usize,
    aug: &Augment,
    norm: &PixelNorm,
    mut rng: Option<&mut StdRng>,
    out: &mut [f32],
) {
    let [c, h, w] = ds.shape;
    let plane = canvas * canvas;
    if let (Some(r), CropAug::ScaleJitter { .. } | CropAug::ResizedCrop { .. }) = (rng.as_deref_mut(), aug.crop) {
        let bx = match aug.crop {
            CropAug::ScaleJitter { smin, smax } => augment::scale_jitter_box(h, w, canvas, smin, smax, r),
            CropAug::ResizedCrop { min_scale } => augment::resized_crop_box(h, w, min_scale, r),
            CropAug::Shift => unreachable!(),
        };
        let flip = r.random_bool(0.5);
        augment::sample_box(ds.image(i), ds.shape, bx, canvas, flip, out);
        let light = lighting(c, aug, norm, r);
        for ch in 0..c {
            let k = ch.min(2);
            for v in &mut out[ch * plane..(ch + 1) * plane] {
                *v = (*v + light[k] - norm.mean[k]) / norm.std[k];
            }
        }
        erase(out, c, canvas, aug.erase, r);
        return;
    }
    for ch in 0..c {
        let k = ch.min(2);
        out[ch * plane..(ch + 1) * plane].fill((0.0 - norm.mean[k]) / norm.std[k]);
    }
    let (cy, cx) = ((canvas as isize - h as isize) / 2, (canvas as isize - w as isize) / 2);
    let s = aug.shift as isize;
    let (dy, dx, flip) = match rng.as_deref_mut() {
        Some(r) => (
            r.random_range(-s as i64..=s as i64) as isize,
            r.random_range(-s as i64..=s as i64) as isize,
            r.random_bool(0.5),
        ),
        None => (0, 0, false),
    };
    let (oy, ox) = (cy + dy, cx + dx);
    let img = ds.image(i);
    let light = match rng.as_deref_mut() {
        Some(r) => lighting(c, aug, norm, r),
        None => [0.0; 3],
    };
    for ch in 0..c {
        let (mean, std) = (norm.mean[ch.min(2)] - light[ch.min(2)], norm.std[ch.min(2)]);
        for y in 0..h {
            let ty = oy + y as isize;
            if ty < 0 || ty >= canvas as isize {
                continue;
            }
            for xx in 0..w {
                let tx = ox + xx as isize;
                if tx < 0 || tx >= canvas as isize {
                    continue;
                }
                let src = if flip { w - 1 - xx } else { xx };
                let v = img[(ch * h + y) * w + src] as f32 / 255.0;
                out[(ch * canvas + ty as usize) * canvas + tx as usize] = (v - mean) / std;
            }
        }
    }
    if let Some(r) = rng {
        erase(out, c, canvas, aug.erase, r);
    }
}

/// Random erasing of one normalised image (`[c, canvas, canvas]`): the rectangle is set to 0, the
/// dataset mean, as torchvision's RandomErasing after Normalize. Draws nothing when `p` is 0, so
/// runs without erasing keep their random streams.
fn erase(img: &mut [f32], c: usize, canvas: usize, p: f64, rng: &mut StdRng) {
    if p <= 0.0 {
        return;
    }
    if let Some([top, left, eh, ew]) = augment::erase_box(canvas, canvas, p, rng) {
        for ch in 0..c {
            for y in top..top + eh {
                img[(ch * canvas + y) * canvas + left..][..ew].fill(0.0);
            }
        }
    }
}

/// The lighting offset of one image (zero unless RGB with lighting noise asked for).
fn lighting(c: usize, aug: &Augment, norm: &PixelNorm, rng: &mut StdRng) -> [f32; 3] {
    match (c, aug.lighting > 0.0, norm.pca) {
        (3, true, Some(pca)) => pca.offset(aug.lighting, rng),
        _ => [0.0; 3],
    }
}

/// The data order of an epoch: a permutation that depends only on the seed and the epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9e3779b97f4a7c15)));
    order
}
