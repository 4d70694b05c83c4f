//! The dance pipeline of DESIGN §3, one stage per function with a typed
//! input and output: (claim the trigger requests) → recover → fetch → plan
//! → sandbox → per module (run in its layer, diff) → verdict → merge →
//! actions → report (→ end the trigger requests). [`run`] reads as
//! that list; the `disco dance` subcommand (locks, splay, status,
//! `--if-changed`) is in [`crate::commands::dance`].
//!
//! Owns the rule "merge only if every step succeeded and not in noop"
//! ([`verdict`]), the exit-code table ([`exit_code`]), what the user sees
//! between stages, finishing an interrupted undo or merge before a run,
//! and the preview of a candidate ([`preview`]: the same pipeline once
//! more, as a noop of the candidate the server offered, after the node's
//! own run).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};

use crate::actions::{self, ModuleActions, Pending};
use crate::config::Config;
use crate::exec::Job;
use crate::fetch::{self, Fetched};
use crate::merge::{self, Failpoint};
use crate::names::Name;
use crate::output;
use crate::params::ParamTree;
use crate::report::{self, ModuleReport, RunReport, Step};
use crate::run::{self, RunDir};
use crate::sandbox::{Sandbox, DISCO_DIR};
use crate::tree::ServerTree;
use crate::watchdog;

mod executor;

/// How many kept scratch directories (failed or `--keep` runs) survive.
const KEPT_RUNS: usize = 5;

/// What the pipeline needs from `disco dance`'s flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the scratch directory of a successful run.
    pub keep: bool,
    /// Capture each module's output; show it only if it failed or changed.
    pub quiet: bool,
    /// Run deferred actions and handlers under a `--root` other than `/`.
    pub run_actions: bool,
    /// 0 no change, 2 changes, 1 failure, 4 failure after the merge began.
    pub detailed_exitcodes: bool,
    /// `--only`: run these modules and what they require, nothing else.
    pub only: Vec<Name>,
    /// This run is the preview of a candidate (a noop of it, after the
    /// node's own run): see [`preview`].
    pub preview: Option<PreviewOf>,
}

/// The candidate a server offered beside the node's current (the fetch's
/// welcome said so): what a preview runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The server that offered it (its URI as the fetch names it).
    pub server: String,
    /// The candidate snapshot's id.
    pub candidate: String,
}

/// A preview run: the offer it runs and the exit code of the node's own
/// run, which stays the process's whatever the preview does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewOf {
    pub offer: Offer,
    pub own_code: i32,
}

/// How many of its reports a preview keeps in `STATE/preview/reports`.
const KEPT_PREVIEWS: usize = 5;

/// Where a preview keeps its own cache, store and reports: never those
/// of the node's own runs.
pub fn preview_dir(state: &Path) -> PathBuf {
    state.join("preview")
}

/// What one run of the pipeline gave: its exit code and report, and the
/// candidate the server offered beside the snapshot it ran, if any.
#[derive(Debug, Clone)]
pub struct Ran {
    pub code: i32,
    pub report: RunReport,
    pub offer: Option<Offer>,
    /// Its deadline passed or a stop signal ended it (its error says
    /// which): what it found says nothing of the tree it ran.
    pub stopped: bool,
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing was merged (a step failed, or noop).
    FailedBeforeMerge,
    /// The merge failed (rolled back) or an action or handler failed.
    FailedAfterMerge,
    Succeeded {
        changes: usize,
    },
    /// Modules failed; the layers of those whose requires closure
    /// succeeded were merged (`on_failure = "independent"`).
    PartlyMerged,
}

/// The exit-code table of `disco dance` (README "Exit codes").
pub fn exit_code(ending: Ending, detailed: bool) -> i32 {
    match (ending, detailed) {
        (Ending::FailedBeforeMerge, _) => 1,
        (Ending::FailedAfterMerge, true) => 4,
        (Ending::FailedAfterMerge, false) => 1,
        (Ending::PartlyMerged, _) => 1,
        (Ending::Succeeded { changes }, true) if changes > 0 => 2,
        (Ending::Succeeded { .. }, _) => 0,
    }
}

/// What happens after the modules ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A step failed, or two modules conflict: nothing is merged.
    Failed,
    /// Every step succeeded in noop: the report is the result.
    Noop,
    /// Every step succeeded, live: merge.
    Merge,
    /// Live, modules failed and `on_failure = "independent"`: merge the
    /// layers of every module whose whole requires closure succeeded.
    MergeIndependent,
}

/// The one place that decides whether a run merges: `on_failure` is the
/// setting, `conflict` whether two unordered modules changed one path
/// (which no setting merges).
pub fn verdict(report: &RunReport, on_failure: &str, conflict: bool) -> Verdict {
    let independent = on_failure == "independent" && !conflict;
    match (report.error.is_some(), report.noop) {
        (true, false) if independent && report.modules.iter().any(|m| m.error.is_some()) => {
            Verdict::MergeIndependent
        }
        (true, _) => Verdict::Failed,
        (false, true) => Verdict::Noop,
        (false, false) => Verdict::Merge,
    }
}

