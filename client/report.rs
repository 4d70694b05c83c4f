//! The record of a dance: what ran, what it cost, what changed. Saved as
//! JSON in `STATE/reports/` so `disco diff` can print a run again.
//!
//! Owns the data types and their storage; printing them is
//! [`crate::output`]'s job, computing changes is [`crate::diff`]'s.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Resource use of one step: of its child (`wait4`) or of disco itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub time_real: f64,
    pub time_user: f64,
    pub time_sys: f64,
    /// KiB.
    pub mem_max: i64,
    pub mem_faults_major: i64,
    pub mem_faults_minor: i64,
    pub io_fsin: i64,
    pub io_fsout: i64,
}

impl Figures {
    /// Figures from a `struct rusage` and a wall time in seconds.
    pub fn from_rusage(ru: &libc::rusage, wall: f64) -> Figures {
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Figures {
            time_real: wall,
            time_user: secs(ru.ru_utime),
            time_sys: secs(ru.ru_stime),
            mem_max: ru.ru_maxrss,
            mem_faults_major: ru.ru_majflt,
            mem_faults_minor: ru.ru_minflt,
            io_fsin: ru.ru_inblock,
            io_fsout: ru.ru_oublock,
        }
    }
}

/// Measures an in-process step: wall time and `getrusage(RUSAGE_SELF)` deltas.
pub struct Meter {
    started: std::time::Instant,
    before: libc::rusage,
}

fn self_rusage() -> libc::rusage {
    // SAFETY: plain data filled by getrusage.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    }
}

impl Meter {
    pub fn start() -> Meter {
        Meter {
            started: std::time::Instant::now(),
            before: self_rusage(),
        }
    }

    /// The figures since `start` (max RSS is the process's peak so far).
    pub fn figures(&self) -> Figures {
        let mut f = Figures::from_rusage(&self_rusage(), self.started.elapsed().as_secs_f64());
        let b = Figures::from_rusage(&self.before, 0.0);
        f.time_user -= b.time_user;
        f.time_sys -= b.time_sys;
        f.mem_faults_major -= b.mem_faults_major;
        f.mem_faults_minor -= b.mem_faults_minor;
        f.io_fsin -= b.io_fsin;
        f.io_fsout -= b.io_fsout;
        f
    }

    /// A finished, successful in-process step.
    pub fn step(&self, name: &str) -> Step {
        Step {
            name: name.into(),
            exit: Some(0),
            error: None,
            figures: self.figures(),
            sent: None,
            received: None,
        }
    }
}

/// One step: a stage (`fetch`, `plan`, `merge`), or of a module
/// (`sandbox`: its sandbox's own cost, wall time only; `files`,
/// `templates/PATH`, `scripts/NAME`, `diff`), or an action/handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Exit status (0 ok); `None` when the step did not get to run a child.
    pub exit: Option<i32>,
    /// Why the step failed, phrased for the error line.
    pub error: Option<String>,
    pub figures: Figures,
    /// Bytes on the wire (fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
}

/// What changed at one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Created,
    Modified,
    Deleted,
    Replaced,
}

/// The attributes disco reports of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `regular file`, `directory`, `symbolic link`, …
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `user:group`, names from ROOT's passwd/group where known.
    pub owner: String,
    pub md5: Option<String>,
    pub target: Option<String>,
    pub selinux: Option<String>,
    /// File capabilities as `getcap` shows them (`cap_net_bind_service=ep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<String>,
    pub size: u64,
}

/// One reported change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Absolute path on the target system.
    pub path: String,
    pub kind: ChangeKind,
    pub old: Option<Meta>,
    pub new: Option<Meta>,
    /// Unified diff, `binary files differ`, `content changed` (a secret),
    /// or nothing (directories…).
    pub diff: Option<String>,
    /// A deleted or replaced directory: what was inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside: Option<Inside>,
}

/// What a deleted or replaced directory held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inside {
    pub files: u64,
    pub dirs: u64,
    /// Every path that was inside (absolute on the target), sorted; the
    /// saved report keeps them all, the console only counts.
    pub paths: Vec<String>,
}

