//! `vgg classify`

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vgg::classify::classify_files;
use vgg::config::Head;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// A text file of class names, one per line (default: ImageNet's for 1000 classes).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// JSON Lines, one object per image.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    let loaded = a.model.load(true)?;
    let config = loaded.model.config().clone();
    if matches!(config.head, Head::None) {
        bail!("{} has no classifier head (features-only weights); use `vgg features`", config.arch_name());
    }
    let labels: Vec<String> = match &a.labels {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None if config.num_classes == 1000 => vgg::labels::imagenet().iter().map(|s| s.to_string()).collect(),
        None if config.num_classes == 10 && config.in_channels == 1 => {
            vgg::labels::FASHION_MNIST.iter().map(|s| s.to_string()).collect()
        }
        None => (0..config.num_classes).map(|i| format!("class {i}")).collect(),
    };
    let bar = if a.images.len() > 1 { ProgressBar::new(a.images.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images {per_sec} eta {eta}").expect("valid template"),
    );
    let results = classify_files(&loaded.model, &loaded.preprocess, &labels, &a.images, a.top, a.batch, &mut |n| {
        bar.inc(n as u64)
    });
    bar.finish_and_clear();
    let mut failed = 0;
    for r in results {
        match r {
            Ok(p) if a.json => println!("{}", serde_json::to_string(&p)?),
            Ok(p) => {
                println!("{}", p.image);
                for (rank, s) in p.top.iter().enumerate() {
                    println!("  {:>2}. {:>6.2}%  {:>4}  {}", rank + 1, s.prob * 100.0, s.index, s.label);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be classified", a.images.len());
    }
    Ok(())
}
