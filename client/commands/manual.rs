//! `disco completions SHELL` and `disco man`: the shell completion scripts
//! (clap_complete) and the manual pages (clap_mangen), both generated from
//! the command line's own definition in [`crate::cli`], so they cannot
//! drift from `--help`.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "disco", &mut out);
    super::print_bytes(&out)?;
    Ok(0)
}

/// Prints disco(1), or writes it and one page per subcommand into `dir`.
pub fn man(dir: Option<&Path>) -> Result<i32> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("cannot render the manual page")?;
        super::print_bytes(&out)?;
        return Ok(0);
    };
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    Ok(0)
}
