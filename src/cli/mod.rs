//! One file per verb; this file holds the arguments they share.

mod bench;
mod classify;
mod convert;
mod curves;
mod eval;
mod explain;
mod export;
mod features;
mod lpips;
mod parallel;
mod serve;
mod style;
mod summary;
mod train;
mod weights;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vgg::config::{Head, VggConfig};
use vgg::pretrained::{self, Loaded, WeightsSpec};
use vgg::weights::Strict;
use vgg::weights::registry::Fetcher;

/// VGG networks (Simonyan & Zisserman, 2014), exact to torchvision.
#[derive(Parser, Debug)]
#[command(name = "vgg", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One row per layer: paper name, torchvision key, output shape, parameters, MACs; then totals.
    Summary(summary::SummaryArgs),
    /// Classify images and print the most probable classes.
    Classify(classify::ClassifyArgs),
    /// Save the activations of named layers (conv1_1, relu4_2, pool5, fc7, ...) to safetensors.
    Features(features::FeaturesArgs),
    /// Grad-CAM or saliency maps: which pixels drove a class, as PNG overlays.
    Explain(explain::ExplainArgs),
    /// Write the model as ONNX or safetensors (torchvision or paper keys, f32/f16/bf16).
    Export(export::ExportArgs),
    /// Convert weights between .pth, safetensors and ONNX, optionally to f16/bf16 storage.
    Convert(convert::ConvertArgs),
    /// Neural style transfer (Gatys et al.): CONTENT painted in the style of STYLE.
    Style(style::StyleArgs),
    /// Perceptual distance (LPIPS-VGG, as the lpips package) of two images or two folders' pairs.
    Lpips(lpips::LpipsArgs),
    /// Train a VGG (Fashion-MNIST, CIFAR-10/100), checkpointing every epoch.
    Train(Box<train::TrainArgs>),
    /// Top-1/top-5 accuracy, per-class accuracy and confusion matrix of weights on a test set.
    Eval(eval::EvalArgs),
    /// Draw a training run's loss and accuracy curves (PNG) from its metrics.jsonl.
    Curves(curves::CurvesArgs),
    /// Latency and throughput of inference or of a training step (random weights).
    Bench(bench::BenchArgs),
    /// Serve models over HTTP: the Open Inference Protocol (KServe v2, Triton), a curl route,
    /// Prometheus metrics and a web page.
    Serve(serve::ServeArgs),
    /// List, locate or fetch torchvision's published weights.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

/// Dispatches a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    // A forced kernel path the CPU lacks is refused before any verb runs (not a silent fallback).
    vgg::engine::kernel_path().map_err(|e| anyhow::anyhow!("VGG_ISA: {e}"))?;
    let result = match cli.command {
        Command::Summary(a) => summary::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Features(a) => features::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Style(a) => style::run(a),
        Command::Lpips(a) => lpips::run(a),
        Command::Export(a) => export::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Weights(a) => weights::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Curves(a) => curves::run(a),
    };
    result.map_err(flag_hint)
}

/// The library's errors speak of values; where one is answered by an option, say which.
fn flag_hint(e: anyhow::Error) -> anyhow::Error {
    let hint = e.chain().find_map(|cause| {
        if let Some(pretrained::LoadError::UnknownArch(_)) = cause.downcast_ref() {
            Some("pass --arch")
        } else if let Some(vgg::train::TrainError::NonFinite { .. }) = cause.downcast_ref() {
            Some("--lr sets the learning rate")
        } else if let Some(vgg::style::StyleError::Diverged(..)) = cause.downcast_ref() {
            Some("--lr and --style-weight set them")
        } else {
            None
        }
    });
    match hint {
        Some(hint) => anyhow::anyhow!("{e:#} ({hint})"),
        None => e,
    }
}

/// The architecture options every verb that builds a model accepts.
#[derive(Args, Debug, Clone)]
pub struct ArchArgs {
    /// vgg11, vgg11_lrn, vgg13, vgg16_c, vgg16, vgg19, each optionally with _bn (or a paper letter:
    /// A, A-LRN, B, C, D, E). Optional when the weights record or reveal it.
    #[arg(long)]
    arch: Option<String>,
    /// Head: imagenet, cifar or none.
    #[arg(long)]
    head: Option<String>,
    /// Number of classes of the head.
    #[arg(long)]
    num_classes: Option<usize>,
    /// Channel width multiplier of the trunk.
    #[arg(long)]
    width: Option<f64>,
    /// Input channels (1 for grayscale).
    #[arg(long)]
    in_channels: Option<usize>,
    /// Dropout probability of the head.
    #[arg(long)]
    dropout: Option<f64>,
}

impl ArchArgs {
    /// The configuration asked for, if `--arch` was given.
    fn config(&self) -> Result<Option<VggConfig>> {
        let Some(arch) = &self.arch else {
            if self.head.is_some() || self.num_classes.is_some() || self.width.is_some() || self.in_channels.is_some() {
                bail!("--head, --num-classes, --width and --in-channels need --arch");
            }
            return Ok(None);
        };
        let mut c = VggConfig::from_arch(arch)?;
        if let Some(h) = &self.head {
            c.head = h.parse::<Head>()?;
        }
        if let Some(n) = self.num_classes {
            c.num_classes = n;
        }
        if let Some(w) = self.width {
            c.width = w;
        }
        if let Some(ch) = self.in_channels {
            c.in_channels = ch;
        }
        if let Some(p) = self.dropout {
            c.dropout = p;
        }
        c.validate()?;
        Ok(Some(c))
    }
}

