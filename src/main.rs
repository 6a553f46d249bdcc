use std::process::ExitCode;

use clap::Parser;

/// SIGTERM/SIGINT are caught from before libtorch's initialisers run, so a job preempted
/// during start-up still exits 75 (see `train::run::signals`). Only an executable's own
/// `.preinit_array` runs that early, hence here rather than in the library.
#[used]
#[link_section = ".preinit_array"]
static EARLY_SIGNALS: extern "C" fn() = train::run::signals::early::install;

fn main() -> ExitCode {
    let cli = train::cli::Cli::parse();
    train::app::init_logging(cli.log_format);
    train::app::ignore_file_size_signal();
    match train::app::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", train::app::error_chain(&e));
            ExitCode::from(train::app::exit_code(&e))
        }
    }
}
