use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = train::cli::Cli::parse();
    train::logging::init(cli.log_format);
    match train::app::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", train::app::error_chain(&e));
            ExitCode::from(train::app::exit_code(&e))
        }
    }
}
