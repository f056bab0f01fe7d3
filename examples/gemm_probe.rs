use std::time::Instant;
fn main() {
    let shapes = [
        (1024, 64, 576),
        (2048, 64, 576),
        (4096, 64, 576),
        (256, 128, 576),
        (1024, 128, 1152),
        (512, 256, 1152),
        (256, 512, 2304),
        (1024, 512, 4608),
        (576, 64, 1024),
        (64, 576, 1024),
    ];
    for &(m, n, k) in &shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        for par in [false, true] {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                vgg::kernels::sgemm(m, n, k, &a, [k, 1], &b, [n, 1], &mut c, n, false, par);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("m {m} n {n} k {k} par {par}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / best / 1e9);
        }
    }
}
