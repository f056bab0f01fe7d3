//! `vgg bench`: latency and throughput of inference or of a training step, on random weights.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use vgg::config::Head;
use vgg::engine::{ConvAlgos, Engine};
use vgg::train::OptimizerConfig;
use vgg::train::SgdConfig;
use vgg::train::engine_optim::OptimizerState;
use vgg::{Vgg, VggConfig};

use super::ArchArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Input side (square).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Time a training step (forward, cross-entropy, backward, SGD with momentum) instead of
    /// inference. Without --arch this is the CIFAR-style VGG-16-BN of the peer benchmark.
    #[arg(long)]
    train: bool,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// fast (this crate's CPU kernels), im2col (the same without Winograd: im2col + GEMM, the first
    /// layer's direct loops kept) or burn (burn-flex through burn's modules and autodiff).
    #[arg(long, default_value = "fast")]
    engine: String,
    /// Also time each layer of the fast engine (median over the timed runs; with --train each
    /// layer's forward and backward, the loss and the optimizer), printed as a table, or as
    /// `"layers"` with --json.
    #[arg(long)]
    layers: bool,
    /// Inference with the weights stored in 16 bits (f32 arithmetic): half the memory.
    #[arg(long)]
    half: Option<vgg::engine::HalfKind>,
    /// Also measure the machine's FMA peak on the kernel path taken (every thread running
    /// independent FMA chains for a second) and report the share of it the run reaches: effective
    /// GFLOP/s (direct-convolution operations, so Winograd can pass 100%) over the peak.
    #[arg(long)]
    peak: bool,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// Peak resident set size of this process, in MiB.
fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss as f64 / 1024.0
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    let config = match a.arch.config()? {
        Some(c) => c,
        None if a.train => VggConfig::from_arch("vgg16_bn")?.with_head(Head::cifar()).with_num_classes(10),
        None => VggConfig::from_arch("vgg16")?,
    };
    let size = if a.train && a.arch.config()?.is_none() && a.size == 224 { 32 } else { a.size };
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let (fast, algos) = match a.engine.as_str() {
        "fast" => (true, ConvAlgos::Fastest),
        "im2col" => (true, ConvAlgos::Im2col),
        "burn" => (false, ConvAlgos::Fastest),
        other => bail!("unknown engine '{other}' (expected fast, im2col or burn)"),
    };
    let dims = [a.batch, config.in_channels, size, size];
    let model_device = if a.train && !fast { burn::tensor::Device::default().autodiff() } else { Default::default() };
    config.check_input(dims)?;
    // The engine takes torchvision-initialised tensors over directly: one copy of the weights in
    // memory (a burn model first would double the peak RSS).
    if a.half.is_some() && (a.train || !fast) {
        bail!("--half is for the fast engine's inference");
    }
    let engine = || -> Result<Engine> {
        let mut engine = match a.half {
            // Drawn straight into 16 bits: the weights never exist in f32.
            Some(h) => Engine::from_source(&config, &mut vgg::weights::init::TorchvisionInit::new(0), Some(h))?,
            None => Engine::from_state_dict(&config, vgg::weights::init::torchvision(&config, 0))?,
        };
        engine.set_conv_algos(algos);
        Ok(engine)
    };
    let model = || Vgg::new(&config, &model_device);
    let mut rng = 0x2545f4914f6cdd1du64;
    let x: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let labels: Vec<usize> = (0..a.batch).map(|i| i % config.num_classes.max(1)).collect();
    let sgd = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
    if a.layers && !fast {
        bail!("--layers times the fast engine (not --engine burn)");
    }
    let mut layer_times: Vec<(String, f64)> = Vec::new();
    let median_of = |runs: Vec<Vec<(String, f64)>>| -> Vec<(String, f64)> {
        runs[0]
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let mut t: Vec<f64> = runs.iter().map(|r| r[i].1).collect();
                t.sort_by(f64::total_cmp);
                (name.clone(), t[t.len() / 2])
            })
            .collect()
    };
    let mut run: Box<dyn FnMut()> = match (fast, a.train) {
        (true, false) => {
            let engine = engine()?;
            if a.layers {
                layer_times =
                    median_of((0..a.warmup + a.iters).map(|_| engine.profile(&x, dims)).skip(a.warmup).collect());
            }
            Box::new(move || {
                std::hint::black_box(engine.forward(&x, dims));
            })
        }
        (true, true) => {
            let mut engine = engine()?;
            let mut opt = OptimizerState::default();
            let cfg = OptimizerConfig::Sgd(sgd);
            if a.layers {
                let runs = (0..a.warmup + a.iters)
                    .map(|_| {
                        let mut times = engine.profile_train_step(&x, dims, &labels);
                        let t = Instant::now();
                        opt.step(&mut engine, &cfg, 0.01, &|_| false);
                        times.push(("optimizer".into(), t.elapsed().as_secs_f64()));
                        times
                    })
                    .skip(a.warmup)
                    .collect();
                layer_times = median_of(runs);
            }
            Box::new(move || {
                engine.train_step(&x, dims, &labels, 0.0, &vec![0; dims[0]], &|_| false);
                opt.step(&mut engine, &cfg, 0.01, &|_| false);
            })
        }
        (false, false) => {
            let model = model()?;
            let device = model_device.clone();
            Box::new(move || {
                let t = burn::tensor::Tensor::<4>::from_data(burn::tensor::TensorData::new(x.clone(), dims), &device);
                std::hint::black_box(vgg::model::to_f32(model.forward(t).into_data()));
            })
        }
        (false, true) => {
            let device = model_device.clone();
            let mut model = model()?;
            let mut state = vgg::train::burn_sgd::SgdState::default();
            Box::new(move || {
                let t = burn::tensor::Tensor::<4>::from_data(burn::tensor::TensorData::new(x.clone(), dims), &device);
                let loss = vgg::train::cross_entropy(model.forward_train(t), &labels, 0.0);
                let grads = loss.backward();
                state.step(&mut model, &grads, &sgd, 0.01, &|_| false);
            })
        }
    };
    for _ in 0..a.warmup {
        run();
    }
    let mut times: Vec<f64> = (0..a.iters)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p90 = times[((times.len() as f64 * 0.9).ceil() as usize).clamp(1, times.len()) - 1];
    let macs = config.plan([size, size]).layers.iter().map(|l| l.macs).sum::<u64>() as f64;
    // A training step is about three passes: forward, input gradients and weight gradients.
    let flops = 2.0 * macs * a.batch as f64 * if a.train { 3.0 } else { 1.0 };
    let (kernel_path, cpu) = (vgg::engine::kernel_path()?.name(), vgg::engine::cpu_name());
    let mut out = serde_json::json!({
        "arch": config.arch_name(),
        "batch": a.batch,
        "size": size,
        "mode": if a.train { "train" } else { "infer" },
        "engine": a.engine,
        "weights": a.half.map_or("f32", |h| h.name()),
        "threads": rayon::current_num_threads(),
        "cpu": cpu,
        "isa": kernel_path,
        "median_s": median,
        "p90_s": p90,
        "img_per_s": a.batch as f64 / median,
        "gflops": flops / median / 1e9,
        "peak_rss_mb": peak_rss_mb(),
    });
    let peak = a.peak.then(|| {
        let isa = vgg::engine::kernel_path().unwrap_or(vgg::engine::Isa::Generic);
        vgg::engine::fma_peak_gflops(isa, rayon::current_num_threads(), 1.0)
    });
    if let Some(peak) = peak {
        out["peak_gflops"] = peak.into();
        out["share_of_peak"] = (flops / median / 1e9 / peak).into();
    }
    if a.layers {
        out["layers"] = layer_times.iter().map(|(name, t)| serde_json::json!({"name": name, "median_s": t})).collect();
    }
    if a.json {
        println!("{out}");
    } else {
        if a.layers {
            let total: f64 = layer_times.iter().map(|(_, t)| t).sum();
            println!("{:<12} {:>10} {:>7}", "layer", "median ms", "share");
            for (name, t) in &layer_times {
                println!("{name:<12} {:>10.2} {:>6.1}%", t * 1e3, 100.0 * t / total.max(1e-12));
            }
        }
        println!(
            "{} {} batch {} at {size}x{size} ({} engine, {} kernels, {} threads on {}): median {:.4} s, p90 {:.4} s, {:.2} img/s, {:.1} GFLOP/s, peak RSS {:.0} MiB",
            config.arch_name(),
            if a.train { "training step" } else { "inference" },
            a.batch,
            a.engine,
            kernel_path,
            rayon::current_num_threads(),
            cpu,
            median,
            p90,
            a.batch as f64 / median,
            flops / median / 1e9,
            peak_rss_mb()
        );
        if let Some(peak) = peak {
            println!(
                "FMA peak of {} threads on the {kernel_path} path: {peak:.1} GFLOP/s; this run reached {:.0}% of it",
                rayon::current_num_threads(),
                100.0 * flops / median / 1e9 / peak
            );
        }
    }
    Ok(())
}
