//! The expanded layer list of a configuration: what each layer does, its names (paper and
//! torchvision) and sizes.

/// What a layer of the plan does.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// A convolution, stride 1, padding `kernel / 2`.
    Conv {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel side (3, or 1 in configuration C).
        kernel: usize,
    },
    /// BatchNorm2d.
    BatchNorm {
        /// Channels.
        channels: usize,
    },
    /// ReLU.
    Relu,
    /// Local response normalisation.
    Lrn,
    /// 2x2 stride-2 max-pool.
    MaxPool,
    /// PyTorch's adaptive average pool.
    AdaptiveAvgPool {
        /// Output size.
        out: [usize; 2],
    },
    /// A fully connected layer.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// Dropout (identity in evaluation).
    Dropout,
}

impl LayerKind {
    /// A short type name as PyTorch prints it.
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerKind::Conv { .. } => "Conv2d",
            LayerKind::BatchNorm { .. } => "BatchNorm2d",
            LayerKind::Relu => "ReLU",
            LayerKind::Lrn => "LocalResponseNorm",
            LayerKind::MaxPool => "MaxPool2d",
            LayerKind::AdaptiveAvgPool { .. } => "AdaptiveAvgPool2d",
            LayerKind::Linear { .. } => "Linear",
            LayerKind::Dropout => "Dropout",
        }
    }
}

/// One layer of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The paper's name: `conv1_1`, `bn1_1`, `relu1_1`, `pool1`, `fc6`, …
    pub name: String,
    /// torchvision's module path: `features.0`, `avgpool`, `classifier.6`.
    pub key: String,
    /// What it does.
    pub kind: LayerKind,
    /// Output shape without the batch dimension.
    pub out_shape: Vec<usize>,
    /// Trainable parameters (BatchNorm running statistics are buffers and not counted).
    pub params: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
}

/// The expanded layer list of a configuration at a given input size.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// All layers, trunk first.
    pub layers: Vec<Layer>,
    /// How many of `layers` belong to the trunk (`features`).
    pub trunk: usize,
    /// The input size `[H, W]` the shapes were computed for.
    pub input: [usize; 2],
}

impl Plan {
    /// Total trainable parameters.
    pub fn params(&self) -> u64 {
        self.layers.iter().map(|l| l.params).sum()
    }
    /// Parameters of the trunk.
    pub fn feature_params(&self) -> u64 {
        self.layers[..self.trunk].iter().map(|l| l.params).sum()
    }
    /// Parameters of the head.
    pub fn classifier_params(&self) -> u64 {
        self.layers[self.trunk..].iter().map(|l| l.params).sum()
    }
    /// Multiply-accumulates per image.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }
    /// The position of a layer given by paper name (`conv4_2`) or torchvision key (`features.19`).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name || l.key == name)
    }
    /// The names of every layer, comma-separated (for error messages).
    pub fn names(&self) -> String {
        self.layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}
