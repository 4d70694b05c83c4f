//! Stage 1, config: the effective settings of one run and where each came
//! from (DESIGN §3.1).
//!
//! Precedence, highest first: command-line flags, environment (`NOOP`,
//! `DISCO_SERVER`, `DISCO_NODE`), drop-ins `disco.d/*.toml` beside the main
//! file (in name order, later wins), the main file (`/etc/disco/disco.toml`),
//! built-in defaults. A missing default config file is fine; a malformed
//! file, an unknown key or a bad value is an error naming the file and line.
//! This module reads no server and touches nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::names::Name;

/// The default main config file.
pub const DEFAULT_CONFIG: &str = "/etc/disco/disco.toml";
/// The default state directory (cache, runs, reports).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/disco";

/// `report_max_changes`: far more than anyone reads, far fewer than a
/// package install's tree (which the roll-up says better anyway).
pub const DEFAULT_REPORT_MAX_CHANGES: usize = 10_000;

/// `report_max_bytes`: 16 MiB of one module's changes; with
/// `report_history_bytes` (100 MiB) at least six such runs stay.
pub const DEFAULT_REPORT_MAX_BYTES: u64 = 16 << 20;

/// `scratch_max` when not set: at most 2 GiB (and at most
/// [`DEFAULT_SCRATCH_SHARE`] of the state dir's filesystem).
pub const DEFAULT_SCRATCH_MAX: u64 = 2 << 30;

/// `scratch_max` when not set is at most this percentage of the state
/// dir's filesystem.
pub const DEFAULT_SCRATCH_SHARE: u64 = 10;

/// `scratch_reserve` when not set: 10% of the state dir's filesystem.
pub const DEFAULT_SCRATCH_RESERVE: Reserve = Reserve::Percent(10);

/// A size given as bytes or as a share of a filesystem (`scratch_reserve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Bytes(u64),
    /// Percent (0–100) of the filesystem's size.
    Percent(u64),
}

impl Reserve {
    /// Parses `"10%"` (a share) or `"1073741824"` (bytes).
    pub fn parse(text: &str) -> Option<Reserve> {
        let t = text.trim();
        match t.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|p| *p <= 100)
                .map(Reserve::Percent),
            None => t.parse::<u64>().ok().map(Reserve::Bytes),
        }
    }

    /// Bytes of a filesystem of `total` bytes.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Reserve::Bytes(b) => b,
            Reserve::Percent(p) => (total as u128 * p as u128 / 100) as u64,
        }
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Bytes(b) => write!(f, "{}", crate::fsutil::human_bytes(*b)),
            Reserve::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a size-or-share setting is written: an integer (bytes) or a
/// string (`"10%"`, or bytes).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ReserveValue {
    Bytes(u64),
    Text(String),
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    /// The machine's hostname (default of `node`).
    Hostname,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Hostname => f.write_str("default (hostname)"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

/// A value and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Setting<T> {
    fn new(value: T, source: Source) -> Self {
        Setting { value, source }
    }
    fn set(&mut self, value: T, source: Source) {
        *self = Setting { value, source };
    }
    /// Sets it when a layer gave a value; else keeps what it was.
    fn set_some(&mut self, value: Option<T>, source: &Source) {
        if let Some(v) = value {
            self.set(v, source.clone());
        }
    }
}

