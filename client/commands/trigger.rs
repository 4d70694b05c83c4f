//! `disco trigger`: one request dropped in the trigger spool
//! ([`crate::trigger`]), its path printed; with `--wait`, waits for the
//! dance that serves it and exits as that dance did.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::{print_lines, require_root};
use crate::cli::TriggerArgs;
use crate::config::Config;
use crate::output;
use crate::trigger::{field, Mode, Spool};

/// How long a request may wait untaken before `--wait` says why it may.
const UNTAKEN_NOTE: Duration = Duration::from_secs(15);

/// Runs `disco trigger`; returns the exit code.
pub fn run(config: &Config, args: &TriggerArgs) -> Result<i32> {
    require_root("disco trigger", "the trigger spool is root's")?;
    let state = &config.state_dir.value;
    // A request in a state dir no dance uses would wait forever: a state
    // dir may be made here (a fresh node), but not the directories above
    // it — a typo there is said, never made.
    if let Some(parent) = state.parent().filter(|p| !state.is_dir() && !p.is_dir()) {
        anyhow::bail!(
            "no directory {} for the state dir {} (a typo in --state-dir or state_dir?); nothing was requested",
            parent.display(),
            state.display()
        );
    }
    let spool = Spool::open(state)?;
    // Watched before the request exists: no status can be missed.
    let inotify = if args.wait {
        Some(watch(&spool)?)
    } else {
        None
    };
    let name = spool.request(Mode::of(config.noop.value))?;
    print_lines([spool.path.join(&name).display().to_string()])?;
    let Some(inotify) = inotify else {
        return Ok(0);
    };
    let stem = name.trim_end_matches(".request");
    let (status, fields) = wait_for(&spool, stem, &inotify)?;
    print_lines([spool
        .path
        .join(format!("{stem}.{status}"))
        .display()
        .to_string()])?;
    let run = field(&fields, "run").unwrap_or("none");
    let exit = field(&fields, "exit")
        .and_then(|e| e.parse::<i32>().ok())
        .unwrap_or(1);
    Ok(match status.as_str() {
        "failed" => {
            let why = field(&fields, "error").unwrap_or("see disco report");
            output::error(&format!("run {run} failed: {why}"));
            if args.detailed_exitcodes && exit == 4 {
                4
            } else {
                1
            }
        }
        "changed" => {
            output::info(&format!("run {run} changed the node (exit {exit})"));
            if args.detailed_exitcodes {
                2
            } else {
                0
            }
        }
        _ => {
            output::info(&format!("run {run}: no change"));
            0
        }
    })
}

/// An inotify watch on the spool: a name renamed or made in it.
fn watch(spool: &Spool) -> Result<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .context("cannot start inotify")?;
    inotify
        .add_watch(
            &spool.path,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE,
        )
        .with_context(|| format!("cannot watch {}", spool.path.display()))?;
    Ok(inotify)
}

/// Waits until request `stem` has ended; its status and lines.
fn wait_for(
    spool: &Spool,
    stem: &str,
    inotify: &Inotify,
) -> Result<(String, Vec<(String, String)>)> {
    let since = Instant::now();
    let mut noted = false;
    loop {
        let _ = inotify.read_events();
        match spool.state_of(stem) {
            Some((state, fields)) if crate::trigger::ENDED.contains(&state.as_str()) => {
                return Ok((state, fields))
            }
            Some((state, _)) => {
                // A dance killed outright never ends its requests: this does.
                if state == "running" {
                    spool.end_interrupted();
                }
                if state == "request" && !noted && since.elapsed() > UNTAKEN_NOTE {
                    output::info(
                        "no dance has taken the request yet: is disco.path enabled (systemctl enable --now disco.path) or disco watch running?",
                    );
                    noted = true;
                }
            }
            None => bail!(
                "the request {}/{stem} is gone from the spool before it ended",
                spool.path.display()
            ),
        }
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("cannot wait on {}: {e}", spool.path.display()),
        }
    }
}
