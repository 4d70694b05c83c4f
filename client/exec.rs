//! Stage 6, render/exec: what runs *inside* a module's sandbox — copy
//! `files/`, render `templates/`, run `scripts/` (DESIGN §3.6).
//!
//! Owns the step semantics: targets are resolved inside the sandbox root
//! and refused when they would leave it or land on a sandbox-private mount;
//! module entries that are devices, FIFOs or sockets are refused; a file
//! or template whose result already equals the target is not rewritten (so
//! an unchanged run leaves an empty upper layer); a template's output is
//! written only when it exits 0; the first failing step ends the module.
//! Every child is reaped with `wait4` so its own resource use is recorded.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::{Figures, Step};
use crate::rootpath;
use crate::sandbox::mounts::SANDBOX_DIRS;

mod simple;

/// `PATH` for templates and scripts; disco itself comes first.
pub const SANDBOX_PATH: &str =
    "/run/disco/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where things are inside the sandbox, and the module's identity.
#[derive(Debug, Clone)]
pub struct Job {
    pub node: String,
    pub module: String,
    pub noop: bool,
    /// `none` (noop: loopback only) or `host`: what `DISCO_NOOP_NETWORK` says.
    pub network: &'static str,
    /// The module's fetched files, read-only.
    pub module_dir: PathBuf,
    /// The merged parameter tree, read-only.
    pub params_dir: PathBuf,
    /// disco's state dir relative to ROOT, when it lies inside ROOT: no
    /// file or template may write there.
    pub state_in_root: Option<PathBuf>,
    /// The module's `attributes`, checked before anything ran; owner
    /// names are resolved in the sandbox when the module starts.
    pub attributes: crate::attributes::Attributes,
    /// The most a template may print (`max_file_size`): its output is
    /// streamed to its target, never held whole.
    pub max_file_size: u64,
    /// Longest a template or script may run, and what sets it (for
    /// messages). The dance's own deadline is disco's main process's
    /// ([`crate::watchdog`]).
    pub step_timeout: (std::time::Duration, String),
}

/// The most `/etc/passwd` or `/etc/group` may hold for `attributes` to
/// read it.
pub const MAX_ACCOUNTS_FILE: u64 = 16 << 20;

/// Mode and owner a file, template or directory lands with.
type Wanted = crate::attributes::Resolved;

/// The attributes of this module, names resolved against the root as it
/// stands now (after the earlier modules), by line.
type ResolvedRules = std::collections::BTreeMap<usize, Wanted>;

/// The result of one module's steps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleRun {
    pub steps: Vec<Step>,
    /// `scripts/10-x exited 3`, when a step failed.
    pub failed: Option<String>,
    /// Files of `scripts/` that are not scripts (a README, an editor's
    /// backup), not run.
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// Suffixes of files that are not meant to run or to be installed:
/// editors' and package managers' leftovers, and notes.
const NOT_RUN: &[&str] = &[
    "~",
    ".bak",
    ".orig",
    ".rej",
    ".swp",
    ".tmp",
    ".disabled",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-dist",
    ".rpmnew",
    ".rpmsave",
    ".md",
    ".txt",
];

/// True when a file of `scripts/` or `handlers/` named `name` runs: its
/// name matches `[A-Za-z0-9][A-Za-z0-9._-]*`, is not a `README*` and does
/// not end in one of [`NOT_RUN`].
pub fn runs(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with("README")
        && !NOT_RUN.iter().any(|s| name.ends_with(s))
}

/// True when a file of `files/` or `templates/` named `name` is an
/// editor's or package manager's leftover, which is never installed.
pub fn is_leftover(name: &str) -> bool {
    const LEFTOVER: &[&str] = &[
        "~",
        ".bak",
        ".orig",
        ".rej",
        ".swp",
        ".dpkg-old",
        ".dpkg-new",
        ".dpkg-dist",
        ".rpmnew",
        ".rpmsave",
    ];
    LEFTOVER.iter().any(|s| name.ends_with(s)) || (name.starts_with(".#"))
}

/// Why an entry of a module's `files/` or `templates/` (`sub`) named
/// `name` is never installed — an editor's leftover, or a kind that
/// cannot be — or `None`. The dance refuses the module for it; `disco
/// lint` names it.
pub fn not_installable(sub: &str, name: &std::ffi::OsStr, meta: &fs::Metadata) -> Option<String> {
    let ft = meta.file_type();
    if ft.is_dir() {
        return None;
    }
    if ft.is_file() || (ft.is_symlink() && sub == "files") {
        return is_leftover(&name.to_string_lossy()).then(|| {
            "is an editor's or package manager's leftover; it would be installed on every node: remove it from the module".to_string()
        });
    }
    let allowed = if sub == "files" {
        "regular files, directories and symlinks"
    } else {
        "regular files and directories"
    };
    Some(format!(
        "is a {}; only {allowed} can be installed",
        crate::fsutil::kind_name(meta)
    ))
}

/// An entry of a module's `scripts/` or `handlers/`.
#[derive(Debug)]
pub enum Runnable {
    /// Runs (its name says so, and it is a regular file).
    Runs(PathBuf),
    /// Skipped: its name says it is not one ([`runs`]).
    Skipped(std::ffi::OsString),
    /// Its name says it runs, but it is not a regular file: why.
    Refused(std::ffi::OsString, String),
}

