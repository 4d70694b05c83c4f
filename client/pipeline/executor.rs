//! Stages 6–7 as a graph (DESIGN §3.6, §5): the executor that runs the
//! planned modules, each on the root plus the layers of its requires
//! closure, up to `jobs` of them at once, and diffs each layer as it ends.
//!
//! Owns the order things happen in: a module starts once everything it
//! requires has ended (the first ready one in the plan's order first); a
//! failed module's dependents are not run, every other module is; what
//! each module prints is shown in the plan's order whatever the order the
//! modules end in; and the conflict rule is applied to every change as it
//! is diffed ([`crate::graph::Conflicts`]). The result — the report, what
//! is merged, the exit code — does not depend on `jobs`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::{since_epoch, touches_state_dir, Run};
use crate::actions::{self, ModuleActions};
use crate::diff::Owners;
use crate::exec::ModuleRun;
use crate::graph::{dir_touch, Touch};
use crate::names::Name;
use crate::output::{self, Section};
use crate::report::{self, Change, ChangeKind, ModuleReport};
use crate::sandbox::{Outcome, Output, Running, Sandbox, DISCO_DIR};
use crate::watchdog;

/// Where one module is in the dance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Not run: this module (a position in the plan) failed in its closure.
    NotRun(usize),
}

impl Status {
    fn ended(self) -> bool {
        !matches!(self, Status::Waiting | Status::Running)
    }
}

/// A module whose sandbox is running.
struct Started {
    idx: usize,
    module_dir: PathBuf,
    lowers: Vec<usize>,
    started: SystemTime,
    /// When disco began to start its sandbox (the report's `sandbox` step).
    clock: std::time::Instant,
    /// Of the time since, what disco spent starting other modules.
    elsewhere: std::time::Duration,
}

/// What each module printed, shown in the plan's order: with `jobs` 1
/// the modules run in that order and print as they go; with more, each
/// module's lines are kept ([`output::divert`]) and shown once every
/// module before it in the plan has been — but the first module not yet
/// shown, once running, prints as it goes ([`Printer::stream`]): its
/// turn has come, and a long script's lines are seen as they come.
struct Printer {
    keep: bool,
    sections: Vec<Section>,
    ended: Vec<bool>,
    /// The first module not yet shown.
    next: usize,
    /// The module printing as it goes.
    live: Option<usize>,
}

impl Printer {
    fn new(n: usize, keep: bool) -> Printer {
        Printer {
            keep,
            sections: (0..n).map(|_| Section::default()).collect(),
            ended: vec![false; n],
            next: 0,
            live: None,
        }
    }

    /// Runs `f`, what it prints going to module `i`'s lines.
    fn to<R>(&mut self, i: usize, f: impl FnOnce() -> R) -> R {
        if !self.keep || self.live == Some(i) {
            return f();
        }
        let kept = output::divert();
        let r = f();
        self.sections[i].append(kept.take());
        r
    }

    /// Module `i` printed all it will: show what can be shown.
    fn ended(&mut self, i: usize) {
        self.ended[i] = true;
        while self.next < self.ended.len() && self.ended[self.next] {
            std::mem::take(&mut self.sections[self.next]).print();
            self.next += 1;
        }
    }
}

impl Printer {
    /// When the first module not yet shown is running (`started`), it
    /// prints from now on as it goes: what it printed so far first.
    fn stream<T>(&mut self, started: &[Started], running: &mut [Running<T>]) {
        if !self.keep || self.live == Some(self.next) {
            return;
        }
        if let Some(k) = started.iter().position(|s| s.idx == self.next) {
            std::mem::take(&mut self.sections[self.next]).print();
            running[k].stream();
            self.live = Some(self.next);
        }
    }
}

impl Drop for Printer {
    /// A dance cut short (its deadline, an error of disco) still shows
    /// what its modules printed.
    fn drop(&mut self) {
        for s in self.sections.drain(self.next..) {
            s.print();
        }
    }
}

