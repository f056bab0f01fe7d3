//! # vgg
//!
//! The VGG family of convolutional networks (Simonyan & Zisserman, 2014) on burn, exact to
//! torchvision: every configuration of the paper's Table 1, with and without BatchNorm, torchvision's
//! `state_dict` keys, PyTorch `.pth` and safetensors weights, torchvision's preprocessing.
//!
//! ```no_run
//! use vgg::{Vgg, VggConfig, image::Preprocess, weights::{self, Strict}};
//! let device = burn::tensor::Device::default();
//! let mut model = Vgg::new(&VggConfig::from_arch("vgg16")?, &device)?;
//! model.load_state_dict(&weights::load_file("vgg16-397923af.pth".as_ref())?, Strict::Yes)?;
//! let x = Preprocess::imagenet().load("cat.jpg".as_ref())?.to_tensor(&device);
//! let probs = burn::tensor::activation::softmax(model.forward(x), 1);
//! let top = vgg::classify::top_k(&probs, 5);
//! println!("{} {:.3}", vgg::labels::imagenet()[top[0][0].0], top[0][0].1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout, in dependency order: [`config`] (Table 1 and the layer plan) → [`model`] (burn modules)
//! → [`weights`] (keys, `.pth`, safetensors, the torchvision registry) and [`image`]
//! (preprocessing) → [`kernels`] and [`engine`] (the fast CPU path, training and gradients) →
//! [`classify`], [`features`], [`explain`] (Grad-CAM, saliency), [`style`] (style transfer),
//! [`eval`] (accuracy on a dataset, over [`data`]'s batches), [`train`] and [`export`] (ONNX,
//! safetensors): what the CLI verbs call.

pub mod classify;
pub mod config;
pub mod data;
pub mod engine;
pub mod eval;
pub mod explain;
pub mod export;
pub mod features;
pub mod file;
pub mod formula;
pub mod image;
pub mod kernels;
pub mod labels;
pub mod model;
pub mod net;
pub mod npy;
pub mod onnx;
pub mod parse;
pub mod plot;
pub mod pretrained;
pub mod protocol;
pub mod style;
pub mod train;
pub mod weights;

pub use config::{Depth, Head, VggConfig};
pub use model::Vgg;
