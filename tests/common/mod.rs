//! Fixture builders shared by the integration tests: a server tree made by
//! the test, an isolated state dir and config, and the real `disco` binary.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tempfile::TempDir;

/// A throwaway server tree plus a state dir and an empty config file.
pub struct Fixture {
    pub dir: TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(f.server().join("parameters")).unwrap();
        fs::create_dir_all(f.server().join("modules")).unwrap();
        fs::create_dir_all(f.etc()).unwrap();
        fs::write(f.config(), "").unwrap();
        f
    }

    pub fn server(&self) -> PathBuf {
        self.dir.path().join("server")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }
    pub fn config(&self) -> PathBuf {
        self.etc().join("disco.toml")
    }
    pub fn cache(&self) -> PathBuf {
        self.state().join("cache")
    }

    /// `parameters/NODE` listing `modules`.
    pub fn node(&self, node: &str, modules: &[&str]) -> &Self {
        let dir = self.server().join("parameters").join(node);
        fs::create_dir_all(dir.join("modules")).unwrap();
        for m in modules {
            fs::write(dir.join("modules").join(m), "").unwrap();
        }
        self
    }

    /// `parameters/NODE/groups/GROUP`.
    pub fn group(&self, node: &str, group: &str) -> &Self {
        let dir = self.server().join("parameters").join(node).join("groups");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(group), "").unwrap();
        self
    }

    /// `modules/NAME` with a `requires` file holding `requires`.
    pub fn module(&self, name: &str, requires: &str) -> &Self {
        let dir = self.server().join("modules").join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("requires"), requires).unwrap();
        self
    }

    /// Any file under the server tree, parents created.
    pub fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.server().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }

    /// Same as [`Fixture::file`], with a mode.
    pub fn file_mode(&self, rel: &str, content: &str, mode: u32) -> &Self {
        self.file(rel, content);
        fs::set_permissions(self.server().join(rel), fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// `disco` with this fixture's config, state dir and server; the
    /// environment cleared of anything that could change its settings.
    pub fn disco(&self) -> Command {
        let mut c = self.disco_without_server();
        c.arg("--server").arg(self.server());
        c
    }

    /// [`Fixture::disco`] without `--server`.
    pub fn disco_without_server(&self) -> Command {
        self.disco_with_state(&self.state())
    }

    /// `disco publish SRC --root SERVED [args]`, SRC this fixture's
    /// server tree.
    pub fn publish(&self, served: &Path, args: &[&str]) -> (i32, String, String) {
        run(self
            .disco_without_server()
            .arg("publish")
            .arg(self.server())
            .arg("--root")
            .arg(served)
            .args(args))
    }

    /// `disco` with this fixture's config and the given state dir, no server.
    pub fn disco_with_state(&self, state: &Path) -> Command {
        let mut c = Command::cargo_bin("disco").unwrap();
        c.env_remove("NOOP")
            .env_remove("DISCO_SERVER")
            .env_remove("DISCO_NODE")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.config())
            .arg("--state-dir")
            .arg(state);
        c
    }

    /// The real `disco` as a plain process (to spawn, kill, or give a
    /// terminal) with this fixture's config, `state` and server, for node
    /// `n` on `root`; the subcommand is the caller's.
    pub fn process(&self, state: &Path, root: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_disco"));
        c.env_remove("NOOP")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.config())
            .arg("--state-dir")
            .arg(state)
            .arg("--server")
            .arg(self.server())
            .args(["--node", "n", "--root"])
            .arg(root);
        c
    }

    /// `disco plan --node NODE`, returning (exit code, stdout, stderr).
    pub fn plan(&self, node: &str) -> (i32, String, String) {
        run(self.disco().args(["--node", node, "plan"]))
    }
}

/// Runs `cmd`, returning (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failure: exit 1, nothing on stdout, exactly one stderr line,
/// equal to `expected`.
pub fn assert_error(result: (i32, String, String), expected: &str) {
    let (code, out, err) = result;
    assert_eq!(code, 1, "exit code; stderr: {err}");
    assert_eq!(out, "", "stdout must be empty on error");
    assert_eq!(err, format!("{expected}\n"), "stderr");
}

/// Every path below `root` with its type, mode and content (or link target),
/// for comparing trees byte for byte.
pub fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/ {mode:o}"));
                walk(root, &p, out);
            } else {
                out.push(format!(
                    "{rel} {mode:o} {:?}",
                    String::from_utf8_lossy(&fs::read(&p).unwrap())
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

pub mod booted;
pub mod deb;
pub mod debian;
pub mod outer;
pub mod root;
pub mod sshd;

impl Fixture {
    /// `modules/NAME/REL` with `content` and `mode` (a script, template, file…).
    pub fn module_file(&self, module: &str, rel: &str, content: &str, mode: u32) -> &Self {
        self.file_mode(&format!("modules/{module}/{rel}"), content, mode)
    }

    /// `NOOP=true disco --node NODE --root ROOT dance [args]`.
    pub fn noop_dance(&self, node: &str, root: &Path, args: &[&str]) -> (i32, String, String) {
        run(self
            .disco()
            .env("NOOP", "true")
            .args(["--node", node, "--root"])
            .arg(root)
            .arg("dance")
            .args(args))
    }
}

/// Builds `tests/helpers/NAME.c` as a static binary (once per test
/// process) and returns its path: small programs a module runs, for what
/// bash cannot do (file handles, TIOCSTI, keyrings, socket files).
pub fn helper(name: &str) -> PathBuf {
    use std::sync::{Mutex, OnceLock};
    static DIR: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("helpers")
            .join(std::process::id().to_string());
        fs::create_dir_all(&d).unwrap();
        Mutex::new(d)
    });
    let dir = dir.lock().unwrap();
    let out = dir.join(name);
    if !out.exists() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/helpers/{name}.c"));
        let status = std::process::Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("cc (gcc) is needed: scripts/install-test-deps installs it");
        assert!(status.success(), "cannot build {}", src.display());
    }
    out
}