/// The entries of `module_dir/sub` (`scripts` or `handlers`), sorted by
/// name; none when there is no such directory (a symlinked one is an
/// error). What runs, what is skipped and what is refused is decided here
/// for the dance, the handlers and `disco lint` alike.
pub fn runnables(module_dir: &Path, sub: &str) -> Result<Vec<Runnable>> {
    let dir = module_dir.join(sub);
    if !crate::fsutil::real_dir(&dir, &format!("{sub}/"))? {
        return Ok(Vec::new());
    }
    let mut entries = fs::read_dir(&dir)
        .and_then(|e| e.collect::<io::Result<Vec<_>>>())
        .with_context(|| format!("{sub}/"))?;
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for e in entries {
        let name = e.file_name();
        if !runs(&name.to_string_lossy()) {
            out.push(Runnable::Skipped(name));
            continue;
        }
        let meta = fs::symlink_metadata(e.path())
            .with_context(|| format!("{sub}/{}", name.to_string_lossy()))?;
        if meta.is_file() {
            out.push(Runnable::Runs(e.path()));
        } else {
            let why = format!(
                "is a {}; {sub} must be regular files",
                crate::fsutil::kind_name(&meta)
            );
            out.push(Runnable::Refused(name, why));
        }
    }
    Ok(out)
}

