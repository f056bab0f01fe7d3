//! The paper's Table 1 as data, and the layer plan every other module reads.
//!
//! A [`VggConfig`] names a column of Table 1 (A, A-LRN, B, C, D, E), whether each conv is followed by
//! BatchNorm, the head, and the sizes. [`VggConfig::plan`] expands it into the flat list of layers a
//! person reads: paper names (`conv3_2`, `pool5`, `fc7`), torchvision `state_dict` keys
//! (`features.12`, `classifier.3`), output shapes, parameters and multiply-accumulates.

mod plan;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use plan::{Layer, LayerKind, Plan};

/// One entry of a Table 1 column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `conv3-N`: 3x3 convolution, stride 1, padding 1, N output channels.
    Conv3(usize),
    /// `conv1-N`: 1x1 convolution (configuration C only).
    Conv1(usize),
    /// `LRN`: local response normalisation as in AlexNet (configuration A-LRN only).
    Lrn,
}

use Unit::{Conv1, Conv3, Lrn};

/// Table 1 of Simonyan & Zisserman (2014): the five blocks of each configuration; every block ends
/// with a 2x2 stride-2 max-pool.
#[rustfmt::skip]
const TABLE_1: [(Depth, [&[Unit]; 5]); 6] = [
    //               block 1                      block 2                        block 3                                               block 4                                               block 5
    (Depth::A,    [&[Conv3(64)],               &[Conv3(128)],                 &[Conv3(256), Conv3(256)],                            &[Conv3(512), Conv3(512)],                            &[Conv3(512), Conv3(512)]]),
    (Depth::ALrn, [&[Conv3(64), Lrn],          &[Conv3(128)],                 &[Conv3(256), Conv3(256)],                            &[Conv3(512), Conv3(512)],                            &[Conv3(512), Conv3(512)]]),
    (Depth::B,    [&[Conv3(64), Conv3(64)],    &[Conv3(128), Conv3(128)],     &[Conv3(256), Conv3(256)],                            &[Conv3(512), Conv3(512)],                            &[Conv3(512), Conv3(512)]]),
    (Depth::C,    [&[Conv3(64), Conv3(64)],    &[Conv3(128), Conv3(128)],     &[Conv3(256), Conv3(256), Conv1(256)],                &[Conv3(512), Conv3(512), Conv1(512)],                &[Conv3(512), Conv3(512), Conv1(512)]]),
    (Depth::D,    [&[Conv3(64), Conv3(64)],    &[Conv3(128), Conv3(128)],     &[Conv3(256), Conv3(256), Conv3(256)],                &[Conv3(512), Conv3(512), Conv3(512)],                &[Conv3(512), Conv3(512), Conv3(512)]]),
    (Depth::E,    [&[Conv3(64), Conv3(64)],    &[Conv3(128), Conv3(128)],     &[Conv3(256), Conv3(256), Conv3(256), Conv3(256)],    &[Conv3(512), Conv3(512), Conv3(512), Conv3(512)],    &[Conv3(512), Conv3(512), Conv3(512), Conv3(512)]]),
];

/// AlexNet's local response normalisation, used by configuration A-LRN (paper section 2.3).
pub const LRN_SIZE: usize = 5;
/// LRN `alpha` (PyTorch divides it by the window size, as AlexNet's formula does).
pub const LRN_ALPHA: f64 = 1e-4;
/// LRN `beta`.
pub const LRN_BETA: f64 = 0.75;
/// LRN `k`.
pub const LRN_K: f64 = 2.0;

/// A column of Table 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Depth {
    /// 11 weight layers (VGG-11).
    A,
    /// A with LRN after the first convolution.
    ALrn,
    /// 13 weight layers (VGG-13).
    B,
    /// 16 weight layers, blocks 3–5 end with a 1x1 convolution.
    C,
    /// 16 weight layers (VGG-16).
    D,
    /// 19 weight layers (VGG-19).
    E,
}

impl Depth {
    /// All columns, in the paper's order.
    pub const ALL: [Depth; 6] = [Depth::A, Depth::ALrn, Depth::B, Depth::C, Depth::D, Depth::E];

    /// The five blocks of this column.
    pub fn blocks(self) -> [&'static [Unit]; 5] {
        TABLE_1.iter().find(|(d, _)| *d == self).map(|(_, b)| *b).expect("every Depth is in TABLE_1")
    }

