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

/// The smallest side an image needs for activation `top` of `engine` to have a position: each 2x2
/// pooling before it halves the map (floor), so `2^pools`.
fn min_side(engine: &crate::engine::Engine, top: usize) -> usize {
    let pools = engine.activation_names().iter().take(top + 1).filter(|n| n.starts_with("pool")).count();
    1 << pools
}

/// Refuses images too small to reach activation `top`, naming it.
fn check_side(engine: &crate::engine::Engine, top: usize, [h, w]: [usize; 2]) -> Result<(), PerceptualError> {
    let need = min_side(engine, top);
    if h < need || w < need {
        let name = engine.activation_names().get(top).map_or("the last layer".to_string(), |n| n.to_string());
        return Err(PerceptualError::Input(format!(
            "{w}x{h} images are too small: {name} needs at least {need}x{need} (a 2x2 pooling halves the map before it each time)"
        )));
    }
    Ok(())
}
