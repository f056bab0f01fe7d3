//! `vgg curves`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct CurvesArgs {
    /// A run directory written by `vgg train` (its metrics.jsonl).
    run: PathBuf,
    /// Where to write the PNG (default: RUN/curves.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Draws a run's loss and accuracy curves from its metrics.jsonl.
pub fn run(a: CurvesArgs) -> Result<()> {
    let path = a.run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let m: vgg::train::EpochMetrics =
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        rows.push((m.epoch, m.train_loss, m.train_acc, m.test_loss, m.test_acc));
    }
    let best = rows.iter().map(|r| r.4).fold(0.0, f64::max);
    let out = a.out.unwrap_or_else(|| a.run.join("curves.png"));
    vgg::plot::training_curves(&rows, &format!("best test accuracy {:.2}%", best * 100.0))
        .save(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}
