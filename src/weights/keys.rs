//! The weight-key mapping: which torchvision `state_dict` key holds which tensor of a VGG, and
//! the paper's name for it.
//!
//! | torchvision key            | paper name          | shape             |
//! | -------------------------- | ------------------- | ----------------- |
//! | `features.0.weight`        | `conv1_1.weight`    | `[64, 3, 3, 3]`   |
//! | `features.1.running_var`   | `bn1_1.running_var` | `[64]` (`_bn`)    |
//! | `classifier.0.weight`      | `fc6.weight`        | `[4096, 25088]`   |
//! | `classifier.6.bias`        | `fc8.bias`          | `[classes]`       |

use super::{StateDict, WeightsError};
use crate::config::{LayerKind, Plan, VggConfig};

/// Whether every key must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strict {
    /// Every tensor of the model must be in the weights, with its shape, and nothing else may be.
    Yes,
    /// Load what matches; report what is missing, unexpected or of another shape (new heads).
    No,
}

/// Which names keys are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `features.0.weight`, as torchvision.
    Torchvision,
    /// `conv1_1.weight`, as the paper names layers.
    Paper,
    /// timm's VGG: torchvision's trunk keys, the ImageNet head as `pre_logits.fc1` (a 7x7
    /// convolution), `pre_logits.fc2` (1x1) and `head.fc`.
    Timm,
}

impl std::fmt::Display for KeyStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyStyle::Torchvision => "torchvision",
            KeyStyle::Paper => "paper",
            KeyStyle::Timm => "timm",
        })
    }
}

impl std::str::FromStr for KeyStyle {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "torchvision" => Ok(KeyStyle::Torchvision),
            "paper" => Ok(KeyStyle::Paper),
            "timm" => Ok(KeyStyle::Timm),
            _ => Err(crate::parse::ParseError::new("key style", s, "torchvision, paper or timm")),
        }
    }
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Keys loaded.
    pub loaded: Vec<String>,
    /// Keys the model has and the weights lack (left at their initial values).
    pub missing: Vec<String>,
    /// Keys the weights have and the model does not.
    pub unexpected: Vec<String>,
    /// Keys present on both sides with different shapes: (key, model shape, file shape).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// True when everything matched.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// The leaves of each layer kind, in torchvision's order.
fn leaves(kind: &LayerKind) -> &'static [&'static str] {
    match kind {
        LayerKind::Conv { .. } | LayerKind::Linear { .. } => &["weight", "bias"],
        LayerKind::BatchNorm { .. } => &["weight", "bias", "running_mean", "running_var", "num_batches_tracked"],
        _ => &[],
    }
}

/// Every (torchvision key, paper key) pair of a plan, in order.
pub fn key_pairs(plan: &Plan) -> Vec<(String, String)> {
    plan.layers
        .iter()
        .flat_map(|l| {
            leaves(&l.kind).iter().map(move |leaf| (format!("{}.{leaf}", l.key), format!("{}.{leaf}", l.name)))
        })
        .collect()
}

/// Rewrites keys to the given style; keys that match neither style are kept as they are. timm's
/// style applies to ImageNet heads (`fc6`'s weight becomes a `[out, c, 7, 7]` convolution, `fc7`'s
/// a 1x1 one); a plan without one keeps torchvision's keys there.
pub fn rename(sd: &StateDict, plan: &Plan, style: KeyStyle) -> StateDict {
    let pairs = key_pairs(plan);
    let torchvision: StateDict = sd
        .iter()
        .map(|(k, v)| {
            let new = pairs
                .iter()
                .find(|(tv, paper)| tv == k || paper == k)
                .map(|(tv, paper)| if style == KeyStyle::Paper { paper.clone() } else { tv.clone() })
                .unwrap_or_else(|| k.clone());
            (new, v.clone())
        })
        .collect();
    match (style, plan.layers.iter().find(|l| l.key == "avgpool")) {
        (KeyStyle::Timm, Some(pool)) => to_timm(torchvision, &pool.out_shape),
        _ => torchvision,
    }
}

/// Whether weights of `config` can be written with `style`'s keys: timm's VGG only has
/// torchvision's ImageNet head over a 7x7 map (its `pre_logits.fc1` is a 7x7 convolution).
pub fn check_style(config: &crate::config::VggConfig, style: KeyStyle) -> Result<(), String> {
    match (style, &config.head) {
        (KeyStyle::Timm, crate::config::Head::Imagenet { pool: [7, 7], .. })
        | (KeyStyle::Torchvision | KeyStyle::Paper, _) => Ok(()),
        (KeyStyle::Timm, head) => Err(format!(
            "timm's VGG has torchvision's ImageNet head over a 7x7 map (pre_logits.fc1 a 7x7 convolution); {} has a {} head",
            config.arch_name(),
            head.name()
        )),
    }
}

/// torchvision's ImageNet head names and timm's (`timm.models.vgg._filter_fn` maps them so).
const TIMM_HEAD: [(&str, &str); 3] =
    [("classifier.0", "pre_logits.fc1"), ("classifier.3", "pre_logits.fc2"), ("classifier.6", "head.fc")];

