//! The commands: each takes the parsed CLI and the effective [`Config`],
//! calls the pipeline stages in order, and writes its result to stdout.
//! Kept short on purpose: the work lives in the stage modules.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};

use crate::cli::{Cli, Command, ParamAction, ParamArgs};
use crate::config::{Config, Flags};
use crate::fetch;
use crate::params::{self, Key, NewValue, Param, ParamTree};
use crate::transport::ServerUri;

/// Runs the command of `cli`; the return value is the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let flags = Flags {
        config: cli.global.config.clone(),
        server: cli.global.server.clone(),
        node: cli.global.node.clone(),
        root: cli.global.root.clone(),
        state_dir: cli.global.state_dir.clone(),
        noop: cli.global.noop,
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = Config::load(&flags, &env)?;
    match cli.command {
        Command::Plan => plan(&config),
        Command::Dance(args) => crate::dance::dance(
            &config,
            &crate::dance::DanceOptions {
                keep: args.keep,
                run_actions: args.run_actions,
                detailed_exitcodes: args.detailed_exitcodes,
                no_wait: args.no_wait,
                splay: args.splay,
                splay_always: args.splay_always,
                quiet: args.quiet,
                if_changed: args.if_changed,
                max_age: args.max_age.as_secs(),
            },
        ),
        Command::Undo => crate::dance::undo(&config),
        Command::Serve => {
            if !matches!(config.root.source, crate::config::Source::Flag(_)) {
                bail!("disco serve needs --root DIR, the server tree to serve");
            }
            let forced = match config.node.source {
                crate::config::Source::Flag(_) => Some(&config.node.value),
                _ => None,
            };
            crate::transport::serve::serve(&config.root.value, forced)
        }
        Command::Publish(args) => {
            if !matches!(config.root.source, crate::config::Source::Flag(_)) {
                bail!("disco publish needs --root DIR, the served directory (it gets snapshots/ and current)");
            }
            let id = crate::transport::publish::publish(&args.src, &config.root.value, args.keep)?;
            crate::output::info(&format!(
                "published {} as snapshot {id}; {}/current points to it",
                args.src.display(),
                config.root.value.display()
            ));
            Ok(0)
        }
        Command::Diff(args) => diff(&config, args.run.as_deref()),
        Command::Report(args) => report(&config, &args),
        Command::Shell(args) => crate::shell::shell(&config, args.keep),
        Command::Param(args) => param(&config, args),
        Command::Config => {
            print_lines(config.lines())?;
            Ok(0)
        }
    }
}

fn plan(config: &Config) -> Result<i32> {
    // The cache is shared with dances: never fetch while one runs.
    let _lock = take_lock(config, false)?;
    let fetched = fetch::fetch_configured(config)?;
    print_lines(fetched.plan.order.iter().map(|m| m.to_string()))?;
    Ok(0)
}

fn param(config: &Config, args: ParamArgs) -> Result<i32> {
    let tree = match &args.tree {
        Some(dir) => {
            if !dir.is_dir() {
                bail!("parameter tree {} is not a directory", dir.display());
            }
            ParamTree::load(dir, &dir.display().to_string())?
        }
        None if std::env::var_os("DISCO_PARAMS").is_some_and(|p| !p.is_empty()) => {
            // Inside a dance's sandbox: the node's merged parameters.
            if matches!(
                args.action,
                ParamAction::Set { .. } | ParamAction::Delete { .. }
            ) {
                bail!("parameters are read-only during a dance");
            }
            let dir = std::path::PathBuf::from(std::env::var_os("DISCO_PARAMS").expect("checked"));
            ParamTree::load(&dir, "DISCO_PARAMS")?
        }
        None => {
            if matches!(
                args.action,
                ParamAction::Set { .. } | ParamAction::Delete { .. }
            ) {
                bail!("set and delete change a plain tree: give --tree DIR (the fetched parameters are read-only)");
            }
            let fetched = fetch::open_cache(&config.state_dir.value, &config.node.value)?;
            let cache = crate::fetch::cache_tree(&fetched.cache)?;
            params::merged(&cache, &fetched.node, &fetched.plan)?
        }
    };
    match args.action {
        ParamAction::Get { key } => {
            let key = Key::parse(&key)?;
            match tree.get(&key) {
                Some(Param::Value(v)) => {
                    let mut out = io::stdout().lock();
                    out.write_all(v)
                        .and_then(|_| out.flush())
                        .context("cannot write to stdout")?;
                }
                Some(Param::Dir(_)) => {
                    bail!("parameter '{key}' is a directory: use `disco param keys {key}`")
                }
                None => bail!("no parameter '{key}'"),
            }
        }
        ParamAction::Keys { key } => {
            let key = key.as_deref().map(Key::parse).transpose()?;
            print_lines(tree.children(key.as_ref())?.keys().map(|k| k.to_string()))?;
        }
        ParamAction::Dump { key } => {
            let key = key.as_deref().map(Key::parse).transpose()?;
            print_lines(
                tree.dump(key.as_ref())?
                    .iter()
                    .map(|l| crate::output::printable(l)),
            )?;
        }
        ParamAction::Set { key, value } => {
            let dir = args.tree.as_ref().expect("checked above");
            let key = Key::parse(&key)?;
            let value = match value.as_deref() {
                Some("{}") => NewValue::Dir,
                Some(v) => NewValue::Value(format!("{v}\n").into_bytes()),
                None => {
                    let mut buf = Vec::new();
                    io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read the value from stdin")?;
                    NewValue::Value(buf)
                }
            };
            params::tree_set(dir, &key, &value)?;
        }
        ParamAction::Delete { key, recursive } => {
            let dir = args.tree.as_ref().expect("checked above");
            params::tree_delete(dir, &Key::parse(&key)?, recursive)?;
        }
    }
    Ok(0)
}