impl Run<'_, '_> {
    /// Runs every planned module over the graph: up to `jobs` at once,
    /// each when all it requires has ended; a failed module's dependents
    /// are reported not run. Each module's report and actions land in its
    /// place in the plan's order.
    pub(super) fn run_modules(&mut self, order: &[Name]) -> Result<()> {
        let jobs = self.config.jobs.value.max(1);
        let mut printer = Printer::new(order.len(), jobs > 1);
        let mut running: Vec<Running<ModuleRun>> = Vec::new();
        let mut started: Vec<Started> = Vec::new();
        let mut spent = (self.config.noop.value && !self.opts.keep).then(|| Spent::new(self.graph));
        loop {
            watchdog::check()?;
            for j in self.skip_dependents_of_failures(order, &mut printer) {
                self.drop_spent(spent.as_mut(), j);
            }
            self.fill(order, jobs, &mut printer, (&mut running, &mut started))?;
            if running.is_empty() {
                break;
            }
            // With --quiet a module's output is shown at its first change
            // only: all of it kept.
            if !self.opts.quiet {
                printer.stream(&started, &mut running);
            }
            let names: Vec<&str> = started.iter().map(|s| order[s.idx].as_str()).collect();
            watchdog::doing(match names[..] {
                [one] => {
                    format!("module {one}, in its sandbox (its attributes, templates or scripts)")
                }
                _ => format!("modules {}, in their sandboxes", names.join(", ")),
            });
            let k = Sandbox::wait_any(&mut running)?;
            // Killed by the deadline: its error, not the sandbox's.
            watchdog::check()?;
            let mut ended = running.swap_remove(k);
            let mut job = started.swap_remove(k);
            // Side by side, the slot it frees is filled before its sandbox
            // is reaped (its namespaces torn down) and its layer diffed:
            // with what does not require it (it has not ended yet, for
            // the graph), so nothing that follows depends on the order.
            // One at a time, the next module starts after its diff, as
            // the plan's order shows.
            if jobs > 1 {
                let filling = std::time::Instant::now();
                self.fill(order, jobs, &mut printer, (&mut running, &mut started))?;
                job.elsewhere = filling.elapsed();
            }
            let (i, m) = (job.idx, &order[job.idx]);
            let outcome = ended.reap().with_context(|| format!("module {m}"))?;
            drop(ended);
            let failed = printer.to(i, || self.finish(m, job, outcome))?;
            self.status[i] = if failed {
                Status::Failed
            } else {
                Status::Succeeded
            };
            printer.ended(i);
            self.drop_spent(spent.as_mut(), i);
        }
        Ok(())
    }

    /// Module `j` ended (ran, or was not run): removes the layers no
    /// module still to end needs ([`Spent`]).
    fn drop_spent(&self, spent: Option<&mut Spent>, j: usize) {
        if let Some(spent) = spent {
            for i in spent.ended(self.graph, &self.status, j) {
                self.sandbox.remove_layer(i + 1);
            }
        }
    }

    /// Starts ready modules, first in the plan's order first, until
    /// `jobs` are running.
    fn fill(
        &mut self,
        order: &[Name],
        jobs: usize,
        printer: &mut Printer,
        (running, started): (&mut Vec<Running<ModuleRun>>, &mut Vec<Started>),
    ) -> Result<()> {
        while running.len() < jobs {
            let Some(i) = self.next_ready() else { break };
            let (r, s) = printer.to(i, || self.start(i, &order[i], jobs))?;
            running.push(r);
            started.push(s);
        }
        Ok(())
    }

    /// The first waiting module, in the plan's order, all of whose
    /// requirements succeeded.
    fn next_ready(&self) -> Option<usize> {
        (0..self.status.len()).find(|&i| {
            self.status[i] == Status::Waiting
                && self.graph.direct[i]
                    .iter()
                    .all(|&j| self.status[j] == Status::Succeeded)
        })
    }

