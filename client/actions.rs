//! Stage 9, deferred actions and handlers (DESIGN §3.9): what the shims
//! caught during a dance, replayed on the live system after the merge, in
//! the order called, then each changed module's `handlers/*`.
//!
//! Owns the rule of what runs: only actions of modules that changed
//! something (so a converged node restarts nothing), every handler of a
//! changed module in lexical order with `DISCO_CHANGED`; under a `--root`
//! other than `/` nothing runs unless `--run-actions` (there is no live
//! system to act on). Commands run chrooted into ROOT (a no-op for `/`);
//! handlers get the module's files and parameters under `/run/disco`, as
//! scripts do, through a private mount namespace. The plan of what to run
//! is saved in the run directory before the merge, so a crash-interrupted
//! merge still gets its actions once it is finished.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

use crate::exec::{wait4, SANDBOX_PATH};
use crate::output;
use crate::report::{Figures, Step};

/// One module's share of the work after the merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleActions {
    pub module: String,
    /// The fetched module directory (for its handlers).
    pub module_dir: PathBuf,
    /// Commands caught by shims, argv as called.
    pub actions: Vec<Vec<String>>,
    /// Paths the module changed (absolute on the target): all of them
    /// when it has handlers (`DISCO_CHANGED`), else only the first (what
    /// counts then is whether it changed anything).
    pub changed: Vec<String>,
    /// Handler file names, sorted.
    pub handlers: Vec<String>,
    /// Changes left pending in noop (`disco pending`): the module counts
    /// as changed for what noop says would run.
    #[serde(default, skip)]
    pub pending: usize,
    /// In `failed-actions.json`: each failed item's record, by its ID.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, Failure>,
}

/// Everything to run after a merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pending {
    pub node: String,
    pub root: PathBuf,
    pub params_dir: PathBuf,
    pub run_actions: bool,
    pub modules: Vec<ModuleActions>,
    /// Seconds an action or handler may run (`step_timeout`).
    #[serde(default = "default_step_timeout")]
    pub step_timeout: u64,
}

fn default_step_timeout() -> u64 {
    1800
}

impl Pending {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("pending.json")
    }

    /// Saves the plan in the run directory (0600, in a 0700 directory
    /// that holds the parameters in clear anyway).
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let p = Self::path(run_dir);
        crate::fsutil::write_private(&p, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", p.display()))
    }

    pub fn load(run_dir: &Path) -> Result<Option<Pending>> {
        match fs::read(Self::path(run_dir)) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).context("pending.json is damaged")?,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("cannot read pending.json"),
        }
    }

    /// Whether actions run: the root is `/`, or `--run-actions`.
    pub fn live(&self) -> bool {
        self.root == Path::new("/") || self.run_actions
    }
}

/// Lists handlers of a module directory, sorted: regular files of a real
/// `handlers/` directory (a symlinked one is refused, never listed) whose
/// names say they run ([`crate::exec::runs`]); and the files skipped.
pub fn handlers_of(module_dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    use crate::exec::Runnable;
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for r in crate::exec::runnables(module_dir, "handlers")? {
        match r {
            Runnable::Runs(path) => out.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            ),
            Runnable::Skipped(name) => skipped.push(format!("handlers/{}", name.to_string_lossy())),
            Runnable::Refused(name, why) => {
                anyhow::bail!("handlers/{} {why}", name.to_string_lossy())
            }
        }
    }
    Ok((out, skipped))
}

/// Noop: says what would run after a merge.
pub fn describe_noop(pending: &Pending) {
    for m in &pending.modules {
        if m.changed.is_empty() && m.pending == 0 {
            for a in &m.actions {
                output::info(&format!(
                    "would skip {} ({} changed nothing)",
                    shown(a),
                    m.module
                ));
            }
            continue;
        }
        for h in &m.handlers {
            output::info(&format!("would run handler {}/handlers/{h}", m.module));
        }
    }
}

/// One action or handler of a [`Pending`], in the order they run.
#[derive(Debug, Clone, Copy)]
struct Item {
    /// Index into `Pending::modules`.
    entry: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Action(usize),
    Handler(usize),
}