impl Job {
    /// The environment of templates, scripts and handlers.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PATH", SANDBOX_PATH.into()),
            ("HOME", "/root".into()),
            ("LANG", "C.UTF-8".into()),
            ("NOOP", if self.noop { "true" } else { "false" }.into()),
            ("DISCO_NOOP_NETWORK", self.network.into()),
            ("DISCO_NODE", self.node.clone()),
            ("DISCO_MODULE", self.module.clone()),
            ("DISCO_MODULE_DIR", self.module_dir.display().to_string()),
            ("DISCO_PARAMS", self.params_dir.display().to_string()),
        ]
    }

    /// Runs files, templates, scripts; stops at the first failure.
    pub fn run(&self) -> ModuleRun {
        let mut run = ModuleRun::default();
        let shown = format!("modules/{}/attributes", self.module);
        let rules = match self.resolve_attributes(&shown) {
            Ok(r) => r,
            Err(e) => {
                run.failed = Some(format!("{e:#}"));
                return run;
            }
        };
        let meter = crate::report::Meter::start();
        let files = self.install_tree("files", &rules, &mut |src, rel, target, meta| {
            let exec = meta.mode() & 0o111 != 0;
            let want = self.wanted(&rules, rel, if exec { 0o755 } else { 0o644 });
            self.copy_file(src, target, meta, want)
        });
        let figures = meter.figures();
        let failed = files.err().map(|e| format!("{e:#}"));
        run.steps.push(Step {
            name: "files".into(),
            exit: None,
            error: failed.clone(),
            figures,
            sent: None,
            received: None,
        });
        if let Some(e) = failed {
            run.failed = Some(e);
            return run;
        }

        let mut templates = Vec::new();
        let walked = self.install_tree("templates", &rules, &mut |src, rel, _, _| {
            templates.push((src.to_path_buf(), rel.to_path_buf()));
            Ok(())
        });
        if let Err(e) = walked {
            run.failed = Some(format!("{e:#}"));
            return run;
        }
        let jobs: Vec<_> = templates
            .into_iter()
            .map(|(src, rel)| {
                let want = self.wanted(&rules, &rel, 0o644);
                (src, rel, want)
            })
            .collect();
        let rendered = self.render_all(&jobs);
        let failed = rendered.last().and_then(|s| s.error.clone());
        run.steps.extend(rendered);
        if failed.is_some() {
            run.failed = failed;
            return run;
        }

        match self.scripts() {
            Ok((scripts, skipped)) => {
                run.skipped = skipped;
                for script in scripts {
                    let step = self.script(&script);
                    let failed = step.error.clone();
                    run.steps.push(step);
                    if failed.is_some() {
                        run.failed = failed;
                        return run;
                    }
                }
            }
            Err(e) => run.failed = Some(format!("{e:#}")),
        }
        run
    }

    /// This module's `attributes` with owner and group names resolved
    /// against the root as it stands now. `/etc/passwd` and `/etc/group`
    /// are untrusted (an earlier module may have made either a FIFO, a
    /// link to `/dev/zero`, a sparse giant): read only when a line names
    /// an owner or group, inside the sandbox's root, never blocking, a
    /// regular file of at most [`MAX_ACCOUNTS_FILE`]; anything else fails
    /// the module with one line naming the file.
    fn resolve_attributes(&self, shown: &str) -> Result<ResolvedRules> {
        let named = |n: &Option<String>| n.as_ref().is_some_and(|n| n.parse::<u32>().is_err());
        let needs = self
            .attributes
            .rules
            .iter()
            .any(|r| named(&r.owner) || named(&r.group));
        let read = |f: &str| -> Result<String> {
            if !needs {
                return Ok(String::new());
            }
            let bytes =
                crate::fsutil::read_in_root(Path::new("/"), Path::new(f), f, MAX_ACCOUNTS_FILE)
                    .with_context(|| shown.to_string())?;
            Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
        };
        let (passwd, group) = (read("/etc/passwd")?, read("/etc/group")?);
        self.attributes.resolve(shown, &passwd, &group)
    }

    /// Walks `module_dir/sub` (sorted), creating directories as it goes and
    /// calling `leaf` for every regular file or symlink with its path
    /// relative to `sub` and its target in the sandbox. Linear in entries:
    /// a directory's target is resolved once and its entries named
    /// through it; deeper than [`crate::fsutil::MAX_DEPTH`] is refused.
    fn install_tree(
        &self,
        sub: &str,
        rules: &ResolvedRules,
        leaf: &mut dyn FnMut(&Path, &Path, &Path, &fs::Metadata) -> Result<()>,
    ) -> Result<()> {
        let top = self.module_dir.join(sub);
        if crate::fsutil::real_dir(&top, &format!("{sub}/"))? {
            let at = (top.as_path(), sub, rules);
            self.install_dir(at, Path::new(""), Path::new("/"), 0, leaf)?;
        }
        Ok(())
    }

    /// Mode and owner for module path `rel`: its `attributes` line, else
    /// `default_mode` and root:root.
    fn wanted(&self, rules: &ResolvedRules, rel: &Path, default_mode: u32) -> Wanted {
        self.attributes
            .rule_for(&Path::new("/").join(rel))
            .and_then(|r| rules.get(&r.line).copied())
            .unwrap_or(Wanted {
                mode: default_mode,
                uid: 0,
                gid: 0,
            })
    }

    fn install_dir(
        &self,
        (top, sub, rules): (&Path, &str, &ResolvedRules),
        rel: &Path,
        target_dir: &Path,
        depth: usize,
        leaf: &mut dyn FnMut(&Path, &Path, &Path, &fs::Metadata) -> Result<()>,
    ) -> Result<()> {
        if depth >= crate::fsutil::MAX_DEPTH {
            bail!(
                "{sub}/{}: more than {} levels of directories",
                crate::fsutil::shown(rel),
                crate::fsutil::MAX_DEPTH
            );
        }
        let dir = top.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .and_then(|e| e.collect::<io::Result<Vec<_>>>())
            .with_context(|| format!("{sub}/{}", rel.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let shown = format!("{sub}/{}", r.display());
            let meta = fs::symlink_metadata(e.path()).with_context(|| shown.clone())?;
            let ft = meta.file_type();
            let target = target_dir.join(e.file_name());
            if let Some(why) = not_installable(sub, &e.file_name(), &meta) {
                bail!("{shown} {why}");
            }
            if ft.is_dir() {
                let want = self.wanted(rules, &r, 0o755);
                let t = self
                    .ensure_dir(&r, &target, want)
                    .with_context(|| shown.clone())?;
                self.install_dir((top, sub, rules), &r, &t, depth + 1, leaf)?;
            } else {
                // A file, or a symlink of files/ (not_installable said so).
                self.check_target(&target).with_context(|| shown.clone())?;
                leaf(&e.path(), &r, &target, &meta).with_context(|| shown.clone())?;
            }
        }
        Ok(())
    }

    /// Makes sure directory `/rel` exists (created with `mode`, root:root,
    /// when missing; an existing one is left as it is) and returns where it
    /// really is: `candidate` (its parent's real path joined with its
    /// name) unless that is a symlink in ROOT, which is then resolved.
    fn ensure_dir(&self, rel: &Path, candidate: &Path, want: Wanted) -> Result<PathBuf> {
        let named = self
            .attributes
            .rule_for(&Path::new("/").join(rel))
            .is_some();
        let (target, via) = match fs::symlink_metadata(candidate) {
            Ok(m) if m.is_dir() => {
                // An existing directory keeps its attributes unless a line names it.
                if named {
                    set_attrs(candidate, want)?;
                }
                return Ok(candidate.to_path_buf());
            }
            Ok(m) if m.file_type().is_symlink() => (target_path(rel, true)?, Some(candidate)),
            _ => (candidate.to_path_buf(), None),
        };
        let shown = match via {
            Some(link) => format!(
                "{} (where the symlink {} points)",
                target.display(),
                link.display()
            ),
            None => target.display().to_string(),
        };
        match fs::metadata(&target) {
            Ok(m) if m.is_dir() => {
                if named {
                    set_attrs(&target, want)?;
                }
                Ok(target)
            }
            Ok(_) => bail!("{shown} exists and is not a directory"),
            Err(_) => {
                self.check_target(&target)?;
                fs::DirBuilder::new()
                    .mode(want.mode)
                    .create(&target)
                    .with_context(|| format!("cannot create {shown}"))?;
                set_attrs(&target, want)?;
                Ok(target)
            }
        }
    }

    fn copy_file(
        &self,
        src: &Path,
        target: &Path,
        meta: &fs::Metadata,
        want: Wanted,
    ) -> Result<()> {
        if meta.file_type().is_symlink() {
            let want = fs::read_link(src)?;
            if fs::read_link(target).ok().as_ref() == Some(&want) {
                return Ok(());
            }
            let tmp = temp_name(target);
            std::os::unix::fs::symlink(&want, &tmp)
                .with_context(|| format!("cannot create {}", target.display()))?;
            std::os::unix::fs::lchown(&tmp, Some(0), Some(0))?;
            return fs::rename(&tmp, target)
                .with_context(|| format!("cannot replace {}", target.display()));
        }
        copy_if_changed(src, target, meta.len(), want)
    }

    /// Renders `templates` (source, module path, attributes) in order;
    /// the first failure ends the rendering. One step per template
    /// rendered, the failed one last. A template that is only data
    /// ([`simple::Simple`]) is answered by disco itself; the others run
    /// in one bash for the module, started at the first of them
    /// ([`Driver`], [`RENDER_DRIVER`]). Each template's output is written
    /// to its target before the next one starts.
    fn render_all(&self, templates: &[(PathBuf, PathBuf, Wanted)]) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut driver: Option<Driver> = None;
        for (i, (src, rel, want)) in templates.iter().enumerate() {
            let name = format!("templates/{}", rel.display());
            let started = Instant::now();
            let simple = simple::Simple::read(src)
                .map(|t| t.render(&self.params_dir, SANDBOX_PATH))
                .and_then(|r| match r {
                    simple::Rendered::Done(out, errors) => Some((out, errors)),
                    simple::Rendered::ToBash => None,
                });
            let step = match simple {
                Some((out, errors)) => {
                    let result = self.write_simple(rel, *want, &out, &errors);
                    finish(name, started, result, "template")
                }
                None => self.render_in_bash(&mut driver, (i, src, rel, *want), name, started),
            };
            let failed = step.error.is_some();
            steps.push(step);
            if failed {
                break;
            }
        }
        if let Some(d) = driver {
            d.end();
        }
        steps
    }

    /// Writes a simple template's output `out` to its target, as the
    /// driver's template would have; its failed lookups `errors` are said
    /// and recorded as the driver's `disco param get` does, and fail it.
    fn write_simple(
        &self,
        rel: &Path,
        want: Wanted,
        out: &[u8],
        errors: &[String],
    ) -> Result<(i32, libc::rusage)> {
        if !errors.is_empty() {
            let mut said = String::new();
            for e in errors {
                eprintln!("error: {e}");
                said.push_str(e);
                said.push('\n');
            }
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(crate::sandbox::PARAM_ERRORS)
                .context("cannot record the parameter errors")?;
            f.write_all(said.as_bytes())
                .context("cannot record the parameter errors")?;
        }
        param_errors()?;
        let mut sink = self
            .target_path(rel, false)
            .and_then(|t| Output::new(t, want, self.max_file_size))?;
        sink.feed(out)?;
        sink.finish()?;
        // SAFETY: plain data; no process ran.
        Ok((0, unsafe { std::mem::zeroed() }))
    }

    /// Renders template `i` in the module's bash (started when `driver`
    /// is `None`): in a subshell of its own (`( . TEMPLATE )`, stdout to
    /// a FIFO disco reads, see [`Output`]), so it keeps its own stdout,
    /// exit status, options, traps and time limit, but costs a fork
    /// instead of a bash started from scratch.
    fn render_in_bash(
        &self,
        driver: &mut Option<Driver>,
        (i, src, rel, want): (usize, &Path, &Path, Wanted),
        name: String,
        started: Instant,
    ) -> Step {
        if driver.is_none() {
            match Driver::start(self) {
                Ok(d) => *driver = Some(d),
                Err(e) => return finish(name, started, Err(e), "template"),
            }
        }
        let d = driver.as_mut().expect("started above");
        if let Err(e) = d.begin(i, src) {
            return finish(name, started, Err(e), "template");
        }
        let (limit, by) = self.limit();
        // The limit covers all the step does: its output is read and
        // written under it too (a template can leave a FIFO there).
        let dog = Watchdog::start(d.child.id(), limit, by, true).or_give_up(name.clone());
        // The output is compared with the target and written beside it
        // as it comes; a target refused is said once the template exited
        // 0 (as when the output was read after it).
        let mut sink = self
            .target_path(rel, false)
            .and_then(|t| Output::new(t, want, self.max_file_size));
        let fifo = d.fifo.as_ref().expect("made by begin");
        let result = stream_rendered(&mut d.status, fifo, |chunk| match &mut sink {
            Ok(out) => out.feed(chunk),
            Err(_) => Ok(()),
        })
        .and_then(|(code, cpu)| {
            param_errors()?;
            if code == 0 {
                sink?.finish()?;
            }
            Ok((code, cpu))
        });
        let result = match dog.finish() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => result,
        };
        let result = result.map(|(code, cpu)| (code, d.cpu_since(cpu)));
        finish(name, started, result, "template")
    }

    /// The scripts to run, sorted, and the files of `scripts/` skipped
    /// because they are not scripts (see [`runs`]).
    fn scripts(&self) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        for r in runnables(&self.module_dir, "scripts")? {
            match r {
                Runnable::Runs(path) => out.push(path),
                Runnable::Skipped(name) => {
                    skipped.push(format!("scripts/{}", name.to_string_lossy()))
                }
                Runnable::Refused(name, why) => {
                    bail!("scripts/{} {why}", name.to_string_lossy())
                }
            }
        }
        Ok((out, skipped))
    }

    fn script(&self, path: &Path) -> Step {
        let name = format!(
            "scripts/{}",
            path.file_name()
                .unwrap_or(OsStr::new("?"))
                .to_string_lossy()
        );
        let started = Instant::now();
        let result = (|| -> Result<(i32, libc::rusage)> {
            let child = self
                .command(path)
                .spawn()
                .map_err(|e| no_bash(e, &format!("for {name}")))?;
            let ((), status, ru) = self.supervise(&name, &child, || ())?;
            Ok((status, ru))
        })();
        finish(name, started, result, "script")
    }

    /// `bash FILE` with the job's environment, in `/`, stdin from /dev/null.
    fn command(&self, file: &Path) -> Command {
        let mut c = self.command_with(&[]);
        c.arg(file);
        c
    }

    /// `bash ARGS…` with the job's environment, in `/`, stdin from
    /// /dev/null, in a process group of its own.
    fn command_with(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.args(args)
            .env_clear()
            .envs(self.env())
            .current_dir("/")
            .stdin(Stdio::null());
        if let Ok(term) = std::env::var("TERM") {
            c.env("TERM", term);
        }
        // SAFETY: only resets signal dispositions and makes a process
        // group (so a time limit ends the whole step) between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                Ok(())
            });
        }
        c.env("PATH", SANDBOX_PATH);
        c
    }
}