/// Runs the pipeline once; returns the exit code and the saved report.
///
/// Whatever happens after the lock, the dance ends the same way: one
/// report (saved, in the Prometheus textfile, uploaded) whose status and
/// exit code are the ones returned, and no run directory left behind
/// (except with `--keep`, or for a merge the next dance must finish). An
/// error of disco itself is the dance's error: exit 1 before the merge
/// began, 4 after. The monitoring outputs only warn: they never change
/// the verdict.
pub fn run(config: &Config, opts: &Options) -> Result<Ran> {
    let started = Instant::now();
    let mut report = RunReport {
        id: run::new_run_id(),
        node: config.node.value.to_string(),
        noop: config.noop.value,
        root: config.root.value.clone(),
        started: now(),
        only: opts.only.iter().map(|m| m.to_string()).collect(),
        candidate: opts.preview.as_ref().map(|p| p.offer.candidate.clone()),
        ..RunReport::default()
    };
    // The trigger requests of this dance's mode are its own from here
    // (a partial dance or a candidate's preview serves none): ended with
    // its report, whatever ends it.
    if opts.only.is_empty() && opts.preview.is_none() {
        crate::trigger::claim_for_dance(&config.state_dir.value, report.noop, &report.id);
    }
    let offer = std::cell::RefCell::new(None);
    let mut scratch = None;
    let merge_began = std::cell::Cell::new(false);
    let shared_run = std::sync::Arc::new(std::sync::Mutex::new(None));
    let armed = watchdog::arm(
        std::time::Duration::from_secs(config.dance_timeout.value),
        last_resort(config, opts, &report, started, shared_run.clone()),
    );
    let result = stages(
        config,
        opts,
        &mut report,
        (&mut scratch, &shared_run),
        (&merge_began, &offer),
    );
    let stopped = watchdog::passed().is_some();
    let ending = match (result, watchdog::passed()) {
        // Past the deadline: that is the dance's error, whatever the
        // stage it stopped said.
        (_, Some(msg)) => {
            output::error(&msg);
            report.error = Some(msg);
            if merge_began.get() {
                Ending::FailedAfterMerge
            } else {
                Ending::FailedBeforeMerge
            }
        }
        (Ok(ending), None) => ending,
        (Err(e), None) => {
            let mem = scratch.as_ref().map(|r| r.path.join(run::MEM));
            let msg = crate::sandbox::scratch::explain_no_space(
                &e,
                &config.state_dir.value,
                mem.as_deref().map(|m| (m, config.scratch_limits())),
            )
            .unwrap_or_else(|| format!("{e:#}"));
            output::error(&msg);
            report.error = Some(msg);
            if merge_began.get() {
                Ending::FailedAfterMerge
            } else {
                Ending::FailedBeforeMerge
            }
        }
    };
    let code = exit_code(ending, opts.detailed_exitcodes);
    watchdog::doing("writing the report");
    report_stage(config, &mut report, code, started);
    crate::trigger::finish_for_dance(&config.state_dir.value, &report, code);
    if let Some(run) = &scratch {
        cleanup_stage(&config.state_dir.value, run, opts.keep);
    }
    watchdog::ended();
    drop(armed);
    Ok(Ran {
        code,
        report,
        offer: offer.into_inner(),
        stopped,
    })
}

/// The preview of a candidate, after the node's own run ended (its
/// report, status and Prometheus file written): the same pipeline, as a
/// noop of the candidate's snapshot on the same root — fetched into
/// [`preview_dir`], never the node's own cache and store — nothing
/// merged, no action or handler run or recorded. Everything it prints is
/// kept and dropped; one line says what happened (`info: previewed
/// candidate ID: 3 changes, uploaded`), a failure at most a `warning:`.
/// Its report is tagged with the candidate, kept in `STATE/preview/` and
/// uploaded (`report_upload`) to the server that offered it.
pub fn preview(config: &Config, opts: &Options, offer: &Offer, own_code: i32) {
    let mut config = config.clone();
    config.noop.value = true;
    let opts = Options {
        keep: false,
        quiet: opts.quiet,
        run_actions: false,
        detailed_exitcodes: opts.detailed_exitcodes,
        only: Vec::new(),
        preview: Some(PreviewOf {
            offer: offer.clone(),
            own_code,
        }),
    };
    let id = output::printable(&offer.candidate);
    // Private like the state dir it is in (its cache holds the
    // candidate's parameters, its reports what the preview found).
    let dir = preview_dir(&config.state_dir.value);
    let made = fs::create_dir_all(&dir).and_then(|()| {
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
    });
    if let Err(e) = made {
        output::warning(&format!(
            "the preview of candidate {id} did not run: cannot make {}: {e}",
            dir.display()
        ));
        return;
    }
    let kept = output::divert();
    let ran = run(&config, &opts);
    drop(kept.take());
    let report = match ran {
        Ok(ran) if ran.stopped => {
            // Not the candidate's failure: nothing is uploaded.
            let why = ran.report.error.unwrap_or_default();
            output::warning(&format!(
                "the preview of candidate {id} was stopped, not uploaded: {why}"
            ));
            return;
        }
        Ok(ran) => ran.report,
        Err(e) => {
            output::warning(&format!("the preview of candidate {id} failed: {e:#}"));
            return;
        }
    };
    let (uploaded, sent) = match config.report_upload.value {
        false => ("not uploaded: report_upload is off".to_string(), true),
        true => match upload_to(&config, &offer.server, &report) {
            Ok(true) => ("uploaded".into(), true),
            Ok(false) => (
                "not uploaded: only an ssh:// server stores reports".into(),
                true,
            ),
            Err(e) => (format!("not uploaded: {e:#}"), false),
        },
    };
    match crate::preview::outcome_of(&report) {
        crate::preview::Outcome::Fails { module, error } => {
            let at = module.map(|m| format!("{m}: ")).unwrap_or_default();
            output::warning(&format!(
                "previewed candidate {id}: it fails: {at}{error}; {uploaded}"
            ));
        }
        crate::preview::Outcome::Changes { changes, .. } => {
            let plural = if changes == 1 { "" } else { "s" };
            let line = format!("previewed candidate {id}: {changes} change{plural}, {uploaded}");
            match sent {
                true => output::info(&line),
                false => output::warning(&line),
            }
        }
    }
}

/// What the deadline's watchdog does when the main thread does not come
/// back after the kill (stuck in a read no kill interrupts): the normal
/// ending from that thread — the error, the report (what is known at the
/// start of the dance, with the error), the run directory removed, the
/// status — then the exit, which releases the locks (`flock`) and the
/// mounts (disco's own mount namespace).
fn last_resort(
    config: &Config,
    opts: &Options,
    report: &RunReport,
    started: Instant,
    run_dir: std::sync::Arc<std::sync::Mutex<Option<RunDir>>>,
) -> watchdog::LastResort {
    let (config, opts, mut report) = (config.clone(), opts.clone(), report.clone());
    Box::new(move |msg, merge_began| {
        output::error(msg);
        report.error = Some(msg.to_string());
        let ending = if merge_began {
            Ending::FailedAfterMerge
        } else {
            Ending::FailedBeforeMerge
        };
        let code = exit_code(ending, opts.detailed_exitcodes);
        report_stage(&config, &mut report, code, started);
        crate::trigger::finish_for_dance(&config.state_dir.value, &report, code);
        let run = run_dir.lock().ok().and_then(|r| r.clone());
        if let Some(run) = run {
            cleanup_stage(&config.state_dir.value, &run, opts.keep);
        }
        // A preview's end leaves the node's own status and exit code.
        let code = match &opts.preview {
            None => {
                crate::cron::set_status(&config.state_dir.value, &crate::cron::ended(&report));
                code
            }
            Some(p) => p.own_code,
        };
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(code);
    })
}

