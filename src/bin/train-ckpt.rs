//! `train-ckpt`: the `train ckpt` commands in a binary that never loads libtorch, so they
//! start in milliseconds instead of paying libtorch's ~0.25 s load (what a user feels on a
//! cluster node, and what whole-process comparisons with `zstd` measure). Same arguments,
//! output and exit codes as `train ckpt`.

use std::process::ExitCode;

use clap::Parser;

/// Inspect, verify, convert and strip checkpoints (`.safetensors`, `.tckpt`, and read-only
/// `torch.save` files) without loading libtorch.
#[derive(Debug, Parser)]
#[command(name = "train-ckpt", version)]
struct Cli {
    #[command(subcommand)]
    command: train::cli::CkptCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    train::logging::init(train::cli::LogFormat::Text);
    match train::app::ckpt(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", train::app::error_chain(&e));
            ExitCode::from(train::app::exit_code(&e))
        }
    }
}
