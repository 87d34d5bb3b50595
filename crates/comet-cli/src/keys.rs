//! `comet keys`: TLS material for a deployment (placeholder until comet-net's TLS lands).
use clap::Args;

/// Arguments of `comet keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {}

pub fn run(_args: KeysArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