/// Changes of one directory the saved report counts instead of keeping
/// (past `report_max_changes` or `report_max_bytes`): what the console's
/// roll-up line says, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `DIR/**` (a created, deleted or replaced directory and all below
    /// it) or `DIR/*` (changes whose parent is DIR).
    pub path: String,
    /// `Created`, `Modified`, `Deleted`, `Replaced`, or `Changed` (mixed).
    pub kind: String,
    /// Changes counted here (`files` + `dirs`).
    pub changes: u64,
    pub files: u64,
    pub dirs: u64,
    /// Bytes of the files (their new size, or old when deleted).
    pub bytes: u64,
    /// Entries inside the deleted or replaced directories counted here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inside: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Summary {
    /// `/usr/share/doc/x/** : Created 37 file(s), 2 dir(s), 412 KiB`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} : {} {} file(s), {} dir(s), {}",
            self.path,
            self.kind,
            self.files,
            self.dirs,
            crate::fsutil::human_bytes(self.bytes)
        );
        if self.inside > 0 {
            line.push_str(&format!(" ({} entries inside removed)", self.inside));
        }
        line
    }
}

/// How much of a module's changes a saved report keeps in full.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// `report_max_changes`.
    pub changes: usize,
    /// `report_max_bytes`: of paths, diff text and what deleted
    /// directories held.
    pub bytes: u64,
}

/// Roughly what `c` costs in the saved report, in bytes.
fn weight(c: &Change) -> u64 {
    let meta = |m: &Option<Meta>| {
        m.as_ref().map_or(0, |m| {
            (m.owner.len()
                + m.kind.len()
                + m.md5.as_ref().map_or(0, String::len)
                + m.target.as_ref().map_or(0, String::len)
                + m.selinux.as_ref().map_or(0, String::len)
                + m.caps.as_ref().map_or(0, String::len)
                + 80) as u64
        })
    };
    let inside = c
        .inside
        .as_ref()
        .map_or(0, |i| i.paths.iter().map(|p| p.len() as u64 + 3).sum());
    c.path.len() as u64
        + c.diff.as_ref().map_or(0, |d| d.len() as u64)
        + meta(&c.old)
        + meta(&c.new)
        + inside
        + 60
}

impl ModuleReport {
    /// Every change of the module: those kept in full and those counted
    /// in [`ModuleReport::summarised`].
    pub fn change_count(&self) -> usize {
        self.changes.len() + self.summarised_changes
    }

    /// Keeps at most `cap` of `changes` (sorted by path) in full, `/etc`
    /// first, the rest in path order while both bounds hold; the others
    /// are counted per directory as the console rolls them up. (A dance
    /// streams its changes through a [`Capper`] instead.)
    pub fn keep_capped(&mut self, changes: Vec<Change>, cap: Cap) {
        let mut capper = Capper::new(cap);
        changes
            .iter()
            .filter(|c| c.path.starts_with("/etc/"))
            .for_each(|c| capper.etc(c));
        changes.into_iter().for_each(|c| capper.push(c));
        capper.finish(self);
    }
}

/// [`ModuleReport::keep_capped`] fed one change at a time, holding only
/// what the report keeps plus one counter per directory for the rest.
/// First every `/etc/` change, in path order ([`Capper::etc`]: which of
/// them are kept), then every change in path order ([`Capper::push`]).
pub struct Capper {
    cap: Cap,
    /// Kept so far, and their weight.
    n: usize,
    bytes: u64,
    /// The `/etc/` paths [`Capper::etc`] kept (how many times each).
    etc_kept: std::collections::HashMap<String, u32>,
    kept: Vec<Change>,
    rest: crate::output::Rolling,
    rest_count: usize,
}

impl Capper {
    pub fn new(cap: Cap) -> Capper {
        Capper {
            cap,
            n: 0,
            bytes: 0,
            etc_kept: Default::default(),
            kept: Vec::new(),
            rest: crate::output::Rolling::new(false),
            rest_count: 0,
        }
    }

    /// Whether the next change in the order of the bound fits.
    fn fits(&mut self, c: &Change) -> bool {
        if self.n >= self.cap.changes {
            return false;
        }
        let w = weight(c);
        if self.bytes + w > self.cap.bytes {
            return false;
        }
        self.n += 1;
        self.bytes += w;
        true
    }

    /// The next `/etc/` change (first pass, path order).
    pub fn etc(&mut self, c: &Change) {
        if self.fits(c) {
            *self.etc_kept.entry(c.path.clone()).or_default() += 1;
        }
    }

    /// The next change (second pass, path order, `/etc/` included).
    pub fn push(&mut self, c: Change) {
        let keep = if c.path.starts_with("/etc/") {
            match self.etc_kept.get_mut(&c.path) {
                Some(k) if *k > 0 => {
                    *k -= 1;
                    true
                }
                _ => false,
            }
        } else {
            self.fits(&c)
        };
        if keep {
            self.kept.push(c);
        } else {
            self.rest.add(&c);
            self.rest_count += 1;
        }
    }

