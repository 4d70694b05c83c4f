//! An outer cgroup a resource test puts disco in, so that a regression in
//! disco's own limits is stopped here (and seen: [`Outer::hits`]) instead
//! of taking the machine down. On a cgroup v2 tree it is a cgroup at the
//! root marked delegated (`trusted.delegate`, as systemd marks a unit with
//! `Delegate=yes`), so disco nests its sandboxes' cgroups inside it; on a
//! v1 or hybrid tree, children of the test's own cgroups in the `pids`
//! and `memory` hierarchies. Everything in it is killed and it is removed
//! on drop, a failed test included.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

pub struct Outer {
    /// (directory, pids or memory)
    dirs: Vec<(PathBuf, &'static str)>,
    pub v2: bool,
}

fn write(path: &Path, value: &str) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot write {value} to {}: {e}", path.display()));
}

fn own(key: &str) -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in text.lines() {
        let mut p = line.splitn(3, ':');
        let (_, c, path) = (p.next(), p.next().unwrap(), p.next().unwrap());
        if c.split(',').any(|c| c == key) || (key.is_empty() && c.is_empty()) {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    panic!("no {key} cgroup");
}

impl Outer {
    /// A cgroup allowing `pids` processes and `memory` bytes.
    pub fn new(pids: u64, memory: u64) -> Outer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "disco-test-outer-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            write(&root.join("cgroup.subtree_control"), "+pids +memory");
            let dir = root.join(name);
            fs::create_dir(&dir).unwrap();
            write(&dir.join("pids.max"), &pids.to_string());
            write(&dir.join("memory.max"), &memory.to_string());
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid C strings and a value of the given length.
            let r = unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    c"trusted.delegate".as_ptr(),
                    b"1".as_ptr().cast(),
                    1,
                    0,
                )
            };
            assert_eq!(r, 0, "setxattr trusted.delegate");
            return Outer {
                dirs: vec![(dir, "both")],
                v2: true,
            };
        }
        let pd = root.join("pids").join(own("pids")).join(&name);
        let md = root.join("memory").join(own("memory")).join(&name);
        fs::create_dir(&pd).unwrap();
        fs::create_dir(&md).unwrap();
        write(&pd.join("pids.max"), &pids.to_string());
        write(&md.join("memory.limit_in_bytes"), &memory.to_string());
        Outer {
            dirs: vec![(pd, "pids"), (md, "memory")],
            v2: false,
        }
    }

    /// Makes `cmd` start in the cgroup.
    pub fn wrap(&self, cmd: &mut std::process::Command) {
        let procs: Vec<std::ffi::CString> = self
            .dirs
            .iter()
            .map(|(d, _)| {
                std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes())
                    .unwrap()
            })
            .collect();
        // SAFETY: open/write/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    fn read(&self, kind: &str, file: &str, key: &str) -> u64 {
        let dir = self
            .dirs
            .iter()
            .find(|(_, k)| *k == kind || *k == "both")
            .map(|(d, _)| d)
            .unwrap();
        let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How often the outer limits were hit: (forks refused, OOM kills).
    pub fn hits(&self) -> (u64, u64) {
        let oom = if self.v2 {
            self.read("memory", "memory.events", "oom_kill ")
        } else {
            self.read("memory", "memory.oom_control", "oom_kill ")
        };
        (self.read("pids", "pids.events", "max "), oom)
    }

    /// The cgroups disco made inside (left over: a leak).
    pub fn children(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (d, _) in &self.dirs {
            for e in fs::read_dir(d).unwrap().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path().display().to_string());
                }
            }
        }
        out
    }
}

/// Removes `dir` and what is below it, killing what runs there.
fn remove(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove(&e.path());
            }
        }
    }
    for _ in 0..200 {
        if dir.join("cgroup.kill").exists() {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        } else {
            for pid in fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kills a process of the test's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Drop for Outer {
    fn drop(&mut self) {
        for (d, _) in &self.dirs {
            remove(d);
        }
    }
}
