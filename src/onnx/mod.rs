//! ONNX, read and written in one place: [`read`] imports VGG-family graphs from torchvision's and
//! tf2onnx's exports into a `state_dict`, [`write`] exports any configuration as a graph; both sit
//! on the hand-written protocol-buffer code of [`proto`].

pub mod proto;
pub mod read;
pub mod write;

pub use crate::weights::import::Imported;
pub use read::{looks_like, read};
pub use write::{ExportError, OPSET, OnnxOptions, OnnxSummary, to_onnx};