/// A torchvision key's name in timm's VGG (the same outside the ImageNet head).
pub fn timm_key(key: &str) -> String {
    TIMM_HEAD
        .iter()
        .find_map(|(tv, timm)| key.strip_prefix(tv).map(|leaf| format!("{timm}{leaf}")))
        .unwrap_or_else(|| key.to_string())
}

/// Renames an ImageNet head to timm's keys, reshaping the two hidden layers' weights into
/// convolutions over the pooled map (`[c, ph, pw]`).
fn to_timm(sd: StateDict, pooled: &[usize]) -> StateDict {
    sd.into_iter()
        .map(|(k, mut v)| {
            for (index, (tv, timm)) in TIMM_HEAD.iter().enumerate() {
                if let Some(leaf) = k.strip_prefix(tv) {
                    if leaf == ".weight" && v.shape.len() == 2 && index < 2 {
                        v.shape = if index == 0 {
                            [&[v.shape[0]][..], pooled].concat()
                        } else {
                            vec![v.shape[0], v.shape[1], 1, 1]
                        };
                    }
                    return (format!("{timm}{leaf}"), v);
                }
            }
            (k, v)
        })
        .collect()
}

/// A timm VGG state dict under torchvision's keys (its convolutional head as the linear layers it
/// equals: the values are the same, in the same order), or `None` when `sd` has no timm head.
pub fn from_timm(sd: &StateDict) -> Option<StateDict> {
    if !sd.contains_key("pre_logits.fc1.weight") {
        return None;
    }
    Some(
        sd.iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                for (tv, timm) in TIMM_HEAD {
                    if let Some(leaf) = k.strip_prefix(timm) {
                        if leaf == ".weight" && v.shape.len() == 4 {
                            v.shape = vec![v.shape[0], v.shape[1..].iter().product()];
                        }
                        return (format!("{tv}{leaf}"), v);
                    }
                }
                (k.clone(), v)
            })
            .collect(),
    )
}

/// Every torchvision key of a configuration with its shape, in `state_dict` order.
pub fn expected_shapes(config: &VggConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for l in &config.plan([224, 224]).layers {
        let shapes: Vec<Vec<usize>> = match l.kind {
            LayerKind::Conv { in_channels, out_channels, kernel } => {
                vec![vec![out_channels, in_channels, kernel, kernel], vec![out_channels]]
            }
            LayerKind::Linear { in_features, out_features } => {
                vec![vec![out_features, in_features], vec![out_features]]
            }
            LayerKind::BatchNorm { channels } => vec![vec![channels]; 4].into_iter().chain([vec![]]).collect(),
            _ => vec![],
        };
        for (leaf, shape) in leaves(&l.kind).iter().zip(shapes) {
            out.push((format!("{}.{leaf}", l.key), shape));
        }
    }
    out
}

/// Checks `sd` against `config` as a strict (or non-strict) `load_state_dict` would, with the same
/// errors, and returns it under torchvision's keys (files may use the paper's). Non-strict keeps
/// what matches; the caller decides what a missing tensor means.
pub fn conform(sd: StateDict, config: &VggConfig, strict: Strict) -> Result<StateDict, WeightsError> {
    let plan = config.plan([224, 224]);
    let paper: std::collections::BTreeSet<String> = key_pairs(&plan).into_iter().map(|(_, p)| p).collect();
    let sd = if sd.keys().any(|k| paper.contains(k)) { rename(&sd, &plan, KeyStyle::Torchvision) } else { sd };
    if strict == Strict::No {
        return Ok(sd);
    }
    let arch = config.arch_name();
    let expected = expected_shapes(config);
    for (key, shape) in &expected {
        match sd.get(key) {
            None => {
                return Err(WeightsError::MissingKey {
                    key: key.clone(),
                    expected: shape.clone(),
                    arch,
                    hint: describe(&sd),
                });
            }
            Some(t) if t.shape != *shape && !(key.ends_with(".num_batches_tracked") && t.data.len() == 1) => {
                return Err(WeightsError::ShapeMismatch {
                    key: key.clone(),
                    expected: shape.clone(),
                    found: t.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    let known: std::collections::BTreeSet<&String> = expected.iter().map(|(k, _)| k).collect();
    let unexpected: Vec<String> = sd.keys().filter(|k| !known.contains(k)).cloned().collect();
    if !unexpected.is_empty() {
        return Err(WeightsError::UnexpectedKeys { arch, keys: unexpected.join(", ") });
    }
    Ok(sd)
}

/// A short description of what a state dict holds, for error messages.
pub(crate) fn describe(sd: &StateDict) -> String {
    let n = sd.len();
    let first: Vec<&str> = sd.keys().take(4).map(String::as_str).collect();
    if n == 0 {
        "the file holds no tensors".into()
    } else {
        format!("the file holds {n} tensors ({}{})", first.join(", "), if n > 4 { ", …" } else { "" })
    }
}
