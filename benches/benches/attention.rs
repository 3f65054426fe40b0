//! Self-attention core on CPU, forward + backward of q, k, v (what a trainable layer runs):
//! the fused op (`mslt_core::attention`) vs the composed Candle reference, at the shape of the
//! `configs/bert-h256-l8.json` CPU benchmark (batch 16 x 128, 4 heads x 64), dropout 0.1 on the
//! probabilities (the composed side multiplies by the same mask). Compare as a ratio within one run.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use mslt_core::attention::{attention, attention_reference, dropout_multiplier};
use mslt_core::Rng;

fn bench(c: &mut Criterion) {
    let (b, t, heads, hs) = (16usize, 128usize, 4usize, 64usize);
    let cc = heads * hs;
    let dev = Device::Cpu;
    let mut rng = Rng::new(1);
    let mut var = || {
        Var::from_tensor(
            &Tensor::from_vec(rng.normal_vec(b * t * cc, 0.0, 1.0), (b, t, cc), &dev)
                .expect("tensor"),
        )
        .expect("var")
    };
    let (q, k, v) = (var(), var(), var());
    // padded batch: a quarter of the keys of every other row masked
    let mask: Vec<f32> = (0..b * t)
        .map(|i| {
            if (i / t) % 2 == 1 && i % t >= 3 * t / 4 {
                -1e9
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (b, 1, 1, t), &dev).expect("mask");
    let dm = dropout_multiplier(b, heads, t, 0.1, 7).expect("dropout mask");
    let mut g = c.benchmark_group("attention_core_fwd_bwd_b16_t128_h4x64");
    g.sample_size(10);
    g.bench_function("fused", |bch| {
        bch.iter(|| {
            let o = attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                heads,
                0.1,
                7,
            )
            .expect("fwd");
            o.sum_all().expect("sum").backward().expect("bwd")
        })
    });
    g.bench_function("composed", |bch| {
        bch.iter(|| {
            let o = attention_reference(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                heads,
                Some(&dm),
            )
            .expect("fwd");
            o.sum_all().expect("sum").backward().expect("bwd")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
