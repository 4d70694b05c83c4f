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

/// One step of a module: `files`, `templates/PATH` or `scripts/NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Exit status (0 ok); `None` when the step did not get to run a child.
    pub exit: Option<i32>,
    /// Why the step failed, phrased for the error line.
    pub error: Option<String>,
    pub figures: Figures,
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
    /// Unified diff, `binary files differ`, or nothing (directories…).
    pub diff: Option<String>,
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
    pub plan: Vec<String>,
    pub modules: Vec<ModuleReport>,
    /// Deferred actions and handlers run after the merge.
    pub actions: Vec<Step>,
    /// The error that stopped the run, if any.
    pub error: Option<String>,
}

impl RunReport {
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.modules.iter().flat_map(|m| m.changes.iter())
    }
}

fn reports_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("reports")
}

/// Writes `reports/RUN.json` and replaces `reports/last.json` atomically.
pub fn save(state_dir: &Path, report: &RunReport) -> Result<()> {
    let dir = reports_dir(state_dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(report)?;
    for name in [format!("{}.json", report.id), "last.json".to_string()] {
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(&name))
            .with_context(|| format!("cannot write {}", dir.join(&name).display()))?;
    }
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
