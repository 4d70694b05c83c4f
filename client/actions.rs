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
    /// Paths the module changed (absolute on the target).
    pub changed: Vec<String>,
    /// Handler file names, sorted.
    pub handlers: Vec<String>,
    /// Changes left pending in noop (`disco pending`): the module counts
    /// as changed for what noop says would run.
    #[serde(default, skip)]
    pub pending: usize,
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

    fn live(&self) -> bool {
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

/// Runs the actions, then the handlers. Returns the steps and whether all
/// succeeded.
pub fn run(pending: &Pending) -> Result<(Vec<Step>, bool)> {
    let (steps, failed) = run_keeping_failures(pending)?;
    Ok((steps, failed.modules.is_empty()))
}

/// Runs the actions, then the handlers; returns the steps and what failed
/// (the same shape: the modules with only their failed actions and
/// handlers), to be run again later.
pub fn run_keeping_failures(pending: &Pending) -> Result<(Vec<Step>, Pending)> {
    let mut steps = Vec::new();
    let mut failed = Pending {
        modules: Vec::new(),
        ..pending.clone()
    };
    let mut fail = |m: &ModuleActions, action: Option<&Vec<String>>, handler: Option<&String>| {
        let entry = match failed.modules.iter_mut().position(|f| f.module == m.module) {
            Some(i) => &mut failed.modules[i],
            None => {
                failed.modules.push(ModuleActions {
                    actions: Vec::new(),
                    handlers: Vec::new(),
                    ..m.clone()
                });
                failed.modules.last_mut().expect("pushed")
            }
        };
        entry.actions.extend(action.cloned());
        entry.handlers.extend(handler.cloned());
    };
    let live = pending.live();
    for m in &pending.modules {
        for a in &m.actions {
            let shown = shown(a);
            if m.changed.is_empty() {
                output::info(&format!("skipped {shown}: {} changed nothing", m.module));
                continue;
            }
            if !live {
                output::info(&format!(
                    "not run (the root is {}, not /; --run-actions runs it there): {shown}",
                    pending.root.display()
                ));
                continue;
            }
            output::info(&format!("running deferred action: {shown}"));
            let mut cmd = Command::new(&a[0]);
            cmd.args(&a[1..]);
            let step = execute(cmd, &format!("action {shown}"), pending, None);
            if step.error.is_some() {
                fail(m, Some(a), None);
            }
            steps.push(step);
        }
    }
    for m in &pending.modules {
        if m.changed.is_empty() {
            continue;
        }
        for h in &m.handlers {
            let name = format!("{}/handlers/{h}", m.module);
            if !live {
                output::info(&format!(
                    "not run (the root is {}, not /; --run-actions runs it there): handler {name}",
                    pending.root.display()
                ));
                continue;
            }
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
            let step = execute(cmd, &format!("handler {name}"), pending, Some(&binds));
            if step.error.is_some() {
                fail(m, None, Some(h));
            }
            steps.push(step);
        }
    }
    Ok((steps, failed))
}

/// Where failed actions and handlers wait to be run again.
fn failed_path(state_dir: &Path) -> PathBuf {
    state_dir.join("failed-actions.json")
}

/// The actions and handlers that failed and wait to be run again, their
/// secrets put back with the values of now ([`crate::masks::Masks::unseal`]);
/// an action whose secret the node no longer has is dropped with a warning.
pub fn load_failed(state_dir: &Path) -> Result<Option<Pending>> {
    let p = failed_path(state_dir);
    let mut failed: Pending = match fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("{} is damaged", p.display()))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
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

/// Keeps `failed` for the next dance (removes the file when nothing failed).
pub fn save_failed(state_dir: &Path, failed: &Pending) -> Result<()> {
    let p = failed_path(state_dir);
    if failed.modules.is_empty() {
        return match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", p.display()))
            }
            _ => Ok(()),
        };
    }
    // No secret in clear: each is sealed (a reference to its key, put
    // back by load_failed), any other rendering masked.
    let masks = crate::masks::current();
    let mut sealed = failed.clone();
    for m in &mut sealed.modules {
        for a in m.actions.iter_mut().flatten().chain(&mut m.changed) {
            *a = masks.seal(a);
        }
    }
    // The other strings are names and paths of disco's own (not masked:
    // a mask could cut into a seal).
    crate::fsutil::write_private(&p, &serde_json::to_vec_pretty(&sealed)?)
        .with_context(|| format!("cannot write {}", p.display()))
}

/// How many actions and handlers wait to be run again.
pub fn count(p: &Pending) -> usize {
    p.modules
        .iter()
        .map(|m| m.actions.len() + m.handlers.len())
        .sum()
}

/// Runs again what failed before, with the module directories and the
/// parameters of now (`dir_of` a module's current directory, `params_dir`);
/// a module no longer planned is dropped with a warning. Returns the steps
/// and what still fails.
pub fn retry(
    mut before: Pending,
    dir_of: &dyn Fn(&str) -> Option<PathBuf>,
    params_dir: &Path,
    partial: bool,
) -> Result<(Vec<Step>, Pending)> {
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
    let (steps, mut still) = run_keeping_failures(&before)?;
    still.modules.extend(later);
    Ok((steps, still))
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
fn execute(mut cmd: Command, name: &str, pending: &Pending, binds: Option<&Binds>) -> Step {
    let started = Instant::now();
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
    in_root(&mut cmd, root.clone(), bind_spec);
    let limit = std::time::Duration::from_secs(pending.step_timeout);
    let result = cmd.spawn().map_err(anyhow::Error::from).and_then(|mut c| {
        let copies = MaskedCopies::start(&masks, c.stdout.take(), c.stderr.take());
        let dog = crate::exec::Watchdog::start(c.id(), limit, "step_timeout".into(), false);
        let waited = wait4(c.id());
        copies.finish();
        if dog.finish() {
            anyhow::bail!("was killed after {} s (step_timeout)", limit.as_secs());
        }
        waited
    });
    if made_dir {
        let _ = fs::remove_dir(&disco_dir);
    }
    let wall = started.elapsed().as_secs_f64();
    match result {
        Ok((code, ru)) => {
            let error = (code != 0).then(|| format!("{name} exited {code}"));
            match &error {
                Some(e) => output::error(e),
                None => output::info(&format!("{name}: exit 0")),
            }
            Step {
                name: name.to_string(),
                exit: Some(code),
                error,
                figures: Figures::from_rusage(&ru, wall),
                sent: None,
                received: None,
            }
        }
        Err(e) => {
            // The spawn's error is the kernel's (ENOENT of the program, of
            // the root, of a bind source): say where it was started.
            let why = match e
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
            {
                Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
                None => format!("{e:#}"),
            };
            let msg = format!(
                "{name}: cannot start it in {}: {why}",
                pending.root.display()
            );
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
    }
}