    /// Marks not run every waiting module whose requirements all ended
    /// and one of which failed or was not run; says so, naming the first
    /// failed module (in the plan's order) it requires. Returns them.
    fn skip_dependents_of_failures(&mut self, order: &[Name], printer: &mut Printer) -> Vec<usize> {
        let mut skipped = Vec::new();
        for i in 0..self.status.len() {
            let reqs = &self.graph.direct[i];
            if self.status[i] != Status::Waiting
                || !reqs.iter().all(|&j| self.status[j].ended())
                || reqs.iter().all(|&j| self.status[j] == Status::Succeeded)
            {
                continue;
            }
            let failed = self.graph.closure[i]
                .iter()
                .find(|&j| self.status[j] == Status::Failed)
                .expect("a requirement that did not succeed has a failure in its closure");
            self.status[i] = Status::NotRun(failed);
            let why = format!("requires {}, which failed", order[failed]);
            printer.to(i, || {
                output::warning(&format!("{}: not run: {why}", order[i]))
            });
            self.slots[i] = Some(ModuleReport {
                name: order[i].to_string(),
                not_run: Some(why),
                ..ModuleReport::default()
            });
            printer.ended(i);
            skipped.push(i);
        }
        skipped
    }

    /// Starts module `i` (`module`) in its sandbox, over the layers of
    /// its requires closure.
    fn start(
        &mut self,
        i: usize,
        module: &Name,
        jobs: usize,
    ) -> Result<(Running<ModuleRun>, Started)> {
        output::info(&format!("Processing {module}"));
        self.status[i] = Status::Running;
        let module_dir = self
            .tree
            .module_dir(module)?
            .expect("planned modules are in the cache");
        let job = super::job(
            self.config,
            self.sandbox,
            module,
            self.attributes[module].clone(),
            self.timeouts.get(module).copied(),
        );
        let mut binds = self
            .sandbox
            .standard_binds(&self.exe, Some((&module_dir, &self.sandbox.params_dir())));
        let lowers = self.graph.lowers(i);
        binds.push(self.earlier_pending(i, &lowers)?);
        // Beside other modules, the output is kept and shown in turn.
        let output = if self.opts.quiet || jobs > 1 {
            Output::Capture
        } else {
            Output::Forward
        };
        let (started, clock) = (SystemTime::now(), std::time::Instant::now());
        let running = self
            .sandbox
            .start_layer((i + 1, &lowers), &binds, output, move || Ok(job.run()))?;
        Ok((
            running,
            Started {
                idx: i,
                module_dir,
                lowers,
                started,
                clock,
                elsewhere: std::time::Duration::ZERO,
            },
        ))
    }

    /// The changes the modules module `i` requires left pending (`disco
    /// pending`, noop only), one `MODULE: TEXT` a line, written to the run
    /// dir and bound read-only at `/run/disco/pending-earlier`: a module
    /// reads there whether what it needs (a unit a pending package
    /// installs) is itself pending.
    fn earlier_pending(&self, i: usize, lowers: &[usize]) -> Result<crate::sandbox::Bind> {
        let text: String = lowers
            .iter()
            .filter_map(|&l| self.slots[l - 1].as_ref())
            .flat_map(|m| m.pending.iter().map(move |p| format!("{}: {p}\n", m.name)))
            .collect();
        // With the layers: in the scratch image when there is one.
        let file = self
            .sandbox
            .run
            .layers()
            .join(format!("pending-earlier-{}", i + 1));
        crate::fsutil::write_private(&file, text.as_bytes())
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok(crate::sandbox::Bind {
            source: file,
            inside: Path::new(DISCO_DIR).join("pending-earlier"),
        })
    }

