//! The paper's test protocols (Section 3.2): besides the standard single center crop, dense
//! evaluation (the network applied convolutionally to the whole image rescaled so that its shorter
//! side is Q, class scores averaged over positions) and multi-crop evaluation (a regular grid of
//! crops), each at one or several scales Q and optionally with the horizontally flipped image; the
//! soft-max posteriors of all views are averaged.

use crate::image::{self, ImageError, Preprocess, Rgb8};
use crate::kernels::dense::softmax;
use crate::net::Network;

/// Why an image could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The file could not be read, decoded or preprocessed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The network cannot look at images the way asked (dense evaluation on burn's path).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// How an image is looked at.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    /// The weights' preprocessing (torchvision: resize 256, center crop 224).
    Center,
    /// Dense evaluation at each scale Q.
    Dense {
        /// Shorter sides Q.
        scales: Vec<usize>,
    },
    /// A `grid` x `grid` lattice of crops (the preprocessing's crop size) at each scale Q.
    MultiCrop {
        /// Shorter sides Q.
        scales: Vec<usize>,
        /// Crops per side.
        grid: usize,
    },
}

impl Protocol {
    /// The protocol named `center`, `dense` or `multicrop`, at `scales` (shorter sides Q) with a
    /// `grid` x `grid` lattice of crops for multicrop.
    pub fn new(name: &str, scales: &[usize], grid: usize) -> Result<Self, crate::parse::ParseError> {
        use crate::parse::ParseError;
        let scales = || {
            if scales.is_empty() || scales.contains(&0) {
                let given = scales.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
                return Err(ParseError::new("list of scales", &given, "positive sizes such as 256,384,512"));
            }
            Ok(scales.to_vec())
        };
        match name {
            "center" => Ok(Protocol::Center),
            "dense" => Ok(Protocol::Dense { scales: scales()? }),
            "multicrop" | "multi-crop" => Ok(Protocol::MultiCrop { scales: scales()?, grid: grid.max(1) }),
            _ => Err(ParseError::new("protocol", name, "center, dense or multicrop")),
        }
    }
}

/// Views of one image under a protocol, with flips.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// The protocol.
    pub protocol: Protocol,
    /// Also each view mirrored.
    pub flip: bool,
}

fn mirror(img: &Rgb8) -> Rgb8 {
    let mut data = img.data.clone();
    for (row, src) in data.chunks_exact_mut(img.width * 3).zip(img.data.chunks_exact(img.width * 3)) {
        for x in 0..img.width {
            row[x * 3..x * 3 + 3].copy_from_slice(&src[(img.width - 1 - x) * 3..(img.width - x) * 3]);
        }
    }
    Rgb8 { width: img.width, height: img.height, data }
}

/// Top-left corners of a `grid`-per-side lattice of `crop` windows evenly spread over `len`.
fn lattice(len: usize, crop: usize, grid: usize) -> Vec<usize> {
    let room = len.saturating_sub(crop);
    if grid <= 1 {
        return vec![room / 2];
    }
    (0..grid).map(|i| (room as f64 * i as f64 / (grid - 1) as f64).round() as usize).collect()
}

/// The class posteriors of `img`: the average of the soft-max of every view.
pub fn posteriors(net: &dyn Network, img: &Rgb8, pre: &Preprocess, views: &Views) -> Result<Vec<f64>, ClassifyError> {
    let min = crate::config::VggConfig::MIN_INPUT;
    let too_small = |what: &str, v: usize| {
        Err(image::ImageError::Invalid(format!("{what} {v} is smaller than the {min} pixels five max-pools need"))
            .into())
    };
    match &views.protocol {
        Protocol::Dense { scales } | Protocol::MultiCrop { scales, .. } => {
            if let Some(&q) = scales.iter().find(|&&q| q < min) {
                return too_small("scale", q);
            }
        }
        Protocol::Center => {}
    }
    if let (Protocol::MultiCrop { .. }, Some([h, w])) = (&views.protocol, pre.crop)
        && h.min(w) < min
    {
        return too_small("crop", h.min(w));
    }
    let images = if views.flip { vec![img.clone(), mirror(img)] } else { vec![img.clone()] };
    let mut sum: Vec<f64> = vec![];
    let mut count = 0usize;
    let mut add = |p: Vec<f64>| {
        if sum.is_empty() {
            sum = vec![0.0; p.len()];
        }
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        count += 1;
    };
    for im in &images {
        match &views.protocol {
            Protocol::Center => {
                let t = pre.apply(im)?;
                if t.shape[1].min(t.shape[2]) < min {
                    return too_small("preprocessed side", t.shape[1].min(t.shape[2]));
                }
                add(softmax(&net.logits(&t.data, t.dims())));
            }
            Protocol::Dense { scales } => {
                for &q in scales {
                    let t = image::to_tensor(&image::resize_shorter(im, q, pre.filter), &pre.normalize);
                    add(softmax(&net.dense_logits(&t.data, t.dims())?));
                }
            }
            Protocol::MultiCrop { scales, grid } => {
                let [ch, cw] = pre.crop.unwrap_or([224, 224]);
                for &q in scales {
                    let r = image::resize_shorter(im, q.max(ch).max(cw), pre.filter);
                    let t = image::to_tensor(&r, &pre.normalize);
                    let [_, c, h, w] = t.dims();
                    let (ys, xs) = (lattice(h, ch, *grid), lattice(w, cw, *grid));
                    let mut batch = Vec::with_capacity(ys.len() * xs.len() * c * ch * cw);
                    for &y0 in &ys {
                        for &x0 in &xs {
                            for k in 0..c {
                                for y in y0..y0 + ch {
                                    batch.extend_from_slice(&t.data[(k * h + y) * w + x0..][..cw]);
                                }
                            }
                        }
                    }
                    let n = ys.len() * xs.len();
                    let logits = net.logits(&batch, [n, c, ch, cw]);
                    for row in logits.chunks_exact(net.config().num_classes) {
                        add(softmax(row));
                    }
                }
            }
        }
    }
    Ok(sum.into_iter().map(|v| v / count.max(1) as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lattices_span_the_image() {
        assert_eq!(lattice(384, 224, 5), vec![0, 40, 80, 120, 160]);
        assert_eq!(lattice(224, 224, 3), vec![0, 0, 0]);
        assert_eq!(lattice(300, 224, 1), vec![38]);
    }

    #[test]
    fn mirroring_twice_is_identity() {
        let img = Rgb8 { width: 3, height: 2, data: (0..18).collect() };
        let m = mirror(&img);
        assert_eq!(&m.data[0..3], &[6, 7, 8]);
        assert_eq!(mirror(&m), img);
    }
}