/// The effective configuration of one run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server URI; this release understands a local directory path.
    pub server: Setting<Option<String>>,
    pub node: Setting<Name>,
    /// Target root the dance converges (`/` on a real node).
    pub root: Setting<PathBuf>,
    pub state_dir: Setting<PathBuf>,
    pub noop: Setting<bool>,
    /// How many merged dances keep a backup for `disco undo`.
    pub keep_backups: Setting<usize>,
    /// Servers tried in order when `server` is not set.
    pub servers: Setting<Vec<String>>,
    /// ssh: identity file, known_hosts file, extra `-o` options, connect timeout (s).
    pub ssh_identity: Setting<Option<PathBuf>>,
    pub ssh_known_hosts: Setting<Option<PathBuf>>,
    pub ssh_options: Setting<Vec<String>>,
    pub connect_timeout: Setting<u64>,
    /// Seconds of silence from the server before a fetch gives up.
    pub io_timeout: Setting<u64>,
    /// Seconds a whole fetch may take.
    pub fetch_timeout: Setting<u64>,
    /// Largest file a node accepts from the server, in bytes.
    pub max_file_size: Setting<u64>,
    /// Largest size of the scratch filesystem (bytes); `None`:
    /// [`DEFAULT_SCRATCH_MAX`] or [`DEFAULT_SCRATCH_SHARE`]% of the state
    /// dir's filesystem, whichever is less.
    pub scratch_max: Setting<Option<u64>>,
    /// What the scratch leaves free on the state dir's filesystem, checked
    /// at every run (`sandbox::scratch::Sizing`).
    pub scratch_reserve: Setting<Reserve>,
    /// `none`: a noop sandbox has only loopback; `host`: a network
    /// namespace of its own routed outward by pasta (a noop package
    /// install can download; the host's loopback, abstract sockets and
    /// traffic stay out of reach: `sandbox::net`).
    pub noop_network: Setting<String>,
    /// A module's changes are printed in full up to this many paths, then
    /// rolled up per directory.
    pub diff_limit: Setting<usize>,
    /// Globs of paths whose changes are merged but not printed.
    pub report_ignore: Setting<Vec<String>>,
    /// Changes of one module a saved report keeps in full; the rest are
    /// counted per directory.
    pub report_max_changes: Setting<usize>,
    /// Bytes (paths, diff text, what deleted directories held) of one
    /// module's changes a saved report keeps in full.
    pub report_max_bytes: Setting<u64>,
    /// Processes (and threads) one module's sandbox may have at once
    /// (`pids.max` of its cgroup); 0: no limit.
    pub max_processes: Setting<u64>,
    /// Bytes of memory one module's sandbox may use (`memory.max` of its
    /// cgroup, tmpfs pages included, no swap); 0: no limit.
    pub max_memory: Setting<u64>,
    /// How many modules run at once (modules that do not require each
    /// other); 1: one at a time, in the plan's order.
    pub jobs: Setting<usize>,
    /// What a live dance with a failed module merges: `nothing`, or
    /// `independent` (the layers of every module whose whole requires
    /// closure succeeded).
    pub on_failure: Setting<String>,
    /// Seconds a template, script or handler may run.
    pub step_timeout: Setting<u64>,
    /// Seconds a whole dance may run.
    pub dance_timeout: Setting<u64>,
    /// How many run reports `STATE/reports/` keeps.
    pub report_history: Setting<usize>,
    /// How many bytes of run reports `STATE/reports/` keeps.
    pub report_history_bytes: Setting<u64>,
    /// Where to write the Prometheus textfile after every dance.
    pub prometheus_textfile: Setting<Option<PathBuf>>,
    /// Send each dance's report to the server (ssh:// only).
    pub report_upload: Setting<bool>,
    /// After each dance, noop the candidate snapshot the server offers
    /// (if any) on the same root and upload that report (a preview).
    pub preview: Setting<bool>,
}

/// What the command line said, before layering.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub node: Option<String>,
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub noop: bool,
}

