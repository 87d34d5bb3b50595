//! Ring matmul throughput per kernel on the model's shapes.
//!
//! Throughput is reported in elements = ring operations (2·m·k·n: one multiply and one add
//! per inner-product term), so criterion's `Gelem/s` reads directly as G ring-op/s.
//! Run: `cargo bench -p comet-core --bench ring_matmul`.

use comet_core::matmul::{matmul_transposed_b_with, matmul_with, Kernel};
use comet_core::Prg;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

/// (m, k, n): a 64-token prefill and a one-token decode through a 576→1536 projection.
const SHAPES: [(usize, usize, usize); 2] = [(64, 576, 1536), (1, 576, 1536)];

fn bench_kernels(c: &mut Criterion) {
    let mut prg = Prg::from_seed([42; 16]);
    for (m, k, n) in SHAPES {
        let a = prg.gen_u64s(m * k);
        let b = prg.gen_u64s(k * n);
        for (label, transposed) in [("AxB", false), ("AxBt", true)] {
            let mut group = c.benchmark_group(format!("ring_matmul_{label}_{m}x{k}x{n}"));
            group
                .throughput(Throughput::Elements((2 * m * k * n) as u64))
                .sample_size(20)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            for kernel in Kernel::supported() {
                group.bench_function(BenchmarkId::from_parameter(kernel.name()), |bench| {
                    bench.iter(|| {
                        let out = if transposed {
                            matmul_transposed_b_with(kernel, &a, &b, m, k, n)
                        } else {
                            matmul_with(kernel, &a, &b, m, k, n)
                        };
                        black_box(out.expect("kernel is supported"))
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