    /// Stage 7 for a module whose sandbox ended: what it did, its changes
    /// (the diff of its layer), its actions; records its report. True
    /// when it failed.
    fn finish(&mut self, module: &Name, job: Started, outcome: Outcome<ModuleRun>) -> Result<bool> {
        watchdog::doing(format!("module {module}: the diff of its layer"));
        let (mut mreport, mut skipped, mut failed) = self.outcome(module, &outcome);
        mreport.steps.insert(
            0,
            sandbox_step(job.clock.elapsed() - job.elsewhere, &mreport.steps),
        );
        let handlers = actions::handlers_of(&job.module_dir);
        // Only a handler reads which paths changed (`DISCO_CHANGED`);
        // without one, whether any did is all that counts.
        let all_paths = !handlers.as_ref().is_ok_and(|(h, _)| h.is_empty());
        // Output kept (--quiet, or modules side by side) is shown here,
        // with the module's other lines: at once, or with --quiet at its
        // first change or its failure. Forwarded output was shown as it came.
        let kept = self.opts.quiet || self.config.jobs.value > 1;
        let mut to_show = kept.then_some(&outcome.output);
        if !self.opts.quiet {
            if let Some(o) = to_show.take() {
                o.show();
            }
        }
        let diffed = self.diff_layer(
            module,
            &job,
            (failed.is_some(), all_paths),
            &mut to_show,
            &mut mreport,
        )?;
        if let Some(why) = diffed.touches {
            failed = Some(why);
        }
        if let (Some(_), Some(o)) = (&failed, to_show) {
            o.show();
        }
        if failed.is_none() {
            self.say_deferred(&mreport);
        }
        let (handlers, skipped_handlers) = handlers.with_context(|| format!("module {module}"))?;
        skipped.extend(skipped_handlers);
        if !skipped.is_empty() {
            output::warning(&format!(
                "{module}: not run (not a script by its name): {}",
                skipped.join(", ")
            ));
        }
        self.action_slots[job.idx] = Some(ModuleActions {
            module: module.to_string(),
            handlers,
            module_dir: job.module_dir,
            actions: mreport.actions.clone(),
            changed: diffed.changed,
            pending: mreport.pending.len(),
            failures: Default::default(),
        });
        if let Some(f) = &failed {
            output::error(&format!("{module}: {f}"));
            mreport.error = Some(f.clone());
        }
        self.slots[job.idx] = Some(mreport);
        Ok(failed.is_some())
    }

    /// The module's report from what its sandbox said — steps, actions,
    /// pending changes, leftovers — the files it skipped, and why it
    /// failed, if it did (a full scratch, changes left pending live).
    fn outcome(
        &self,
        module: &Name,
        outcome: &Outcome<ModuleRun>,
    ) -> (ModuleReport, Vec<String>, Option<String>) {
        let mut mreport = ModuleReport {
            name: module.to_string(),
            actions: crate::sandbox::service_cmds::dedupe_reloads(outcome.actions.clone()),
            pending: outcome
                .pending
                .iter()
                .map(|p| crate::masks::text(p))
                .collect(),
            ..ModuleReport::default()
        };
        let mut skipped = Vec::new();
        let mut failed = match &outcome.value {
            Ok(r) => {
                mreport.steps = r.steps.clone();
                skipped = r.skipped.clone();
                with_stderr(&mut mreport.steps, r.failed.clone(), &outcome.stderr_tail)
            }
            Err(e) => Some(e.clone()),
        };
        // Out of scratch: failed, whatever its steps said (one that
        // ignored ENOSPC left a file cut short, which live would not).
        if let Some(full) = self.scratch_full() {
            let why = failed.unwrap_or_else(|| {
                "a step wrote until it had no space left (what it wrote was cut short)".into()
            });
            failed = Some(format!("{full}: {why}"));
        }
        if !outcome.leftovers.is_empty() {
            output::warning(&format!(
                "{module}: killed {} background process(es) its steps left running: {}",
                outcome.leftover_count,
                outcome.leftovers.join(", ")
            ));
            mreport.killed = outcome.leftovers.clone();
        }
        if !mreport.pending.is_empty() {
            if self.config.noop.value {
                output::info(&format!(
                    "{module}: pending, not made in this noop: {}",
                    mreport.pending.join("; ")
                ));
            } else if failed.is_none() {
                // A live dance makes its changes: a step that could not
                // has failed, whatever its exit status said.
                failed = Some(format!(
                    "a step left changes pending in a live dance ({}): `disco pending` is for noop runs",
                    mreport.pending.join("; ")
                ));
            }
        }
        (mreport, skipped, failed)
    }

