//! What the importers of other frameworks' files (ONNX graphs, Keras `.h5`/`.keras`, Caffe
//! `.caffemodel`) share: the result of an import, the trunk matched by shapes, and a dense
//! classifier head — Keras-style, with BatchNorm between its layers and
//! an (h, w, c) flatten — folded into torchvision's `classifier.N` layers.

use super::{Dtype, StateDict, TensorEntry};
use crate::config::{Depth, Head, LayerKind, VggConfig};
use crate::image::Preprocess;

/// What an import of another framework's file gave.
#[derive(Debug)]
pub struct Imported {
    /// The tensors under torchvision's keys.
    pub state_dict: StateDict,
    /// The preprocessing: recorded in the file, or Caffe-style for a graph with an NHWC input
    /// (Keras' VGG16/VGG19 applications), else none.
    pub preprocess: Option<Preprocess>,
    /// What was adapted on the way (for messages).
    pub notes: Vec<String>,
}

/// A dense layer collected from the head: `[out, in]` weights and bias.
pub(crate) struct Dense {
    pub(crate) w: Vec<f32>,
    pub(crate) out: usize,
    pub(crate) inp: usize,
    pub(crate) b: Vec<f32>,
}

impl Dense {
    /// `y ↦ s·y + t` applied to this layer's output (a BatchNorm between it and its ReLU).
    pub(crate) fn scale_output(&mut self, s: &[f32], t: &[f32]) {
        for o in 0..self.out {
            self.w[o * self.inp..][..self.inp].iter_mut().for_each(|w| *w *= s[o]);
            self.b[o] = self.b[o] * s[o] + t[o];
        }
    }

    /// `x ↦ s·x + t` applied to this layer's input (a BatchNorm after the previous ReLU):
    /// W' = W·diag(s), b' = b + W·t.
    pub(crate) fn absorb_input(&mut self, s: &[f32], t: &[f32]) {
        for o in 0..self.out {
            let row = &mut self.w[o * self.inp..][..self.inp];
            let shift: f32 = row.iter().zip(t).map(|(w, t)| w * t).sum();
            self.b[o] += shift;
            row.iter_mut().zip(s).for_each(|(w, s)| *w *= s);
        }
    }
}

/// A BatchNorm in evaluation mode as the affine map it is: scale and shift per feature.
pub(crate) fn bn_affine(g: &[f32], b: &[f32], m: &[f32], v: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let s: Vec<f32> = g.iter().zip(v).map(|(g, v)| g / (v + eps).sqrt()).collect();
    let t = b.iter().zip(m).zip(&s).map(|((b, m), s)| b - m * s).collect();
    (s, t)
}

/// Folds a per-feature affine map of the head into the last dense layer (when no ReLU came
/// between) or keeps it for the next one (composed with one already waiting).
pub(crate) fn fold_head_affine(
    dense: &mut [Dense],
    pending: &mut Option<(Vec<f32>, Vec<f32>)>,
    after_relu: bool,
    s: Vec<f32>,
    t: Vec<f32>,
) -> Result<(), String> {
    if !after_relu {
        let d = dense.last_mut().ok_or("an affine map before any dense layer")?;
        d.scale_output(&s, &t);
        return Ok(());
    }
    *pending = Some(match pending.take() {
        // x ↦ s2·(s1·x + t1) + t2
        Some((s1, t1)) => {
            let st: Vec<f32> = s1.iter().zip(&s).map(|(a, b)| a * b).collect();
            let tt = t1.iter().zip(&s).zip(&t).map(|((t1, s2), t2)| t1 * s2 + t2).collect();
            (st, tt)
        }
        None => (s, t),
    });
    Ok(())
}

/// Puts the dense layers of an imported head under torchvision's `classifier.N` keys: its
/// three-layer ImageNet head over a pooled map, or a CIFAR-style MLP over the channel vector.
/// `hwc`: the first layer's inputs are in Keras' (h, w, c) flatten order, reordered to (c, h, w).
pub(crate) fn place_head(
    sd: &mut StateDict,
    mut dense: Vec<Dense>,
    channels: usize,
    hwc: bool,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    if let Some(first) = dense.first_mut() {
        let hw = first.inp / channels.max(1);
        if hw * channels != first.inp {
            return Err(format!(
                "the first dense layer takes {} features, not a multiple of the trunk's {channels} channels",
                first.inp
            ));
        }
        if hwc && hw > 1 {
            // Keras flattens (h, w, c); torchvision (c, h, w).
            let mut w = vec![0f32; first.w.len()];
            for o in 0..first.out {
                let (src, dst) = (&first.w[o * first.inp..][..first.inp], &mut w[o * first.inp..][..first.inp]);
                for p in 0..hw {
                    for c in 0..channels {
                        dst[c * hw + p] = src[p * channels + c];
                    }
                }
            }
            first.w = w;
            notes.push("the first dense layer's rows reordered from Keras' (h, w, c) flatten to (c, h, w)".into());
        }
    }
    // torchvision's head is three layers with equal hidden widths over a pooled map; any other
    // dense head is an MLP over the channel vector or over a pooled map of C x side x side.
    let imagenet = dense.len() == 3 && dense[0].out == dense[1].out && dense[0].inp > channels;
    if let Some(first) = dense.first() {
        let side = ((first.inp / channels.max(1)) as f64).sqrt().round() as usize;
        if side * side * channels != first.inp {
            return Err(format!(
                "the first dense layer takes {} features: not the trunk's {channels} channels over a square map",
                first.inp
            ));
        }
    }
    for w in dense.windows(2) {
        if w[1].inp != w[0].out {
            return Err(format!("a dense layer of {} inputs after one of {} outputs", w[1].inp, w[0].out));
        }
    }
    for (i, d) in dense.into_iter().enumerate() {
        let key = if imagenet { 3 * i } else { 2 * i };
        sd.insert(format!("classifier.{key}.weight"), TensorEntry::f32(vec![d.out, d.inp], d.w));
        sd.insert(format!("classifier.{key}.bias"), TensorEntry::f32(vec![d.out], d.b));
    }
    Ok(())
}