    /// How many changes were pushed.
    pub fn count(&self) -> usize {
        self.kept.len() + self.rest_count
    }

    /// The kept changes into `m.changes`, the rest into `m.summarised`.
    pub fn finish(self, m: &mut ModuleReport) {
        m.changes = self.kept;
        m.summarised_changes = self.rest_count;
        m.summarised = self.rest.groups.iter().map(|g| g.summary()).collect();
    }
}

/// One module's part of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleReport {
    pub name: String,
    pub steps: Vec<Step>,
    pub changes: Vec<Change>,
    /// Background processes its steps left, killed with the sandbox.
    pub killed: Vec<String>,
    /// Commands caught by shims, in the order called.
    pub actions: Vec<Vec<String>>,
    /// Changes its steps could not make in the sandbox and said so
    /// (`disco pending TEXT`, noop only): counted as changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// How many changes are counted in `summarised` instead of kept in
    /// `changes` (the report's bound: `report_max_changes`,
    /// `report_max_bytes`).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub summarised_changes: usize,
    /// The changes not kept, per directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summarised: Vec<Summary>,
    /// Why it failed (its own error line, without the module's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it did not run (`requires M, which failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_run: Option<String>,
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

/// A whole dance (or shell session).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub id: String,
    pub node: String,
    pub noop: bool,
    pub root: PathBuf,
    pub started: String,
    pub ended: String,
    /// Seconds, start to end.
    #[serde(default)]
    pub duration: f64,
    #[serde(default)]
    pub server: String,
    /// The server's snapshot id and the root hash of the node's view.
    #[serde(default)]
    pub snapshot: String,
    #[serde(default)]
    pub root_hash: String,
    pub plan: Vec<String>,
    /// `--only`: the modules asked for (the plan then holds them and what
    /// they require); empty for a whole dance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// fetch, plan, merge.
    #[serde(default)]
    pub stages: Vec<Step>,
    /// `ok`, `changed` or `failed`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub exit_code: i32,
    pub modules: Vec<ModuleReport>,
    /// Deferred actions and handlers run after the merge.
    pub actions: Vec<Step>,
    /// The error that stopped the run, if any.
    pub error: Option<String>,
    /// Deferred actions and handlers that failed and wait to run again.
    #[serde(default)]
    pub pending_failed_actions: usize,
    /// Not a dance: `disco actions forget` dropped these (`MODULE ID
    /// what`), run by `by`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgot: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The merge onto the root succeeded (a live dance got past it; a
    /// rolled-back merge, a noop or a dance that stopped before is false).
    #[serde(default)]
    pub merged: bool,
    /// A preview (`preview = true`): the candidate snapshot's id this
    /// noop ran (`snapshot` is that id too); `disco serve` stores such a
    /// report as `reports/NODE/candidate.json`, never `last.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

impl RunReport {
    /// The report without its modules' changes (every other field as it
    /// is): what [`crate::masks::report_json`] makes a tree of values.
    pub fn without_changes(&self) -> RunReport {
        let modules = self
            .modules
            .iter()
            .map(|m| ModuleReport {
                name: m.name.clone(),
                steps: m.steps.clone(),
                changes: Vec::new(),
                killed: m.killed.clone(),
                actions: m.actions.clone(),
                pending: m.pending.clone(),
                summarised_changes: m.summarised_changes,
                summarised: m.summarised.clone(),
                error: m.error.clone(),
                not_run: m.not_run.clone(),
            })
            .collect();
        RunReport {
            id: self.id.clone(),
            node: self.node.clone(),
            noop: self.noop,
            root: self.root.clone(),
            started: self.started.clone(),
            ended: self.ended.clone(),
            duration: self.duration,
            server: self.server.clone(),
            snapshot: self.snapshot.clone(),
            root_hash: self.root_hash.clone(),
            plan: self.plan.clone(),
            only: self.only.clone(),
            stages: self.stages.clone(),
            status: self.status.clone(),
            exit_code: self.exit_code,
            modules,
            actions: self.actions.clone(),
            error: self.error.clone(),
            pending_failed_actions: self.pending_failed_actions,
            forgot: self.forgot.clone(),
            by: self.by.clone(),
            merged: self.merged,
            candidate: self.candidate.clone(),
        }
    }

    /// The changes the run applied to the root, or in noop found: those
    /// of a failed dance that merged nothing are 0 (it applied none); of
    /// one that merged with `on_failure = "independent"`, those of the
    /// modules that did not fail (a module whose requirement failed was
    /// not run and changed nothing).
    pub fn merged_changes(&self) -> usize {
        match (self.status == "failed", self.merged) {
            (false, _) => self.change_count(),
            (true, false) => 0,
            (true, true) => self
                .modules
                .iter()
                .filter(|m| m.error.is_none())
                .map(ModuleReport::change_count)
                .sum(),
        }
    }

