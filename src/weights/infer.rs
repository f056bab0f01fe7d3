//! Recognising the architecture of a state dict from its keys and shapes, so that a torchvision
//! `.pth` file needs no `--arch`.

use super::StateDict;
use crate::config::{Depth, Head, LayerKind, VggConfig};

fn shape<'a>(sd: &'a StateDict, key: &str) -> Option<&'a [usize]> {
    sd.get(key).map(|t| t.shape.as_slice())
}

/// The configuration whose keys and shapes the state dict matches, if exactly one does.
pub fn infer_config(sd: &StateDict) -> Option<VggConfig> {
    let first = shape(sd, "features.0.weight")?;
    if first.len() != 4 {
        return None;
    }
    let (c0, in_ch) = (first[0], first[1]);
    let width = c0 as f64 / 64.0;
    let mut found = None;
    for depth in Depth::ALL {
        for bn in [false, true] {
            let cfg = VggConfig::new(depth, bn).with_head(Head::None).with_width(width).with_in_channels(in_ch);
            if cfg.scaled(64) != c0 {
                continue;
            }
            let plan = cfg.plan([224, 224]);
            let trunk_ok = plan.layers.iter().all(|l| match l.kind {
                LayerKind::Conv { in_channels, out_channels, kernel } => {
                    shape(sd, &format!("{}.weight", l.key)) == Some(&[out_channels, in_channels, kernel, kernel][..])
                }
                LayerKind::BatchNorm { channels } => {
                    shape(sd, &format!("{}.running_var", l.key)) == Some(&[channels][..])
                }
                _ => true,
            });
            // The trunk must account for every `features.*` tensor (num_batches_tracked is optional).
            let count = |k: &&String| k.starts_with("features.") && !k.ends_with("num_batches_tracked");
            let present = sd.keys().filter(count).count();
            let expected: usize = plan
                .layers
                .iter()
                .map(|l| match l.kind {
                    LayerKind::Conv { .. } => 2,
                    LayerKind::BatchNorm { .. } => 4,
                    _ => 0,
                })
                .sum();
            if trunk_ok && present == expected {
                if found.is_some() {
                    return None;
                }
                found = Some(cfg);
            }
        }
    }
    let mut cfg = found?;
    let c = cfg.out_channels();
    let mut fcs: Vec<(usize, Vec<usize>)> = sd
        .iter()
        .filter_map(|(k, t)| {
            let idx = k.strip_prefix("classifier.")?.strip_suffix(".weight")?.parse().ok()?;
            Some((idx, t.shape.clone()))
        })
        .collect();
    fcs.sort();
    if fcs.is_empty() {
        return Some(cfg);
    }
    let outs: Vec<usize> = fcs.iter().map(|(_, s)| s[0]).collect();
    let idx: Vec<usize> = fcs.iter().map(|(i, _)| *i).collect();
    let num_classes = *outs.last()?;
    // The flattened map the first layer reads: C x side x side.
    let first_in = fcs[0].1.get(1).copied().unwrap_or(0);
    let side = ((first_in / c) as f64).sqrt().round() as usize;
    let pooled = side > 1 && side * side * c == first_in;
    if idx == [0, 3, 6] && pooled && outs[0] == outs[1] {
        cfg.head = Head::Imagenet { hidden: outs[0], pool: [side, side] };
        cfg.num_classes = num_classes;
        return Some(cfg);
    }
    // A CIFAR-style MLP (over a pooled map: any dense head): indices step by 2 without dropout,
    // by 3 with it.
    let step = if idx.len() > 1 { idx[1] - idx[0] } else { 2 };
    let pool = if pooled { [side, side] } else { [1, 1] };
    cfg.head = Head::mlp(outs[..outs.len() - 1].to_vec(), pool);
    cfg.num_classes = num_classes;
    cfg.dropout = if step == 3 { 0.5 } else { 0.0 };
    Some(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::TensorEntry;

    fn fake(cfg: &VggConfig) -> StateDict {
        let plan = cfg.plan([224, 224]);
        let mut sd = StateDict::new();
        for l in &plan.layers {
            let mut put = |leaf: &str, s: Vec<usize>| {
                let n = s.iter().product();
                sd.insert(format!("{}.{leaf}", l.key), TensorEntry::f32(s, vec![0.0; n]));
            };
            match l.kind {
                LayerKind::Conv { in_channels, out_channels, kernel } => {
                    put("weight", vec![out_channels, in_channels, kernel, kernel]);
                    put("bias", vec![out_channels]);
                }
                LayerKind::BatchNorm { channels } => {
                    for leaf in ["weight", "bias", "running_mean", "running_var"] {
                        put(leaf, vec![channels]);
                    }
                    put("num_batches_tracked", vec![]);
                }
                LayerKind::Linear { in_features, out_features } => {
                    put("weight", vec![out_features, in_features]);
                    put("bias", vec![out_features]);
                }
                _ => {}
            }
        }
        sd
    }

    #[test]
    fn recognises_every_config_and_head() {
        for depth in Depth::ALL {
            for bn in [false, true] {
                let c = VggConfig::new(depth, bn).with_width(0.125);
                assert_eq!(infer_config(&fake(&c)).as_ref(), Some(&c), "{c}");
            }
        }
        let c = VggConfig::new(Depth::D, true)
            .with_head(Head::cifar())
            .with_num_classes(10)
            .with_dropout(0.0)
            .with_width(0.25)
            .with_in_channels(1);
        assert_eq!(infer_config(&fake(&c)), Some(c));
        let c = VggConfig::new(Depth::B, false)
            .with_head(Head::Cifar { hidden: vec![64, 32], pool: None })
            .with_num_classes(7)
            .with_width(0.25);
        assert_eq!(infer_config(&fake(&c)), Some(c));
        // A Keras-style dense head over the pooled 7x7 map, three layers with dropout (0, 3, 6)
        // like torchvision's but of unequal widths, and one without dropout.
        let c = VggConfig::new(Depth::D, false)
            .with_head(Head::mlp(vec![64, 128], [7, 7]))
            .with_num_classes(4)
            .with_width(0.25);
        assert_eq!(infer_config(&fake(&c)), Some(c));
        let c = VggConfig::new(Depth::A, true)
            .with_head(Head::mlp(vec![16, 32, 8], [2, 2]))
            .with_num_classes(4)
            .with_dropout(0.0)
            .with_width(0.25);
        assert_eq!(infer_config(&fake(&c)), Some(c));
        let c = VggConfig::new(Depth::E, false).with_head(Head::None).with_width(0.25);
        assert_eq!(infer_config(&fake(&c)), Some(c));
    }
}
