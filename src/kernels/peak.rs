//! The FMA peak of this machine on a kernel path: every thread runs twelve independent chains of
//! fused multiply-adds on the path's widest vectors, so that neither latency nor memory limits
//! them (the measurement behind `vgg bench --peak`). Effective GFLOP/s over this peak is the
//! share of the machine a kernel reaches, comparable across CPUs.

use std::time::Instant;

use super::isa::Isa;

/// Independent accumulator chains per thread: more than FMA latency × throughput on current
/// cores (4 × 2 = 8), fewer than the registers.
const CHAINS: usize = 12;

/// Measured GFLOP/s (2 per lane per FMA) of `threads` threads running FMAs on `isa` for about
/// `seconds`.
pub fn fma_peak_gflops(isa: Isa, threads: usize, seconds: f64) -> f64 {
    assert!(isa.is_supported(), "{isa} on a CPU without it");
    let threads = threads.max(1);
    // Iterations per timing round, then as many rounds as fit in the time.
    let iters = 1 << 20;
    let started = Instant::now();
    let flops_per_thread: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut flops = 0.0;
                    let mut sink = 0f32;
                    let begin = Instant::now();
                    while begin.elapsed().as_secs_f64() < seconds {
                        let (lanes, v) = run(isa, iters, 1.0 + t as f32 * 1e-3);
                        sink += v;
                        flops += 2.0 * (lanes * CHAINS * iters) as f64;
                    }
                    std::hint::black_box(sink);
                    flops
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("peak thread")).collect()
    });
    flops_per_thread.iter().sum::<f64>() / started.elapsed().as_secs_f64() / 1e9
}

/// `iters` rounds of `CHAINS` FMAs; returns the lanes per FMA and a value that depends on all.
fn run(isa: Isa, iters: usize, seed: f32) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `fma_peak_gflops` checked that the CPU has the path.
        Isa::Avx512 => return (16, unsafe { x86::chains512(iters, seed) }),
        Isa::Avx2 => return (8, unsafe { x86::chains256(iters, seed) }),
        Isa::Generic => {}
    }
    let _ = isa;
    let mut acc = [[seed; 8]; CHAINS];
    let (m, a) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for x in chain.iter_mut() {
                *x = x.mul_add(m, a);
            }
        }
    }
    (8, acc.iter().flatten().sum())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// SAFETY: the CPU has AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn chains512(iters: usize, seed: f32) -> f32 {
        let (m, a) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(std::hint::black_box(1e-7)));
        let mut acc = [_mm512_set1_ps(seed); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    /// SAFETY: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains256(iters: usize, seed: f32) -> f32 {
        let (m, a) = (_mm256_set1_ps(std::hint::black_box(0.999_999)), _mm256_set1_ps(std::hint::black_box(1e-7)));
        let mut acc = [_mm256_set1_ps(seed); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let mut lanes = [0f32; 8];
        let mut total = 0.0;
        for x in acc {
            // SAFETY: `lanes` holds the 8 floats stored.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
            total += lanes.iter().sum::<f32>();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path the CPU has measures a positive, finite peak.
    #[test]
    fn every_path_measures_a_peak() {
        let generic = fma_peak_gflops(Isa::Generic, 1, 0.05);
        assert!(generic.is_finite() && generic > 0.0, "{generic}");
        for isa in Isa::supported() {
            let peak = fma_peak_gflops(isa, 1, 0.05);
            assert!(peak.is_finite() && peak > 0.0, "{isa}: {peak}");
        }
    }
}
