//! Log set-up: tracing to stderr, readable or JSON, filtered by `RUST_LOG` (default `info`;
//! `warn` on the ranks other than 0 of a data-parallel job).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output formats (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs. `follower`: this
/// process is a rank other than 0 of a data-parallel job (see `train::app::init_logging`,
/// which finds out).
pub fn init(format: LogFormat, follower: bool) {
    // In a data-parallel job only rank 0 tells the story; the others say only what went
    // wrong (warnings and errors), unless RUST_LOG asks for more.
    let default = if follower { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal; job logs and CI get plain text. The same rule
    // as `train-ckpt`'s (NO_COLOR, CLICOLOR_FORCE).
    let ansi = train_ckpt::cli::log_colour(std::io::stderr().is_terminal(), |k| std::env::var_os(k));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