    /// Diffs the module's layer against its closure, streaming each
    /// change to the console, the report's bound, the live check, the
    /// conflict rule and the merge's record of changed directories;
    /// removes from the layer what holds no change ([`crate::diff::Differ::prune`]).
    /// `to_show`: output shown at the first change, if there is one.
    ///
    /// Long because it is one walk with every consumer of a change in it.
    fn diff_layer(
        &mut self,
        module: &Name,
        job: &Started,
        (failed, all_paths): (bool, bool),
        to_show: &mut Option<&output::Section>,
        mreport: &mut ModuleReport,
    ) -> Result<Diffed> {
        let layer = job.idx + 1;
        let meter = report::Meter::start();
        // Looked up as the module's overlay stacked them: a few squashes
        // and layers, not every layer of a long chain.
        let lowers = self.sandbox.mounted(&job.lowers);
        // Owners by name as the root stands after this module.
        let owners = Owners::at_layer(&self.sandbox.run, &self.sandbox.root, layer, &lowers);
        let sandbox = self.sandbox;
        let mut differ = sandbox.differ(&owners, &lowers, true);
        differ.hidden = self.overrides.hidden(job.idx);
        differ.from_root = self.overrides.from_root(job.idx);
        let masked = |mut c: Change| {
            if let Some(d) = &c.diff {
                c.diff = Some(crate::masks::text(d));
            }
            c
        };
        // The changes are streamed, never held (DESIGN §6): a first walk
        // of `/etc/` says which of those the report keeps, the second
        // gives every change, in path order, to whatever needs it.
        let mut capper = report::Capper::new(self.config.report_cap());
        differ
            .each(layer, Some("/etc/"), &mut |c| {
                capper.etc(&masked(c));
                Ok(())
            })
            .with_context(|| format!("{module}: cannot compute its changes"))?;
        let roll = self.config.roll_up(self.opts.quiet, false);
        let mut console = output::Console::of_module(&roll, module.as_str());
        let state_dir = (self.sandbox.state_in_root.as_ref()).map(|rel| Path::new("/").join(rel));
        let mut out = Diffed {
            touches: None,
            changed: Vec::new(),
        };
        let since = since_epoch(job.started);
        let live = !self.config.noop.value;
        // For the merge: a noop has none.
        let mut dirs =
            DirsRecord::new(live.then(|| crate::merge::dirs_record(&self.sandbox.run, layer)));
        differ
            .each(layer, None, &mut |c| {
                let c = masked(c);
                if live {
                    // Only a merge checks them: a noop never merges.
                    self.expect(&c, since)?;
                }
                self.conflicts
                    .record(self.graph, job.idx, &c.path, touch(&c));
                dirs.push(&c)?;
                if let (Some(state), false, None) = (&state_dir, failed, &out.touches) {
                    out.touches = touches_state_dir(std::slice::from_ref(&c), state);
                }
                if let Some(o) = to_show.take() {
                    o.show();
                }
                console.push(&c);
                if all_paths || out.changed.is_empty() {
                    out.changed.push(c.path.clone());
                }
                capper.push(c);
                Ok(())
            })
            .with_context(|| format!("{module}: cannot compute its changes"))?;
        dirs.finish()?;
        mreport.steps.push(meter.step("diff"));
        console.finish();
        // The saved report's bound: the rest counted per directory.
        capper.finish(mreport);
        Ok(out)
    }
}

/// Noop: which layers the rest of the dance still needs. A module's
/// layer is needed by its own diff and by every module whose requires
/// closure holds it (their overlay, squash and diff); once all of those
/// have ended it is removed, while other modules run, rather than with
/// every other at the dance's end (`RunDir::empty_mem`: a serial 10 ms
/// of a 20-module noop here). A live dance keeps them all for its merge,
/// and `--keep` for whoever looks.
struct Spent {
    /// Per module: how many modules not ended yet hold it in their closure.
    users: Vec<usize>,
}

impl Spent {
    fn new(graph: &crate::graph::Graph) -> Spent {
        let mut users = vec![0; graph.closure.len()];
        for closure in &graph.closure {
            for i in closure.iter() {
                users[i] += 1;
            }
        }
        Spent { users }
    }