/// `was killed after N s (BY); its processes were ended`
fn killed(limit: std::time::Duration, by: &str) -> String {
    format!(
        "was killed after {} s ({by}); its processes were ended",
        limit.as_secs()
    )
}

/// How long a sandbox's init has, once a step's processes were killed,
/// to come back from what the step left it reading before it gives up.
const STUCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Kills a step's process group when its time is up or, in a sandbox's
/// init, as soon as the step hits one of the sandbox's cgroup limits
/// (`max_processes`, `max_memory`: [`crate::sandbox::cgroup`]). The step
/// runs in a process group of its own (see [`Job::command`]); a thread
/// waits for the limit unless the step ends first.
pub struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
    /// With [`Watchdog::or_give_up`]: the step's name, which the init's
    /// error starts with when it does not come back after the kill.
    give_up: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Why the step was killed, once it was.
    fired: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The sandbox's cgroup counters when the step started.
    before: Option<crate::sandbox::cgroup::Counts>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often a step's watchdog looks at the sandbox's cgroup counters.
const LIMIT_TICK: std::time::Duration = std::time::Duration::from_millis(50);

impl Watchdog {
    /// Watches process group `pgid` for `limit`; `by` names the limit.
    /// With `namespace` (only ever in a sandbox's init, PID 1 of the
    /// module's PID namespace), a hit also kills every other process of
    /// the namespace.
    pub fn start(pgid: u32, limit: std::time::Duration, by: String, namespace: bool) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let fired = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let flag = fired.clone();
        let give_up = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let name = give_up.clone();
        let cgroup = crate::sandbox::cgroup::current().filter(|_| namespace);
        let before = cgroup.map(|(events, _)| events.read());
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + limit;
            let why = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let tick = if cgroup.is_some() {
                    left.min(LIMIT_TICK)
                } else {
                    left
                };
                match rx.recv_timeout(tick) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if left <= tick {
                    break killed(limit, &by);
                }
                if let (Some((events, limits)), Some(before)) = (cgroup, before) {
                    if let Some(why) = crate::sandbox::cgroup::hit(limits, before, events.read()) {
                        break why;
                    }
                }
            };
            if let Ok(mut f) = flag.lock() {
                *f = Some(why.clone());
            }
            // SAFETY: plain kill calls. The step's group first; then,
            // as PID 1 of the module's PID namespace, every other
            // process in it (kill(-1) spares the caller; the kernel
            // signals them all under one lock, and a fork with a SIGKILL
            // pending fails, so nothing escapes it): whatever the step
            // started, even in another session, ends now.
            unsafe {
                libc::kill(-(pgid as i32), libc::SIGKILL);
                if namespace && libc::getpid() == 1 {
                    libc::kill(-1, libc::SIGKILL);
                }
            }
            // Still not back (a read of a FIFO the step left): the
            // init ends with the step's error.
            let name = name.lock().ok().and_then(|mut e| e.take());
            if let (Some(name), Err(std::sync::mpsc::RecvTimeoutError::Timeout)) =
                (name, rx.recv_timeout(STUCK_GRACE))
            {
                crate::sandbox::give_up(format!("{name}: {why}"));
            }
        });
        Watchdog {
            stop: Some(tx),
            give_up,
            fired,
            before,
            thread: Some(thread),
        }
    }

    /// In a sandbox's init: when the init is not back [`STUCK_GRACE`]
    /// after the kill, it sends the step `name`'s error as the module's
    /// result and ends (`crate::sandbox::give_up`), so the limit covers
    /// all a step does.
    pub fn or_give_up(self, name: String) -> Watchdog {
        if let Ok(mut e) = self.give_up.lock() {
            *e = Some(name);
        }
        self
    }

    /// Stops watching; the error of the step when it hit a limit: its
    /// time (its processes were then killed), or a cgroup limit of the
    /// sandbox, even when the step ended before the watchdog saw it (a
    /// process the OOM killer took, a fork refused and shrugged off).
    pub fn finish(mut self) -> Option<String> {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let fired = self.fired.lock().ok().and_then(|mut f| f.take());
        fired.or_else(|| {
            let (events, limits) = crate::sandbox::cgroup::current()?;
            crate::sandbox::cgroup::hit(limits, self.before?, events.read())
        })
    }
}

