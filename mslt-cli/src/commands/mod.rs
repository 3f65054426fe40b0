pub mod ablate;
pub mod bench;
pub mod encode;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod inspect;
pub mod kernels;
pub mod prepare;
pub mod train;

/// Parses an on/off switch value.
pub fn on_off(flag: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        o => anyhow::bail!("{flag} {o:?}: expected on or off"),
    }
}
