//! `vgg classify`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vgg::classify::{classify_files, classify_files_with, classify_sharded};
use vgg::config::Head;
use vgg::net::BuildOptions;
use vgg::protocol::{Protocol, Views};
use vgg::weights::Strict;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Keep the weights in 16 bits (half the memory; f32 arithmetic) on the fast engine.
    #[arg(long)]
    half: Option<vgg::engine::HalfKind>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// A text file of class names, one per line (default: ImageNet's for 1000 classes).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The paper's test protocols: center (the weights' preprocessing), dense (the network applied
    /// convolutionally to the whole image at each scale of --scales, scores averaged) or multicrop
    /// (a --grid x --grid lattice of crops at each scale).
    #[arg(long, default_value = "center")]
    protocol: String,
    /// Shorter sides Q for dense and multicrop, e.g. 256,384,512.
    #[arg(long, default_value = "256,384,512", value_delimiter = ',')]
    scales: Vec<usize>,
    /// Crops per side for multicrop (the paper: 5).
    #[arg(long, default_value_t = 5)]
    grid: usize,
    /// Also look at each image mirrored and average the posteriors.
    #[arg(long)]
    flip: bool,
    /// JSON Lines, one object per image.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    mpi: super::parallel::MpiArgs,
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    // Under mpirun, each process classifies its share of the batches and rank 0 prints them all.
    let group = a.mpi.group()?;
    let w = a.model.weights()?;
    let config = w.config.clone();
    if matches!(config.head, Head::None) {
        bail!("{} has no classifier head (features-only weights); use `vgg features`", config.arch_name());
    }
    let labels = super::class_names(&config, a.labels.as_deref())?;
    let bar = if a.images.len() > 1 && group.is_root() {
        ProgressBar::new(a.images.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images {per_sec} eta {eta}").expect("valid template"),
    );
    let protocol = Protocol::new(&a.protocol, &a.scales, a.grid)?;
    let pre = w.preprocess.clone();
    let strict = if w.partial { Strict::No } else { Strict::Yes };
    // The network takes the tensors over: one copy of the weights in memory.
    let opts = BuildOptions { strict, half: a.half, burn: false };
    let net = vgg::net::build(&config, w.state_dict, opts).with_context(|| format!("loading {}", w.source))?;
    if let Some(why) = net.runs_on().fallback()
        && group.is_root()
    {
        eprintln!("note: running on burn's path: {why}");
    }
    let mut done = |n: usize| bar.inc((n * group.size()) as u64);
    let center = protocol == Protocol::Center && !a.flip;
    let views = Views { protocol, flip: a.flip };
    let results = classify_sharded(&*group, &a.images, a.batch, &mut |paths| {
        if center {
            classify_files(&*net, &pre, &labels, paths, a.top, a.batch, &mut done)
        } else {
            classify_files_with(&*net, &pre, &views, &labels, paths, a.top, &mut done)
        }
    });
    bar.finish_and_clear();
    if !group.is_root() {
        return Ok(());
    }
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