impl Job {
    /// The limit of the next step, and how to name it.
    fn limit(&self) -> (std::time::Duration, String) {
        self.step_timeout.clone()
    }

    /// Runs `child` (already spawned in its own process group) to its end
    /// under the step's limit; `read` consumes its output meanwhile.
    fn supervise<T>(
        &self,
        name: &str,
        child: &std::process::Child,
        read: impl FnOnce() -> T,
    ) -> Result<(T, i32, libc::rusage)> {
        let (limit, by) = self.limit();
        let dog = Watchdog::start(child.id(), limit, by, true).or_give_up(name.to_string());
        let out = read();
        let waited = wait4(child.id());
        let errors = param_errors();
        if let Some(why) = dog.finish() {
            bail!(why);
        }
        let (status, ru) = waited?;
        errors?;
        Ok((out, status, ru))
    }
}

/// Fails when a `disco param get` of the step failed, even inside `$(…)`,
/// where bash drops its exit status: the lookups record their errors in
/// [`crate::sandbox::PARAM_ERRORS`], emptied here for the next step.
fn param_errors() -> Result<()> {
    let errors = Path::new(crate::sandbox::PARAM_ERRORS);
    let said = crate::fsutil::read_small(errors, "the parameter errors", 64 << 10)?;
    let _ = fs::remove_file(errors);
    if let Some(text) = said.filter(|t| !t.is_empty()) {
        let text = String::from_utf8_lossy(&text);
        bail!(
            "{}",
            text.lines().next().unwrap_or("a parameter lookup failed")
        );
    }
    Ok(())
}

/// Reads what [`RENDER_DRIVER`] says after a template: `E STATUS`, then
/// the two lines of bash's `times` (its own, then its children's user and
/// system time). Returns the status and the children's (user, system)
/// seconds so far.
fn read_rendered(status: &mut impl io::BufRead) -> Result<(i32, (f64, f64))> {
    use io::BufRead as _;
    let mut lines = [String::new(), String::new(), String::new()];
    for l in &mut lines {
        // A template can reach this pipe (/proc/$PPID/fd/1): lines are
        // bounded, never read without end.
        let n = io::Read::take(&mut *status, 256)
            .read_line(l)
            .context("reading the renderer's status")?;
        if n == 0 {
            bail!("bash ended before the template did (its renderer was killed)");
        }
        if !l.ends_with('\n') {
            bail!("the renderer's status line is not one (over 256 bytes)");
        }
    }
    let code = lines[0]
        .strip_prefix("E ")
        .and_then(|c| c.trim().parse::<i32>().ok())
        .with_context(|| format!("the renderer said {:?}", lines[0].trim()))?;
    // `0m0.004s 0m0.001s`
    let secs = |t: &str| -> Option<f64> {
        let (m, s) = t.strip_suffix('s')?.split_once('m')?;
        Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
    };
    let mut cpu = lines[2].split_whitespace().map(secs);
    let cpu = match (cpu.next().flatten(), cpu.next().flatten()) {
        (Some(u), Some(s)) => (u, s),
        _ => (0.0, 0.0),
    };
    Ok((code, cpu))
}

/// Where the templates' output pipes are inside the sandbox (its own
/// `/run`), one FIFO per template (`0`, `1`, …): a background process a
/// template left writing never lands in the next one's output, and no
/// output is ever stored in the sandbox's memory.
const RENDER_OUT: &str = "/run/disco/render";

