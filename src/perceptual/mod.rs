//! Perceptual similarity on a VGG trunk run by the engine: [`lpips`] (the metric of the `lpips`
//! package, per pair, per pixel, and its gradient) and [`loss`] (Johnson et al.'s feature and
//! Gram-matrix losses with their gradients), for measuring and training image models; [`pairs`]
//! reads what `vgg lpips` compares.

pub mod loss;
pub mod lpips;
pub mod pairs;

pub use loss::{Norm, PerceptualConfig, PerceptualLoss};
pub use lpips::{Distance, Heads, Lpips};

use crate::engine::EngineError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum PerceptualError {
    /// The engine cannot run the trunk or has no such layer.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The linear heads do not fit.
    #[error("LPIPS linear heads: {0}")]
    Heads(String),
    /// Images of the wrong shape or channels.
    #[error("{0}")]
    Input(String),
}
