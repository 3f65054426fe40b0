//! Shared set-up for mslt's Criterion benchmarks (`cargo bench -p mslt-benches`).

use candle_core::{Device, Result};
use mslt_core::{BertConfig, BertForPreTraining, BertInput, Rng};

/// A randomly initialised model of `cfg` and a full (unpadded) batch of (B, T) random ids.
pub fn model_and_batch(
    cfg: &BertConfig,
    b: usize,
    t: usize,
    trainable: bool,
) -> Result<(
    BertForPreTraining,
    BertInput,
    Option<mslt_core::weights::Params>,
)> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let tensors =
        mslt_core::weights::init_all(cfg, &mut rng, &dev).map_err(candle_core::Error::wrap)?;
    let (model, params) = if trainable {
        let p =
            mslt_core::weights::Params::from_tensors(&tensors).map_err(candle_core::Error::wrap)?;
        let m = BertForPreTraining::from_tensors(cfg, &p.tensors(), "init")
            .map_err(candle_core::Error::wrap)?;
        (m, Some(p))
    } else {
        (
            BertForPreTraining::from_tensors(cfg, &tensors, "init")
                .map_err(candle_core::Error::wrap)?,
            None,
        )
    };
    let ids: Vec<i64> = (0..b * t)
        .map(|_| 5 + rng.below(cfg.vocab_size as u64 - 5) as i64)
        .collect();
    let input = BertInput::from_host(cfg, (b, t), &ids, None, None, &dev)
        .map_err(candle_core::Error::wrap)?;
    Ok((model, input, params))
}