/// The module's bash for the templates that are not [`simple`]: started
/// at the first of them, told each one to run on its stdin, saying how
/// each ended on its stdout ([`RENDER_DRIVER`]).
struct Driver {
    child: std::process::Child,
    go: std::process::ChildStdin,
    status: io::BufReader<std::process::ChildStdout>,
    /// The reading end of the running template's FIFO.
    fifo: Option<fs::File>,
    /// The children's cpu (user, system) bash's `times` said last.
    cpu_before: (f64, f64),
}

impl Driver {
    /// `bash -c DRIVER disco-render OUT`, OUT made.
    fn start(job: &Job) -> Result<Driver> {
        let dir = Path::new(RENDER_OUT);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut c = job.command_with(&["-c", RENDER_DRIVER, "disco-render"]);
        c.arg(dir);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().map_err(|e| no_bash(e, "for the templates"))?;
        let go = child.stdin.take().expect("piped");
        let status = io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Driver {
            child,
            go,
            status,
            fifo: None,
            cpu_before: (0.0, 0.0),
        })
    }

    /// Makes template `i`'s FIFO and tells bash to run `src` into it.
    fn begin(&mut self, i: usize, src: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        // The last one's reader goes: a template still writing there
        // gets EPIPE instead of waiting for a reader.
        self.fifo = None;
        self.fifo = Some(render_pipe(Path::new(RENDER_OUT), i)?);
        let mut line = format!("{i}\0").into_bytes();
        line.extend_from_slice(src.as_os_str().as_bytes());
        line.push(0);
        // Failing: bash ended between two templates (killed from
        // outside): this one never ran, and that fails.
        self.go
            .write_all(&line)
            .map_err(|_| anyhow::anyhow!("bash ended before it ran (it was killed)"))
    }

    /// The rusage of the template that just ended, from the children's
    /// cpu `times` says now (`cpu`).
    fn cpu_since(&mut self, (user, sys): (f64, f64)) -> libc::rusage {
        // SAFETY: plain data.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let micros = |s: f64| libc::timeval {
            tv_sec: s.trunc() as libc::time_t,
            tv_usec: (s.fract() * 1e6) as libc::suseconds_t,
        };
        ru.ru_utime = micros((user - self.cpu_before.0).max(0.0));
        ru.ru_stime = micros((sys - self.cpu_before.1).max(0.0));
        self.cpu_before = (user, sys);
        ru
    }

    /// Closes bash's input (it ends at its end, or is already gone when
    /// killed), reaps it, removes the FIFOs.
    fn end(self) {
        let Driver {
            child,
            go,
            status,
            fifo,
            ..
        } = self;
        drop((go, status, fifo));
        let _ = wait4(child.id());
        let _ = fs::remove_dir_all(RENDER_OUT);
    }
}

