//! `comet bench`: benchmarks (placeholder until the protocol library lands).
use clap::Args;

/// Arguments of `comet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
