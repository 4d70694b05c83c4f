//! `disco shell`: an interactive bash in a noop sandbox over ROOT — the
//! same sandbox a noop dance uses, with a single layer — and, when it
//! exits, the report of everything it changed. ROOT is never touched.

use std::fs;
use std::io::IsTerminal;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::require_root;
use crate::config::Config;
use crate::diff::Owners;
use crate::exec::{wait4, SANDBOX_PATH};
use crate::output;
use crate::report::{self, ModuleReport, RunReport};
use crate::run::RunDir;
use crate::sandbox::{Output, Sandbox};

/// Runs the shell; the exit code is the shell's.
///
/// Long because it is the whole command: sandbox, terminal signals, the shell, the changes, the report — in the order a user sees them.
pub fn run(config: &Config, keep: bool) -> Result<i32> {
    require_root("disco shell", "it mounts overlays and enters namespaces")?;
    crate::sandbox::own_mount_namespace()?;
    let state = &config.state_dir.value;
    let run = RunDir::create(state)?;
    let sandbox = Sandbox::prepare(run, &config.root.value, state, true, &["shell".to_string()])?;
    let exe = fs::read_link("/proc/self/exe").context("cannot find the disco binary")?;
    let binds = sandbox.standard_binds(&exe, None);
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    output::info(&format!(
        "shell in a noop sandbox over {}; nothing you do reaches it. Exit to see the changes.",
        sandbox.root.display()
    ));

    // Ctrl-C belongs to the shell, not to disco.
    // SAFETY: changing signal dispositions of this single-threaded process.
    let (old_int, old_quit) = unsafe {
        (
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGQUIT, libc::SIG_IGN),
        )
    };
    let outcome = sandbox.run_layer(1, &binds, Output::Terminal, || {
        let mut cmd = Command::new("bash");
        if std::io::stdin().is_terminal() {
            cmd.arg("-i");
        }
        cmd.env("PATH", SANDBOX_PATH)
            .env("NOOP", "true")
            .env("PS1", "(disco noop) \\w# ")
            .current_dir("/");
        // SAFETY: only resets signal dispositions between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start bash in the sandbox")?;
        Ok(wait4(child.id())?.0)
    });
    // SAFETY: restoring the dispositions saved above.
    unsafe {
        libc::signal(libc::SIGINT, old_int);
        libc::signal(libc::SIGQUIT, old_quit);
    }
    let outcome = outcome?;
    let owners = Owners::load(&sandbox.root);
    let differ = sandbox.differ(&owners);
    let changes = differ.layer(1)?;
    for c in &changes {
        output::change(c, false);
    }
    let code = match &outcome.value {
        Ok(code) => *code,
        Err(e) => {
            output::error(e);
            1
        }
    };
    let report = RunReport {
        id: sandbox.run.id.clone(),
        node: "shell".into(),
        noop: true,
        root: sandbox.root.clone(),
        started,
        ended: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        plan: vec!["shell".into()],
        modules: vec![ModuleReport {
            name: "shell".into(),
            changes,
            killed: outcome.leftovers,
            actions: outcome.actions,
            ..ModuleReport::default()
        }],
        actions: Vec::new(),
        error: outcome.value.err(),
        ..RunReport::default()
    };
    report::save(state, &report)?;
    output::info(&format!(
        "{} change(s); nothing was merged",
        report.changes().count()
    ));
    if keep {
        output::info(&format!("scratch kept in {}", sandbox.run.path.display()));
    } else {
        sandbox.run.remove()?;
    }
    Ok(code)
}