/// Stages 3–9, filling `report` as they go; `scratch` is the run
/// directory once it exists, `merge_began` set when the root is about to
/// be touched, `offer` once the fetch said the server offers a candidate.
fn stages(
    config: &Config,
    opts: &Options,
    report: &mut RunReport,
    (scratch, shared_run): (&mut Option<RunDir>, &std::sync::Mutex<Option<RunDir>>),
    (merge_began, offer): (&std::cell::Cell<bool>, &std::cell::RefCell<Option<Offer>>),
) -> Result<Ending> {
    watchdog::doing("finishing an interrupted merge or undo");
    recover(config)?;
    watchdog::check()?;
    watchdog::doing("the fetch");
    let mut fetched = fetch_stage(config, opts)?;
    if let Some(candidate) = &fetched.0.origin.candidate {
        *offer.borrow_mut() = Some(Offer {
            server: fetched.0.origin.server.clone(),
            candidate: candidate.clone(),
        });
    }
    watchdog::check()?;
    watchdog::doing("the plan (parameters, secrets, facts of the root)");
    report.server = fetched.0.origin.server.clone();
    report.snapshot = fetched.0.origin.snapshot.clone();
    report.root_hash = fetched.0.origin.root_hash.clone();
    report.stages.push(fetched.1.clone());
    if !opts.only.is_empty() {
        let tree = fetch::cache_tree(&fetched.0.cache)?;
        fetched.0.plan = crate::plan::only(&tree, &fetched.0.plan, &opts.only)?;
        output::info(&format!(
            "partial dance (--only {}): {}",
            join(&opts.only),
            join(&fetched.0.plan.order)
        ));
    }
    report.plan = fetched.0.plan.order.iter().map(|m| m.to_string()).collect();
    let planned = plan_stage(&fetched, &config.root.value, &config.node_key())?;
    report.stages.push(planned.step.clone());
    watchdog::check()?;
    watchdog::doing("preparing the sandbox");
    let sandbox = sandbox_stage(config, &fetched, &planned, opts.keep, &report.id)?;
    *scratch = Some(sandbox.run.clone());
    if let Ok(mut r) = shared_run.lock() {
        *r = Some(sandbox.run.clone());
    }
    report.root = sandbox.root.clone();
    let mut run = Run::new(config, opts, &planned, &sandbox, report)?;
    run.run_modules(&fetched.0.plan.order)?;
    watchdog::check()?;
    let conflict = run.ended(&fetched.0.plan.order);
    Ok(
        match verdict(run.report, &config.on_failure.value, conflict) {
            Verdict::Failed => {
                let module_failed = run.report.modules.iter().any(|m| m.error.is_some());
                if run.report.noop
                    && config.on_failure.value == "independent"
                    && module_failed
                    && !conflict
                {
                    run.would_merge_independent();
                }
                run.failed()
            }
            Verdict::Noop => run.noop_summary(),
            Verdict::Merge => run.merge_and_act(merge_began)?,
            Verdict::MergeIndependent => run.merge_independent(merge_began)?,
        },
    )
}

fn join(names: &[Name]) -> String {
    names.iter().map(Name::as_str).collect::<Vec<_>>().join(",")
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Before a live run: finish an interrupted undo or merge. Before a noop
/// one: say that the root is half merged.
fn recover(config: &Config) -> Result<()> {
    if !config.noop.value {
        finish_interrupted(config)?;
    } else if merge::marker(&config.state_dir.value).exists() {
        output::warning(
            "a merge was interrupted and is not finished yet (the next live dance or `disco undo` finishes it); this noop report is against the half-merged root",
        );
    }
    Ok(())
}

/// Finishes an undo or a merge a crash interrupted (and runs what the
/// merge had pending). True when that undid a run: an interrupted undo
/// finished, or a merge whose in-memory layers were lost rolled back.
pub fn finish_interrupted(config: &Config) -> Result<bool> {
    actions::recover_journal(&config.state_dir.value)?;
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
            if let Some(pending) = Pending::load(&run.path)? {
                // The mask of that run: its parameters are in its run dir.
                if let Ok(p) = ParamTree::load(&pending.params_dir, "params") {
                    crate::masks::set(crate::masks::Masks::from_params(&p));
                }
                let (_, ok) = actions::run(&config.state_dir.value, &pending)?;
                if !ok {
                    output::warning(&format!(
                        "a deferred action or handler of run {} failed; its files stay merged, and it runs again at the end of this dance (`disco actions` lists it)",
                        run.id
                    ));
                }
            }
            run.remove()?;
            Ok(false)
        }
    }
}

/// Stage 3: the node's view from the server into the cache; in a
/// preview, the candidate's into the preview's own cache.
fn fetch_stage(config: &Config, opts: &Options) -> Result<(Fetched, Step)> {
    let meter = report::Meter::start();
    let fetched = match &opts.preview {
        None => fetch::fetch_configured(config)?,
        Some(p) => fetch::fetch_candidate(
            config,
            &p.offer.server,
            &p.offer.candidate,
            &preview_dir(&config.state_dir.value),
        )?,
    };
    let mut step = meter.step("fetch");
    step.sent = Some(fetched.origin.sent);
    step.received = Some(fetched.origin.received);
    Ok((fetched, step))
}

/// What the plan stage hands on: the cached tree and the merged parameters.
struct Planned {
    tree: ServerTree,
    params: ParamTree,
    /// Each planned module's `attributes`, checked.
    attributes: std::collections::BTreeMap<Name, crate::attributes::Attributes>,
    /// Modules with their own step limit (`modules/M/timeout`, seconds).
    timeouts: std::collections::BTreeMap<Name, u64>,
    /// What each planned module requires.
    graph: crate::graph::Graph,
    /// The paths a module installs over one it requires.
    overrides: crate::graph::Overrides,
    step: Step,
}