/// One config file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    node: Option<String>,
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    noop: Option<bool>,
    keep_backups: Option<usize>,
    servers: Option<Vec<String>>,
    ssh_identity: Option<PathBuf>,
    ssh_known_hosts: Option<PathBuf>,
    ssh_options: Option<Vec<String>>,
    connect_timeout: Option<u64>,
    io_timeout: Option<u64>,
    fetch_timeout: Option<u64>,
    max_file_size: Option<u64>,
    noop_network: Option<String>,
    scratch_max: Option<u64>,
    scratch_reserve: Option<ReserveValue>,
    diff_limit: Option<usize>,
    report_ignore: Option<Vec<String>>,
    report_max_changes: Option<usize>,
    report_max_bytes: Option<u64>,
    max_processes: Option<u64>,
    max_memory: Option<u64>,
    jobs: Option<usize>,
    on_failure: Option<String>,
    step_timeout: Option<u64>,
    dance_timeout: Option<u64>,
    report_history: Option<usize>,
    report_history_bytes: Option<u64>,
    prometheus_textfile: Option<PathBuf>,
    report_upload: Option<bool>,
    preview: Option<bool>,
}

/// Reads one config file's TOML; an error says the file, the line and the
/// setting (a type error of toml says only what it expected).
fn parse_file(path: &Path, text: &str) -> Result<FileConfig> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1);
        let key = e
            .span()
            .and_then(|_| text.lines().nth(line - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !e.message().contains(k))
            .map(|k| format!("{k}: "))
            .unwrap_or_default();
        anyhow!("{}:{line}: {key}{}", path.display(), e.message().trim())
    })
}

/// `value` of `key` when it is one of `allowed`; else an error listing them.
fn one_of(path: &Path, key: &str, value: String, allowed: &[&str]) -> Result<String> {
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    let expected: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    bail!(
        "{}: {key} = {value:?}: expected {}",
        path.display(),
        expected.join(" or ")
    )
}

/// `scratch_reserve` as given: bytes, or a share of the filesystem.
fn scratch_reserve(path: &Path, v: &ReserveValue) -> Result<Reserve> {
    let parsed = match v {
        ReserveValue::Bytes(b) => Some(Reserve::Bytes(*b)),
        ReserveValue::Text(t) => Reserve::parse(t),
    };
    parsed.ok_or_else(|| {
        let shown = match v {
            ReserveValue::Bytes(b) => b.to_string(),
            ReserveValue::Text(t) => format!("{t:?}"),
        };
        anyhow!(
            "{}: scratch_reserve = {shown}: expected bytes (1073741824) or a share of the filesystem (\"10%\")",
            path.display()
        )
    })
}

/// `max_memory`: 0 (no limit) or at least 16 MiB.
fn max_memory(path: &Path, v: u64) -> Result<u64> {
    if v != 0 && v < 16 << 20 {
        bail!(
            "{}: max_memory = {v}: give bytes, at least 16 MiB ({}), or 0 for no limit",
            path.display(),
            16u64 << 20
        );
    }
    Ok(v)
}

/// `jobs`: at least 1.
fn jobs(path: &Path, v: usize) -> Result<usize> {
    if v == 0 {
        bail!(
            "{}: jobs = 0: give how many modules may run at once, at least 1",
            path.display()
        );
    }
    Ok(v)
}