/// One weighted layer of an imported file, in torchvision's layout.
pub(crate) enum Item {
    Conv {
        name: String,
        shape: [usize; 4],
        w: Vec<f32>,
        b: Vec<f32>,
    },
    /// `gap`: weightless layers (an activation, a dropout) came between it and the layer before.
    Bn {
        name: String,
        g: Vec<f32>,
        b: Vec<f32>,
        m: Vec<f32>,
        v: Vec<f32>,
        eps: f32,
        gap: bool,
    },
    Dense {
        name: String,
        d: Dense,
    },
}

/// Matches the file's convolutions and BatchNorms against each configuration's trunk and puts them
/// under its `features.N` keys; returns the trunk's output channels. A-LRN is never chosen: Keras
/// has no LRN layer, and its weights are A's.
pub(crate) fn place_trunk(sd: &mut StateDict, items: &[Item]) -> Result<usize, String> {
    let trunk: Vec<&Item> = items.iter().take_while(|i| !matches!(i, Item::Dense { .. })).collect();
    let Some(Item::Conv { shape: first, .. }) = trunk.first() else {
        return Err("no convolutions before the dense layers: not a VGG".into());
    };
    let bn = trunk.iter().any(|i| matches!(i, Item::Bn { .. }));
    let width = first[0] as f64 / 64.0;
    for depth in Depth::ALL.into_iter().filter(|d| *d != Depth::ALrn) {
        let cfg = VggConfig::new(depth, bn).with_head(Head::None).with_width(width).with_in_channels(first[1]);
        let plan = cfg.plan([224, 224]);
        let wanted: Vec<_> = plan
            .layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKind::Conv { .. } | LayerKind::BatchNorm { .. }))
            .collect();
        let fits = wanted.len() == trunk.len()
            && wanted.iter().zip(&trunk).all(|(l, it)| match (&l.kind, it) {
                (LayerKind::Conv { in_channels, out_channels, kernel }, Item::Conv { shape, .. }) => {
                    *shape == [*out_channels, *in_channels, *kernel, *kernel]
                }
                (LayerKind::BatchNorm { channels }, Item::Bn { g, .. }) => g.len() == *channels,
                _ => false,
            });
        if !fits {
            continue;
        }
        for (l, it) in wanted.iter().zip(&trunk) {
            match it {
                Item::Conv { shape, w, b, .. } => {
                    sd.insert(format!("{}.weight", l.key), TensorEntry::f32(shape.to_vec(), w.clone()));
                    sd.insert(format!("{}.bias", l.key), TensorEntry::f32(vec![shape[0]], b.clone()));
                }
                Item::Bn { g, b, m, v, eps, .. } => {
                    let c = g.len();
                    // The engine's epsilon is PyTorch's 1e-5; Keras' (1e-3 by default) moves into the variance.
                    let v: Vec<f32> = v.iter().map(|x| x + eps - 1e-5).collect();
                    let v = &v;
                    for (leaf, data) in [("weight", g), ("bias", b), ("running_mean", m), ("running_var", v)] {
                        sd.insert(format!("{}.{leaf}", l.key), TensorEntry::f32(vec![c], data.clone()));
                    }
                    sd.insert(
                        format!("{}.num_batches_tracked", l.key),
                        TensorEntry { shape: vec![], dtype: Dtype::I64, data: vec![0.0] },
                    );
                }
                Item::Dense { .. } => unreachable!("the trunk stops at the first dense layer"),
            }
        }
        return Ok(cfg.out_channels());
    }
    let desc: Vec<String> = trunk
        .iter()
        .map(|it| match it {
            Item::Conv { name, shape, .. } => format!("{name} {}x{} {}→{}", shape[2], shape[3], shape[1], shape[0]),
            Item::Bn { name, g, .. } => format!("{name} BN({})", g.len()),
            Item::Dense { .. } => unreachable!(),
        })
        .collect();
    Err(format!(
        "the convolutions do not form any VGG configuration's trunk (A, B, C, D, E, with or without BatchNorm): {}",
        desc.join(", ")
    ))
}