/// The bash program that renders a module's templates that are not
/// [`simple`] (`bash -c DRIVER disco-render OUT`; on its stdin, for each
/// template, `N\0PATH\0`). Each template runs in a subshell, stdin
/// from /dev/null, stdout to OUT/N (N its index: a FIFO disco made and
/// reads, streaming it to the target), no arguments, `$0` its
/// path, none of the driver's own variables (nor `BASH_EXECUTION_STRING`,
/// this text) set — they are unset in the subshell before the template
/// is sourced, so a template cannot find its output file by name; after it the driver says
/// `E STATUS` and bash's `times` on its stdout, then waits for the next
/// template on its stdin (disco has written the target by then); it
/// ends when its stdin closes.
///
/// `disco param get KEY` is a shell function here, answered with bash
/// builtins: no process at all, or one fork inside `$(…)` — where the
/// sandbox's `disco` shim starts `/bin/sh` and `cat`. Same keys, same
/// errors, same record of a failed lookup as [`crate::sandbox::PARAM_SHIM`].
/// `hostname` and `hostname -s` are too (the kernel's name, read from
/// `/proc/sys/kernel/hostname`; `-s` cut at the first dot, as Debian's
/// `hostname -s`), when a `hostname` command is on `PATH` at all; any
/// other use runs the real one.
pub const RENDER_DRIVER: &str = r#"__disco_out=$1; shift
disco() {
    if [ "${1-}" = param ] && [ "${2-}" = get ] && [ "$#" -eq 3 ]; then
        local key=$3 err= value=
        case "$key" in
        ''|/*|*/|*//*|*[!A-Za-z0-9._/-]*) err="invalid parameter key '$key'" ;;
        *) case "/$key/" in */./*|*/../*) err="invalid parameter key '$key'" ;; esac ;;
        esac
        if [ -n "$err" ]; then
            :
        elif [ -f "$DISCO_PARAMS/$key" ]; then
            IFS= read -r -d '' value < "$DISCO_PARAMS/$key" || :
            printf '%s' "$value"
            return 0
        elif [ -d "$DISCO_PARAMS/$key" ]; then
            err="parameter '$key' is a directory: use \`disco param keys $key\`"
        else
            err="no parameter '$key'"
        fi
        printf 'error: %s\n' "$err" >&2
        printf '%s\n' "$err" >> /run/disco/queue/param-errors
        return 1
    fi
    command disco "$@"
}
hostname() {
    local h=
    if { [ "$#" -eq 0 ] || { [ "$#" -eq 1 ] && [ "$1" = -s ]; }; } \
        && type -P hostname > /dev/null \
        && IFS= read -r h < /proc/sys/kernel/hostname 2> /dev/null; then
        [ "$#" -eq 0 ] || h=${h%%.*}
        printf '%s\n' "$h"
        return 0
    fi
    command hostname "$@"
}
__disco_i=0
while IFS= read -r -d '' __disco_i && IFS= read -r -d '' __disco_t; do
    (
        exec < /dev/null > "$__disco_out/$__disco_i"
        BASH_ARGV0=$__disco_t
        unset __disco_out __disco_i __disco_t BASH_EXECUTION_STRING
        set --
        . "$0"
    )
    printf 'E %s\n' "$?"
    times
done
"#;

/// Turns a child's status into a step, with the error line if it failed.
/// Why bash could not be started `what` (`for scripts/10-x`), in one
/// line: a root without bash on [`SANDBOX_PATH`] said as such, anything
/// else without Rust's `(os error N)`.
fn no_bash(e: io::Error, what: &str) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::NotFound => {
            anyhow::anyhow!("cannot run bash {what}: the root has no bash on PATH ({SANDBOX_PATH})")
        }
        _ => {
            let why = match e.raw_os_error() {
                Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
                None => e.to_string(),
            };
            anyhow::anyhow!("cannot run bash {what}: {why}")
        }
    }
}

fn finish(name: String, started: Instant, result: Result<(i32, libc::rusage)>, what: &str) -> Step {
    let wall = started.elapsed().as_secs_f64();
    match result {
        Ok((status, ru)) => {
            let error = match status {
                0 => None,
                s if s >= 128 => Some(format!("{name} was killed by signal {}", s - 128)),
                s if what == "template" => Some(format!("{name} exited {s}; nothing was written")),
                s => Some(format!("{name} exited {s}")),
            };
            Step {
                name,
                exit: Some(status),
                error,
                figures: Figures::from_rusage(&ru, wall),
                sent: None,
                received: None,
            }
        }
        Err(e) => Step {
            error: Some(format!("{name}: {e:#}")),
            name,
            exit: None,
            figures: Figures {
                time_real: wall,
                ..Figures::default()
            },
            sent: None,
            received: None,
        },
    }
}

/// Waits for `pid` with `wait4`, returning its status (128+signal when
/// killed) and its own resource use.
pub fn wait4(pid: u32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, ru))
}

impl Job {
    /// The absolute target of module path `rel` inside the sandbox,
    /// symlinks in ROOT resolved; refused if it leaves ROOT, lands on a
    /// mount that is private to the sandbox (and so would never be
    /// merged), or in disco's own state dir.
    fn target_path(&self, rel: &Path, follow_last: bool) -> Result<PathBuf> {
        let real = target_path(rel, follow_last)?;
        self.check_target(&real)?;
        Ok(real)
    }

    /// Refuses an absolute target inside the sandbox's private mounts or
    /// disco's state dir.
    fn check_target(&self, real: &Path) -> Result<()> {
        if let Some(first) = real.components().nth(1) {
            let first = first.as_os_str().to_string_lossy();
            if SANDBOX_DIRS.contains(&first.as_ref()) {
                bail!(
                    "refusing to write {}: /{first} is private to the sandbox and never merged",
                    real.display()
                );
            }
        }
        if let Some(state) = &self.state_in_root {
            if real.starts_with(Path::new("/").join(state)) {
                bail!(
                    "refusing to write {}: /{} is disco's state dir, which modules may not touch",
                    real.display(),
                    state.display()
                );
            }
        }
        Ok(())
    }
}

/// The absolute target of module path `rel` inside the sandbox, symlinks
/// in ROOT resolved; refused if it leaves ROOT or lands on a mount that is
/// private to the sandbox (and so would never be merged).
fn target_path(rel: &Path, follow_last: bool) -> Result<PathBuf> {
    let real = rootpath::resolve(Path::new("/"), rel, follow_last)?;
    if let Some(first) = real.components().next() {
        let first = first.as_os_str().to_string_lossy();
        if SANDBOX_DIRS.contains(&first.as_ref()) {
            bail!(
                "refusing to write /{}: /{first} is private to the sandbox and never merged",
                real.display()
            );
        }
    }
    Ok(Path::new("/").join(real))
}

fn temp_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .unwrap_or(OsStr::new("x"))
        .to_string_lossy();
    target.with_file_name(format!(".{name}.disco-{}", std::process::id()))
}

/// Copies module file `src` (`len` bytes) to `target` with `mode`, owned
/// root:root, streamed and hole-aware through a temporary file and a
/// rename — unless the target already is exactly that. A target not there
/// yet is written in place (no temporary, no rename: a copy that fails
/// fails the module, whose layer is then never merged).
fn copy_if_changed(src: &Path, target: &Path, len: u64, want: Wanted) -> Result<()> {
    let existing = fs::symlink_metadata(target);
    if existing.is_err() {
        let written = (|| -> io::Result<()> {
            let from = fs::File::open(src)?;
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(target)?;
            crate::fsutil::copy_sparse(&from, &f, len)?;
            std::os::unix::fs::fchown(&f, Some(want.uid), Some(want.gid))?;
            f.set_permissions(fs::Permissions::from_mode(want.mode))
        })();
        return written.with_context(|| format!("cannot write {}", target.display()));
    }
    if let Ok(m) = existing {
        if m.is_file()
            && m.mode() & 0o7777 == want.mode
            && m.uid() == want.uid
            && m.gid() == want.gid
            && crate::fsutil::same_bytes(src, target, len, m.len()).unwrap_or(false)
        {
            return Ok(());
        }
        if m.is_dir() {
            bail!("{} is a directory", target.display());
        }
    }
    let tmp = temp_name(target);
    let written = (|| -> io::Result<()> {
        let from = fs::File::open(src)?;
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        crate::fsutil::copy_sparse(&from, &f, len)?;
        std::os::unix::fs::fchown(&f, Some(want.uid), Some(want.gid))?;
        // After chown, which clears set-id bits.
        f.set_permissions(fs::Permissions::from_mode(want.mode))?;
        fs::rename(&tmp, target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", target.display()))
}

/// Sets a directory's mode and owner.
fn set_attrs(dir: &Path, want: Wanted) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(want.uid), Some(want.gid))
        .with_context(|| format!("cannot chown {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(want.mode))
        .with_context(|| format!("cannot chmod {}", dir.display()))
}

/// A template's output on its way to `target`: compared with the target
/// chunk by chunk while they agree, written to a temporary file beside
/// it from the first byte that differs (the equal prefix copied from the
/// target), renamed over it at the end. Never more than one chunk in
/// memory; an output that equals the target (bytes, mode, owner) leaves
/// it untouched and writes nothing.
struct Output {
    target: PathBuf,
    want: Wanted,
    cap: u64,
    /// Bytes of output so far.
    len: u64,
    /// The target, while the output so far equals its first `len` bytes.
    same: Option<fs::File>,
    /// The temporary file, once the output differs.
    tmp: Option<(PathBuf, fs::File)>,
    buf: Vec<u8>,
}

impl Output {
    fn new(target: PathBuf, want: Wanted, cap: u64) -> Result<Output> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut same = None;
        if let Ok(m) = fs::symlink_metadata(&target) {
            if m.is_dir() {
                bail!("{} is a directory", target.display());
            }
            if m.is_file()
                && m.mode() & 0o7777 == want.mode
                && m.uid() == want.uid
                && m.gid() == want.gid
            {
                same = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&target)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
            }
        }
        Ok(Output {
            target,
            want,
            cap,
            len: 0,
            same,
            tmp: None,
            buf: Vec::new(),
        })
    }

    /// Takes the next chunk of output; more than the cap in all fails.
    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        if self.len + chunk.len() as u64 > self.cap {
            self.discard();
            bail!(
                "its output is more than the {} it may hold (max_file_size)",
                crate::fsutil::human_bytes(self.cap)
            );
        }
        if let Some(t) = &mut self.same {
            self.buf.resize(chunk.len(), 0);
            if io::Read::read_exact(t, &mut self.buf).is_ok() && self.buf == chunk {
                self.len += chunk.len() as u64;
                return Ok(());
            }
            self.diverge()?;
        } else if self.tmp.is_none() {
            self.diverge()?;
        }
        let (_, f) = self.tmp.as_mut().expect("made by diverge");
        f.write_all(chunk).map_err(|e| self.failed(e))?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Starts the temporary file with the `len` bytes the output shared
    /// with the target.
    fn diverge(&mut self) -> Result<()> {
        let tmp = temp_name(&self.target);
        let made = (|| -> io::Result<fs::File> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            if let Some(mut t) = self.same.take() {
                io::Seek::rewind(&mut t)?;
                let copied = io::copy(&mut io::Read::take(t, self.len), &mut f)?;
                if copied != self.len {
                    return Err(io::Error::other("the target shrank while it was read"));
                }
            }
            Ok(f)
        })();
        match made {
            Ok(f) => {
                self.tmp = Some((tmp, f));
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e).with_context(|| format!("cannot write {}", self.target.display()))
            }
        }
    }

    fn failed(&mut self, e: io::Error) -> anyhow::Error {
        self.discard();
        anyhow::Error::new(e).context(format!("cannot write {}", self.target.display()))
    }

    fn discard(&mut self) {
        if let Some((tmp, _)) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }

    /// The output ended: the target is left alone when it is the same,
    /// replaced otherwise.
    fn finish(mut self) -> Result<()> {
        if let Some(t) = &mut self.same {
            let mut one = [0u8; 1];
            if matches!(io::Read::read(t, &mut one), Ok(0)) {
                return Ok(()); // same bytes, same length, same attributes
            }
            self.diverge()?;
        } else if self.tmp.is_none() {
            self.diverge()?;
        }
        let (tmp, f) = self.tmp.take().expect("made by diverge");
        let done = (|| -> io::Result<()> {
            std::os::unix::fs::fchown(&f, Some(self.want.uid), Some(self.want.gid))?;
            // chown clears set-id bits: set the mode after it.
            f.set_permissions(fs::Permissions::from_mode(self.want.mode))?;
            fs::rename(&tmp, &self.target)
        })();
        if done.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        done.with_context(|| format!("cannot write {}", self.target.display()))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Makes template `i`'s output pipe, `OUT/i` (a FIFO the driver opens
/// as the template's stdout), and opens its reading end, never blocking.
/// disco holds the pipe from before the template starts: whatever the
/// template then does to the path, its output comes here.
fn render_pipe(out_dir: &Path, i: usize) -> Result<fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let path = out_dir.join(i.to_string());
    let _ = fs::remove_file(&path);
    nix::unistd::mkfifo(
        &path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .with_context(|| format!("cannot make {}", path.display()))?;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !f.metadata()?.file_type().is_fifo() {
        bail!("{} is not the pipe disco made", path.display());
    }
    Ok(f)
}

/// Passes what the template writes to `fifo` to `sink`, 64 KiB at a
/// time, until the driver says the template ended; then the rest already
/// in the pipe (a background process the template left may write on: it
/// is not waited for). Returns what [`read_rendered`] says.
fn stream_rendered<R: io::Read + std::os::fd::AsRawFd>(
    status: &mut io::BufReader<R>,
    fifo: &fs::File,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(i32, (f64, f64))> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 64 << 10];
    let mut open = true;
    // Some(true): a chunk passed; Some(false): nothing now; None: no
    // writer is left.
    let mut pass =
        |fifo: &fs::File, sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<Option<bool>> {
            match io::Read::read(&mut &*fifo, &mut buf) {
                Ok(0) => Ok(None),
                Ok(n) => sink(&buf[..n]).map(|()| Some(true)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(true)),
                Err(e) => Err(e).context("reading its output"),
            }
        };
    while status.buffer().is_empty() {
        let mut fds = [
            libc::pollfd {
                fd: status.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fifo.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if open { 2 } else { 1 };
        // SAFETY: poll on `n` initialised pollfds of open descriptors.
        if unsafe { libc::poll(fds.as_mut_ptr(), n, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the renderer");
        }
        // Linux reports a hang-up only once a writer came and went.
        if open && fds[1].revents != 0 {
            open = pass(fifo, &mut sink)?.is_some();
        }
        if fds[0].revents != 0 {
            break;
        }
    }
    while open && pass(fifo, &mut sink)? == Some(true) {}
    read_rendered(status)
}
