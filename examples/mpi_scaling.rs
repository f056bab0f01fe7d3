//! Data-parallel scaling on this machine, for BENCHMARKS.md's SCALING section: under
//! `mpirun -n N` (one thread per rank), for the built-in Fashion-MNIST model (VGG-13-BN x0.375,
//! 32x32 gray) and VGG-16 (224x224), the time of one all-reduce of all of the model's gradients,
//! and the time of a data-parallel training step (forward, backward with the bucketed all-reduce)
//! at a fixed global batch, as images per second. Rank 0 prints one JSON line per model.
//!
//! `mpirun -n 2 -x RAYON_NUM_THREADS=1 target/release/examples/mpi_scaling [STEPS]` (with
//! `-x NO_OVERLAP=1`: buckets summed between layers instead of on a second thread)
//! (built with `cargo build --release --features mpi --example mpi_scaling`).

use std::time::{Duration, Instant};

use burn::tensor::Device;
use vgg::config::Head;
use vgg::dist;
use vgg::engine::{DataParallel, Engine};
use vgg::{Vgg, VggConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let group = dist::world(Duration::from_secs(600))?;
    let cases = [
        (
            "built-in Fashion-MNIST model",
            VggConfig::from_arch("vgg13_bn")?.with_width(0.375).with_head(Head::cifar()).with_in_channels(1),
            32,
            64,
        ),
        ("VGG-16", VggConfig::from_arch("vgg16")?, 224, 4),
    ];
    for (name, config, side, batch) in cases {
        let model = Vgg::new(&config, &Device::default())?;
        let mut engine = Engine::new(&model)?;
        engine.broadcast_weights(&*group, 0);
        let floats: usize = engine.params().iter().map(|p| p.value.len()).sum();
        // One all-reduce of every gradient, as one buffer (the best case of bucketing).
        let mut grads = vec![1e-3f32; floats];
        group.all_reduce_f32(&mut grads);
        let reps = if floats > 10_000_000 { 2 } else { 10 };
        let t = Instant::now();
        for _ in 0..reps {
            group.all_reduce_f32(&mut grads);
        }
        let allreduce_s = t.elapsed().as_secs_f64() / reps as f64;
        let parallel = DataParallel { group: group.clone(), sync_bn: false, bucket_bytes: 25_000_000, overlap: None };
        let overlap = std::env::var_os("NO_OVERLAP").is_none();
        engine.set_data_parallel(Some(if overlap { parallel.with_overlap() } else { parallel }));
        let mine = dist::shard(batch, group.rank(), group.size());
        let c = config.in_channels;
        let x: Vec<f32> = (0..mine.len() * c * side * side).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
        let labels: Vec<usize> = mine.clone().map(|i| i % config.num_classes).collect();
        let seeds: Vec<u64> = mine.clone().map(|i| i as u64).collect();
        let dims = [mine.len(), c, side, side];
        engine.train_step(&x, dims, &labels, 0.0, &seeds, &|_| false);
        let t = Instant::now();
        for _ in 0..steps {
            engine.train_step(&x, dims, &labels, 0.0, &seeds, &|_| false);
        }
        let step_s = t.elapsed().as_secs_f64() / steps as f64;
        if group.is_root() {
            let line = serde_json::json!({
                "model": name, "ranks": group.size(), "global_batch": batch, "params": floats,
                "gradient_mb": floats as f64 * 4e-6, "allreduce_s": allreduce_s, "step_s": step_s,
                "img_per_s": batch as f64 / step_s, "overlap": overlap, "cpu": vgg::engine::cpu_name(),
            });
            println!("{line}");
        }
    }
    Ok(())
}
