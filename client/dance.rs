//! `disco dance`: the pipeline of DESIGN §3 as one short function —
//! config → fetch → plan → sandbox → render/exec → diff → merge → actions
//! → report — and `disco undo`.
//!
//! Owns the order of the stages, the rule "merge only if every step
//! succeeded and not in noop", the exit codes, and what the user sees
//! between stages (`info: Processing MODULE`, each module's changes, the
//! summary). The stages themselves live in their own modules.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::actions::{self, ModuleActions, Pending};
use crate::config::Config;
use crate::diff::Owners;
use crate::exec::Job;
use crate::fetch;
use crate::merge::{self, Failpoint};
use crate::output;
use crate::params;
use crate::report::{self, ModuleReport, RunReport};
use crate::run::{self, RunDir};
use crate::sandbox::{Bind, Output, Sandbox, DISCO_DIR};

/// How many kept scratch directories (failed or `--keep` runs) survive.
const KEPT_RUNS: usize = 5;

/// Options of `disco dance` beyond the global ones.
#[derive(Debug, Clone, Default)]
pub struct DanceOptions {
    /// Keep the scratch directory of a successful run.
    pub keep: bool,
    /// Exit at once if another dance holds the lock.
    pub no_wait: bool,
    /// Sleep a random 0..splay seconds first (not on a terminal unless `splay_always`).
    pub splay: u64,
    pub splay_always: bool,
    /// Print only changes, warnings and errors.
    pub quiet: bool,
    /// Skip the dance when the server's view is what the last successful
    /// dance saw, and that dance is younger than `max_age` seconds.
    pub if_changed: bool,
    pub max_age: u64,
    /// Run deferred actions and handlers under a `--root` other than `/`.
    pub run_actions: bool,
    /// 0 no change, 2 changes, 1 failure, 4 failure after the merge.
    pub detailed_exitcodes: bool,
}

