//! Micro-benchmarks of the hand-written kernels, each against the path it replaces:
//! `cargo run --release --example kernel_bench [-- FILTER]` (FILTER: a substring of the names).
//!
//! Every case runs a few warm-ups, then enough repetitions for about half a second, and prints the
//! median time with GFLOP/s (arithmetic kernels, counted as the direct computation) or GB/s (the
//! memory-bound ones). Results go in BENCHMARKS.md with the machine they were measured on.
use std::time::Instant;

use vgg::kernels::conv::{self, ConvShape};
use vgg::kernels::half::{HalfBuf, HalfKind};
use vgg::kernels::packed::{self, PackedB};
use vgg::kernels::{dense, direct, implicit, norm, winograd};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Median seconds of `f`.
fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.5 / once) as usize).clamp(3, 200);
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(name: &str, secs: f64, work: f64, unit: &str) {
    println!("{name:<44} {:>9.3} ms {:>8.1} {unit}", secs * 1e3, work / secs / 1e9);
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let on = |name: &str| name.contains(&filter);
    println!("{:<44} {:>12} {:>12}", "kernel", "median", "rate");

    // 3x3 convolutions of VGG-16 at batch 1, 224x224: im2col + GEMM against Winograd F(4x4, 3x3)
    // (filters transformed once, as the engine caches them).
    for (label, h, ci, co) in [
        ("conv1_2 224x224 64->64", 224, 64, 64),
        ("conv2_1 112x112 64->128", 112, 64, 128),
        ("conv2_2 112x112 128->128", 112, 128, 128),
        ("conv3_1 56x56 128->256", 56, 128, 256),
        ("conv3_2 56x56 256->256", 56, 256, 256),
        ("conv4_2 28x28 512->512", 28, 512, 512),
        ("conv5_2 14x14 512->512", 14, 512, 512),
    ] {
        let sh = ConvShape { n: 1, h, w: h, ci, co, k: 3 };
        let x = data(h * h * ci, 1);
        let wk = data(9 * ci * co, 2);
        let b = data(co, 3);
        let mut out = vec![0f32; h * h * co];
        let flops = 2.0 * (h * h * 9 * ci * co) as f64;
        let name = format!("conv {label} im2col");
        if on(&name) {
            report(&name, time(|| conv::forward_im2col(&x, &wk, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("conv {label} implicit");
        if on(&name) {
            let p = implicit::pack_filter(&wk, &sh);
            report(&name, time(|| implicit::forward(&x, &p, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("conv {label} winograd");
        if on(&name) && winograd::suits(&sh) {
            let u = winograd::transform_filter(&wk, ci, co);
            report(&name, time(|| winograd::forward(&x, &u, &b, false, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("conv {label} winograd fused");
        if on(&name) && winograd::suits(&sh) {
            let u = winograd::transform_filter(&wk, ci, co);
            report(&name, time(|| winograd::forward_fused(&x, &u, &b, false, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("conv {label} winograd chunked");
        if on(&name) && winograd::suits(&sh) {
            let u = winograd::transform_filter(&wk, ci, co);
            report(&name, time(|| winograd::forward_chunked(&x, &u, &b, false, &sh, &mut out)), flops, "GFLOP/s");
        }
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let name = format!("conv {label} winograd {} filters", kind.name());
            if on(&name) && winograd::suits(&sh) {
                let u: Vec<PackedB> =
                    winograd::transform_filter(&wk, ci, co).into_iter().map(|p| p.narrowed(Some(kind))).collect();
                report(&name, time(|| winograd::forward(&x, &u, &b, false, &sh, &mut out)), flops, "GFLOP/s");
            }
        }
        let name = format!("conv {label} winograd incl. filter transform");
        if on(&name) && winograd::suits(&sh) {
            let t = time(|| {
                let cache = conv::FilterCache::default();
                conv::forward_cached(
                    &x,
                    conv::Filter::F32(&wk),
                    &cache,
                    &b,
                    false,
                    &sh,
                    &mut out,
                    conv::ConvAlgos::Fastest,
                );
            });
            report(&name, t, flops, "GFLOP/s");
        }
    }

    // The convolutions of a training step of the CIFAR VGG-16-BN at batch 64 (the peer benchmark):
    // forward, weight gradient and input gradient, each counted as the direct computation.
    // Then those of the shipped Fashion-MNIST model (VGG-13-BN x0.375) at batch 64.
    for (h, ci, co) in [
        (32, 64, 64),
        (16, 128, 128),
        (8, 256, 256),
        (4, 512, 512),
        (2, 512, 512),
        (32, 24, 24),
        (16, 24, 48),
        (16, 48, 48),
        (8, 48, 96),
        (8, 96, 96),
        (4, 96, 192),
        (4, 192, 192),
        (2, 192, 192),
    ] {
        let sh = ConvShape { n: 64, h, w: h, ci, co, k: 3 };
        let x = data(64 * h * h * ci, 1);
        let wk = data(9 * ci * co, 2);
        let b = data(co, 3);
        let dz = data(64 * h * h * co, 4);
        let mut out = vec![0f32; 64 * h * h * co];
        let mut dx = vec![0f32; x.len()];
        let flops = 2.0 * (64 * h * h * 9 * ci * co) as f64;
        let label = format!("train b64 {h}x{h} {ci}->{co}");
        let name = format!("{label} forward im2col");
        if on(&name) {
            report(&name, time(|| conv::forward_im2col(&x, &wk, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("{label} forward implicit");
        if on(&name) {
            let p = implicit::pack_filter(&wk, &sh);
            report(&name, time(|| implicit::forward(&x, &p, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("{label} forward winograd");
        if on(&name) && winograd::suits(&sh) {
            let u = winograd::transform_filter(&wk, ci, co);
            report(&name, time(|| winograd::forward(&x, &u, &b, false, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("{label} weight gradient");
        if on(&name) {
            let t = time(|| {
                std::hint::black_box(conv::backward(&x, &wk, &dz, &sh, None));
            });
            report(&name, t, flops, "GFLOP/s");
        }
        let name = format!("{label} weight gradient winograd (any tile count)");
        if on(&name) && winograd::suits(&sh) {
            let t = time(|| {
                std::hint::black_box(winograd::weight_grad(&x, &dz, &sh));
            });
            report(&name, t, flops, "GFLOP/s");
        }
        let name = format!("{label} input gradient");
        if on(&name) {
            let cache = conv::FilterCache::default();
            let t = time(|| {
                conv::backward_input_cached(conv::Filter::F32(&wk), &cache, &dz, &sh, &mut dx, conv::ConvAlgos::Fastest)
            });
            report(&name, t, flops, "GFLOP/s");
        }
        // What a training step pays: its weights changed, so the filter is transformed (Winograd)
        // or flipped and packed (implicit GEMM) again for every step.
        let name = format!("{label} input gradient per step (filter transformed)");
        if on(&name) {
            let t = time(|| {
                let cache = conv::FilterCache::default();
                conv::backward_input_cached(conv::Filter::F32(&wk), &cache, &dz, &sh, &mut dx, conv::ConvAlgos::Fastest)
            });
            report(&name, t, flops, "GFLOP/s");
        }
        let name = format!("{label} input gradient per step implicit (filter packed)");
        if on(&name) {
            let back = ConvShape { ci: sh.co, co: sh.ci, ..sh };
            let t = time(|| {
                let p = implicit::pack_filter(&conv::flipped(&wk, sh.ci, sh.co, 3), &back);
                implicit::forward(&dz, &p, &vec![0.0; sh.ci], &back, &mut dx)
            });
            report(&name, t, flops, "GFLOP/s");
        }
    }

    // First layers (1 or 3 input channels): direct loops against im2col + GEMM, forward and weight
    // gradient (the Fashion-MNIST model at batch 64, VGG-16 at batch 1 and 8).
    for (label, n, h, ci, co) in [
        ("fmnist b64 32x32 1->24", 64, 32, 1, 24),
        ("conv1_1 b1 224x224 3->64", 1, 224, 3, 64),
        ("conv1_1 b8 224x224 3->64", 8, 224, 3, 64),
    ] {
        let sh = ConvShape { n, h, w: h, ci, co, k: 3 };
        let x = data(n * h * h * ci, 1);
        let wk = data(9 * ci * co, 2);
        let b = data(co, 3);
        let dz = data(n * h * h * co, 4);
        let mut out = vec![0f32; n * h * h * co];
        let flops = 2.0 * (n * h * h * 9 * ci * co) as f64;
        let name = format!("first {label} forward im2col");
        if on(&name) {
            report(&name, time(|| conv::forward_im2col(&x, &wk, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("first {label} forward direct");
        if on(&name) {
            report(&name, time(|| direct::forward(&x, &wk, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("first {label} forward implicit");
        if on(&name) {
            let p = implicit::pack_filter(&wk, &sh);
            report(&name, time(|| implicit::forward(&x, &p, &b, &sh, &mut out)), flops, "GFLOP/s");
        }
        let name = format!("first {label} weight gradient im2col");
        if on(&name) {
            let t = time(|| {
                std::hint::black_box(conv::weight_grad_im2col(&x, &dz, &sh));
            });
            report(&name, t, flops, "GFLOP/s");
        }
        let name = format!("first {label} weight gradient direct");
        if on(&name) {
            let t = time(|| {
                std::hint::black_box(direct::weight_grad(&x, &dz, &sh));
            });
            report(&name, t, flops, "GFLOP/s");
        }
    }

    // The packed GEMM against the `gemm` crate on a Winograd-sized product (tiles x ci by ci x co).
    for (m, k, n) in [(196, 512, 512), (3136, 64, 64), (2048, 864, 96), (512, 1728, 192), (1024, 216, 48)] {
        let a = data(m * k, 4);
        let bm = data(k * n, 5);
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let name = format!("gemm {m}x{k}x{n} packed");
        if on(&name) {
            let p = PackedB::new(&bm, k, n, [n, 1]);
            report(&name, time(|| packed::gemm(m, &a, k, &p, 0..p.panels(), &mut c, n, false)), flops, "GFLOP/s");
        }
        // As the Winograd chunked forward reads A: rows 36·k apart (one tile element of each tile).
        let name = format!("gemm {m}x{k}x{n} packed, A rows 36k apart");
        if on(&name) {
            let p = PackedB::new(&bm, k, n, [n, 1]);
            let wide = data(m * 36 * k, 4);
            report(
                &name,
                time(|| packed::gemm(m, &wide, 36 * k, &p, 0..p.panels(), &mut c, n, false)),
                flops,
                "GFLOP/s",
            );
        }
        let name = format!("gemm {m}x{k}x{n} gemm crate");
        if on(&name) {
            let t = time(|| vgg::kernels::sgemm(m, n, k, &a, [k, 1], &bm, [n, 1], &mut c, n, false, false));
            report(&name, t, flops, "GFLOP/s");
        }
    }

    // fc6 at batch 1: a matrix-vector product bound by the bytes of W.
    let (inp, out_f) = (25088, 4096);
    let w = data(inp * out_f, 6);
    let x = data(inp, 7);
    let b = data(out_f, 8);
    let mut y = vec![0f32; out_f];
    if on("fc6 b1 f32") {
        let t = time(|| dense::linear_forward(&x, &w, &b, 1, &mut y));
        report("fc6 b1 f32 weights (dot products)", t, (inp * out_f * 4) as f64, "GB/s");
    }
    for (kind, label) in [(HalfKind::Bf16, "bf16"), (HalfKind::F16, "f16")] {
        let name = format!("fc6 b1 {label} weights (widened in registers)");
        if on(&name) {
            let h = HalfBuf::encode(kind, &w);
            let t = time(|| vgg::kernels::half::linear_forward(&x, &h, &b, 1, &mut y));
            report(&name, t, (inp * out_f * 2) as f64, "GB/s");
        }
    }
    drop(w);

    // BatchNorm + ReLU over a conv1-sized map (memory-bound).
    let c = 64;
    let xs = data(112 * 112 * c * 8, 9);
    let mut ys = vec![0f32; xs.len()];
    let (mean, var) = norm::batch_stats(&xs, c);
    let a = norm::Affine::new(&mean, &var, &vec![1.0; c], &vec![0.0; c], 1e-5);
    if on("bn_relu") {
        let t = time(|| norm::affine_relu(&xs, &a, &mut ys));
        report("bn_relu 8x112x112x64 (eval affine)", t, (xs.len() * 8) as f64, "GB/s");
    }
    if on("batch_stats") {
        let t = time(|| {
            std::hint::black_box(norm::batch_stats(&xs, c));
        });
        report("batch_stats 8x112x112x64", t, (xs.len() * 4) as f64, "GB/s");
    }
}