    /// The paper's letter for this column.
    pub fn letter(self) -> &'static str {
        match self {
            Depth::A => "A",
            Depth::ALrn => "A-LRN",
            Depth::B => "B",
            Depth::C => "C",
            Depth::D => "D",
            Depth::E => "E",
        }
    }

    /// Number of weight layers (convolutions and fully connected layers).
    pub fn weight_layers(self) -> usize {
        self.blocks().iter().flat_map(|b| b.iter()).filter(|u| !matches!(u, Lrn)).count() + 3
    }
}

/// What follows the convolutional trunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Head {
    /// torchvision's head: adaptive average pool to `pool`, then
    /// Linear(C·pool², hidden)-ReLU-Dropout-Linear(hidden, hidden)-ReLU-Dropout-Linear(hidden, classes).
    Imagenet {
        /// Hidden width of fc6 and fc7 (4096 in the paper).
        hidden: usize,
        /// Output size of the adaptive average pool (7x7 in torchvision).
        pool: [usize; 2],
    },
    /// A CIFAR-style head, or any MLP head: the trunk's map (1x1 for a 32x32 input; averaged to
    /// 1x1 otherwise, or adaptively to `pool`) is flattened and passed through Linear-ReLU(-Dropout)
    /// layers of the given widths, then to classes. With `pool` it is the general dense head of
    /// Keras-style fine-tuning (e.g. 7x7x512 → 64 → 128 → 256 → classes).
    Cifar {
        /// Widths of the hidden layers (one layer of 512 by default).
        hidden: Vec<usize>,
        /// Output size of an adaptive average pool before the flatten (an `avgpool` layer); none:
        /// the map is averaged to 1x1, as the CIFAR networks do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<[usize; 2]>,
    },
    /// Features only: the model's output is pool5.
    None,
}

impl Head {
    /// torchvision's ImageNet head.
    pub fn imagenet() -> Self {
        Head::Imagenet { hidden: 4096, pool: [7, 7] }
    }

    /// The CIFAR-style head with one hidden layer of 512.
    pub fn cifar() -> Self {
        Head::Cifar { hidden: vec![512], pool: None }
    }

    /// A dense head of the given hidden widths over the map pooled to `pool` (`[1, 1]`: over the
    /// channel vector, as [`Head::cifar`]).
    pub fn mlp(hidden: Vec<usize>, pool: [usize; 2]) -> Self {
        let pool = (pool != [1, 1]).then_some(pool);
        Head::Cifar { hidden, pool }
    }

    /// Whether the head averages the trunk's map to 1x1 itself (the CIFAR-style head without `pool`).
    pub fn averages_to_one(&self) -> bool {
        matches!(self, Head::Cifar { pool: None, .. })
    }

    /// `imagenet`, `cifar` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            Head::Imagenet { .. } => "imagenet",
            Head::Cifar { .. } => "cifar",
            Head::None => "none",
        }
    }
}

impl FromStr for Head {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "imagenet" => Ok(Head::imagenet()),
            "cifar" => Ok(Head::cifar()),
            "none" | "features" => Ok(Head::None),
            other => Err(ConfigError::UnknownHead(other.to_string())),
        }
    }
}

/// Errors in naming or sizing a model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// An architecture name that is not one of the known ones.
    #[error(
        "unknown architecture '{0}' (expected one of vgg11, vgg11_lrn, vgg13, vgg16_c, vgg16, vgg19, each optionally with _bn, or a paper letter A, A-LRN, B, C, D, E)"
    )]
    UnknownArch(String),
    /// A head name that is not one of the known ones.
    #[error("unknown head '{0}' (expected imagenet, cifar or none)")]
    UnknownHead(String),
    /// A layer name that the model does not have.
    #[error("{arch} has no layer '{name}' (its layers: {known})")]
    UnknownLayer {
        /// The architecture asked.
        arch: String,
        /// The name asked for.
        name: String,
        /// The names it has, comma-separated.
        known: String,
    },
    /// An input too small or of the wrong channel count.
    #[error("input of shape {got:?} does not fit {arch}: {why}")]
    BadInput {
        /// The architecture.
        arch: String,
        /// The input shape `[N, C, H, W]`.
        got: Vec<usize>,
        /// What is wrong.
        why: String,
    },
    /// A configuration value out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything needed to build a VGG and to name its layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggConfig {
    /// The column of Table 1.
    pub depth: Depth,
    /// conv → BatchNorm → ReLU instead of conv → ReLU.
    pub batch_norm: bool,
    /// The head.
    pub head: Head,
    /// Number of output classes (ignored by [`Head::None`]).
    pub num_classes: usize,
    /// Dropout probability in the head (0.5 in torchvision; 0 removes the dropout layers, which
    /// shifts the `classifier.N` indices of a CIFAR head as it does in PyTorch).
    pub dropout: f64,
    /// Channel multiplier for the trunk: 64·width, 128·width, … (1.0 for the paper's widths).
    pub width: f64,
    /// Input channels (3 for RGB, 1 for grayscale).
    pub in_channels: usize,
}