/// A progress bar on stderr for downloads, hidden when stderr is not a terminal.
fn download_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("downloading");
    bar
}

/// `--weights`, or without it (and without `--arch`) the built-in Fashion-MNIST model.
fn weights_or_default<'a>(arch: &ArchArgs, weights: Option<&'a str>) -> Result<&'a str> {
    match weights {
        Some(w) => Ok(w),
        None if arch.arch.is_none() => Ok("fashion-mnist"),
        None => bail!(
            "--weights is required with --arch: a .pth or .safetensors file, torchvision:NAME (see `vgg weights list`), random or formula"
        ),
    }
}

/// Loads the model for `--weights`; without it (and without `--arch`), the built-in Fashion-MNIST
/// model.
fn load_model(arch: &ArchArgs, weights: Option<&str>, strict: bool) -> Result<Loaded> {
    let weights = weights_or_default(arch, weights)?;
    load_weights(weights, arch.config()?, strict, &burn::tensor::Device::default())
}

/// Reads the tensors of `--weights` without building a model (for the engine), with a download bar.
fn read_weights(arch: &ArchArgs, weights: Option<&str>) -> Result<pretrained::Weights> {
    read_weights_for(weights_or_default(arch, weights)?, arch.config()?)
}

/// Reads the tensors of `weights` (a spec as `--weights` takes it) for `config` when given.
fn read_weights_for(weights: &str, config: Option<VggConfig>) -> Result<pretrained::Weights> {
    let bar = download_bar();
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let w = pretrained::weights(&WeightsSpec::parse(weights), config, &Fetcher::from_env(), &mut progress)
        .with_context(|| format!("loading weights {weights}"))?;
    bar.finish_and_clear();
    Ok(w)
}

/// Loads `weights` (a spec as `--weights` takes it) onto `device`, with a download bar, and reports
/// on stderr what a non-strict load left out.
fn load_weights(
    weights: &str,
    config: Option<VggConfig>,
    strict: bool,
    device: &burn::tensor::Device,
) -> Result<Loaded> {
    let bar = download_bar();
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let strict = if strict { Strict::Yes } else { Strict::No };
    let loaded =
        pretrained::load(&WeightsSpec::parse(weights), config, strict, &Fetcher::from_env(), device, &mut progress)
            .with_context(|| format!("loading weights {weights}"))?;
    bar.finish_and_clear();
    if !loaded.report.is_complete() {
        let r = &loaded.report;
        eprintln!(
            "note: loaded {} non-strictly: {} tensors loaded, {} missing (left as initialised), {} unexpected, {} of another shape",
            loaded.source,
            r.loaded.len(),
            r.missing.len(),
            r.unexpected.len(),
            r.mismatched.len()
        );
        for (k, want, got) in &r.mismatched {
            eprintln!("  {k}: model {want:?}, file {got:?}");
        }
    }
    Ok(loaded)
}

/// Class names: from a text file (one per line), else ImageNet's for 1000 classes, Fashion-MNIST's
/// for a 10-class gray model, else `class N`.
fn class_names(config: &VggConfig, file: Option<&std::path::Path>) -> Result<Vec<String>> {
    Ok(match file {
        Some(p) => vgg::labels::read(p)?,
        None => vgg::labels::for_config(config),
    })
}

/// The model of `classify` and `features`: architecture, weights and preprocessing overrides.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    #[command(flatten)]
    arch: ArchArgs,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    /// A .pth or .safetensors file, torchvision:NAME, `random`, `formula` (the fixtures' deterministic
    /// weights) or `fashion-mnist` (the built-in model, the default without --arch).
    #[arg(long)]
    weights: Option<String>,
}

impl ModelArgs {
    /// Reads the weights (no model yet) and applies the preprocessing overrides.
    fn weights(&self) -> Result<pretrained::Weights> {
        let mut w = read_weights(&self.arch, self.weights.as_deref())?;
        self.preprocess.apply(&mut w.preprocess)?;
        Ok(w)
    }

    /// Loads the model and applies the preprocessing overrides.
    fn load(&self, strict: bool) -> Result<Loaded> {
        let mut loaded = load_model(&self.arch, self.weights.as_deref(), strict)?;
        self.preprocess.apply(&mut loaded.preprocess)?;
        Ok(loaded)
    }
}

/// Overrides of the preprocessing the weights come with.
#[derive(Args, Debug, Clone)]
pub struct PreprocessArgs {
    /// Shorter side after resizing (0: keep the image's size).
    #[arg(long)]
    resize: Option<usize>,
    /// Center crop, N or HxW (0: no crop).
    #[arg(long)]
    crop: Option<String>,
    /// imagenet (torchvision's mean/std), caffe (BGR, 0-255, mean subtracted, for weights converted
    /// from Caffe or Keras) or gray (one channel, mean 0.5, std 0.5).
    #[arg(long)]
    normalize: Option<String>,
}

impl PreprocessArgs {
    /// Applies the overrides.
    fn apply(&self, p: &mut vgg::image::Preprocess) -> Result<()> {
        if let Some(r) = self.resize {
            p.resize = (r > 0).then_some(r);
        }
        if let Some(c) = &self.crop {
            p.crop = if c == "0" { None } else { Some(vgg::parse::size(c)?) };
        }
        if let Some(n) = &self.normalize {
            p.normalize = n.parse()?;
        }
        Ok(())
    }
}