/// Refuses to go on unless running as root.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} must run as root: {why}");
    }
    Ok(())
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Finishes an undo or a merge a crash interrupted (and runs what the
/// merge had pending). True when that undid a run: an interrupted undo
/// finished, or a merge whose in-memory layers were lost rolled back.
fn finish_interrupted(config: &Config) -> Result<bool> {
    if let Some(lines) = merge::finish_interrupted_undo(&config.state_dir.value)? {
        output::info(&format!(
            "finished the interrupted undo: {} more entries restored",
            lines.len()
        ));
        return Ok(true);
    }
    match merge::recover(&config.state_dir.value)? {
        merge::Recovered::Nothing => Ok(false),
        merge::Recovered::RolledBack => Ok(true),
        merge::Recovered::Finished(run, _) => {
            if let Some(pending) = actions::Pending::load(&run.path)? {
                let (_, ok) = actions::run(&pending)?;
                if !ok {
                    output::warning(&format!(
                        "a deferred action or handler of run {} failed; its files stay merged",
                        run.id
                    ));
                }
            }
            run.remove()?;
            Ok(false)
        }
    }
}

/// Runs a dance; returns the exit code.
pub fn dance(config: &Config, opts: &DanceOptions) -> Result<i32> {
    require_root("disco dance", "it mounts overlays and enters namespaces")?;
    // Before any thread exists: every mount of the dance lives and dies with disco.
    crate::sandbox::own_mount_namespace()?;
    output::set_quiet(opts.quiet);
    config.require_servers()?;
    crate::cron::splay(opts.splay, opts.splay_always);
    let state = &config.state_dir.value;
    let _lock = crate::commands::take_lock(config, opts.no_wait)?;
    let _root_lock = crate::commands::take_root_lock(config, opts.no_wait)?;
    if opts.if_changed && unchanged_since_last(config, opts)? {
        return Ok(0);
    }
    crate::cron::set_status(
        state,
        &format!("running since {} (pid {})", now(), std::process::id()),
    );
    let result = run_dance(config, opts);
    match &result {
        Ok((code, report)) => {
            let line = match report.status.as_str() {
                "failed" => format!(
                    "failed at {}: {}",
                    report.ended,
                    report.error.as_deref().unwrap_or("see disco report")
                ),
                _ => format!(
                    "done at {} ({} change(s){})",
                    report.ended,
                    report.changes().count(),
                    if report.noop { ", noop" } else { "" }
                ),
            };
            crate::cron::set_status(state, &line);
            let _ = code;
        }
        Err(e) => crate::cron::set_status(state, &format!("failed at {}: {e:#}", now())),
    }
    result.map(|(code, _)| code)
}

/// `--if-changed`: true (and says so) when the server's view of this node
/// hashes as it did for the last successful dance, which is recent enough.
fn unchanged_since_last(config: &Config, opts: &DanceOptions) -> Result<bool> {
    let Ok(last) = report::history(&config.state_dir.value).map(|h| {
        h.into_iter().rev().find(|r| {
            r.status != "failed" && r.noop == config.noop.value && !r.root_hash.is_empty()
        })
    }) else {
        return Ok(false);
    };
    let Some(last) = last else { return Ok(false) };
    let age = humantime::parse_rfc3339(&last.ended)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    if age >= opts.max_age {
        return Ok(false);
    }
    let server = fetch::ServerUri::parse(&config.require_servers()?[0])?;
    let (snapshot, root) = fetch::probe(&server, &config.node.value, &config.ssh())?;
    if root == last.root_hash {
        output::info(&format!(
            "skipped: the server's snapshot {snapshot} is what run {} applied {age} s ago (--if-changed)",
            last.id
        ));
        return Ok(true);
    }
    Ok(false)
}

fn run_dance(config: &Config, opts: &DanceOptions) -> Result<(i32, RunReport)> {
    let started_at = std::time::Instant::now();
    let noop = config.noop.value;
    let failpoint = Failpoint::from_env()?;
    let node = &config.node.value;
    let state = &config.state_dir.value;
    if !noop {
        finish_interrupted(config)?;
    } else if merge::marker(state).exists() {
        output::warning(
            "a merge was interrupted and is not finished yet (the next live dance or `disco undo` finishes it); this noop report is against the half-merged root",
        );
    }

    let meter = crate::report::Meter::start();
    let fetched = fetch::fetch_configured(config)?;
    let mut fetch_step = meter.step("fetch");
    fetch_step.sent = Some(fetched.origin.sent);
    fetch_step.received = Some(fetched.origin.received);
    let meter = crate::report::Meter::start();
    let tree = fetch::cache_tree(&fetched.cache)?;
    let params = params::merged(&tree, &fetched.node, &fetched.plan)?;
    let plan_step = meter.step("plan");

    run::prune(state, KEPT_RUNS)?;
    let run = RunDir::create(state)?;
    params
        .write_to(&run.params())
        .context("cannot write the parameter tree")?;
    let layers: Vec<String> = fetched.plan.order.iter().map(|m| m.to_string()).collect();
    let sandbox = Sandbox::prepare(run, &config.root.value, state, noop, &layers)?;
    let owners = Owners::load(&sandbox.root);
    let differ = sandbox.differ(&owners);
    let exe =
        fs::read_link("/proc/self/exe").context("cannot find the disco binary (/proc/self/exe)")?;

    let mut report = RunReport {
        id: sandbox.run.id.clone(),
        node: node.to_string(),
        noop,
        root: sandbox.root.clone(),
        started: now(),
        server: fetched.origin.server.clone(),
        snapshot: fetched.origin.snapshot.clone(),
        root_hash: fetched.origin.root_hash.clone(),
        stages: vec![fetch_step, plan_step],
        plan: layers.clone(),
        ..RunReport::default()
    };
    let mut pending = Pending {
        node: node.to_string(),
        root: sandbox.root.clone(),
        params_dir: sandbox.run.params(),
        run_actions: opts.run_actions,
        modules: Vec::new(),
    };
    for (idx, module) in fetched.plan.order.iter().enumerate() {
        let layer = idx + 1;
        output::info(&format!("Processing {module}"));
        let module_dir = tree
            .module_dir(module)?
            .expect("planned modules are in the cache");
        let binds = standard_binds(&exe, Some((&module_dir, &sandbox.run.params())));
        let job = Job {
            node: node.to_string(),
            module: module.to_string(),
            noop,
            module_dir: Path::new(DISCO_DIR).join("module"),
            params_dir: Path::new(DISCO_DIR).join("params"),
            state_in_root: sandbox.state_in_root.clone(),
        };
        let output = if opts.quiet {
            Output::Capture
        } else {
            Output::Forward
        };
        let outcome = sandbox.run_layer(layer, &binds, output, || Ok(job.run()))?;
        let mut mreport = ModuleReport {
            name: module.to_string(),
            ..ModuleReport::default()
        };
        let mut failed = match outcome.value {
            Ok(r) => {
                mreport.steps = r.steps;
                r.failed
            }
            Err(e) => Some(e),
        };
        if !outcome.leftovers.is_empty() {
            output::warning(&format!(
                "{module}: killed {} background process(es) its steps left running: {}",
                outcome.leftovers.len(),
                outcome.leftovers.join(", ")
            ));
            mreport.killed = outcome.leftovers;
        }
        mreport.actions = outcome.actions;
        let meter = crate::report::Meter::start();
        mreport.changes = differ
            .layer(layer)
            .with_context(|| format!("{module}: cannot compute its changes"))?;
        mreport.steps.push(meter.step("diff"));
        if let (Some(rel), None) = (&sandbox.state_in_root, &failed) {
            failed = touches_state_dir(&mreport.changes, &Path::new("/").join(rel));
        }
        if opts.quiet && (failed.is_some() || !mreport.changes.is_empty()) {
            // --quiet: a module's output is shown only when it failed or changed.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), &outcome.output);
        }
        for c in &mreport.changes {
            output::change(c, false);
        }
        pending.modules.push(ModuleActions {
            module: module.to_string(),
            handlers: actions::handlers_of(&module_dir)
                .with_context(|| format!("module {module}"))?,
            module_dir,
            actions: mreport.actions.clone(),
            changed: mreport.changes.iter().map(|c| c.path.clone()).collect(),
        });
        report.modules.push(mreport);
        if let Some(f) = failed {
            let msg = format!("{module}: {f}");
            output::error(&msg);
            report.error = Some(msg);
            break;
        }
    }

    let changes = report.changes().count();
    let failed_before_merge = report.error.is_some();
    let mut failed_merge = false;
    let code = if failed_before_merge {
        if crate::run::is_mount_point(&sandbox.run.path.join(crate::run::MEM)) {
            // In-memory layers are not kept: they would pin RAM until pruned.
            sandbox.run.remove()?;
            output::info("the dance failed; nothing was merged (`disco diff` shows what ran)");
        } else {
            output::info(&format!(
                "the dance failed; nothing was merged; scratch kept in {} (`disco diff` shows what ran)",
                sandbox.run.path.display()
            ));
        }
        1
    } else if noop {
        actions::describe_noop(&pending);
        let actions: usize = report.modules.iter().map(|m| m.actions.len()).sum();
        output::info(&format!(
            "noop: {changes} change(s) and {actions} deferred action(s) in {} module(s); nothing was merged",
            report.modules.len()
        ));
        if changes > 0 && opts.detailed_exitcodes {
            2
        } else {
            0
        }
    } else {
        pending.save(&sandbox.run.path)?;
        let layout = crate::run::Layout {
            root: sandbox.root.clone(),
            layers: layers.clone(),
            mounts: sandbox.mounts.clone(),
        };
        let meter = crate::report::Meter::start();
        let merged = merge::merge(state, &sandbox.run, &layout, failpoint);
        let merge_step = meter.step("merge");
        let took = merge_step.figures.time_real * 1e3;
        report.stages.push(merge_step);
        match merged {
            Err(e) => {
                // Disk full, a read-only root…: put back what was merged.
                let mut msg = format!("the merge failed: {e:#}");
                match merge::roll_back(state, &sandbox.run.id, &sandbox.root) {
                    Ok(n) => msg.push_str(&format!(
                        "; rolled back ({n} entries restored): the root is as it was before this run"
                    )),
                    Err(e) => msg.push_str(&format!(
                        "; rolling back failed too ({e:#}): the next dance or `disco undo` finishes it"
                    )),
                }
                output::error(&msg);
                report.error = Some(msg);
                failed_merge = true;
                if opts.detailed_exitcodes {
                    4
                } else {
                    1
                }
            }
            Ok(merged) => {
                merge::prune_backups(state, config.keep_backups.value)?;
                if merged.applied > 0 {
                    output::info(&format!(
                        "merged {} change(s) onto {} in {took:.1} ms",
                        merged.applied,
                        sandbox.root.display()
                    ));
                }
                let (steps, ok) = actions::run(&pending)?;
                report.actions = steps;
                if ok {
                    output::info(&format!(
                        "{changes} change(s) in {} module(s)",
                        report.modules.len()
                    ));
                    if changes > 0 && opts.detailed_exitcodes {
                        2
                    } else {
                        0
                    }
                } else {
                    let msg = "a deferred action or handler failed; the merged files stay merged"
                        .to_string();
                    output::error(&msg);
                    report.error = Some(msg);
                    if opts.detailed_exitcodes {
                        4
                    } else {
                        1
                    }
                }
            }
        }
    };
    report.ended = now();
    report.duration = started_at.elapsed().as_secs_f64();
    report.exit_code = code;
    report.status = match (report.error.is_some(), changes) {
        (true, _) => "failed",
        (false, 0) => "ok",
        _ => "changed",
    }
    .into();
    report::save_bounded(
        state,
        &report,
        config.report_history.value,
        config.report_history_bytes.value,
    )?;
    if let Some(path) = &config.prometheus_textfile.value {
        write_atomic(path, output::prometheus(&report).as_bytes())
            .with_context(|| format!("cannot write the Prometheus textfile {}", path.display()))?;
    }
    if config.report_upload.value {
        upload(config, &report);
    }
    // A failed merge that could not be rolled back keeps its layers: the
    // next run finishes it.
    let pending_merge = failed_merge && merge::marker(state).exists();
    if !failed_before_merge && !pending_merge {
        if opts.keep {
            output::info(&format!("scratch kept in {}", sandbox.run.path.display()));
        } else {
            sandbox.run.remove()?;
        }
    }
    Ok((code, report))
}

/// Sends the report to the server (best effort: a failed upload warns).
fn upload(config: &Config, report: &RunReport) {
    let sent = (|| -> Result<()> {
        let server = fetch::ServerUri::parse(&config.require_servers()?[0])?;
        if !matches!(server, fetch::ServerUri::Ssh { .. }) {
            return Ok(());
        }
        crate::transport::ssh::upload(
            &server,
            &config.node.value,
            &config.ssh(),
            &serde_json::to_vec(report)?,
        )
    })();
    if let Err(e) = sent {
        output::warning(&format!("the report was not uploaded: {e:#}"));
    }
}

/// Writes a file through a temporary file and a rename.
fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, content)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `disco undo`: finishes any interrupted merge, then restores the root as
/// it was before the last merged dance.
pub fn undo(config: &Config) -> Result<i32> {
    require_root("disco undo", "it restores files of the root as they were")?;
    let _lock = crate::commands::take_lock(config, false)?;
    let _root_lock = crate::commands::take_root_lock(config, false)?;
    if finish_interrupted(config)? {
        // That was the last run's undo already.
        return Ok(0);
    }
    let lines = merge::undo(
        &config.state_dir.value,
        &config.root.value,
        Failpoint::from_env()?,
    )?;
    for l in &lines {
        output::info(l);
    }
    output::info(&format!("undo: {} entries restored", lines.len()));
    Ok(0)
}

