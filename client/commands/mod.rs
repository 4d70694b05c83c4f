//! The subcommands, one file each; [`run`] dispatches the parsed command
//! line. A subcommand loads the effective [`Config`], calls the stages
//! it needs, and writes its result to stdout; the work lives in the stage
//! modules (`fetch`, `plan`, `pipeline`, `merge`, …), never here.

pub mod actions;
pub mod config;
pub mod dance;
pub mod diff;
pub mod facts;
pub mod init;
pub mod lint;
pub mod manual;
pub mod param;
pub mod plan;
pub mod promote;
pub mod publish;
pub mod report;
pub mod secret;
pub mod serve;
pub mod shell;
pub mod undo;

use std::collections::BTreeMap;
use std::io::{self, Write};

use anyhow::{bail, Context, Result};

use crate::cli::{Cli, Command};
use crate::config::{Config, Flags};

/// Runs the command of `cli`; the return value is the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    // These run before any configuration exists, or need none.
    match &cli.command {
        Command::Init(args) => return init::run(args),
        Command::Completions(args) => return manual::completions(args.shell),
        Command::Man(args) => return manual::man(args.dir.as_deref()),
        Command::Secret(args) => return secret::run(args),
        Command::Shim(args) => return Ok(crate::sandbox::service_cmds::run(&args.argv)),
        _ => {}
    }
    let config = load_config(&cli)?;
    match cli.command {
        Command::Plan(_) => plan::run(&config),
        Command::Lint(args) => {
            // `disco --node N lint` means `disco lint --node N`.
            let mut nodes = args.nodes;
            nodes.extend(cli.global.node.clone());
            lint::run(&config, &nodes, &args.allow_link_to)
        }
        Command::Dance(args) => dance::run(&config, &dance_options(&args)?),
        Command::Undo(args) => undo::run(&config, args.yes),
        Command::Actions(args) => actions::run(&config, &args),
        Command::Serve(args) => serve::run(&config, &args),
        Command::Publish(args) => publish::run(&config, &args),
        Command::Promote(args) => promote::run(&config, &args),
        Command::Diff(args) => diff::run(&config, &args),
        Command::Report(args) => report::run(&config, &args),
        Command::Shell(args) => shell::run(&config, args.keep, args.module.as_deref()),
        Command::Param(args) => {
            let result = param::run(&config, args);
            if let Err(e) = &result {
                in_sandbox_note(&format!("{e:#}"));
            }
            result
        }
        Command::Config(_) => config::run(&config),
        Command::Facts(args) => facts::run(&config, args.json),
        Command::Init(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Secret(_)
        | Command::Shim(_) => bail!("this command runs before the configuration is loaded"),
    }
}

/// The effective configuration for `cli`: files, environment and global
/// flags, then the settings only `dance` takes as flags.
fn load_config(cli: &Cli) -> Result<Config> {
    let given = cli.command.given().over(&cli.global);
    let flags = Flags {
        config: given.config,
        server: given.server,
        node: given.node,
        root: given.root,
        state_dir: given.state_dir,
        noop: given.noop,
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut config = Config::load(&flags, &env)?;
    if let Command::Dance(args) = &cli.command {
        if let Some(n) = &args.noop_network {
            config.noop_network.value = n.clone();
            config.noop_network.source = crate::config::Source::Flag("--noop-network");
        }
        if let Some(n) = args.jobs {
            if n == 0 {
                bail!("--jobs 0: give how many modules may run at once, at least 1");
            }
            config.jobs.value = n;
            config.jobs.source = crate::config::Source::Flag("--jobs");
        }
    }
    Ok(config)
}

/// The options of `disco dance` from its flags.
fn dance_options(args: &crate::cli::DanceArgs) -> Result<dance::DanceOptions> {
    Ok(dance::DanceOptions {
        keep: args.keep,
        retry_actions: args.retry_actions,
        run_actions: args.run_actions,
        detailed_exitcodes: args.detailed_exitcodes,
        no_wait: args.no_wait,
        splay: args.splay,
        splay_always: args.splay_always,
        quiet: args.quiet,
        if_changed: args.if_changed,
        max_age: args.max_age.as_secs(),
        only: args
            .only
            .iter()
            .map(|m| crate::names::Name::parse(m, "--only"))
            .collect::<Result<_, _>>()?,
    })
}

/// Refuses to go on unless running as root.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} must run as root: {why}");
    }
    Ok(())
}

/// Inside a dance's sandbox, a failed `disco param` also leaves its error
/// where the step's runner reads it (bash may drop the exit status).
fn in_sandbox_note(error: &str) {
    if std::env::var_os("DISCO_PARAMS").is_some_and(|p| !p.is_empty()) {
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(crate::sandbox::PARAM_ERRORS)
            .and_then(|mut f| writeln!(f, "{error}"));
    }
}

/// Writes `bytes` to stdout; a closed pipe (`disco man | head`) is not an error.
pub fn print_bytes(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// Writes lines to stdout; a closed pipe (`disco plan | head -1`) is not an error.
pub fn print_lines<I: IntoIterator<Item = String>>(lines: I) -> Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = lines
        .into_iter()
        .try_for_each(|l| writeln!(out, "{l}"))
        .and_then(|_| out.flush());
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}