/// The default of `jobs`: the CPUs this process may run on.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Layers defaults, files, `env` and `flags`. `env` is passed in (not
    /// read here) so the layering is testable.
    ///
    /// Long because it is the precedence table, lowest first, in one place.
    pub fn load(flags: &Flags, env: &BTreeMap<String, String>) -> Result<Config> {
        let mut c = Config {
            server: Setting::new(None, Source::Default),
            node: Setting::new(hostname_node()?, Source::Hostname),
            root: Setting::new(PathBuf::from("/"), Source::Default),
            state_dir: Setting::new(PathBuf::from(DEFAULT_STATE_DIR), Source::Default),
            noop: Setting::new(false, Source::Default),
            keep_backups: Setting::new(5, Source::Default),
            servers: Setting::new(Vec::new(), Source::Default),
            ssh_identity: Setting::new(None, Source::Default),
            ssh_known_hosts: Setting::new(None, Source::Default),
            ssh_options: Setting::new(Vec::new(), Source::Default),
            connect_timeout: Setting::new(10, Source::Default),
            io_timeout: Setting::new(60, Source::Default),
            fetch_timeout: Setting::new(3600, Source::Default),
            max_file_size: Setting::new(1 << 30, Source::Default),
            noop_network: Setting::new("none".into(), Source::Default),
            scratch_max: Setting::new(None, Source::Default),
            scratch_reserve: Setting::new(DEFAULT_SCRATCH_RESERVE, Source::Default),
            diff_limit: Setting::new(50, Source::Default),
            report_ignore: Setting::new(
                crate::output::DEFAULT_IGNORE
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                Source::Default,
            ),
            report_max_changes: Setting::new(DEFAULT_REPORT_MAX_CHANGES, Source::Default),
            report_max_bytes: Setting::new(DEFAULT_REPORT_MAX_BYTES, Source::Default),
            max_processes: Setting::new(
                crate::sandbox::cgroup::DEFAULT_MAX_PROCESSES,
                Source::Default,
            ),
            max_memory: Setting::new(
                crate::sandbox::cgroup::default_max_memory(),
                Source::Default,
            ),
            jobs: Setting::new(default_jobs(), Source::Default),
            on_failure: Setting::new("nothing".into(), Source::Default),
            step_timeout: Setting::new(1800, Source::Default),
            dance_timeout: Setting::new(7200, Source::Default),
            report_history: Setting::new(50, Source::Default),
            report_history_bytes: Setting::new(100 << 20, Source::Default),
            prometheus_textfile: Setting::new(None, Source::Default),
            report_upload: Setting::new(false, Source::Default),
            preview: Setting::new(false, Source::Default),
        };

        let (main, explicit) = match &flags.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match fs::read_to_string(&main) {
            Ok(text) => c.apply_file(&main, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read config {}", main.display()))
            }
        }
        for dropin in dropins(&main)? {
            let text = fs::read_to_string(&dropin)
                .with_context(|| format!("cannot read config {}", dropin.display()))?;
            c.apply_file(&dropin, &text)?;
        }

        if let Some(v) = env.get("DISCO_SERVER").filter(|v| !v.is_empty()) {
            c.server.set(Some(v.clone()), Source::Env("DISCO_SERVER"));
        }
        if let Some(v) = env.get("DISCO_NODE").filter(|v| !v.is_empty()) {
            c.node
                .set(Name::parse(v, "env DISCO_NODE")?, Source::Env("DISCO_NODE"));
        }
        // An empty NOOP is an unset one: it never turns the config's `noop = true` off.
        if let Some(v) = env.get("NOOP").filter(|v| !v.trim().is_empty()) {
            c.noop.set(parse_noop(v)?, Source::Env("NOOP"));
        }

        if let Some(v) = &flags.server {
            c.server.set(Some(v.clone()), Source::Flag("--server"));
        }
        if let Some(v) = &flags.node {
            c.node
                .set(Name::parse(v, "--node")?, Source::Flag("--node"));
        }
        if let Some(v) = &flags.root {
            c.root.set(v.clone(), Source::Flag("--root"));
        }
        if let Some(v) = &flags.state_dir {
            c.state_dir.set(v.clone(), Source::Flag("--state-dir"));
        }
        if flags.noop {
            c.noop.set(true, Source::Flag("--noop"));
        }
        // Relative paths mean the directory disco was started in: the
        // sandbox changes directory before it uses them.
        for p in [&mut c.state_dir.value, &mut c.root.value] {
            if p.is_relative() {
                *p = std::path::absolute(&*p)
                    .with_context(|| format!("cannot make {} absolute", p.display()))?;
            }
        }
        // A local server given as a relative path, likewise.
        let servers = c.server.value.iter_mut().chain(c.servers.value.iter_mut());
        for s in servers {
            if !s.contains("://") && Path::new(s.as_str()).is_relative() {
                *s = std::path::absolute(s.as_str())
                    .with_context(|| format!("cannot make {s} absolute"))?
                    .display()
                    .to_string();
            }
        }
        Ok(c)
    }

    /// Layers one config file over what is set: each key it gives, checked.
    fn apply_file(&mut self, path: &Path, text: &str) -> Result<()> {
        let file = parse_file(path, text)?;
        let src = &Source::File(path.to_path_buf());
        let node = file
            .node
            .map(|v| Name::parse(&v, format!("{}: node", path.display())));
        self.server.set_some(file.server.map(Some), src);
        self.node.set_some(node.transpose()?, src);
        self.root.set_some(file.root, src);
        self.state_dir.set_some(file.state_dir, src);
        self.noop.set_some(file.noop, src);
        self.keep_backups.set_some(file.keep_backups, src);
        self.servers.set_some(file.servers, src);
        self.ssh_identity.set_some(file.ssh_identity.map(Some), src);
        self.ssh_known_hosts
            .set_some(file.ssh_known_hosts.map(Some), src);
        self.ssh_options.set_some(file.ssh_options, src);
        self.connect_timeout.set_some(file.connect_timeout, src);
        self.io_timeout
            .set_some(file.io_timeout.map(|v| v.max(1)), src);
        self.fetch_timeout
            .set_some(file.fetch_timeout.map(|v| v.max(1)), src);
        self.max_file_size.set_some(file.max_file_size, src);
        let network = file
            .noop_network
            .map(|v| one_of(path, "noop_network", v, &["none", "host"]));
        self.noop_network.set_some(network.transpose()?, src);
        self.scratch_max.set_some(file.scratch_max.map(Some), src);
        let reserve = file.scratch_reserve.map(|v| scratch_reserve(path, &v));
        self.scratch_reserve.set_some(reserve.transpose()?, src);
        self.diff_limit.set_some(file.diff_limit, src);
        self.report_ignore.set_some(file.report_ignore, src);
        self.report_max_changes
            .set_some(file.report_max_changes, src);
        self.report_max_bytes.set_some(file.report_max_bytes, src);
        self.max_processes.set_some(file.max_processes, src);
        let memory = file.max_memory.map(|v| max_memory(path, v));
        self.max_memory.set_some(memory.transpose()?, src);
        self.jobs
            .set_some(file.jobs.map(|v| jobs(path, v)).transpose()?, src);
        let on_failure = file
            .on_failure
            .map(|v| one_of(path, "on_failure", v, &["nothing", "independent"]));
        self.on_failure.set_some(on_failure.transpose()?, src);
        self.step_timeout
            .set_some(file.step_timeout.map(|v| v.max(1)), src);
        self.dance_timeout
            .set_some(file.dance_timeout.map(|v| v.max(1)), src);
        self.report_history.set_some(file.report_history, src);
        self.report_history_bytes
            .set_some(file.report_history_bytes, src);
        self.prometheus_textfile
            .set_some(file.prometheus_textfile.map(Some), src);
        self.report_upload.set_some(file.report_upload, src);
        self.preview.set_some(file.preview, src);
        Ok(())
    }

    /// The servers to try, in order: `server` if set, else `servers`; an
    /// error telling the ways to give one when there is none.
    pub fn require_servers(&self) -> Result<Vec<String>> {
        match &self.server.value {
            Some(s) => Ok(vec![s.clone()]),
            None if !self.servers.value.is_empty() => Ok(self.servers.value.clone()),
            None => Err(anyhow!(
                "no server configured: run `disco init --server URI`, or give --server, set DISCO_SERVER, or put `server = \"…\"` in {DEFAULT_CONFIG}"
            )),
        }
    }

    /// How changes are printed (`diff_limit`, `report_ignore`).
    pub fn roll_up(&self, quiet: bool, to_stdout: bool) -> crate::output::RollUp {
        crate::output::RollUp {
            diff_limit: self.diff_limit.value,
            etc_limit: 200,
            quiet,
            ignore: self.report_ignore.value.clone(),
            to_stdout,
        }
    }

    /// How much of a module's changes a saved report keeps in full.
    pub fn report_cap(&self) -> crate::report::Cap {
        crate::report::Cap {
            changes: self.report_max_changes.value,
            bytes: self.report_max_bytes.value,
        }
    }

    /// The cgroup limits of every sandbox (`max_processes`, `max_memory`).
    pub fn limits(&self) -> crate::sandbox::cgroup::Limits {
        crate::sandbox::cgroup::Limits {
            processes: self.max_processes.value,
            memory: self.max_memory.value,
        }
    }

    /// The scratch's settings (`scratch_max`, `scratch_reserve`).
    pub fn scratch_limits(&self) -> crate::sandbox::scratch::Limits {
        crate::sandbox::scratch::Limits {
            max: self.scratch_max.value,
            reserve: self.scratch_reserve.value,
        }
    }

    /// The node's own key, which opens its secrets: `ssh_identity` (the
    /// key it fetches with), else `/etc/disco/id_ed25519` (`disco init`'s).
    pub fn node_key(&self) -> PathBuf {
        self.ssh_identity
            .value
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/disco/id_ed25519"))
    }

    /// The ssh settings.
    pub fn ssh(&self) -> crate::transport::ssh::SshOptions {
        crate::transport::ssh::SshOptions {
            identity: self.ssh_identity.value.clone(),
            known_hosts: self.ssh_known_hosts.value.clone(),
            options: self.ssh_options.value.clone(),
            connect_timeout: self.connect_timeout.value,
            io_timeout: self.io_timeout.value,
            fetch_timeout: self.fetch_timeout.value,
            max_file_size: self.max_file_size.value,
        }
    }

    /// The effective settings as `key = value  # source` lines (valid TOML).
    ///
    /// Long because it is a table: one entry per setting, in the order `disco config` prints them.
    pub fn lines(&self) -> Vec<String> {
        fn line(key: &str, value: String, source: &Source) -> String {
            format!("{key} = {value}  # {source}")
        }
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let p = |v: &Path| s(&v.to_string_lossy());
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ")
            )
        };
        vec![
            match &self.server.value {
                Some(v) => line("server", s(v), &self.server.source),
                None => format!("# server is not set  # {}", self.server.source),
            },
            line("node", s(self.node.value.as_str()), &self.node.source),
            line("root", p(&self.root.value), &self.root.source),
            line(
                "state_dir",
                p(&self.state_dir.value),
                &self.state_dir.source,
            ),
            line("noop", self.noop.value.to_string(), &self.noop.source),
            line(
                "keep_backups",
                self.keep_backups.value.to_string(),
                &self.keep_backups.source,
            ),
            line("servers", list(&self.servers.value), &self.servers.source),
            match &self.ssh_identity.value {
                Some(v) => line("ssh_identity", p(v), &self.ssh_identity.source),
                None => "# ssh_identity is not set (ssh's default)".into(),
            },
            match &self.ssh_known_hosts.value {
                Some(v) => line("ssh_known_hosts", p(v), &self.ssh_known_hosts.source),
                None => "# ssh_known_hosts is not set (ssh's default)".into(),
            },
            line(
                "ssh_options",
                list(&self.ssh_options.value),
                &self.ssh_options.source,
            ),
            line(
                "connect_timeout",
                self.connect_timeout.value.to_string(),
                &self.connect_timeout.source,
            ),
            line(
                "io_timeout",
                self.io_timeout.value.to_string(),
                &self.io_timeout.source,
            ),
            line(
                "fetch_timeout",
                self.fetch_timeout.value.to_string(),
                &self.fetch_timeout.source,
            ),
            line(
                "max_file_size",
                self.max_file_size.value.to_string(),
                &self.max_file_size.source,
            ),
            line(
                "noop_network",
                s(&self.noop_network.value),
                &self.noop_network.source,
            ),
            match self.scratch_max.value {
                Some(v) => line("scratch_max", v.to_string(), &self.scratch_max.source),
                None => "# scratch_max is not set (2 GiB or 10% of the state dir's filesystem, whichever is less)".into(),
            },
            line(
                "scratch_reserve",
                match self.scratch_reserve.value {
                    Reserve::Bytes(b) => b.to_string(),
                    Reserve::Percent(p) => s(&format!("{p}%")),
                },
                &self.scratch_reserve.source,
            ),
            line(
                "diff_limit",
                self.diff_limit.value.to_string(),
                &self.diff_limit.source,
            ),
            line(
                "report_ignore",
                list(&self.report_ignore.value),
                &self.report_ignore.source,
            ),
            line(
                "report_max_changes",
                self.report_max_changes.value.to_string(),
                &self.report_max_changes.source,
            ),
            line(
                "report_max_bytes",
                self.report_max_bytes.value.to_string(),
                &self.report_max_bytes.source,
            ),
            line(
                "max_processes",
                self.max_processes.value.to_string(),
                &self.max_processes.source,
            ),
            line(
                "max_memory",
                self.max_memory.value.to_string(),
                &self.max_memory.source,
            ),
            line("jobs", self.jobs.value.to_string(), &self.jobs.source),
            line(
                "on_failure",
                s(&self.on_failure.value),
                &self.on_failure.source,
            ),
            line(
                "step_timeout",
                self.step_timeout.value.to_string(),
                &self.step_timeout.source,
            ),
            line(
                "dance_timeout",
                self.dance_timeout.value.to_string(),
                &self.dance_timeout.source,
            ),
            line(
                "report_history",
                self.report_history.value.to_string(),
                &self.report_history.source,
            ),
            line(
                "report_history_bytes",
                self.report_history_bytes.value.to_string(),
                &self.report_history_bytes.source,
            ),
            match &self.prometheus_textfile.value {
                Some(v) => line(
                    "prometheus_textfile",
                    p(v),
                    &self.prometheus_textfile.source,
                ),
                None => "# prometheus_textfile is not set".into(),
            },
            line(
                "report_upload",
                self.report_upload.value.to_string(),
                &self.report_upload.source,
            ),
            line(
                "preview",
                self.preview.value.to_string(),
                &self.preview.source,
            ),
        ]
    }
}