    /// The first text field a fleet view or log prints (`(name, value)`)
    /// that holds a control character — an escape sequence or a carriage
    /// return that would forge other lines on the admin's terminal. The
    /// server refuses to store such an uploaded report.
    pub fn control_field(&self) -> Option<(&'static str, &str)> {
        let fields: [(&'static str, &str); 8] = [
            ("id", &self.id),
            ("node", &self.node),
            ("started", &self.started),
            ("ended", &self.ended),
            ("status", &self.status),
            ("server", &self.server),
            ("snapshot", &self.snapshot),
            ("root_hash", &self.root_hash),
        ];
        let candidate = self.candidate.iter().map(|c| ("candidate", c.as_str()));
        let lists = self
            .plan
            .iter()
            .map(|m| ("plan", m.as_str()))
            .chain(self.only.iter().map(|m| ("only", m.as_str())))
            .chain(
                self.modules
                    .iter()
                    .map(|m| ("modules.name", m.name.as_str())),
            )
            .chain(self.by.iter().map(|b| ("by", b.as_str())))
            .chain(candidate);
        fields
            .into_iter()
            .chain(lists)
            .find(|(_, v)| v.chars().any(char::is_control))
    }

    /// The changes kept in full (not those a capped module summarised).
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.modules.iter().flat_map(|m| m.changes.iter())
    }

    /// Every change of the run, kept in full or summarised.
    pub fn change_count(&self) -> usize {
        self.modules.iter().map(ModuleReport::change_count).sum()
    }
}

fn reports_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("reports")
}

/// Writes `reports/RUN.json`, replaces `reports/last.json` atomically and
/// keeps the newest `keep` run reports.
pub fn save_bounded(
    state_dir: &Path,
    report: &RunReport,
    keep: usize,
    keep_bytes: u64,
) -> Result<()> {
    save(state_dir, report)?;
    prune_runs(&reports_dir(state_dir), keep);
    prune_bytes(&reports_dir(state_dir), keep_bytes);
    Ok(())
}

/// Removes the oldest `RUN.json` files until the rest add up to at most
/// `keep_bytes` (the newest is always kept).
fn prune_bytes(dir: &Path, keep_bytes: u64) {
    let runs = run_files(dir);
    let sizes: Vec<u64> = runs
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    let mut total: u64 = sizes.iter().sum();
    for (p, size) in runs.iter().zip(&sizes).take(runs.len().saturating_sub(1)) {
        if total <= keep_bytes {
            break;
        }
        if fs::remove_file(p).is_ok() {
            total -= size;
        }
    }
}

/// Keeps the newest `keep` `RUN.json` files of a reports directory (run
/// ids sort by time; `last.json` is never removed).
pub fn prune_runs(dir: &Path, keep: usize) {
    let runs = run_files(dir);
    let excess = runs.len().saturating_sub(keep.max(1));
    for old in &runs[..excess] {
        let _ = fs::remove_file(old);
    }
}

/// The `RUN.json` files of a reports directory, oldest first (run ids
/// sort by time); not `last.json`, nor a server's `candidate.json`.
fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(e) => e
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && p.file_name()
                        .is_some_and(|n| n != "last.json" && n != crate::preview::CANDIDATE_REPORT)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    runs.sort();
    runs
}

/// Every saved run report, oldest first.
pub fn history(state_dir: &Path) -> Result<Vec<RunReport>> {
    run_files(&reports_dir(state_dir))
        .iter()
        .map(|p| {
            let bytes = fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", p.display()))
        })
        .collect()
}