/// Stage 4: the cached tree, the node's merged parameters and every
/// planned module's `attributes`, checked before anything runs (the order
/// itself was planned by the fetch, on the same snapshot).
fn plan_stage((fetched, _): &(Fetched, Step), root: &Path, node_key: &Path) -> Result<Planned> {
    let meter = report::Meter::start();
    let tree = fetch::cache_tree(&fetched.cache)?;
    let mut params = crate::secrets::merged(&tree, &fetched.node, &fetched.plan, node_key)?;
    // Facts, gathered here on the host: the same in noop and live.
    watchdog::doing("gathering the facts of the root (plan)");
    watchdog::hang_point("facts");
    params.overlay(crate::facts::as_params(&crate::facts::gather(root)?));
    // From here on, every line printed and every state file written masks them.
    crate::masks::set(crate::masks::Masks::from_params(&params));
    let mut attributes = std::collections::BTreeMap::new();
    let mut timeouts = std::collections::BTreeMap::new();
    for m in &fetched.plan.order {
        let dir = tree
            .module_dir(m)?
            .expect("planned modules are in the cache");
        if let Some(secs) = load_timeout(&dir, m)? {
            timeouts.insert(m.clone(), secs);
        }
        attributes.insert(m.clone(), load_attributes(&dir, m)?);
    }
    let graph = crate::graph::Graph::of(&tree, &fetched.plan.order)?;
    let overrides = crate::graph::Overrides::of_tree(&tree, &fetched.plan.order, &graph);
    Ok(Planned {
        tree,
        params,
        attributes,
        timeouts,
        graph,
        overrides,
        step: meter.step("plan"),
    })
}

/// Stage 5: a fresh run directory `id` with the parameters, and the
/// sandbox over ROOT for the planned modules (`keep`: its layers outlive
/// the run). On failure the run directory is removed.
fn sandbox_stage(
    config: &Config,
    (fetched, _): &(Fetched, Step),
    planned: &Planned,
    keep: bool,
    id: &str,
) -> Result<Sandbox> {
    let state = &config.state_dir.value;
    run::prune(state, KEPT_RUNS)?;
    let run = RunDir::create(state, id)?;
    let layers: Vec<String> = fetched.plan.order.iter().map(|m| m.to_string()).collect();
    let mut sandbox = Sandbox::prepare(
        run,
        &config.root.value,
        (state, config.scratch_limits()),
        (config.noop.value, keep),
        &layers,
    )?;
    let dir = sandbox.params_dir();
    let params = planned
        .params
        .write_to(&dir)
        .context("cannot write the parameter tree")
        .and_then(|()| crate::fsutil::private_tree(&dir.join("secrets")));
    if let Err(e) = params {
        let _ = sandbox.run.remove();
        return Err(e);
    }
    sandbox.host_network = config.noop_network.value == "host";
    sandbox.limits = config.limits();
    Ok(sandbox)
}

/// A module's `attributes` (empty when it has none), checked against what
/// the module installs.
pub fn load_attributes(dir: &Path, m: &Name) -> Result<crate::attributes::Attributes> {
    let shown = format!("modules/{m}/attributes");
    Ok(
        match crate::fsutil::read_small(&dir.join("attributes"), &shown, 1 << 20)? {
            None => crate::attributes::Attributes::default(),
            Some(bytes) => crate::attributes::Attributes::parse(
                &String::from_utf8_lossy(&bytes),
                &shown,
                &crate::attributes::targets(dir),
            )?,
        },
    )
}

/// A module's own step limit (`modules/M/timeout`, seconds), if it has one.
pub fn load_timeout(dir: &Path, m: &Name) -> Result<Option<u64>> {
    let shown = format!("modules/{m}/timeout");
    let Some(bytes) = crate::fsutil::read_small(&dir.join("timeout"), &shown, 64)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    match text.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Some(secs)),
        _ => anyhow::bail!(
            "{shown}: expected a number of seconds, got {:?}",
            text.trim()
        ),
    }
}

/// The job of `module` in `sandbox`: what its templates and scripts see.
pub fn job(
    config: &Config,
    sandbox: &Sandbox,
    module: &Name,
    attributes: crate::attributes::Attributes,
    timeout: Option<u64>,
) -> Job {
    Job {
        node: config.node.value.to_string(),
        module: module.to_string(),
        noop: sandbox.noop,
        network: if !sandbox.noop || sandbox.host_network {
            "host"
        } else {
            "none"
        },
        module_dir: Path::new(DISCO_DIR).join("module"),
        params_dir: Path::new(DISCO_DIR).join("params"),
        state_in_root: sandbox.state_in_root.clone(),
        attributes,
        max_file_size: config.max_file_size.value,
        step_timeout: match timeout {
            Some(secs) => (
                std::time::Duration::from_secs(secs),
                format!("modules/{module}/timeout"),
            ),
            None => (
                std::time::Duration::from_secs(config.step_timeout.value),
                "step_timeout".into(),
            ),
        },
    }
}

/// One run in progress: its report and what is to run after the merge.
struct Run<'a, 'r> {
    config: &'a Config,
    opts: &'a Options,
    tree: &'a ServerTree,
    attributes: &'a std::collections::BTreeMap<Name, crate::attributes::Attributes>,
    timeouts: &'a std::collections::BTreeMap<Name, u64>,
    sandbox: &'a Sandbox,
    exe: PathBuf,
    report: &'r mut RunReport,
    pending: Pending,
    /// What each path the merge will replace or delete looked like to the
    /// sandbox (or that a path it creates was absent), checked again just
    /// before the merge: a live change meanwhile would be lost. One
    /// [`Expected`] a line in the run dir's `expected` (a module's 200,000
    /// changes are not held in memory), opened at the first.
    expected: Option<std::io::BufWriter<fs::File>>,
    /// A 128-bit hash of each path of `expected`: a path an earlier
    /// module recorded is not recorded again.
    expected_paths: std::collections::HashSet<u128>,
    /// Paths already seen changed on the live system while a module ran.
    lost: Vec<String>,
    /// The plan's requirements.
    graph: &'a crate::graph::Graph,
    /// The plan's overrides.
    overrides: &'a crate::graph::Overrides,
    /// Where each planned module is (by position in the plan).
    status: Vec<executor::Status>,
    /// Each module's report and actions once it ended, in the plan's order.
    slots: Vec<Option<ModuleReport>>,
    action_slots: Vec<Option<ModuleActions>>,
    /// The conflict rule, fed by every module's diff.
    conflicts: crate::graph::Conflicts,
}