/// What an action or handler that failed (or was interrupted) went
/// through, in `failed-actions.json` (masked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When it first failed (RFC 3339).
    pub first: String,
    /// When it last failed.
    pub last: String,
    /// How many times it failed or was interrupted (0: never ran, disco
    /// was killed before it).
    pub times: u32,
    /// Its last error line.
    pub error: String,
}

/// The error line of an action or handler whose run disco's death cut.
pub const INTERRUPTED: &str = "interrupted: disco was killed while it ran";
const NOT_STARTED: &str = "not run yet: disco was killed before it started";

/// The stable, short ID of an item whose strings are as stored (sealed):
/// 6 hex digits of the md5 of module, kind and argv or handler name.
fn raw_id(module: &str, kind: &str, what: &[&str]) -> String {
    let mut text = format!("{module}\0{kind}");
    for w in what {
        text.push('\0');
        text.push_str(w);
    }
    let digest = <md5::Md5 as md5::Digest>::digest(text.as_bytes());
    digest[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// The ID of action `argv` of `module` (argv in clear: sealed first, so
/// the ID does not change with a secret's value).
pub fn action_id(module: &str, argv: &[String]) -> String {
    let masks = crate::masks::current();
    let sealed: Vec<String> = argv.iter().map(|a| masks.seal(a)).collect();
    raw_action_id(module, &sealed)
}

/// The ID of handler `name` of `module`.
pub fn handler_id(module: &str, name: &str) -> String {
    raw_id(module, "handler", &[name])
}

impl Pending {
    fn item_id(&self, item: Item) -> String {
        let m = &self.modules[item.entry];
        match item.kind {
            Kind::Action(i) => action_id(&m.module, &m.actions[i]),
            Kind::Handler(i) => handler_id(&m.module, &m.handlers[i]),
        }
    }

    /// Every item, in the order they would run.
    fn items(&self) -> Vec<Item> {
        let mut out = Vec::new();
        for (entry, m) in self.modules.iter().enumerate() {
            out.extend((0..m.actions.len()).map(|i| Item {
                entry,
                kind: Kind::Action(i),
            }));
        }
        for (entry, m) in self.modules.iter().enumerate() {
            out.extend((0..m.handlers.len()).map(|i| Item {
                entry,
                kind: Kind::Handler(i),
            }));
        }
        out
    }

    /// The same plan with only `items` (their failure records kept).
    fn subset(&self, items: &[Item]) -> Pending {
        let mut out = Pending {
            modules: Vec::new(),
            ..self.clone()
        };
        let mut at: Vec<Option<usize>> = vec![None; self.modules.len()];
        for &it in items {
            let src = &self.modules[it.entry];
            let idx = *at[it.entry].get_or_insert_with(|| {
                out.modules.push(ModuleActions {
                    actions: Vec::new(),
                    handlers: Vec::new(),
                    failures: Default::default(),
                    ..src.clone()
                });
                out.modules.len() - 1
            });
            let id = self.item_id(it);
            let dst = &mut out.modules[idx];
            match it.kind {
                Kind::Action(i) => dst.actions.push(src.actions[i].clone()),
                Kind::Handler(i) => dst.handlers.push(src.handlers[i].clone()),
            }
            if let Some(f) = src.failures.get(&id) {
                dst.failures.insert(id, f.clone());
            }
        }
        out
    }

    /// The IDs of every item.
    pub fn ids(&self) -> Vec<String> {
        self.items().into_iter().map(|i| self.item_id(i)).collect()
    }
}

/// Runs the actions, then the handlers. Returns the steps and whether all
/// succeeded (what failed is added to `failed-actions.json`).
pub fn run(state_dir: &Path, pending: &Pending) -> Result<(Vec<Step>, bool)> {
    let (steps, failed) = run_keeping_failures(state_dir, pending, &[])?;
    let ok = failed.modules.is_empty();
    if !ok {
        add_failed(state_dir, failed)?;
    }
    end_journal(state_dir)?;
    Ok((steps, ok))
}

/// Says which items will not run (of a module that changed nothing; not
/// live) and returns those that will, in order.
fn runnable(pending: &Pending) -> Vec<Item> {
    let live = pending.live();
    let not_live = |what: &str| {
        output::info(&format!(
            "not run (the root is {}, not /; --run-actions runs it there): {what}",
            pending.root.display()
        ))
    };
    let mut out = Vec::new();
    for it in pending.items() {
        let m = &pending.modules[it.entry];
        match it.kind {
            Kind::Action(i) => {
                let shown = shown(&m.actions[i]);
                if m.changed.is_empty() {
                    output::info(&format!("skipped {shown}: {} changed nothing", m.module));
                } else if !live {
                    not_live(&shown);
                } else {
                    out.push(it);
                }
            }
            // A module that changed nothing runs no handler, silently.
            Kind::Handler(_) if m.changed.is_empty() => {}
            Kind::Handler(i) => {
                if !live {
                    not_live(&format!("handler {}/handlers/{}", m.module, m.handlers[i]));
                } else {
                    out.push(it);
                }
            }
        }
    }
    out
}

/// Runs the actions, then the handlers, under the journal of `state_dir`
/// (written and synced before each starts and after it ends, so a killed
/// disco leaves what it was running and what it had still to run); returns
/// the steps and what failed (the same shape: the modules with only their
/// failed actions and handlers, their failure records updated), to be run
/// again later. `replaces`: the IDs of `failed-actions.json` this run
/// takes over (run again here, or superseded). The caller saves what
/// failed, then ends the journal ([`end_journal`]).
pub fn run_keeping_failures(
    state_dir: &Path,
    pending: &Pending,
    replaces: &[String],
) -> Result<(Vec<Step>, Pending)> {
    let mut steps = Vec::new();
    let mut failed = Pending {
        modules: Vec::new(),
        ..pending.clone()
    };
    let items = runnable(pending);
    if items.is_empty() {
        return Ok((steps, failed));
    }
    let mut failed_at: Vec<Option<usize>> = vec![None; pending.modules.len()];
    let mut journal = Journal {
        remaining: pending.subset(&items),
        started: false,
        failed: failed.clone(),
        replaces: replaces.to_vec(),
    };
    for (k, &it) in items.iter().enumerate() {
        journal.remaining = pending.subset(&items[k..]);
        journal.started = true;
        journal.write(state_dir)?;
        let m = &pending.modules[it.entry];
        let step = match it.kind {
            Kind::Action(i) => run_action(pending, &m.actions[i]),
            Kind::Handler(i) => run_handler(pending, m, &m.handlers[i]),
        };
        if let Some(error) = &step.error {
            let id = pending.item_id(it);
            let idx = *failed_at[it.entry].get_or_insert_with(|| {
                failed.modules.push(ModuleActions {
                    actions: Vec::new(),
                    handlers: Vec::new(),
                    failures: Default::default(),
                    ..m.clone()
                });
                failed.modules.len() - 1
            });
            let entry = &mut failed.modules[idx];
            match it.kind {
                Kind::Action(i) => entry.actions.push(m.actions[i].clone()),
                Kind::Handler(i) => entry.handlers.push(m.handlers[i].clone()),
            }
            let mut record = m.failures.get(&id).cloned().unwrap_or_else(|| Failure {
                first: now(),
                ..Failure::default()
            });
            record.times += 1;
            record.last = now();
            record.error = crate::masks::text(error);
            entry.failures.insert(id, record);
        }
        steps.push(step);
        journal.remaining = pending.subset(&items[k + 1..]);
        journal.started = false;
        journal.failed = failed.clone();
        journal.write(state_dir)?;
    }
    Ok((steps, failed))
}

fn run_action(pending: &Pending, argv: &[String]) -> Step {
    let shown = shown(argv);
    output::info(&format!("running deferred action: {shown}"));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    execute(cmd, &format!("action {shown}"), pending, None)
}

fn run_handler(pending: &Pending, m: &ModuleActions, h: &str) -> Step {
    let name = format!("{}/handlers/{h}", m.module);
    output::info(&format!("running handler {name}"));
    let mut cmd = Command::new("bash");
    cmd.arg(format!("/run/disco/module/handlers/{h}"))
        .env_clear()
        .env("PATH", SANDBOX_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("NOOP", "false")
        .env("DISCO_NODE", &pending.node)
        .env("DISCO_MODULE", &m.module)
        .env("DISCO_MODULE_DIR", "/run/disco/module")
        .env("DISCO_PARAMS", "/run/disco/params")
        .env("DISCO_CHANGED", m.changed.join("\n"));
    let binds = Binds {
        module_dir: m.module_dir.clone(),
        params_dir: pending.params_dir.clone(),
    };
    execute(cmd, &format!("handler {name}"), pending, Some(&binds))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The record of a run of actions and handlers in progress
/// (`STATE/actions-journal.json`, sealed like `failed-actions.json`):
/// what is still to run — its first item already started when `started` —
/// and what failed so far. Rewritten (atomically, synced) before each
/// item starts and after it ends; removed once what failed is saved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    remaining: Pending,
    started: bool,
    failed: Pending,
    /// IDs of `failed-actions.json` this run took over.
    replaces: Vec<String>,
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("actions-journal.json")
}

impl Journal {
    fn write(&self, state_dir: &Path) -> Result<()> {
        let p = journal_path(state_dir);
        let sealed = Journal {
            remaining: sealed(&self.remaining),
            failed: sealed(&self.failed),
            ..self.clone()
        };
        crate::fsutil::write_atomic(&p, &serde_json::to_vec(&sealed)?, 0o600)
            .with_context(|| format!("cannot write {}", p.display()))
    }

    fn read(state_dir: &Path) -> Result<Option<Journal>> {
        let p = journal_path(state_dir);
        match fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("{} is damaged", p.display()))?,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
}

/// Removes the journal (durably) once what failed is saved.
pub fn end_journal(state_dir: &Path) -> Result<()> {
    let p = journal_path(state_dir);
    match fs::remove_file(&p) {
        Ok(()) => crate::fsutil::fsync_dir(state_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
    }
}

/// The list of failed actions and handlers as a killed run's journal
/// leaves it (strings as stored): the list less what that run took over,
/// plus what failed in it and what it had still to run — the item it was
/// running marked interrupted, those it never started as not run yet.
/// None without a journal.
fn folded(state_dir: &Path) -> Result<Option<Pending>> {
    let Some(j) = Journal::read(state_dir)? else {
        return Ok(None);
    };
    let mut list = read_raw(state_dir)?.unwrap_or_else(|| Pending {
        modules: Vec::new(),
        ..j.remaining.clone()
    });
    let replaced: std::collections::BTreeSet<&str> =
        j.replaces.iter().map(String::as_str).collect();
    retain_raw(&mut list, |id| !replaced.contains(id));
    merge_raw(&mut list, j.failed);
    let mut remaining = j.remaining;
    let stamp = now();
    let mut first = j.started;
    for it in remaining.items() {
        let id = raw_item_id(&remaining, it);
        let m = &mut remaining.modules[it.entry];
        let record = m.failures.entry(id).or_insert_with(|| Failure {
            first: stamp.clone(),
            last: stamp.clone(),
            times: 0,
            error: NOT_STARTED.into(),
        });
        if first {
            record.times += 1;
            record.last = stamp.clone();
            record.error = INTERRUPTED.into();
            first = false;
        }
    }
    merge_raw(&mut list, remaining);
    Ok(Some(list))
}

/// Finishes what a killed run of actions and handlers left (its journal):
/// the item it was running and those it never started join
/// `failed-actions.json`, to run at the next dance (the interrupted one
/// exactly once more). Returns how many it had still to run.
pub fn recover_journal(state_dir: &Path) -> Result<usize> {
    let Some(j) = Journal::read(state_dir)? else {
        return Ok(0);
    };
    let left = count(&j.remaining);
    let list = folded(state_dir)?.unwrap_or_default();
    if left > 0 {
        output::warning(&format!(
            "disco was killed while running deferred actions or handlers: {left} of them (the one it was running included) run again at the end of this dance"
        ));
    }
    write_raw(state_dir, &list)?;
    end_journal(state_dir)?;
    Ok(left)
}

/// The ID of an item of a plan whose strings are as stored (sealed).
fn raw_item_id(p: &Pending, it: Item) -> String {
    let m = &p.modules[it.entry];
    match it.kind {
        Kind::Action(i) => raw_action_id(&m.module, &m.actions[i]),
        Kind::Handler(i) => handler_id(&m.module, &m.handlers[i]),
    }
}

/// The ID of an action whose argv is as stored (sealed).
fn raw_action_id(module: &str, argv: &[String]) -> String {
    raw_id(
        module,
        "action",
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// Keeps only the items (stored strings) whose ID passes `keep`.
fn retain_raw(p: &mut Pending, keep: impl Fn(&str) -> bool) {
    let items: Vec<Item> = p
        .items()
        .into_iter()
        .filter(|&it| keep(&raw_item_id(p, it)))
        .collect();
    *p = subset_raw(p, &items);
}

/// [`Pending::subset`] for stored strings, one item per ID.
fn subset_raw(p: &Pending, items: &[Item]) -> Pending {
    let mut out = Pending {
        modules: Vec::new(),
        ..p.clone()
    };
    for &it in items {
        let id = raw_item_id(p, it);
        let src = &p.modules[it.entry];
        add_raw(&mut out, src, it.kind, id);
    }
    out
}

/// Adds item `kind` of `src` with ID `id` to `to` (strings as stored):
/// into the entry of its module (paths changed joined), once per ID, its
/// failure record the newer one.
fn add_raw(to: &mut Pending, src: &ModuleActions, kind: Kind, id: String) {
    let idx = match to.modules.iter().position(|m| m.module == src.module) {
        Some(i) => i,
        None => {
            to.modules.push(ModuleActions {
                actions: Vec::new(),
                handlers: Vec::new(),
                failures: Default::default(),
                ..src.clone()
            });
            to.modules.len() - 1
        }
    };
    let dst = &mut to.modules[idx];
    for c in &src.changed {
        if !dst.changed.contains(c) {
            dst.changed.push(c.clone());
        }
    }
    match kind {
        Kind::Action(i) => {
            if !dst
                .actions
                .iter()
                .any(|a| raw_action_id(&dst.module, a) == id)
            {
                dst.actions.push(src.actions[i].clone());
            }
        }
        Kind::Handler(i) => {
            if !dst.handlers.contains(&src.handlers[i]) {
                dst.handlers.push(src.handlers[i].clone());
            }
        }
    }
    if let Some(f) = src.failures.get(&id) {
        dst.failures.insert(id, f.clone());
    }
}

/// Adds every item of `from` to `to` (strings as stored).
fn merge_raw(to: &mut Pending, from: Pending) {
    for it in from.items() {
        let id = raw_item_id(&from, it);
        add_raw(to, &from.modules[it.entry], it.kind, id);
    }
}

/// Where failed actions and handlers wait to be run again.
fn failed_path(state_dir: &Path) -> PathBuf {
    state_dir.join("failed-actions.json")
}

/// `failed-actions.json` as stored (secrets sealed).
fn read_raw(state_dir: &Path) -> Result<Option<Pending>> {
    let p = failed_path(state_dir);
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("{} is damaged", p.display()))?,
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Writes `failed-actions.json` as given (strings as stored), durably;
/// removes it when nothing waits.
fn write_raw(state_dir: &Path, list: &Pending) -> Result<()> {
    let p = failed_path(state_dir);
    if list.modules.is_empty() {
        return match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", p.display()))
            }
            _ => Ok(()),
        };
    }
    // One entry per module and item; no record without its item.
    let mut clean = subset_raw(list, &list.items());
    for m in &mut clean.modules {
        let ids: Vec<String> = m
            .actions
            .iter()
            .map(|a| raw_action_id(&m.module, a))
            .chain(m.handlers.iter().map(|h| handler_id(&m.module, h)))
            .collect();
        m.failures.retain(|id, _| ids.contains(id));
    }
    crate::fsutil::write_atomic(&p, &serde_json::to_vec_pretty(&clean)?, 0o600)
        .with_context(|| format!("cannot write {}", p.display()))
}

/// The actions and handlers that failed and wait to be run again, their
/// secrets put back with the values of now ([`crate::masks::Masks::unseal`]);
/// an action whose secret the node no longer has is dropped with a warning.
pub fn load_failed(state_dir: &Path) -> Result<Option<Pending>> {
    let Some(mut failed) = read_raw(state_dir)? else {
        return Ok(None);
    };
    let masks = crate::masks::current();
    for m in &mut failed.modules {
        let module = m.module.clone();
        m.actions.retain_mut(|argv| {
            let open: Result<Vec<String>> = argv.iter().map(|a| masks.unseal(a)).collect();
            match open {
                Ok(open) => {
                    *argv = open;
                    true
                }
                Err(e) => {
                    output::warning(&format!(
                        "{module}: a failed deferred action ({}) is dropped: {e:#}",
                        shown(argv).replace('\0', "")
                    ));
                    false
                }
            }
        });
        for c in &mut m.changed {
            *c = masks.unseal(c).unwrap_or_else(|_| c.replace('\0', ""));
        }
    }
    Ok(Some(failed))
}

/// `p` with no secret in clear: each is sealed (a reference to its key,
/// put back by [`load_failed`]), any other rendering masked. The other
/// strings are names and paths of disco's own (not masked: a mask could
/// cut into a seal).
fn sealed(p: &Pending) -> Pending {
    let masks = crate::masks::current();
    let mut sealed = p.clone();
    for m in &mut sealed.modules {
        for a in m.actions.iter_mut().flatten().chain(&mut m.changed) {
            *a = masks.seal(a);
        }
    }
    sealed
}

/// Keeps `failed` for the next dance (removes the file when nothing failed).
pub fn save_failed(state_dir: &Path, failed: &Pending) -> Result<()> {
    write_raw(state_dir, &sealed(failed))
}

/// Adds `failed` to what already waits in `failed-actions.json`.
pub fn add_failed(state_dir: &Path, failed: Pending) -> Result<()> {
    let mut list = read_raw(state_dir)?.unwrap_or_else(|| Pending {
        modules: Vec::new(),
        ..failed.clone()
    });
    merge_raw(&mut list, sealed(&failed));
    write_raw(state_dir, &list)
}

/// How many actions and handlers wait to be run again.
pub fn count(p: &Pending) -> usize {
    p.modules
        .iter()
        .map(|m| m.actions.len() + m.handlers.len())
        .sum()
}

/// Readies again what failed before, with the module directories and the
/// parameters of now (`dir_of` a module's current directory, `params_dir`);
/// a module no longer planned is dropped with a warning. Returns what is
/// to run and what a partial dance (`--only`) keeps for a whole one.
pub fn prepare_retry(
    mut before: Pending,
    dir_of: &dyn Fn(&str) -> Option<PathBuf>,
    params_dir: &Path,
    partial: bool,
) -> (Pending, Vec<ModuleActions>) {
    before.params_dir = params_dir.to_path_buf();
    let mut later = Vec::new();
    before.modules.retain_mut(|m| match dir_of(&m.module) {
        Some(d) => {
            m.module_dir = d;
            true
        }
        // A partial dance (--only) keeps them for a whole one.
        None if partial => {
            later.push(m.clone());
            false
        }
        None => {
            output::warning(&format!(
                "{}: no longer planned; its failed actions and handlers are dropped",
                m.module
            ));
            false
        }
    });
    for m in &before.modules {
        output::info(&format!(
            "running again what failed before in {}: {} action(s), {} handler(s)",
            m.module,
            m.actions.len(),
            m.handlers.len()
        ));
    }
    (before, later)
}

/// One pending action or handler as `disco actions` lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub module: String,
    /// `action systemctl restart x` or `handler handlers/10-h`, secrets masked.
    pub what: String,
    pub failure: Option<Failure>,
}

/// What waits to run again, as a killed run would leave it (its journal
/// folded in, nothing written): one entry per item, in run order.
pub fn list(state_dir: &Path) -> Result<Vec<Listed>> {
    let list = match folded(state_dir)? {
        Some(l) => l,
        None => read_raw(state_dir)?.unwrap_or_default(),
    };
    Ok(list
        .items()
        .into_iter()
        .map(|it| {
            let m = &list.modules[it.entry];
            let id = raw_item_id(&list, it);
            let what = match it.kind {
                Kind::Action(i) => format!("action {}", unsealed_shown(&m.actions[i])),
                Kind::Handler(i) => format!("handler handlers/{}", m.handlers[i]),
            };
            Listed {
                failure: m.failures.get(&id).cloned(),
                id,
                module: m.module.clone(),
                what: crate::masks::text(&what),
            }
        })
        .collect())
}

/// An action as stored, shown with its sealed secrets masked.
fn unsealed_shown(argv: &[String]) -> String {
    let opened: Vec<String> = argv
        .iter()
        .map(|a| {
            a.split('\0')
                .enumerate()
                .map(|(i, part)| if i % 2 == 1 { crate::masks::MASK } else { part })
                .collect()
        })
        .collect();
    shown(&opened)
}

/// Drops the items with these IDs from `failed-actions.json` (a killed
/// run's journal folded in first); returns what was dropped.
pub fn forget(state_dir: &Path, ids: &[String]) -> Result<Vec<Listed>> {
    recover_journal(state_dir)?;
    let listed = list(state_dir)?;
    let Some(mut raw) = read_raw(state_dir)? else {
        return Ok(Vec::new());
    };
    retain_raw(&mut raw, |id| !ids.iter().any(|x| x == id));
    write_raw(state_dir, &raw)?;
    Ok(listed.into_iter().filter(|l| ids.contains(&l.id)).collect())
}

/// How an action is shown: its argv, the command by its file name.
pub fn shown(argv: &[String]) -> String {
    let mut v = argv.to_vec();
    if let Some(first) = v.first_mut() {
        *first = Path::new(first.as_str())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    v.join(" ")
}

/// What a handler sees under `/run/disco`.
struct Binds {
    module_dir: PathBuf,
    params_dir: PathBuf,
}

/// Makes `cmd` run on the host's mounts, chrooted into `root`; with
/// `binds` (module dir, params dir, disco binary, `root/run/disco`) in a
/// private mount namespace where those appear under `/run/disco`.
fn in_root(
    cmd: &mut Command,
    root: PathBuf,
    bind_spec: Option<(PathBuf, PathBuf, PathBuf, PathBuf)>,
) {
    let host_ns = crate::sandbox::host_mount_namespace();
    // SAFETY: runs between fork and exec in a single-threaded process:
    // only namespace, mount and chroot calls, no locks held.
    unsafe {
        cmd.pre_exec(move || {
            // A group of its own: a time limit ends the whole action.
            libc::setpgid(0, 0);
            if let Some((ns, slash)) = host_ns {
                // Back on the host's mounts: a daemon an action starts must
                // not live in disco's private namespace. setns moves to that
                // namespace's root: back to disco's own `/` (a chroot disco
                // runs in stays one).
                if libc::setns(ns, libc::CLONE_NEWNS) != 0
                    || libc::fchdir(slash) != 0
                    || libc::chroot(c".".as_ptr()) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((module, params, exe, dir)) = &bind_spec {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                mount(
                    Some("tmpfs"),
                    dir,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=755"),
                )?;
                for (src, sub) in [(module, "module"), (params, "params")] {
                    let t = dir.join(sub);
                    fs::create_dir(&t)?;
                    mount(
                        Some(src.as_path()),
                        &t,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                    mount(
                        None::<&str>,
                        &t,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None::<&str>,
                    )?;
                }
                fs::create_dir(dir.join("bin"))?;
                let t = dir.join("bin/disco");
                fs::File::create(&t)?;
                mount(
                    Some(exe.as_path()),
                    &t,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            nix::unistd::chroot(&root)?;
            nix::unistd::chdir("/")?;
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
}

/// With secrets to mask, an action's or handler's stdout and stderr come
/// through pipes, copied to disco's own line by line through the mask,
/// one thread each.
struct MaskedCopies {
    done: std::sync::mpsc::Receiver<()>,
    threads: usize,
}

impl MaskedCopies {
    fn start(
        masks: &std::sync::Arc<crate::masks::Masks>,
        stdout: Option<std::process::ChildStdout>,
        stderr: Option<std::process::ChildStderr>,
    ) -> MaskedCopies {
        use std::io::{Read, Write};
        let (tx, done) = std::sync::mpsc::channel();
        let mut threads = 0;
        let mut copy = |mut from: Box<dyn Read + Send>, to_stdout: bool| {
            let (masks, tx) = (masks.clone(), tx.clone());
            threads += 1;
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut chunk = vec![0u8; 16 << 10];
                let put = |bytes: &[u8]| {
                    let _ = if to_stdout {
                        std::io::stdout().lock().write_all(bytes)
                    } else {
                        std::io::stderr().lock().write_all(bytes)
                    };
                };
                loop {
                    match from.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => put(&masks.lines(&mut pending, &chunk[..n], false)),
                    }
                }
                put(&masks.lines(&mut pending, &[], true));
                let _ = tx.send(());
            });
        };
        if let Some(o) = stdout {
            copy(Box::new(o), true);
        }
        if let Some(e) = stderr {
            copy(Box::new(e), false);
        }
        MaskedCopies { done, threads }
    }

    /// Waits for the copies to reach the end of their pipes, at most 2 s
    /// after the command ended: a daemon it started may hold them open
    /// (its later output is copied while disco runs).
    fn finish(self) {
        let until = Instant::now() + std::time::Duration::from_secs(2);
        for _ in 0..self.threads {
            let left = until.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                return;
            }
        }
    }
}

/// Runs `cmd` chrooted into `root` (binds under `root/run/disco` in a
/// private mount namespace for handlers); reports exit code and output.
fn execute(cmd: Command, name: &str, pending: &Pending, binds: Option<&Binds>) -> Step {
    let started = Instant::now();
    let result = run_in_root(cmd, pending, binds);
    let wall = started.elapsed().as_secs_f64();
    match result {
        Ok((code, ru)) => exited_step(name, code, &ru, wall),
        Err(e) => unstarted_step(name, &pending.root, &e, wall),
    }
}

/// Spawns `cmd` in the pending root (with the handler binds, and masked
/// copies of its output when secrets are known), waits for it under the
/// step timeout; the exit code and resource usage, or why it did not run.
fn run_in_root(
    mut cmd: Command,
    pending: &Pending,
    binds: Option<&Binds>,
) -> Result<(i32, libc::rusage)> {
    let root = pending.root.clone();
    let exe = crate::sandbox::exe().unwrap_or_default();
    let disco_dir = root.join("run/disco");
    let made_dir = binds.is_some() && !disco_dir.exists() && fs::create_dir_all(&disco_dir).is_ok();
    let bind_spec = binds.map(|b| {
        (
            b.module_dir.clone(),
            b.params_dir.clone(),
            exe.clone(),
            disco_dir.clone(),
        )
    });
    cmd.current_dir("/").stdin(Stdio::null());
    let masks = crate::masks::current();
    if !masks.is_empty() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    in_root(&mut cmd, root, bind_spec);
    let limit = std::time::Duration::from_secs(pending.step_timeout);
    let result = cmd.spawn().map_err(anyhow::Error::from).and_then(|mut c| {
        let copies = MaskedCopies::start(&masks, c.stdout.take(), c.stderr.take());
        let dog = crate::exec::Watchdog::start(c.id(), limit, "step_timeout".into(), false);
        let waiting = crate::watchdog::waiting_on(crate::watchdog::Victim::Group(c.id() as i32));
        let waited = wait4(c.id());
        drop(waiting);
        copies.finish();
        if let Some(why) = dog.finish() {
            anyhow::bail!(why);
        }
        waited
    });
    if made_dir {
        let _ = fs::remove_dir(&disco_dir);
    }
    result
}

/// The step of a command that ran: failed when it exited non-zero; says
/// so on the terminal.
fn exited_step(name: &str, code: i32, ru: &libc::rusage, wall: f64) -> Step {
    // Killed by the dance's deadline or a stop (SIGKILL): say which.
    let error = match (code, crate::watchdog::passed()) {
        (0, _) => None,
        (137, Some(why)) => Some(format!("{name} was killed: {why}")),
        _ => Some(format!("{name} exited {code}")),
    };
    match &error {
        Some(e) => output::error(e),
        None => output::info(&format!("{name}: exit 0")),
    }
    Step {
        name: name.to_string(),
        exit: Some(code),
        error,
        figures: Figures::from_rusage(ru, wall),
        sent: None,
        received: None,
    }
}

/// The step of a command that did not start (or was killed at its
/// deadline): the error names the root it was started in.
fn unstarted_step(name: &str, root: &Path, e: &anyhow::Error, wall: f64) -> Step {
    // The spawn's error is the kernel's (ENOENT of the program, of the
    // root, of a bind source): say where it was started.
    let why = match e
        .downcast_ref::<io::Error>()
        .and_then(io::Error::raw_os_error)
    {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => format!("{e:#}"),
    };
    let msg = format!("{name}: cannot start it in {}: {why}", root.display());
    output::error(&msg);
    Step {
        name: name.to_string(),
        exit: None,
        error: Some(msg),
        figures: Figures {
            time_real: wall,
            ..Figures::default()
        },
        sent: None,
        received: None,
    }
}
