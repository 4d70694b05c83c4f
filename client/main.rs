//! The `disco` binary: parse the command line, run the command, print any
//! error as one `error:` line and exit 1. Everything else is in the library.

use clap::Parser;

fn main() {
    let cli = disco::cli::Cli::parse();
    let code = match disco::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            disco::output::error(&format!("{e:#}"));
            1
        }
    };
    std::process::exit(code);
}