/// The live state of one path the merge will touch, as the sandbox saw
/// it; stored as a line of the run dir's `expected`
/// (`INODE SIZE MTIME CTIME\tPATH`, or `-\tPATH`: it must not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    /// The path as shown: never escaped (those are not checked), so the
    /// live path is ROOT joined with it, and never a newline.
    shown: String,
    /// (inode, size, mtime ns, ctime ns), or `None`: it must not exist.
    stat: Option<(u64, u64, i128, i128)>,
}

/// The run dir's file of [`Expected`] lines.
const EXPECTED: &str = "expected";

impl Expected {
    fn line(&self) -> String {
        match self.stat {
            Some((ino, size, mtime, ctime)) => {
                format!("{ino} {size} {mtime} {ctime}\t{}\n", self.shown)
            }
            None => format!("-\t{}\n", self.shown),
        }
    }

    fn parse(line: &str) -> Option<Expected> {
        let (stat, shown) = line.split_once('\t')?;
        let stat = match stat {
            "-" => None,
            s => {
                let mut it = s.split(' ');
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                ))
            }
        };
        Some(Expected {
            shown: shown.to_string(),
            stat,
        })
    }
}

/// A 128-bit hash of `path` (two SipHashes of it, differently prefixed).
fn path_hash(path: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        path.hash(&mut h);
        h.finish() as u128
    };
    half(1) << 64 | half(2)
}

fn stat_of(p: &Path) -> Option<(u64, u64, i128, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).ok()?;
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Some((
        m.ino(),
        m.size(),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec()),
    ))
}

impl Expected {
    /// True when the live path (under `root`) is no longer what the
    /// sandbox saw.
    fn changed(&self, root: &Path) -> bool {
        stat_of(&root.join(self.shown.trim_start_matches('/'))) != self.stat
    }
}

impl<'a, 'r> Run<'a, 'r> {
    /// The run of the planned modules in `sandbox`, recorded in `report`.
    fn new(
        config: &'a Config,
        opts: &'a Options,
        planned: &'a Planned,
        sandbox: &'a Sandbox,
        report: &'r mut RunReport,
    ) -> Result<Run<'a, 'r>> {
        let n = planned.graph.len();
        let pending = Pending {
            node: config.node.value.to_string(),
            root: sandbox.root.clone(),
            params_dir: sandbox.params_dir(),
            run_actions: opts.run_actions,
            modules: Vec::new(),
            step_timeout: config.step_timeout.value,
        };
        Ok(Run {
            config,
            opts,
            tree: &planned.tree,
            attributes: &planned.attributes,
            timeouts: &planned.timeouts,
            sandbox,
            exe: crate::sandbox::exe()?,
            report,
            pending,
            expected: None,
            expected_paths: Default::default(),
            lost: Vec::new(),
            graph: &planned.graph,
            overrides: &planned.overrides,
            status: vec![executor::Status::Waiting; n],
            slots: vec![None; n],
            action_slots: vec![None; n],
            conflicts: Default::default(),
        })
    }

    /// Every module ended: their reports and actions in the plan's
    /// order; the dance's error (the first failed module's, else the
    /// first conflict). True when modules conflict.
    fn ended(&mut self, order: &[Name]) -> bool {
        self.report.modules = self.slots.iter_mut().filter_map(Option::take).collect();
        self.pending.modules = self
            .action_slots
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        let failed: Vec<&ModuleReport> = self
            .report
            .modules
            .iter()
            .filter(|m| m.error.is_some())
            .collect();
        if let Some(first) = failed.first() {
            let more = match failed.len() {
                1 => String::new(),
                n => format!(" (and {} more failed module(s))", n - 1),
            };
            self.report.error = Some(format!(
                "{}: {}{more}",
                first.name,
                first.error.as_deref().unwrap_or_default()
            ));
        }
        let conflicts = std::mem::take(&mut self.conflicts).found();
        const SHOWN: usize = 20;
        for c in conflicts.iter().take(SHOWN) {
            output::error(&c.message(order));
        }
        if conflicts.len() > SHOWN {
            output::error(&format!("… and {} more conflicts", conflicts.len() - SHOWN));
        }
        if let (Some(c), None) = (conflicts.first(), &self.report.error) {
            self.report.error = Some(c.message(order));
        }
        !conflicts.is_empty()
    }

