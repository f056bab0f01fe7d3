//! Times training steps of the fast engine on random data:
//! `cargo run --release --example step_profile -- ARCH WIDTH BATCH IN_CHANNELS STEPS` (defaults vgg11_bn 0.5 128 1 6)
use std::time::Instant;

use vgg::config::Head;
use vgg::engine::Engine;
use vgg::{Vgg, VggConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map_or("vgg11_bn", |s| s.as_str());
    let width: f64 = args.get(2).map_or(0.5, |s| s.parse().unwrap());
    let batch: usize = args.get(3).map_or(128, |s| s.parse().unwrap());
    let cin: usize = args.get(4).map_or(1, |s| s.parse().unwrap());
    let steps: u64 = args.get(5).map_or(6, |s| s.parse().unwrap());
    let config = VggConfig::from_arch(arch)
        .unwrap()
        .with_width(width)
        .with_head(Head::cifar())
        .with_num_classes(10)
        .with_in_channels(cin);
    let device = burn::tensor::Device::default();
    let model = Vgg::new(&config, &device).unwrap();
    let mut engine = Engine::new(&model).unwrap();
    // A sixth argument "im2col" turns Winograd and the implicit GEMM off, for A/B runs.
    if args.get(6).map(String::as_str) == Some("im2col") {
        engine.set_conv_algos(vgg::engine::ConvAlgos::Im2col);
    }
    let x: Vec<f32> = (0..batch * cin * 32 * 32).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    let mut times = vec![];
    for i in 0..steps {
        let t = Instant::now();
        let r = engine.train_step(&x, [batch, cin, 32, 32], &labels, 0.0, &vec![i; batch], &|_| false);
        times.push(t.elapsed().as_secs_f64());
        eprintln!("step {i}: {:.3} s loss {:.4}", times[i as usize], r.loss);
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!("median {med:.3} s/step, {:.1} img/s", batch as f64 / med);
}
