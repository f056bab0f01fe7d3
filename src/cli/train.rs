//! `vgg train`, and the dataset options it shares with `vgg eval`

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vgg::config::Head;
use vgg::train::OptimizerConfig;
use vgg::train::SgdConfig;
use vgg::train::{self as training, Event, FitConfig, RunDir, Schedule};
use vgg::{Vgg, VggConfig};

use super::ArchArgs;

/// Which dataset.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// fashion-mnist (IDX files), cifar10 or cifar100 (binary versions), or folder
    /// (DATA_DIR/<class>/*.png|jpg, or DATA_DIR/train and DATA_DIR/val).
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Directory of the dataset files (default: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Side of the square images of a folder dataset.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Share of each class of a folder dataset held out for validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Use only the first N training images (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    limit_test: Option<usize>,
}

impl DataArgs {
    fn dir(&self) -> Result<&std::path::Path> {
        self.data_dir
            .as_deref()
            .context("--data-dir is required for CIFAR (the folder of the binary version's .bin files)")
    }

    pub(super) fn load(&self) -> Result<(vgg::data::Dataset, vgg::data::Dataset)> {
        let (train, test) = match self.dataset.as_str() {
            "fashion-mnist" | "fashion_mnist" | "fmnist" => vgg::data::fashion_mnist(self.data_dir.as_deref())?,
            "cifar10" | "cifar-10" => vgg::data::cifar::cifar10(self.dir()?)?,
            "cifar100" | "cifar-100" => vgg::data::cifar::cifar100(self.dir()?)?,
            "folder" | "imagefolder" => vgg::data::folder::image_folder(
                self.data_dir.as_deref().context("--data-dir is required for an image folder")?,
                self.image_size,
                self.val_fraction,
                0,
            )?,
            other => bail!("unknown dataset '{other}' (expected fashion-mnist, cifar10 or cifar100)"),
        };
        let train = match self.limit {
            Some(n) => train.take(n),
            None => train,
        };
        let test = match self.limit_test {
            Some(n) => test.take(n),
            None => test,
        };
        Ok((train, test))
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    arch: ArchArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Directory for checkpoints and metrics.
    #[arg(long)]
    out: PathBuf,
    /// Continue from OUT/last.safetensors.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// onecycle, cosine, constant, step:N (divide by 10 every N epochs), multistep:E1,E2,... (divide
    /// by 10 at those epochs), or plateau:P (divide by 10 when test accuracy has not improved for P
    /// epochs, as the paper did).
    #[arg(long, default_value = "onecycle")]
    schedule: Schedule,
    /// Warm-up epochs (cosine).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// sgd (momentum, --nesterov) or adamw (betas 0.9, 0.999; --weight-decay is then decoupled,
    /// PyTorch's default being 0.01).
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    /// Clip the global gradient L2 norm to this value.
    #[arg(long)]
    clip_grad: Option<f64>,
    /// fast (the CPU kernels of this crate) or burn (burn's autodiff, the reference path).
    #[arg(long, default_value = "fast")]
    engine: String,
    /// Largest random shift of the crop augmentation (default: 2 for 28x28 images, 4 for 32x32).
    #[arg(long)]
    shift: Option<usize>,
    /// Turn off random crop and flip.
    #[arg(long)]
    no_augment: bool,
    /// Crop augmentation: shift (pad and shift, CIFAR style), jitter:SMIN,SMAX (the paper's scale
    /// jittering: shorter side rescaled to S in [SMIN, SMAX], then a random crop of the canvas), or
    /// rrc:MIN_SCALE (torchvision's RandomResizedCrop, e.g. rrc:0.08).
    #[arg(long, default_value = "shift")]
    crop: vgg::data::augment::CropAug,
    /// Side of the square the network sees (default: the images' side, at least 32; 28x28
    /// Fashion-MNIST is centred on 32x32). Smaller than the images with --crop jitter or rrc.
    #[arg(long)]
    canvas: Option<usize>,
    /// PCA lighting noise of RGB images, as AlexNet and the paper (0.1); 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    lighting: f64,
    /// Random erasing probability (torchvision's RandomErasing: area 2–33%, aspect 0.3–3.3, erased to
    /// the mean); 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    erase: f64,
    /// Stochastic weight averaging after this many epochs: the learning rate moves to --swa-lr, the
    /// weights of the remaining epochs are averaged, and the average (BatchNorm statistics
    /// recomputed on the training images) is the final model, as torch.optim.swa_utils.
    #[arg(long)]
    swa: Option<usize>,
    /// Learning rate of the averaging phase (default: a fifth of --lr, as in the SWA paper's VGG-16).
    #[arg(long)]
    swa_lr: Option<f64>,
    /// Epochs of the cosine move to --swa-lr.
    #[arg(long, default_value_t = 1)]
    swa_anneal: usize,
    /// Snapshots averaged per epoch.
    #[arg(long, default_value_t = 1)]
    swa_freq: usize,
    /// After the last epoch, recompute the BatchNorm statistics over the training images without
    /// augmentation (PreciseBN), instead of the running averages of the last augmented batches.
    #[arg(long)]
    precise_bn: bool,
    /// Train for this much wall-clock time (e.g. 57m, 3400s, 1h; evaluation included) rather than a
    /// fixed number of epochs: --epochs is the first estimate, and after each epoch the schedule is
    /// re-planned to the epochs that fit at the pace so far, so that it ends annealed on time.
    #[arg(long, value_parser = parse_duration)]
    time_budget: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from these weights (torchvision:NAME or a file), loaded non-strictly: a head of another
    /// size stays freshly initialised, and what was not loaded is reported.
    #[arg(long)]
    init: Option<String>,
    /// Train only what follows: `features` freezes the trunk, a layer name (conv4_3) everything up
    /// to it.
    #[arg(long)]
    freeze: Option<String>,
    /// Print one JSON object per epoch instead of the progress bar.
    #[arg(long)]
    json: bool,
    /// Stop after training this many epochs in this invocation, checkpoint kept, for `--resume`
    /// later (e.g. a cluster job's time slot); the schedule stays that of --epochs.
    #[arg(long)]
    stop_after: Option<usize>,
    #[command(flatten)]
    parallel: super::parallel::ParallelArgs,
}

/// Seconds in a duration written as a number with an optional unit: s, m (the default) or h.
fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 60.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * unit),
        _ => Err(format!("'{s}' is not a duration (e.g. 57m, 3400s, 1h)")),
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let group = a.parallel.mpi.group()?;
    let parallel = a.parallel.data_parallel(&group)?;
    let root = group.is_root();
    let (train, test) = a.data.load()?;
    let config = match a.arch.config()? {
        Some(c) => c,
        // The default small model for 28x28 grayscale: VGG-11-BN at half width, CIFAR-style head.
        None => VggConfig::from_arch("vgg11_bn")?.with_width(0.5).with_head(Head::cifar()),
    };
    let config = config.with_in_channels(train.shape[0]).with_num_classes(train.classes.len());
    config.validate()?;
    let sgd = SgdConfig { momentum: a.momentum, weight_decay: a.weight_decay, nesterov: a.nesterov };
    let optimizer = match a.optimizer.as_str() {
        "sgd" => None,
        "adamw" => Some(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: a.weight_decay }),
        other => bail!("unknown optimizer '{other}' (expected sgd or adamw)"),
    };
    let burn_reference = match a.engine.as_str() {
        "fast" => false,
        "burn" => true,
        other => bail!("unknown engine '{other}' (expected fast or burn)"),
    };
    let fit_config = FitConfig {
        epochs: a.epochs,
        batch_size: a.batch.max(1),
        lr: a.lr,
        schedule: a.schedule.clone(),
        warmup_epochs: a.warmup,
        sgd,
        label_smoothing: a.label_smoothing,
        augment: !a.no_augment,
        canvas: a.canvas.unwrap_or(32.max(train.shape[1])),
        shift: a.shift.unwrap_or(if train.shape[1] < 32 { (32 - train.shape[1]) / 2 } else { 4 }),
        seed: a.seed,
        freeze: a.freeze.clone(),
        optimizer,
        clip_grad_norm: a.clip_grad,
        burn_reference,
        crop: a.crop,
        lighting: a.lighting,
        erase: a.erase,
        swa: match a.swa {
            None => None,
            Some(start) if start >= a.epochs => {
                bail!("--swa {start}: averaging must start before the last epoch (--epochs {})", a.epochs)
            }
            Some(start) => Some(training::SwaConfig {
                start,
                lr: a.swa_lr.unwrap_or(a.lr / 5.0),
                anneal_epochs: a.swa_anneal,
                per_epoch: a.swa_freq.max(1),
            }),
        },
        precise_bn: a.precise_bn,
        time_budget_s: a.time_budget,
    };
    if a.time_budget.is_some() && a.swa.is_some() {
        bail!("--time-budget and --swa do not go together: averaging starts at a fixed epoch");
    }
    let device = burn::tensor::Device::default().autodiff();
    device.seed(a.seed);
    let model = match &a.init {
        None => Vgg::new(&config, &device)?,
        Some(spec) => {
            let loaded = super::load_weights(spec, Some(config.clone()), false, &device)?;
            if root {
                eprintln!("initialised from {}", loaded.source);
            }
            loaded.model
        }
    };
    if root {
        eprintln!("training {config} on {} images, testing on {}", train.len(), test.len());
        if group.size() > 1 {
            eprintln!(
                "data-parallel over {} processes: {} images per process per step{}{}",
                group.size(),
                fit_config.batch_size.div_ceil(group.size()),
                if run_sync_bn(&parallel) { ", BatchNorm synchronised" } else { "" },
                if parallel.as_ref().is_some_and(|p| p.overlap.is_some()) {
                    ", gradients summed while the backward pass runs"
                } else {
                    ""
                }
            );
        }
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:25}] {pos}/{len} {msg} {per_sec} eta {eta}")
            .expect("template"),
    );
    if a.json || !root {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let batch = fit_config.batch_size as u64;
    let dir = RunDir(a.out.clone());
    let run = training::RunOptions { resume: a.resume, parallel };
    let mut trained = 0usize;
    let (_, state) = training::fit(model, &train, &test, &fit_config, &dir, &run, &mut |e| match e {
        Event::EpochStart(epoch, planned, steps) => {
            bar.reset();
            bar.set_length(steps as u64);
            bar.set_prefix(format!("{epoch}/{planned}"));
            ControlFlow::Continue(())
        }
        Event::RunsOn(runs_on) => {
            if let Some(why) = runs_on.fallback() {
                eprintln!("note: training on burn's path: {why}");
            }
            ControlFlow::Continue(())
        }
        Event::Step(_, loss, acc, lr) => {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.4} acc {:.1}% lr {lr:.4} ({batch} img/step)", acc * 100.0));
            ControlFlow::Continue(())
        }
        Event::EpochEnd(m) => {
            trained += 1;
            if a.json {
                println!("{}", serde_json::to_string(m).expect("metrics serialise"));
            } else {
                let line = format!(
                    "epoch {:>3}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s, {:.0} s",
                    m.epoch,
                    m.train_loss,
                    m.train_acc * 100.0,
                    m.test_loss,
                    m.test_acc * 100.0,
                    m.images_per_s,
                    m.seconds
                );
                // A hidden bar (output not a terminal) would swallow the line.
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
            }
            if a.stop_after.is_some_and(|n| trained >= n) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    })?;
    bar.finish_and_clear();
    if !a.json && root {
        println!(
            "best test accuracy {:.2}%; weights in {}, checkpoint in {}",
            state.best_acc * 100.0,
            dir.best().display(),
            dir.last().display()
        );
    }
    Ok(())
}

fn run_sync_bn(parallel: &Option<vgg::engine::DataParallel>) -> bool {
    parallel.as_ref().is_some_and(|p| p.sync_bn)
}