    /// `on_failure = "independent"`: merges the layers of every module
    /// that succeeded with its whole requires closure, and runs their
    /// actions; the rest of the layers are dropped unmerged. The dance
    /// still failed.
    fn merge_independent(&mut self, merge_began: &std::cell::Cell<bool>) -> Result<Ending> {
        let merged = self.independent();
        for i in (0..self.report.modules.len()).filter(|i| !merged.contains(i)) {
            for k in 0..self.sandbox.mounts.len() {
                let upper = self.sandbox.run.upper(i + 1, k);
                if upper.exists() {
                    fs::remove_dir_all(&upper)
                        .with_context(|| format!("cannot drop {}", upper.display()))?;
                }
            }
        }
        let names: Vec<&str> = merged
            .iter()
            .map(|&i| self.report.modules[i].name.as_str())
            .collect();
        self.pending
            .modules
            .retain(|m| names.contains(&m.module.as_str()));
        output::info(&format!(
            "on_failure = \"independent\": merging the modules whose requirements all succeeded: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ));
        let error = self.report.error.clone();
        let ending = self.merge_and_act(merge_began)?;
        if self.report.error.is_none() {
            self.report.error = error;
        }
        Ok(match ending {
            Ending::Succeeded { .. } => Ending::PartlyMerged,
            other => other,
        })
    }

    /// The modules (positions in the plan) whose whole requires closure
    /// succeeded: what `on_failure = "independent"` merges.
    fn independent(&self) -> Vec<usize> {
        let modules = &self.report.modules;
        let failed: Vec<usize> = (0..modules.len())
            .filter(|&i| modules[i].error.is_some() || modules[i].not_run.is_some())
            .collect();
        (0..modules.len())
            .filter(|&i| !failed.contains(&i) && !failed.iter().any(|&f| self.graph.requires(i, f)))
            .collect()
    }

    /// A failed noop, with `on_failure = "independent"`: says which
    /// modules a live dance would merge, as the live dance says it.
    fn would_merge_independent(&self) {
        let names: Vec<&str> = self
            .independent()
            .into_iter()
            .map(|i| self.report.modules[i].name.as_str())
            .collect();
        output::info(&format!(
            "on_failure = \"independent\": a live dance would merge the modules whose requirements all succeeded: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ));
    }

    /// Why the module's layer may be cut short, if it may: the scratch
    /// (the image) is full, naming `scratch_max`; or the filesystem of
    /// the state dir is, which holds the image or, without one, the
    /// layers themselves.
    fn scratch_full(&self) -> Option<String> {
        use crate::sandbox::scratch;
        let state = &self.config.state_dir.value;
        let mem = self.sandbox.run.path.join(run::MEM);
        if run::is_mount_point(&mem) {
            if let Some(why) = scratch::full(&mem) {
                return Some(format!(
                    "the scratch is {why} ({})",
                    scratch::describe(state, self.config.scratch_limits())
                ));
            }
        }
        scratch::full(state).map(|why| {
            format!(
                "the filesystem of the state dir {} is {why}",
                state.display()
            )
        })
    }

    /// Says what the module queued for after the merge, from its queue
    /// (whatever its steps did with their output): in noop `would
    /// execute: …` when the module changed something or left changes
    /// pending (else the summary says `would skip`), live `deferred until
    /// after the merge: …`.
    fn say_deferred(&self, m: &ModuleReport) {
        for a in &m.actions {
            let shown = actions::shown(a);
            if !self.config.noop.value {
                output::info(&format!("deferred until after the merge: {shown}"));
            } else if m.change_count() > 0 || !m.pending.is_empty() {
                output::warning(&format!("would execute: {shown}"));
            }
        }
    }

    /// Records what the live path of change `c` is now; a path changed on
    /// the live system since the module started (`since`, ns since the
    /// epoch) is a conflict already (its ctime is newer).
    fn expect(&mut self, c: &crate::report::Change, since: i128) -> Result<()> {
        use crate::report::ChangeKind;
        // Names shown escaped (not UTF-8) are not checked; a path an
        // earlier module touched was recorded when it did.
        if c.path.contains('\\') || self.expected_paths.contains(&path_hash(&c.path)) {
            return Ok(());
        }
        let is_dir =
            |m: &Option<crate::report::Meta>| m.as_ref().is_some_and(|m| m.kind == "directory");
        let live = self.sandbox.root.join(c.path.trim_start_matches('/'));
        let now = stat_of(&live);
        let stat = match c.kind {
            // Created: it must still not exist (a directory may: merging
            // into it loses nothing; a later module that replaces or
            // deletes it changes what this one made, not the live path).
            ChangeKind::Created if is_dir(&c.new) => {
                self.expected_paths.insert(path_hash(&c.path));
                return Ok(());
            }
            ChangeKind::Created => {
                if now.is_some() {
                    self.lost.push(c.path.clone());
                }
                None
            }
            // A directory's attributes: nothing in it is replaced.
            ChangeKind::Modified if is_dir(&c.old) => return Ok(()),
            _ => match now {
                None => {
                    self.lost.push(c.path.clone());
                    return Ok(());
                }
                Some(st) => {
                    if st.3 > since {
                        self.lost.push(c.path.clone());
                    }
                    Some(st)
                }
            },
        };
        self.expected_paths.insert(path_hash(&c.path));
        let file = self.sandbox.run.path.join(EXPECTED);
        let line = Expected {
            shown: c.path.clone(),
            stat,
        }
        .line();
        let cannot = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", file.display());
        if self.expected.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let f = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&file)
                .map_err(cannot)?;
            self.expected = Some(std::io::BufWriter::new(f));
        }
        let w = self.expected.as_mut().expect("opened");
        std::io::Write::write_all(w, line.as_bytes()).map_err(cannot)?;
        Ok(())
    }

    /// The paths changed on the live system during the dance, sorted
    /// (read back from the run dir's `expected`, a line at a time).
    fn lost_updates(&mut self) -> Result<Vec<String>> {
        let mut lost = self.lost.clone();
        if let Some(w) = self.expected.take() {
            let file = self.sandbox.run.path.join(EXPECTED);
            w.into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("cannot write {}", file.display()))?;
            let f =
                fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
            for line in std::io::BufRead::lines(std::io::BufReader::new(f)) {
                let line = line.with_context(|| format!("cannot read {}", file.display()))?;
                let e = Expected::parse(&line)
                    .with_context(|| format!("{} is damaged: {line:?}", file.display()))?;
                if e.changed(&self.sandbox.root) {
                    lost.push(e.shown);
                }
            }
        }
        lost.sort();
        lost.dedup();
        Ok(lost)
    }

    /// A step failed: says so. Its layers go with the run (`--keep`
    /// keeps them); the saved report keeps what ran, for `disco diff`.
    fn failed(&self) -> Ending {
        output::info("the dance failed; nothing was merged (`disco diff` shows what ran)");
        Ending::FailedBeforeMerge
    }

    /// Noop: what would run after a merge, and the summary.
    fn noop_summary(&mut self) -> Ending {
        actions::describe_noop(&self.pending);
        // Those a killed run left in its journal included.
        let waiting = actions::list(&self.config.state_dir.value).map_or(0, |l| l.len());
        if waiting > 0 {
            self.report.pending_failed_actions = waiting;
            output::warning(&format!(
                "{} deferred action(s) or handler(s) failed in an earlier dance and run again at the next live one",
                self.report.pending_failed_actions
            ));
        }
        let changes = self.report.change_count();
        let pending: usize = self.report.modules.iter().map(|m| m.pending.len()).sum();
        let acts: usize = self.report.modules.iter().map(|m| m.actions.len()).sum();
        let also = if pending > 0 {
            format!(", {pending} pending (not made in noop)")
        } else {
            String::new()
        };
        output::info(&format!(
            "noop: {changes} change(s){also} and {acts} deferred action(s) in {} module(s); nothing was merged",
            self.report.modules.len()
        ));
        Ending::Succeeded {
            changes: changes + pending,
        }
    }

    /// Stage 9: this dance's deferred actions and handlers, then again
    /// those that failed in earlier dances (of modules that did not run
    /// theirs anew now). What still fails is kept for the next dance.
    /// Returns how many still fail.
    fn act(&mut self) -> Result<usize> {
        let state = &self.config.state_dir.value;
        let mut work = self.pending.clone();
        let (mut replaces, mut later) = (Vec::new(), Vec::new());
        match actions::load_failed(state)? {
            // Nothing runs here (a --root without --run-actions): what
            // failed before waits as it is.
            Some(before) if !work.live() => later = before.modules,
            Some(mut before) => {
                replaces = before.ids();
                let ran: std::collections::BTreeSet<&str> = self
                    .pending
                    .modules
                    .iter()
                    .filter(|m| !m.changed.is_empty())
                    .map(|m| m.module.as_str())
                    .collect();
                // A module that ran its actions and handlers anew supersedes
                // them (the record of an item that fails again goes on).
                for b in before
                    .modules
                    .iter()
                    .filter(|b| ran.contains(b.module.as_str()))
                {
                    if let Some(w) = work.modules.iter_mut().find(|w| w.module == b.module) {
                        w.failures.extend(b.failures.clone());
                    }
                }
                before.modules.retain(|m| !ran.contains(m.module.as_str()));
                let dirs: std::collections::BTreeMap<String, PathBuf> = self
                    .pending
                    .modules
                    .iter()
                    .map(|m| (m.module.clone(), m.module_dir.clone()))
                    .collect();
                let dir_of = |m: &str| dirs.get(m).cloned();
                let partial = !self.report.only.is_empty();
                let (ready, kept) =
                    actions::prepare_retry(before, &dir_of, &self.sandbox.params_dir(), partial);
                let kept_ids = Pending {
                    modules: kept.clone(),
                    ..Pending::default()
                }
                .ids();
                replaces.retain(|id| !kept_ids.contains(id));
                later = kept;
                work.modules.extend(ready.modules);
            }
            None => {}
        }
        let (steps, mut still) = actions::run_keeping_failures(state, &work, &replaces)?;
        still.modules.extend(later);
        actions::save_failed(state, &still)?;
        actions::end_journal(state)?;
        self.report.actions = steps;
        self.report.pending_failed_actions = actions::count(&still);
        Ok(self.report.pending_failed_actions)
    }

    /// Stages 8–9: merge (rolled back if it fails), then the deferred
    /// actions and handlers; `merge_began` is set before the root is
    /// touched. A failed merge that could not be rolled back leaves the
    /// merge marker, which keeps the run's layers for the next dance.
    fn merge_and_act(&mut self, merge_began: &std::cell::Cell<bool>) -> Result<Ending> {
        watchdog::doing("checking the live files before the merge");
        self.sandbox.drop_squash();
        let state = &self.config.state_dir.value;
        // The last look before the first live entry is touched.
        let lost = self.lost_updates()?;
        if !lost.is_empty() {
            let msg = format!(
                "changed on the live system during the dance: {} (merge nothing; the next dance starts over)",
                lost.join(", ")
            );
            output::error(&msg);
            self.report.error = Some(msg);
            return Ok(Ending::FailedBeforeMerge);
        }
        watchdog::check()?;
        merge_began.set(true);
        watchdog::merge_began();
        watchdog::doing("the merge");
        watchdog::hang_point("merge");
        self.pending.save(&self.sandbox.run.path)?;
        let (merged, took) = match self.merge_layers(state)? {
            Ok(m) => m,
            Err(ending) => return Ok(ending),
        };
        self.report.merged = true;
        merge::prune_backups(state, self.config.keep_backups.value)?;
        if merged.applied > 0 {
            output::info(&format!(
                "merged {} change(s) onto {} in {took:.1} ms",
                merged.applied,
                self.sandbox.root.display()
            ));
        }
        watchdog::check()?;
        watchdog::doing("the deferred actions and handlers");
        let still = self.act()?;
        if still > 0 {
            let msg = format!(
                "{still} deferred action(s) or handler(s) failed; the merged files stay merged, and they run again at the next dance"
            );
            output::error(&msg);
            self.report.error = Some(msg);
            return Ok(Ending::FailedAfterMerge);
        }
        let changes = self.report.change_count();
        output::info(&format!(
            "{changes} change(s) in {} module(s)",
            self.report.modules.len()
        ));
        Ok(Ending::Succeeded { changes })
    }

    /// Stage 8 proper: the layers merged onto the root (nothing to do
    /// when they hold no change: no marker, journal or syncfs), what it
    /// applied and its time in ms; a merge that failed is rolled back and
    /// its ending returned instead.
    fn merge_layers(&mut self, state: &Path) -> Result<Result<(merge::Merged, f64), Ending>> {
        let layout = run::Layout {
            root: self.sandbox.root.clone(),
            layers: self.report.plan.clone(),
            mounts: self.sandbox.mounts.clone(),
        };
        let meter = report::Meter::start();
        for layer in 1..=layout.layers.len() {
            let i = layer - 1;
            let (hidden, from_root) = (self.overrides.hidden(i), self.overrides.from_root(i));
            if hidden.is_some() || from_root.is_some() {
                merge::drop_overridden(&self.sandbox.run, &layout, layer, hidden, from_root)?;
            }
        }
        let unchanged =
            self.report.change_count() == 0 && merge::diff_covers(&self.sandbox.run, &layout);
        let (merged, took) = if unchanged {
            // Nothing to merge (what the layers hold equals the root): no
            // marker, no journal, and no syncfs of the root's filesystem,
            // which waits for every other writer on it.
            (Ok(merge::Merged::default()), 0.0)
        } else {
            let merged = merge::merge(state, &self.sandbox.run, &layout, Failpoint::from_env()?);
            let step = meter.step("merge");
            let took = step.figures.time_real * 1e3;
            self.report.stages.push(step);
            (merged, took)
        };
        match merged {
            Ok(m) => Ok(Ok((m, took))),
            Err(e) => {
                // Disk full, a read-only root…: put back what was merged.
                let mut msg = format!("the merge failed: {e:#}");
                match merge::roll_back(state, &self.sandbox.run.id, &self.sandbox.root) {
                    Ok(n) => msg.push_str(&format!(
                        "; rolled back ({n} entries restored): the root is as it was before this run"
                    )),
                    Err(e) => msg.push_str(&format!(
                        "; rolling back failed too ({e:#}): the next dance or `disco undo` finishes it"
                    )),
                }
                output::error(&msg);
                self.report.error = Some(msg);
                Ok(Err(Ending::FailedAfterMerge))
            }
        }
    }
}

/// Stage 10: completes, saves and publishes the report (history, the
/// Prometheus textfile, the upload to the server). Each of these only
/// warns when it fails: the dance's verdict (`code`) is what it is.
fn report_stage(config: &Config, report: &mut RunReport, code: i32, started: Instant) {
    report.ended = now();
    report.duration = started.elapsed().as_secs_f64();
    report.exit_code = code;
    report.status = match (report.error.is_some(), report.change_count()) {
        (true, _) => "failed",
        (false, 0) => "ok",
        _ => "changed",
    }
    .into();
    let state = &config.state_dir.value;
    // A preview's report is kept apart (`disco report` and `disco diff`
    // show the node's own runs) and uploaded by [`preview`].
    let previewed = report.candidate.is_some();
    let (dir, keep) = match previewed {
        false => (state.clone(), config.report_history.value),
        true => (preview_dir(state), KEPT_PREVIEWS),
    };
    if let Err(e) = report::save_bounded(&dir, report, keep, config.report_history_bytes.value) {
        let why = crate::sandbox::scratch::explain_no_space(&e, state, None)
            .unwrap_or_else(|| format!("{e:#}"));
        output::warning(&format!("the report was not saved: {why}"));
    }
    if previewed {
        return;
    }
    if let Some(path) = &config.prometheus_textfile.value {
        if let Err(e) = write_textfile(path, state, output::prometheus(report).as_bytes()) {
            output::warning(&format!(
                "cannot write the Prometheus textfile {}: {e}",
                path.display()
            ));
        }
    }
    if config.report_upload.value {
        upload(config, report);
    }
}

/// Writes the Prometheus textfile `path`: 0644, which node_exporter reads
/// as its own user, or 0600 inside the state dir (root's). Its directory
/// is made (0755; 0700 in the state dir) when that directory's parent
/// exists — node_exporter's textfile directory on a node where the
/// exporter is not installed yet — never a longer missing chain.
fn write_textfile(path: &Path, state: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let private = path.starts_with(state);
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !dir.exists() && dir.parent().is_some_and(|p| p.is_dir()) {
        match fs::DirBuilder::new()
            .mode(if private { 0o700 } else { 0o755 })
            .create(dir)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot make its directory: {e}"),
                ))
            }
            _ => {}
        }
    }
    if !dir.is_dir() {
        let why = if dir.exists() {
            format!("{} is not a directory", dir.display())
        } else {
            format!(
                "no directory {} (made only where its parent exists)",
                dir.display()
            )
        };
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, why));
    }
    write_atomic(path, content, if private { 0o600 } else { 0o644 }).map_err(|e| {
        // Without the temporary file's name the error would carry.
        match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => e,
        }
    })
}