/// The change of a module that would touch disco's own state dir
/// (`state`, absolute on the target), as the error that fails the module:
/// anything under it, or the deletion or replacement of it or of a
/// directory above it.
fn touches_state_dir(changes: &[crate::report::Change], state: &Path) -> Option<String> {
    use crate::report::ChangeKind;
    changes.iter().find_map(|c| {
        let p = Path::new(&c.path);
        let under = p.starts_with(state) && p != state;
        let removes = state.starts_with(p)
            && matches!(c.kind, ChangeKind::Deleted | ChangeKind::Replaced);
        (under || removes || p == state).then(|| {
            format!(
                "refusing to merge a change to {}: {} is disco's state dir, which modules may not touch",
                c.path,
                state.display()
            )
        })
    })
}

/// disco's own files bound read-only under `/run/disco`: the binary (for
/// `disco param`) and, for a module, its files and parameters.
pub fn standard_binds(exe: &Path, module: Option<(&Path, &Path)>) -> Vec<Bind> {
    let mut binds = vec![Bind {
        source: exe.to_path_buf(),
        inside: Path::new(DISCO_DIR).join("bin/disco"),
    }];
    if let Some((module_dir, params)) = module {
        binds.push(Bind {
            source: module_dir.to_path_buf(),
            inside: Path::new(DISCO_DIR).join("module"),
        });
        binds.push(Bind {
            source: params.to_path_buf(),
            inside: Path::new(DISCO_DIR).join("params"),
        });
    }
    binds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Change, ChangeKind};

    fn change(path: &str, kind: ChangeKind) -> Change {
        Change {
            path: path.into(),
            kind,
            old: None,
            new: None,
            diff: None,
        }
    }

    #[test]
    fn no_change_may_touch_the_state_dir() {
        let state = Path::new("/var/lib/disco");
        for (c, refused) in [
            (change("/var/lib/disco/x", ChangeKind::Created), true),
            (change("/var/lib/disco", ChangeKind::Modified), true),
            (change("/var/lib", ChangeKind::Deleted), true),
            (change("/var", ChangeKind::Replaced), true),
            (change("/var/lib", ChangeKind::Modified), false),
            (change("/var/lib/discotheque", ChangeKind::Created), false),
            (change("/etc/x", ChangeKind::Deleted), false),
        ] {
            let got = touches_state_dir(std::slice::from_ref(&c), state);
            assert_eq!(got.is_some(), refused, "{} {:?}: {got:?}", c.path, c.kind);
        }
    }

    #[test]
    fn queue_records_keep_arguments_with_spaces_and_newlines() {
        let q = b"2\0/usr/sbin/service\0postgresql\0stop\x000\0/sbin/reboot\x001\0/bin/systemctl\0a b\nc\0";
        assert_eq!(
            crate::sandbox::parse_queue(q),
            vec![
                vec!["/usr/sbin/service", "postgresql", "stop"],
                vec!["/sbin/reboot"],
                vec!["/bin/systemctl", "a b\nc"]
            ]
        );
    }
}