/// Writes `report` as `reports/RUN.json` and `reports/last.json`.
pub fn save(state_dir: &Path, report: &RunReport) -> Result<()> {
    let dir = reports_dir(state_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Reports are for root: 0700 directory, 0600 files (NamedTempFile's mode).
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    // Written once: `last.json` is a hard link of `RUN.json`.
    // Every string through the process's mask (DESIGN §6).
    let bytes = crate::masks::report_json(report, true)?;
    let run = dir.join(format!("{}.json", report.id));
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    let link = dir.join(format!(".last.{}.tmp", report.id));
    let _ = fs::remove_file(&link);
    fs::hard_link(tmp.path(), &link).with_context(|| format!("cannot write {}", link.display()))?;
    tmp.persist(&run)
        .with_context(|| format!("cannot write {}", run.display()))?;
    fs::rename(&link, dir.join("last.json"))
        .with_context(|| format!("cannot write {}", dir.join("last.json").display()))?;
    Ok(())
}

/// Writes `report` as `reports/RUN.json` only (an entry of the history
/// that is not a dance: `last.json` stays the last dance's), keeping the
/// newest `keep`.
pub fn save_entry(state_dir: &Path, report: &RunReport, keep: usize) -> Result<()> {
    let dir = reports_dir(state_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let run = dir.join(format!("{}.json", report.id));
    crate::fsutil::write_atomic(&run, &crate::masks::report_json(report, true)?, 0o600)
        .with_context(|| format!("cannot write {}", run.display()))?;
    prune_runs(&dir, keep);
    Ok(())
}

/// Reads the report of run `id`, or the last one.
pub fn load(state_dir: &Path, id: Option<&str>) -> Result<RunReport> {
    let name = match id {
        Some(id) => {
            crate::names::Name::parse(id, "--run")?;
            format!("{id}.json")
        }
        None => "last.json".into(),
    };
    let path = reports_dir(state_dir).join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "no report at {}: no dance has run with this state dir yet",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_changes_count_only_what_was_merged() {
        let module = |name: &str, changes: usize, error: Option<&str>| ModuleReport {
            name: name.into(),
            summarised_changes: changes,
            error: error.map(str::to_string),
            ..ModuleReport::default()
        };
        let mut r = RunReport {
            status: "failed".into(),
            modules: vec![module("a", 3, Some("boom")), module("b", 2, None)],
            ..RunReport::default()
        };
        assert_eq!(r.merged_changes(), 0, "a failed dance that merged nothing");
        r.merged = true;
        assert_eq!(r.merged_changes(), 2, "on_failure = independent: b's only");
        r.status = "changed".into();
        r.modules[0].error = None;
        assert_eq!(r.merged_changes(), 5);
    }

    fn created(path: &str, diff: usize) -> Change {
        Change {
            path: path.into(),
            kind: ChangeKind::Created,
            old: None,
            new: Some(Meta {
                kind: "regular file".into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                owner: "root:root".into(),
                md5: None,
                target: None,
                selinux: None,
                caps: None,
                size: 10,
            }),
            diff: Some("x".repeat(diff)),
            inside: None,
        }
    }

    #[test]
    fn keep_capped_keeps_etc_first_and_counts_every_other_change() {
        let mut changes: Vec<Change> = (0..50)
            .map(|i| created(&format!("/opt/a/f{i:02}"), 1))
            .collect();
        changes.extend((0..30).map(|i| created(&format!("/usr/b/f{i:02}"), 1)));
        changes.push(created("/etc/x", 1));
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        let mut m = ModuleReport::default();
        m.keep_capped(
            changes,
            Cap {
                changes: 10,
                bytes: u64::MAX,
            },
        );
        assert_eq!(m.changes.len(), 10);
        assert_eq!(m.changes[0].path, "/etc/x");
        assert_eq!(m.change_count(), 81);
        let counted: u64 = m.summarised.iter().map(|s| s.changes).sum();
        assert_eq!(counted as usize, m.summarised_changes);
        assert_eq!(m.summarised.len(), 2, "{:?}", m.summarised);
        assert_eq!(m.summarised[0].path, "/opt/a/*");
        assert_eq!(m.summarised[0].changes, 41);
    }

    #[test]
    fn keep_capped_stops_at_report_max_bytes() {
        let changes: Vec<Change> = (0..10)
            .map(|i| created(&format!("/opt/f{i}"), 1000))
            .collect();
        let mut m = ModuleReport::default();
        m.keep_capped(
            changes,
            Cap {
                changes: usize::MAX,
                bytes: 3500,
            },
        );
        assert_eq!(m.changes.len(), 2);
        assert_eq!(m.summarised_changes, 8);
        assert_eq!(
            m.summarised[0].line(),
            "/opt/* : Created 8 file(s), 0 dir(s), 80 B"
        );
    }

    #[test]
    fn keep_capped_under_the_bound_keeps_everything() {
        let changes: Vec<Change> = (0..5).map(|i| created(&format!("/opt/f{i}"), 1)).collect();
        let mut m = ModuleReport::default();
        m.keep_capped(
            changes,
            Cap {
                changes: 5,
                bytes: u64::MAX,
            },
        );
        assert_eq!((m.changes.len(), m.summarised_changes), (5, 0));
        assert!(m.summarised.is_empty());
    }
}