/// Removes the run directory at the end of its run, unless `keep`
/// (`--keep`: kept, its layers moved out of the scratch image first) or
/// a merge of this run is still to finish (the next dance needs its
/// layers). Only warns: the dance's verdict stands.
fn cleanup_stage(state: &Path, run: &RunDir, keep: bool) {
    if !run.path.exists() {
        return;
    }
    let merging = fs::read_to_string(merge::marker(state)).is_ok_and(|id| id.trim() == run.id);
    let result = if merging {
        // The next dance or `disco undo` finishes it from the layers, then
        // runs its actions and handlers with these parameters (and masks
        // their output with its secrets): all of it stays, 0700.
        Ok(())
    } else if keep {
        keep_scratch(run).map(|()| {
            output::info(&format!("scratch kept in {}", run.path.display()));
        })
    } else {
        run.remove()
    };
    if let Err(e) = result {
        output::warning(&format!("{e:#}"));
    }
}

/// `--keep`: the layers (`u/`) stay in the run directory. Those in the
/// scratch image, which the next run empties, are copied out of it, and
/// the image is emptied and unmounted.
pub fn keep_scratch(run: &RunDir) -> Result<()> {
    let mem = run.path.join(run::MEM);
    if run::is_mount_point(&mem) {
        let from = mem.join("u");
        let to = run.path.join("u");
        if from.is_dir() && !to.exists() {
            merge::copy_tree(&from, &to)
                .with_context(|| format!("cannot keep the layers in {}", to.display()))?;
        }
        run.empty_mem();
    }
    if mem.is_dir() {
        let _ = fs::remove_dir(&mem);
    }
    Ok(())
}