/// Runs `git ARGS` in `dir` (a fixed identity and branch name), which
/// must succeed: server trees kept in git, as on a real server.
pub fn git(dir: &Path, args: &[&str]) {
    let st = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// `cmd` as a server's shell would run it in these tests: the built
/// `disco` first on PATH, TMPDIR in `tmp`, no global or system git
/// configuration.
pub fn with_disco_on_path<'a>(
    cmd: &'a mut std::process::Command,
    tmp: &Path,
) -> &'a mut std::process::Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_disco")).parent().unwrap();
    cmd.env(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    )
    .env("TMPDIR", tmp)
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .env("GIT_CONFIG_NOSYSTEM", "1")
}

/// Spawns `cmd` on a new terminal (a pty whose slave is its stdin,
/// stdout, stderr and controlling terminal, as an admin's shell gives),
/// returning the child and the terminal's master side. The master reads
/// what the child shows until the child exits and no one holds the slave
/// (then EIO).
pub fn spawn_on_terminal(mut cmd: std::process::Command) -> (std::process::Child, std::fs::File) {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let pty = nix::pty::openpty(None, None).unwrap();
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let master = fs::File::from(pty.master);
    let child = cmd.spawn().unwrap();
    // The terminal ends when no one but the child holds its slave.
    drop(cmd);
    drop(pty.slave);
    (child, master)
}

/// Runs `cmd` with `input` on its stdin, returning (exit code, stdout, stderr).
pub fn run_with_stdin(mut cmd: std::process::Command, input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // A command may refuse before it reads its input: a broken pipe then
    // is what it said, not an error of the test.
    match child.stdin.take().unwrap().write_all(input) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("stdin: {e}"),
        _ => {}
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `disco` binary copied to `dir/bin/disco`, `dir` and `bin` made
/// 0755: for a test that runs it as another user, who may not reach
/// `target/` (a checkout in a 0700 directory, such as root's home).
pub fn disco_for_anyone(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for d in [dir, bin.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let exe = bin.join("disco");
    // A hard link where it can be (no copy: nothing is open for writing);
    // else a copy, which another test thread's fork may still hold open
    // for writing for a moment (exec: ETXTBSY), so it is run once here,
    // retried until that moment has passed.
    if fs::hard_link(env!("CARGO_BIN_EXE_disco"), &exe).is_err() {
        fs::copy(env!("CARGO_BIN_EXE_disco"), &exe).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..100 {
            match std::process::Command::new(&exe).arg("--version").output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
    exe
}

/// The longest a [`bounded`] run may take.
pub const BOUNDED_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a bounded run ended with.
pub struct Ended {
    pub code: i32,
    pub out: String,
    pub err: String,
    /// disco's peak RSS and its waited-for children's, bytes.
    pub max_rss: u64,
}

/// Runs `cmd` in a process group of its own with at most 2 GiB of data
/// (`RLIMIT_DATA`, inherited by the sandbox); past [`BOUNDED_LIMIT`] the group
/// is killed and the test fails. Reaped with `wait4` for its peak RSS
/// (which clippy does not see).
#[allow(clippy::zombie_processes)]
pub fn bounded(mut cmd: std::process::Command) -> Ended {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            libc::setrlimit(libc::RLIMIT_DATA, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let pid = child.id() as i32;
    let (status, ru) = loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; wait4 on our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if got == pid {
            break (status, ru);
        }
        if started.elapsed() > BOUNDED_LIMIT {
            // SAFETY: kills the group this test started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("disco did not end within {} s", BOUNDED_LIMIT.as_secs());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ended {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        out: out.join().unwrap(),
        err: err.join().unwrap(),
        max_rss: ru.ru_maxrss as u64 * 1024,
    }
}

/// `nobody`'s uid and gid (the unprivileged serving user of the tests).
pub fn nobody_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "nobody"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// SIGKILLs a running `disco` and reaps it, then removes the cgroups its
/// sandboxes had (`disco-PID-*`, in every hierarchy): a dance killed
/// outright cannot, and the next dance leaves another process's for an
/// hour (client/sandbox/cgroup.rs `remove_stale`). Waits up to 5 s for the
/// sandboxes' processes, which die with the dance, to leave them.
pub fn kill_dance(child: &mut std::process::Child) {
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    sweep_cgroups(pid);
}

/// Removes the empty cgroups of the dance whose process was `pid`.
pub fn sweep_cgroups(pid: u32) {
    let prefix = format!("disco-{pid}-");
    let mut found = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(e.path());
            } else if depth < 6 {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for dir in found {
        while fs::remove_dir(&dir).is_err() && dir.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