impl VggConfig {
    /// A configuration with torchvision's defaults: ImageNet head, 1000 classes, dropout 0.5.
    pub fn new(depth: Depth, batch_norm: bool) -> Self {
        Self { depth, batch_norm, head: Head::imagenet(), num_classes: 1000, dropout: 0.5, width: 1.0, in_channels: 3 }
    }

    /// Parses `vgg16`, `vgg16_bn`, `vgg11_lrn`, `vgg16_c`, `D`, `A-LRN`, `C_bn`, …
    pub fn from_arch(arch: &str) -> Result<Self, ConfigError> {
        let lower = arch.trim().to_ascii_lowercase();
        let (base, bn) = match lower.strip_suffix("_bn").or_else(|| lower.strip_suffix("-bn")) {
            Some(b) => (b, true),
            None => (lower.as_str(), false),
        };
        let depth = match base {
            "vgg11" | "a" => Depth::A,
            "vgg11_lrn" | "vgg11-lrn" | "a-lrn" | "a_lrn" | "alrn" => Depth::ALrn,
            "vgg13" | "b" => Depth::B,
            "vgg16_c" | "vgg16c" | "vgg16-c" | "c" => Depth::C,
            "vgg16" | "d" => Depth::D,
            "vgg19" | "e" => Depth::E,
            _ => return Err(ConfigError::UnknownArch(arch.to_string())),
        };
        Ok(Self::new(depth, bn))
    }

    /// The canonical architecture name: torchvision's where it has one (`vgg16_bn`).
    pub fn arch_name(&self) -> String {
        let base = match self.depth {
            Depth::A => "vgg11",
            Depth::ALrn => "vgg11_lrn",
            Depth::B => "vgg13",
            Depth::C => "vgg16_c",
            Depth::D => "vgg16",
            Depth::E => "vgg19",
        };
        if self.batch_norm { format!("{base}_bn") } else { base.to_string() }
    }

    /// Sets the head.
    pub fn with_head(mut self, head: Head) -> Self {
        self.head = head;
        self
    }
    /// Sets the number of classes.
    pub fn with_num_classes(mut self, n: usize) -> Self {
        self.num_classes = n;
        self
    }
    /// Sets the dropout probability of the head.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    /// Sets the channel multiplier.
    pub fn with_width(mut self, w: f64) -> Self {
        self.width = w;
        self
    }
    /// Sets the number of input channels.
    pub fn with_in_channels(mut self, c: usize) -> Self {
        self.in_channels = c;
        self
    }