fn report(config: &Config, args: &crate::cli::ReportArgs) -> Result<i32> {
    use crate::report::{self, RunReport};
    if args.fleet {
        let servers = config.require_servers()?;
        let ServerUri::Local(dir) = ServerUri::parse(&servers[0])? else {
            bail!("--fleet reads the reports on the server itself: give --server DIR (the served directory)");
        };
        let reports = dir.join("reports");
        let mut nodes: Vec<(String, Option<RunReport>)> = Vec::new();
        let entries = std::fs::read_dir(&reports).with_context(|| {
            format!(
                "no reports in {} (do nodes set report_upload = true?)",
                reports.display()
            )
        })?;
        for e in entries.flatten() {
            let node = e.file_name().to_string_lossy().into_owned();
            let r = std::fs::read(e.path().join("last.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            nodes.push((node, r));
        }
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut lines = vec![format!(
            "{:<24} {:<21} {:<8} {:>8} {:>9} {:>10}",
            "node", "last run", "status", "changes", "duration", "age"
        )];
        for (node, r) in nodes {
            match r {
                None => lines.push(format!("{node:<24} (no readable report)")),
                Some(r) => {
                    let age = humantime::parse_rfc3339(&r.ended)
                        .ok()
                        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                        .unwrap_or_default();
                    let stale = if age > args.stale { "  STALE" } else { "" };
                    lines.push(format!(
                        "{node:<24} {:<21} {:<8} {:>8} {:>8.2}s {:>9}s{stale}",
                        r.ended,
                        r.status,
                        r.changes().count(),
                        r.duration,
                        age.as_secs()
                    ));
                }
            }
        }
        print_lines(lines)?;
        return Ok(0);
    }
    let state = &config.state_dir.value;
    if args.history {
        print_lines(
            report::history(state)?
                .iter()
                .map(crate::output::history_line),
        )?;
        return Ok(0);
    }
    let r = report::load(state, args.run.as_deref())?;
    if args.json {
        print_lines([serde_json::to_string_pretty(&r)?])?;
    } else if args.prometheus {
        let text = crate::output::prometheus(&r);
        print_lines(text.lines().map(String::from))?;
    } else {
        print_lines(
            crate::output::report_lines(&r)
                .iter()
                .map(|l| crate::output::printable(l)),
        )?;
    }
    Ok(0)
}

fn diff(config: &Config, run: Option<&str>) -> Result<i32> {
    let report = crate::report::load(&config.state_dir.value, run)?;
    let mode = if report.noop { "noop" } else { "live" };
    print_lines([format!(
        "info: run {} of node {} ({mode}) on {}, started {}",
        report.id,
        report.node,
        report.root.display(),
        report.started
    )])?;
    for m in &report.modules {
        if m.changes.is_empty() {
            continue;
        }
        print_lines([format!("info: {}: {} change(s)", m.name, m.changes.len())])?;
        for c in &m.changes {
            crate::output::change(c, true);
        }
    }
    if let Some(e) = &report.error {
        print_lines([format!("info: that run failed: {e}")])?;
    }
    Ok(0)
}

/// The dance lock of this state dir (see [`crate::cron`]).
pub fn take_lock(config: &Config, no_wait: bool) -> Result<crate::cron::Lock> {
    crate::cron::lock(&crate::cron::lock_path(&config.state_dir.value), no_wait)
}

/// The lock of the root a dance or undo writes, whatever its state dir:
/// two state dirs on one root must not merge at once.
pub fn take_root_lock(config: &Config, no_wait: bool) -> Result<crate::cron::Lock> {
    let root = &config.root.value;
    let meta = fs::metadata(root).with_context(|| format!("root {}", root.display()))?;
    crate::cron::lock(&crate::cron::root_lock_path(&meta), no_wait)
}

/// Writes lines to stdout; a closed pipe (`disco plan | head -1`) is not an error.
fn print_lines<I: IntoIterator<Item = String>>(lines: I) -> Result<()> {
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
