//! `train-ckpt`: the `train ckpt` commands in a binary that never loads libtorch, so they
//! start in milliseconds instead of paying libtorch's load (what a user feels on a cluster
//! node, and what whole-process comparisons with `zstd` measure). Same arguments, output
//! and exit codes as `train ckpt`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Inspect, verify, convert and strip checkpoints (`.safetensors`, `.tckpt`, and read-only
/// `torch.save` files) without loading libtorch; the same as `train ckpt`.
#[derive(Debug, Parser)]
#[command(name = "train-ckpt", version)]
struct Cli {
    #[command(subcommand)]
    command: train_ckpt::cli::CkptCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = train_ckpt::cli::log_colour(std::io::stderr().is_terminal(), |k| std::env::var_os(k));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    match train_ckpt::cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", train_ckpt::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
