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
//! Layout, in dependency order (each module uses only those before it):
//! [`config`] (Table 1 and the layer plan), [`parse`] (the written forms' error) and [`file`]
//! (the readers' error) → [`image`] (preprocessing) → [`weights`] (keys, `.pth`, safetensors,
//! Keras, the torchvision registry) and [`formula`] (the fixtures' weights) → [`model`] (burn modules, their `state_dict`) →
//! [`onnx`] (graphs read and written), [`kernels`] and [`engine`] (the fast CPU path) →
//! [`net`] (the seam: a [`net::Network`] on either path, chosen in one place) →
//! [`pretrained`] (weights specs to networks), [`data`], [`protocol`], [`classify`],
//! [`features`], [`explain`], [`style`], [`perceptual`] (LPIPS, perceptual losses), [`eval`],
//! [`train`] (a [`train::Learner`] stepped by the loop) and [`export`]: what the CLI verbs call.

pub mod classify;
pub mod config;
pub mod data;
pub mod dist;
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
pub mod perceptual;
pub mod plot;
pub mod pretrained;
pub mod protocol;
pub mod serve;
pub mod style;
pub mod train;
pub mod weights;

pub use config::{Depth, Head, VggConfig};
pub use model::Vgg;
