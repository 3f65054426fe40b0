//! Encoder forward on CPU: frozen (plain tensors, fused no-backward LayerNorm/softmax) vs
//! trainable (Var-backed, differentiable ops, graph recorded), `mini` preset, batch 8 x 128.
//! Compare the two as a ratio within one run.

use criterion::{criterion_group, criterion_main, Criterion};
use mslt_core::{BertConfig, Mode};

fn forward(c: &mut Criterion) {
    let cfg = BertConfig::preset("mini").expect("preset");
    let mut g = c.benchmark_group("encoder_forward_mini_b8_t128");
    g.sample_size(10);
    for trainable in [false, true] {
        let (model, input, _params) =
            mslt_benches::model_and_batch(&cfg, 8, 128, trainable).expect("set-up");
        let name = if trainable {
            "trainable_path"
        } else {
            "frozen_path"
        };
        g.bench_function(name, |bch| {
            bch.iter(|| {
                model
                    .encode(&input, &mut Mode::Eval, false)
                    .expect("forward")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
