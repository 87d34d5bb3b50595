//! Plaintext commands: generate, eval, info (owned by the model layer work; placeholder until it lands).
use clap::Args;

/// Arguments of `comet generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: String,
}
/// Arguments of `comet eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {}
/// Arguments of `comet info`.
#[derive(Args, Debug)]
pub struct InfoArgs {}

pub fn generate(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn eval(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn info(_args: InfoArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