    /// Checks that an input of `[N, C, H, W]` fits the network, with a message that says why not.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), ConfigError> {
        let bad = |why: String| ConfigError::BadInput { arch: self.arch_name(), got: dims.to_vec(), why };
        let [n, c, h, w] = dims;
        if n == 0 {
            return Err(bad("empty batch".into()));
        }
        if c != self.in_channels {
            return Err(bad(format!("expected {} input channels", self.in_channels)));
        }
        if h < Self::MIN_INPUT || w < Self::MIN_INPUT {
            return Err(bad(format!("five 2x2 max-pools need at least {0}x{0} pixels", Self::MIN_INPUT)));
        }
        Ok(())
    }

    /// Checks the values that the constructors cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.width > 0.0 && self.width.is_finite()) {
            return Err(ConfigError::Invalid(format!("width multiplier must be positive, got {}", self.width)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Invalid(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        if self.in_channels == 0 {
            return Err(ConfigError::Invalid("in_channels must be at least 1".into()));
        }
        if self.num_classes == 0 && !matches!(self.head, Head::None) {
            return Err(ConfigError::Invalid("num_classes must be at least 1".into()));
        }
        match &self.head {
            Head::Imagenet { hidden, pool } if *hidden == 0 || pool[0] == 0 || pool[1] == 0 => {
                Err(ConfigError::Invalid("imagenet head sizes must be positive".into()))
            }
            Head::Cifar { hidden, pool } if hidden.contains(&0) || pool.is_some_and(|p| p.contains(&0)) => {
                Err(ConfigError::Invalid("cifar head sizes must be positive".into()))
            }
            _ => Ok(()),
        }
    }

    /// Channels of a Table 1 width after the multiplier.
    pub fn scaled(&self, channels: usize) -> usize {
        ((channels as f64 * self.width).round() as usize).max(1)
    }

    /// Channels of the trunk's output (512 at width 1).
    pub fn out_channels(&self) -> usize {
        self.scaled(512)
    }

    /// Smallest input side the model accepts: five 2x2 pools need 32 pixels.
    pub const MIN_INPUT: usize = 32;

    /// The plan of the trunk and the head for an input of `input` = `[H, W]`.
    pub fn plan(&self, input: [usize; 2]) -> Plan {
        let mut layers = Vec::new();
        let mut c = self.in_channels;
        let [mut h, mut w] = input;
        let mut idx = 0usize; // index inside torchvision's `features` Sequential
        for (b, block) in self.depth.blocks().iter().enumerate() {
            let mut conv_i = 0;
            for unit in block.iter() {
                match *unit {
                    Conv3(n) | Conv1(n) => {
                        conv_i += 1;
                        let k = if matches!(unit, Conv3(_)) { 3 } else { 1 };
                        let out = self.scaled(n);
                        let params = (out * c * k * k + out) as u64;
                        let macs = (h * w * out * c * k * k) as u64;
                        layers.push(Layer {
                            name: format!("conv{}_{}", b + 1, conv_i),
                            key: format!("features.{idx}"),
                            kind: LayerKind::Conv { in_channels: c, out_channels: out, kernel: k },
                            out_shape: vec![out, h, w],
                            params,
                            macs,
                        });
                        idx += 1;
                        if self.batch_norm {
                            layers.push(Layer {
                                name: format!("bn{}_{}", b + 1, conv_i),
                                key: format!("features.{idx}"),
                                kind: LayerKind::BatchNorm { channels: out },
                                out_shape: vec![out, h, w],
                                params: 2 * out as u64,
                                macs: 0,
                            });
                            idx += 1;
                        }
                        layers.push(Layer {
                            name: format!("relu{}_{}", b + 1, conv_i),
                            key: format!("features.{idx}"),
                            kind: LayerKind::Relu,
                            out_shape: vec![out, h, w],
                            params: 0,
                            macs: 0,
                        });
                        idx += 1;
                        c = out;
                    }
                    Lrn => {
                        layers.push(Layer {
                            name: format!("lrn{}", b + 1),
                            key: format!("features.{idx}"),
                            kind: LayerKind::Lrn,
                            out_shape: vec![c, h, w],
                            params: 0,
                            macs: 0,
                        });
                        idx += 1;
                    }
                }
            }
            h /= 2;
            w /= 2;
            layers.push(Layer {
                name: format!("pool{}", b + 1),
                key: format!("features.{idx}"),
                kind: LayerKind::MaxPool,
                out_shape: vec![c, h, w],
                params: 0,
                macs: 0,
            });
            idx += 1;
        }
        let trunk = layers.len();
        let fc = |layers: &mut Vec<Layer>, name: String, idx: usize, i: usize, o: usize| {
            layers.push(Layer {
                name,
                key: format!("classifier.{idx}"),
                kind: LayerKind::Linear { in_features: i, out_features: o },
                out_shape: vec![o],
                params: (i * o + o) as u64,
                macs: (i * o) as u64,
            });
        };
        let plain = |layers: &mut Vec<Layer>, name: String, key: String, kind: LayerKind, n: usize| {
            layers.push(Layer { name, key, kind, out_shape: vec![n], params: 0, macs: 0 });
        };
        // The adaptive average pool before the flatten; returns the flattened size.
        let avgpool = |layers: &mut Vec<Layer>, pool: [usize; 2]| {
            let kind = LayerKind::AdaptiveAvgPool { out: pool };
            let out_shape = vec![c, pool[0], pool[1]];
            layers.push(Layer { name: "avgpool".into(), key: "avgpool".into(), kind, out_shape, params: 0, macs: 0 });
            c * pool[0] * pool[1]
        };
        match &self.head {
            Head::Imagenet { hidden, pool } => {
                let flat = avgpool(&mut layers, *pool);
                // torchvision always keeps its Dropout modules, so the indices are 0, 3, 6.
                fc(&mut layers, "fc6".into(), 0, flat, *hidden);
                plain(&mut layers, "relu6".into(), "classifier.1".into(), LayerKind::Relu, *hidden);
                plain(&mut layers, "drop6".into(), "classifier.2".into(), LayerKind::Dropout, *hidden);
                fc(&mut layers, "fc7".into(), 3, *hidden, *hidden);
                plain(&mut layers, "relu7".into(), "classifier.4".into(), LayerKind::Relu, *hidden);
                plain(&mut layers, "drop7".into(), "classifier.5".into(), LayerKind::Dropout, *hidden);
                fc(&mut layers, "fc8".into(), 6, *hidden, self.num_classes);
            }
            Head::Cifar { hidden, pool } => {
                let mut idx = 0;
                let mut i = c;
                if let Some(pool) = pool {
                    i = avgpool(&mut layers, *pool);
                }
                let mut n = 6;
                for &o in hidden {
                    fc(&mut layers, format!("fc{n}"), idx, i, o);
                    plain(&mut layers, format!("relu{n}"), format!("classifier.{}", idx + 1), LayerKind::Relu, o);
                    idx += 2;
                    if self.dropout > 0.0 {
                        plain(&mut layers, format!("drop{n}"), format!("classifier.{idx}"), LayerKind::Dropout, o);
                        idx += 1;
                    }
                    i = o;
                    n += 1;
                }
                fc(&mut layers, format!("fc{n}"), idx, i, self.num_classes);
            }
            Head::None => {}
        }
        Plan { layers, trunk, input }
    }
}

impl fmt::Display for VggConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (config {}", self.arch_name(), self.depth.letter())?;
        if self.batch_norm {
            write!(f, ", BatchNorm")?;
        }
        write!(f, ", {} head", self.head.name())?;
        if !matches!(self.head, Head::None) {
            write!(f, ", {} classes", self.num_classes)?;
        }
        if self.width != 1.0 {
            write!(f, ", width x{}", self.width)?;
        }
        if self.in_channels != 3 {
            write!(f, ", {} input channels", self.in_channels)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_layer_counts_match_the_paper() {
        let counts: Vec<usize> = Depth::ALL.iter().map(|d| d.weight_layers()).collect();
        assert_eq!(counts, vec![11, 11, 13, 16, 16, 19]);
    }

    #[test]
    fn arch_names_round_trip() {
        for d in Depth::ALL {
            for bn in [false, true] {
                let c = VggConfig::new(d, bn);
                assert_eq!(VggConfig::from_arch(&c.arch_name()).unwrap(), c);
            }
        }
        assert_eq!(VggConfig::from_arch("A-LRN").unwrap().depth, Depth::ALrn);
        assert!(matches!(VggConfig::from_arch("vgg17"), Err(ConfigError::UnknownArch(_))));
    }

    #[test]
    fn torchvision_feature_indices() {
        // torchvision.models.vgg16().features: Conv2d at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28
        let plan = VggConfig::from_arch("vgg16").unwrap().plan([224, 224]);
        let convs: Vec<&str> =
            plan.layers.iter().filter(|l| matches!(l.kind, LayerKind::Conv { .. })).map(|l| l.key.as_str()).collect();
        let want: Vec<String> =
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28].iter().map(|i| format!("features.{i}")).collect();
        assert_eq!(convs, want);
        assert_eq!(plan.layers[plan.find("pool5").unwrap()].key, "features.30");
        // vgg16_bn: BatchNorm2d right after each conv, 44 modules in `features`.
        let plan = VggConfig::from_arch("vgg16_bn").unwrap().plan([224, 224]);
        assert_eq!(plan.layers[plan.find("bn5_3").unwrap()].key, "features.41");
        assert_eq!(plan.layers[plan.find("pool5").unwrap()].key, "features.43");
    }
}
