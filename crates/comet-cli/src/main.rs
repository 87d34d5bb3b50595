//! `comet`: private LLM inference on secret shares held by two non-colluding servers.

mod bench;
mod bench_generate;
mod keys;
mod party;
mod plaintext;
mod secure;
mod sparse_mode;
mod sparsity;

use clap::{Parser, Subcommand};

/// Private LLM inference with two-party secure computation.
#[derive(Parser, Debug)]
#[command(name = "comet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt.
    Generate(plaintext::GenerateArgs),
    /// Score a text file: mean negative log-likelihood, perplexity, speed.
    Eval(plaintext::EvalArgs),
    /// Print a model's configuration and tensor table.
    Info(plaintext::InfoArgs),
    /// Create a certificate authority and per-party TLS certificates.
    Keys(keys::KeysArgs),
    /// Benchmarks.
    Bench(bench::BenchArgs),
    /// Mask a model's weights once and write each party's shares (with the model's hash).
    ShareModel(party::ShareModelArgs),
    /// Run one party (p0, p1 or dealer) of a secure session over mutual TLS.
    Party(party::PartyArgs),
    /// Calibrate the FFN self-gate (per-layer thresholds and low-bit scales) on public text.
    Calibrate(sparsity::CalibrateArgs),
    /// Train the per-layer MLP sparsity predictor (Deja Vu style) on public text.
    TrainPredictor(sparsity::TrainPredictorArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => plaintext::generate(args),
        Command::Eval(args) => plaintext::eval(args),
        Command::Info(args) => plaintext::info(args),
        Command::Keys(args) => keys::run(args),
        Command::Bench(args) => bench::run(args),
        Command::ShareModel(args) => party::share_model(args),
        Command::Party(args) => party::party(args),
        Command::Calibrate(args) => sparsity::calibrate(args),
        Command::TrainPredictor(args) => sparsity::train_predictor(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