    /// Module `j` ended: the modules whose layers no one needs any more
    /// (`j`'s own, and those of its closure it was the last to need).
    fn ended(&mut self, graph: &crate::graph::Graph, status: &[Status], j: usize) -> Vec<usize> {
        let mut spent = Vec::new();
        for i in graph.closure[j].iter() {
            self.users[i] -= 1;
            if self.users[i] == 0 && status[i].ended() {
                spent.push(i);
            }
        }
        if self.users[j] == 0 {
            spent.push(j);
        }
        spent
    }
}

/// The report's `sandbox` step of a module whose sandbox ended: the wall
/// time from disco starting it (its layer's directories, a squash to
/// make, the fork, the mounts) to its result read back and its process
/// reaped (`took`), less the steps it ran — the cost of the sandbox itself.
fn sandbox_step(took: std::time::Duration, steps: &[crate::report::Step]) -> crate::report::Step {
    let ran: f64 = steps.iter().map(|s| s.figures.time_real).sum();
    crate::report::Step {
        name: "sandbox".into(),
        exit: None,
        error: None,
        figures: crate::report::Figures {
            time_real: (took.as_secs_f64() - ran).max(0.0),
            ..Default::default()
        },
        sent: None,
        received: None,
    }
}

/// A module's failure (`failed`) with its reason: when the step that
/// failed is a process that exited non-zero (a template, a script) and
/// the module wrote a line on stderr (`tail`: its last, masked and made
/// printable by the sandbox's drain), `… exited 1 (stderr: LINE)`, in
/// that step's error too — so `disco report` and the fleet preview say
/// why, not only that, and group nodes by it.
fn with_stderr(
    steps: &mut [crate::report::Step],
    failed: Option<String>,
    tail: &Option<String>,
) -> Option<String> {
    let (Some(f), Some(line)) = (&failed, tail) else {
        return failed;
    };
    match steps.last_mut() {
        Some(s) if s.exit.is_some_and(|e| e != 0) && s.error.as_ref() == Some(f) => {
            let why = format!("{f} (stderr: {line})");
            s.error = Some(why.clone());
            Some(why)
        }
        _ => failed,
    }
}

/// What the diff of a layer found beyond the report.
struct Diffed {
    /// A change to disco's state dir: the module's error.
    touches: Option<String>,
    /// The paths handlers get (all, or the first: see `all_paths`).
    changed: Vec<String>,
}

/// What a change does to its path, for the conflict rule.
fn touch(c: &Change) -> Touch {
    match (c.kind, &c.new) {
        (ChangeKind::Deleted | ChangeKind::Replaced, _) => Touch::Removed,
        (_, Some(m)) if m.kind == "directory" => dir_touch(m),
        _ => Touch::Other,
    }
}

/// The merge's record of the directories a layer made or changed
/// ([`crate::merge::dirs_record`]), written as the diff streams.
struct DirsRecord {
    /// None: nothing is recorded (a noop).
    file: Option<PathBuf>,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl DirsRecord {
    fn new(file: Option<PathBuf>) -> DirsRecord {
        DirsRecord { file, out: None }
    }

    fn push(&mut self, c: &Change) -> Result<()> {
        if c.new.as_ref().is_none_or(|m| m.kind != "directory") {
            return Ok(());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let w = match &mut self.out {
            Some(w) => w,
            None => self.out.insert(std::io::BufWriter::new(Self::open(file)?)),
        };
        std::io::Write::write_all(w, format!("{}\n", c.path).as_bytes())
            .with_context(|| format!("cannot write {}", file.display()))
    }

    fn open(file: &Path) -> Result<std::fs::File> {
        let dir = file.parent().expect("in the run dir");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::File::create(file).with_context(|| format!("cannot write {}", file.display()))
    }

    /// Closes the record; a layer that changed no directory gets an empty
    /// one (none would mean "every directory", for runs of older discos).
    fn finish(self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        match self.out {
            Some(w) => {
                w.into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            None => {
                Self::open(file)?;
            }
        }
        Ok(())
    }
}
