//! The VGG network as burn modules, built from a [`VggConfig`].
//!
//! One code path runs every layer of the [`Plan`]; [`Vgg::forward`], [`Vgg::forward_train`] and
//! [`Vgg::taps`] (named activations, for features and perceptual losses) are thin wrappers around
//! it, so the layer names a person reads are the ones the code executes.

pub mod layers;
mod state;

pub use state::ParamSlot;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::{ConfigError, LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, LayerKind, Plan, VggConfig};
pub use layers::{BatchNorm2d, Conv, Fc};

/// A convolution with its optional BatchNorm: one row of Table 1.
#[derive(Module, Debug)]
pub struct ConvUnit {
    /// The convolution.
    pub conv: Conv,
    /// BatchNorm after it, in the `_bn` variants.
    pub bn: Option<BatchNorm2d>,
}

/// An activation flowing through the network: a feature map in the trunk, a vector in the head.
#[derive(Debug, Clone)]
pub enum Activation {
    /// `[N, C, H, W]`.
    Map(Tensor<4>),
    /// `[N, F]`.
    Flat(Tensor<2>),
}

impl Activation {
    /// The shape, batch first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Activation::Map(t) => t.dims().to_vec(),
            Activation::Flat(t) => t.dims().to_vec(),
        }
    }

    /// Flattens a map to `[N, C·H·W]` in PyTorch's (c, h, w) order.
    pub fn flat(self) -> Tensor<2> {
        match self {
            Activation::Map(t) => {
                let [n, c, h, w] = t.dims();
                t.reshape([n, c * h * w])
            }
            Activation::Flat(t) => t,
        }
    }

    /// The feature map; a vector becomes `[N, F, 1, 1]`.
    pub fn map(self) -> Tensor<4> {
        match self {
            Activation::Map(t) => t,
            Activation::Flat(t) => {
                let [n, f] = t.dims();
                t.reshape([n, f, 1, 1])
            }
        }
    }
}

/// A VGG network: the trunk (`features`) and the head (`classifier`).
#[derive(Module, Debug)]
pub struct Vgg {
    /// The convolutions of the trunk, in order.
    pub convs: Vec<ConvUnit>,
    /// The fully connected layers of the head, in order.
    pub fcs: Vec<Fc>,
    #[module(skip)]
    config: VggConfig,
    #[module(skip)]
    plan: Plan,
}

impl Vgg {
    /// Builds the network with torchvision's random initialisation.
    pub fn new(config: &VggConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let plan = config.plan([224, 224]);
        let mut convs = Vec::new();
        let mut fcs = Vec::new();
        for layer in &plan.layers {
            match layer.kind {
                LayerKind::Conv { in_channels, out_channels, kernel } => convs.push(ConvUnit {
                    conv: Conv::new(in_channels, out_channels, kernel, device),
                    bn: config.batch_norm.then(|| BatchNorm2d::new(out_channels, device)),
                }),
                LayerKind::Linear { in_features, out_features } => fcs.push(Fc::new(in_features, out_features, device)),
                _ => {}
            }
        }
        Ok(Self { convs, fcs, config: config.clone(), plan })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &VggConfig {
        &self.config
    }

    /// The layer plan (shapes for a 224x224 input; use [`VggConfig::plan`] for other sizes).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Checks that an input of `[N, C, H, W]` fits the network, with a message that says why not.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), ConfigError> {
        self.config.check_input(dims)
    }