/// Sends the report to the server (best effort: a failed upload warns).
fn upload(config: &Config, report: &RunReport) {
    let sent = config
        .require_servers()
        .and_then(|servers| upload_to(config, &servers[0], report));
    if let Err(e) = sent {
        output::warning(&format!("the report was not uploaded: {e:#}"));
    }
}

/// Sends `report` (masked) to `server`; true when it went (only an
/// ssh:// server stores reports).
fn upload_to(config: &Config, server: &str, report: &RunReport) -> Result<bool> {
    let server = fetch::ServerUri::parse(server)?;
    if !matches!(server, fetch::ServerUri::Ssh { .. }) {
        return Ok(false);
    }
    crate::transport::ssh::upload(
        &server,
        &config.node.value,
        &config.ssh(),
        &crate::masks::report_json(report, false)?,
    )?;
    Ok(true)
}

/// Writes a file with `mode` through a temporary file and a rename.
fn write_atomic(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, content)?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `t` in nanoseconds since the epoch: strictly after it is a change
/// made since (the filesystem's clock may lag a few ms, so a write in
/// that instant can be missed, never a false alarm).
fn since_epoch(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
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
            inside: None,
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
    fn exit_codes_follow_the_table() {
        use Ending::*;
        assert_eq!(exit_code(FailedBeforeMerge, true), 1);
        assert_eq!(exit_code(FailedAfterMerge, true), 4);
        assert_eq!(exit_code(FailedAfterMerge, false), 1);
        assert_eq!(exit_code(Succeeded { changes: 3 }, true), 2);
        assert_eq!(exit_code(Succeeded { changes: 3 }, false), 0);
        assert_eq!(exit_code(Succeeded { changes: 0 }, true), 0);
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
