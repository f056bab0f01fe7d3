//! `vgg eval`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vgg::data::batch::PixelNorm;

use super::train::DataArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A .safetensors file written by `vgg train` (or any weights recording their preprocessing),
    /// or fashion-mnist for the built-in model (the default, as for `vgg classify`).
    #[arg(long, default_value = "fashion-mnist")]
    weights: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also classify each image's horizontal mirror and average the two probability vectors (the
    /// paper's test-time flip).
    #[arg(long)]
    flip: bool,
    /// Write the confusion matrix as a PNG heatmap.
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    mpi: super::parallel::MpiArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    // Under mpirun, each process evaluates its share of the batches and rank 0 reports.
    let group = a.mpi.group()?;
    let (_, test) = a.data.load()?;
    let device = burn::tensor::Device::default();
    let (model, pre) = vgg::eval::load_for_eval(&a.weights, &device)?;
    let Some(norm) = PixelNorm::from_normalize(&pre.normalize) else {
        bail!("caffe-normalised weights cannot be evaluated on this dataset");
    };
    let canvas = pre.crop.map(|c| c[0]).unwrap_or(test.shape[1]);
    let bar = ProgressBar::new(test.len() as u64);
    bar.set_style(ProgressStyle::with_template("[{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("template"));
    if !group.is_root() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let net = vgg::net::for_model(&model);
    let ev = vgg::eval::evaluate_net(&*net, &test, canvas, norm, a.batch, a.flip, &*group, &mut |n| {
        bar.inc((n * group.size()) as u64)
    });
    bar.finish_and_clear();
    if !group.is_root() {
        return Ok(());
    }
    if let Some(path) = &a.confusion_png {
        let title = format!("{}: top-1 {:.2}%", a.weights.display(), ev.acc * 100.0);
        vgg::plot::confusion(&ev.confusion, &test.classes, &title)
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let per_class: Vec<f64> = ev
        .confusion
        .iter()
        .enumerate()
        .map(|(i, row)| row[i] as f64 / row.iter().sum::<usize>().max(1) as f64)
        .collect();
    if a.json {
        let out = serde_json::json!({
            "weights": a.weights.display().to_string(), "images": test.len(), "flip": a.flip,
            "top1": ev.acc, "top5": ev.acc5, "loss": ev.loss,
            "per_class": per_class, "confusion": ev.confusion, "classes": test.classes,
        });
        println!("{out}");
        return Ok(());
    }
    let how = if a.flip { ", each averaged with its mirror image" } else { "" };
    println!("{}: {} test images{how}", a.weights.display(), test.len());
    println!("top-1 {:.2}%  top-5 {:.2}%  loss {:.4}", ev.acc * 100.0, ev.acc5 * 100.0, ev.loss);
    println!("\n{:<14} {:>8}", "class", "accuracy");
    for (name, acc) in test.classes.iter().zip(&per_class) {
        println!("{name:<14} {:>7.2}%", acc * 100.0);
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted)");
    for row in &ev.confusion {
        println!("{}", row.iter().map(|v| format!("{v:>5}")).collect::<String>());
    }
    Ok(())
}