    /// Evaluation-mode forward: BatchNorm uses running statistics, dropout is off.
    /// Returns the logits `[N, classes]`, or pool5 flattened for [`Head::None`].
    ///
    /// # Panics
    /// If the input does not pass [`Vgg::check_input`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.run(x, false, &mut |_, _| ControlFlow::Continue(())).flat()
    }

    /// Training-mode forward: batch statistics (running ones updated as PyTorch does) and dropout.
    pub fn forward_train(&self, x: Tensor<4>) -> Tensor<2> {
        self.run(x, true, &mut |_, _| ControlFlow::Continue(())).flat()
    }

    /// The trunk alone (torchvision's `model.features(x)`): pool5, `[N, 512, H/32, W/32]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let last = self.plan.trunk - 1;
        self.run(x, false, &mut |i, _| if i == last { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }).map()
    }

    /// Evaluation-mode activations of the named layers (paper names such as `conv1_1`, `relu4_2`,
    /// `pool5`, `fc7`, or torchvision keys such as `features.3`). Stops after the last one asked.
    pub fn taps(&self, x: Tensor<4>, names: &[&str]) -> Result<BTreeMap<String, Activation>, ConfigError> {
        let mut wanted = Vec::new();
        for name in names {
            let i = self.plan.find(name).ok_or_else(|| ConfigError::UnknownLayer {
                arch: self.config.arch_name(),
                name: name.to_string(),
                known: self.plan.names(),
            })?;
            wanted.push((i, name.to_string()));
        }
        let last = wanted.iter().map(|(i, _)| *i).max().unwrap_or(0);
        let mut out = BTreeMap::new();
        self.run(x, false, &mut |i, act| {
            for (j, name) in &wanted {
                if *j == i {
                    // A clone shares the buffer, so later layers cannot overwrite it in place.
                    out.insert(name.clone(), act.clone());
                }
            }
            if i >= last { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        Ok(out)
    }

    /// Runs the plan, calling `visit` with each layer's index and output; `visit` may stop early.
    pub fn run(
        &self,
        x: Tensor<4>,
        train: bool,
        visit: &mut dyn FnMut(usize, &Activation) -> ControlFlow<()>,
    ) -> Activation {
        let mut act = Activation::Map(x);
        let mut conv_i = 0;
        let mut fc_i = 0;
        let trunk = self.plan.trunk;
        for (i, layer) in self.plan.layers.iter().enumerate() {
            act = match (&layer.kind, act) {
                (LayerKind::Conv { .. }, Activation::Map(t)) => {
                    conv_i += 1;
                    Activation::Map(self.convs[conv_i - 1].conv.forward(t))
                }
                (LayerKind::BatchNorm { .. }, Activation::Map(t)) => {
                    let bn = self.convs[conv_i - 1].bn.as_ref().expect("plan and modules agree on BatchNorm");
                    Activation::Map(if train { bn.forward_train(t) } else { bn.forward_eval(t) })
                }
                (LayerKind::Relu, Activation::Map(t)) => Activation::Map(burn::tensor::activation::relu(t)),
                (LayerKind::Relu, Activation::Flat(t)) => Activation::Flat(burn::tensor::activation::relu(t)),
                (LayerKind::Lrn, Activation::Map(t)) => {
                    Activation::Map(layers::local_response_norm(t, LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K))
                }
                (LayerKind::MaxPool, Activation::Map(t)) => Activation::Map(layers::max_pool_2x2(t)),
                (LayerKind::AdaptiveAvgPool { out }, Activation::Map(t)) => {
                    Activation::Map(layers::adaptive_avg_pool(t, *out))
                }
                (LayerKind::Dropout, a) => {
                    if train {
                        Activation::Flat(layers::dropout(a.flat(), self.config.dropout))
                    } else {
                        a
                    }
                }
                (LayerKind::Linear { .. }, a) => {
                    let mut a = a;
                    if i == trunk && self.config.head.averages_to_one() {
                        // The CIFAR head expects a 1x1 map; larger inputs are averaged to it.
                        a = Activation::Map(layers::adaptive_avg_pool(a.map(), [1, 1]));
                    }
                    fc_i += 1;
                    Activation::Flat(self.fcs[fc_i - 1].forward(a.flat()))
                }
                (kind, a) => unreachable!("{kind:?} cannot follow an activation of shape {:?}", a.dims()),
            };
            if visit(i, &act).is_break() {
                break;
            }
        }
        act
    }

    /// Trainable parameters (BatchNorm running statistics excluded, as PyTorch counts them).
    pub fn num_params(&self) -> u64 {
        let mut n = 0u64;
        for u in &self.convs {
            n += (u.conv.weight.shape().num_elements() + u.conv.bias.shape().num_elements()) as u64;
            if let Some(bn) = &u.bn {
                n += (bn.weight.shape().num_elements() + bn.bias.shape().num_elements()) as u64;
            }
        }
        for f in &self.fcs {
            n += (f.weight.shape().num_elements() + f.bias.shape().num_elements()) as u64;
        }
        n
    }
}

impl Vgg {
    /// The device the weights live on.
    pub fn devices(&self) -> burn::tensor::Device {
        self.convs[0].conv.weight.val().device()
    }
}

/// A tensor's values as f32, whatever float type the backend holds them in.
pub fn to_f32(data: burn::tensor::TensorData) -> Vec<f32> {
    data.try_into_vec_as::<f32>().expect("float tensor data converts to f32")
}