/// `*.toml` files in `disco.d/` beside `main`, in name order.
fn dropins(main: &Path) -> Result<Vec<PathBuf>> {
    let dir = main.parent().unwrap_or(Path::new("/")).join("disco.d");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `NOOP`: `true`/`1`/`yes` → noop; `false`/`0`/`no` → not (an empty
/// value is treated as unset by the caller).
pub fn parse_noop(v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => bail!("env NOOP={v:?}: expected true, 1, yes, false, 0, no or empty"),
    }
}

/// This machine's hostname as a node name (the default of `node`).
pub fn hostname_node() -> Result<Name> {
    let host = nix::unistd::gethostname().context("cannot read the hostname")?;
    Name::parse_os(&host, "the hostname (give --node NAME)").map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_flags_env_dropins_main_default() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("disco.toml");
        fs::write(
            &main,
            "server = \"/main\"\nnode = \"mainnode\"\nstate_dir = \"/s\"\n",
        )
        .unwrap();
        fs::create_dir(d.path().join("disco.d")).unwrap();
        fs::write(
            d.path().join("disco.d/10-a.toml"),
            "server = \"/a\"\nroot = \"/ra\"\n",
        )
        .unwrap();
        fs::write(d.path().join("disco.d/20-b.toml"), "root = \"/rb\"\n").unwrap();
        fs::write(d.path().join("disco.d/30-ignored.conf"), "garbage").unwrap();
        let flags = Flags {
            config: Some(main.clone()),
            ..Flags::default()
        };
        let c = Config::load(&flags, &env(&[("DISCO_NODE", "envnode")])).unwrap();
        assert_eq!(c.server.value.as_deref(), Some("/a"));
        assert_eq!(
            c.server.source,
            Source::File(d.path().join("disco.d/10-a.toml"))
        );
        assert_eq!(c.root.value, PathBuf::from("/rb"));
        assert_eq!(c.state_dir.source, Source::File(main.clone()));
        assert_eq!(c.node.value.as_str(), "envnode");
        assert!(!c.noop.value);

        let flags = Flags {
            config: Some(main),
            node: Some("flagnode".into()),
            noop: true,
            ..Flags::default()
        };
        let c = Config::load(
            &flags,
            &env(&[("DISCO_NODE", "envnode"), ("NOOP", "false")]),
        )
        .unwrap();
        assert_eq!(c.node.value.as_str(), "flagnode");
        assert_eq!(c.noop.source, Source::Flag("--noop"));
    }

    #[test]
    fn malformed_file_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("disco.toml");
        fs::write(&main, "server = \"/x\"\n\nnoop = maybe\n").unwrap();
        let flags = Flags {
            config: Some(main.clone()),
            ..Flags::default()
        };
        let err = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:3: ", main.display())), "{err}");
        fs::write(&main, "sever = \"/x\"\n").unwrap();
        let err = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:1: unknown field", main.display())),
            "{err}"
        );
    }

    #[test]
    fn an_empty_noop_is_unset_and_relative_paths_are_made_absolute() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("disco.toml");
        fs::write(&main, "noop = true\n").unwrap();
        let flags = Flags {
            config: Some(main),
            state_dir: Some("rel/state".into()),
            ..Flags::default()
        };
        for empty in ["", " "] {
            let c = Config::load(&flags, &env(&[("NOOP", empty)])).unwrap();
            assert!(c.noop.value, "NOOP={empty:?} must not turn noop off");
        }
        let c = Config::load(&flags, &env(&[("NOOP", "0")])).unwrap();
        assert!(!c.noop.value);
        assert_eq!(
            c.state_dir.value,
            std::env::current_dir().unwrap().join("rel/state")
        );
    }

    #[test]
    fn scratch_reserve_is_bytes_or_a_share() {
        assert_eq!(Reserve::parse("10%"), Some(Reserve::Percent(10)));
        assert_eq!(Reserve::parse(" 0 % "), Some(Reserve::Percent(0)));
        assert_eq!(Reserve::parse("1048576"), Some(Reserve::Bytes(1 << 20)));
        for bad in ["101%", "-1%", "ten%", "1G", ""] {
            assert_eq!(Reserve::parse(bad), None, "{bad}");
        }
        assert_eq!(Reserve::Percent(10).of(1000), 100);
        assert_eq!(Reserve::Bytes(7).of(1000), 7);
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("disco.toml");
        fs::write(&main, "").unwrap();
        let flags = Flags {
            config: Some(main.clone()),
            ..Flags::default()
        };
        let c = Config::load(&flags, &env(&[])).unwrap();
        assert_eq!(c.scratch_reserve.value, Reserve::Percent(10));
        for (text, want) in [
            ("scratch_reserve = \"25%\"\n", Reserve::Percent(25)),
            ("scratch_reserve = 4096\n", Reserve::Bytes(4096)),
            ("scratch_reserve = \"4096\"\n", Reserve::Bytes(4096)),
        ] {
            fs::write(&main, text).unwrap();
            let c = Config::load(&flags, &env(&[])).unwrap();
            assert_eq!(c.scratch_reserve.value, want, "{text}");
        }
        fs::write(&main, "scratch_reserve = \"lots\"\n").unwrap();
        let err = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("scratch_reserve = \"lots\": expected bytes"),
            "{err}"
        );
    }

    #[test]
    fn noop_values() {
        for t in ["true", "1", "yes", "TRUE"] {
            assert!(parse_noop(t).unwrap());
        }
        for f in ["false", "0", "", "no"] {
            assert!(!parse_noop(f).unwrap());
        }
        assert!(parse_noop("maybe").is_err());
    }
}
