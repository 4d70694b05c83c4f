//! The 20-module benchmark workload shared by `benches/dance.rs`,
//! `benches/merge.rs` and `benches/peers.rs`: each module has 3 static
//! files of ~1 KiB, 2 templates reading two parameters, 1 script that
//! appends a line to its state file only when missing; no module requires
//! another. Its templates come
//! in two styles ([`Style`]): the project's `echo` lines, and the
//! idiomatic one an admin writes, a `cat <<EOF` here-doc that reads the
//! host's short name too.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub fn write(p: &Path, content: &str, mode: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A server tree where `node` has the one module `module` (its directory
/// made, empty).
pub fn one_module_node(server: &Path, node: &str, module: &str) {
    write(
        &server
            .join("parameters")
            .join(node)
            .join("modules")
            .join(module),
        "",
        0o644,
    );
    fs::create_dir_all(server.join("modules").join(module)).unwrap();
}

/// How the workload's templates are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `echo "port=$(disco param get port)"`, a line each.
    Echo,
    /// `cat <<EOF` with `$(disco param get KEY)` and `$(hostname -s)`.
    Idiomatic,
}

/// The text template `t` of module `m` renders to; `host` is the node's
/// short host name (only the idiomatic style prints it).
pub fn rendered(style: Style, m: &str, t: usize, host: &str) -> String {
    match style {
        Style::Echo => format!("# template {t}\nport=8080\nname={m}\n"),
        Style::Idiomatic => format!("# template {t}\nport=8080\nname={m}\nhost={host}\n"),
    }
}

/// This machine's short host name, as `hostname -s` prints it.
pub fn short_hostname() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    h.trim_end().split('.').next().unwrap().to_string()
}

/// The workload server tree; `empty` leaves the modules without content.
pub fn workload(server: &Path, node: &str, modules: usize, empty: bool) {
    workload_styled(server, node, modules, empty, Style::Echo)
}

/// The workload server tree with templates of `style`.
pub fn workload_styled(server: &Path, node: &str, modules: usize, empty: bool, style: Style) {
    generate(server, node, modules, empty, style, false)
}

/// The workload server tree; `chain`: each module requires the one
/// before (`benches/scale.rs`'s long chain).
pub fn workload_shaped(server: &Path, node: &str, modules: usize, style: Style, chain: bool) {
    generate(server, node, modules, false, style, chain)
}

fn generate(server: &Path, node: &str, modules: usize, empty: bool, style: Style, chain: bool) {
    fs::create_dir_all(server.join("parameters").join(node).join("modules")).unwrap();
    write(
        &server.join("parameters").join(node).join("parameters/port"),
        "8080\n",
        0o644,
    );
    for i in 0..modules {
        let m = format!("m{i:02}");
        let dir = server.join("modules").join(&m);
        fs::create_dir_all(&dir).unwrap();
        write(
            &server
                .join("parameters")
                .join(node)
                .join("modules")
                .join(&m),
            "",
            0o644,
        );
        // Independent modules, as a fleet's mostly are (and as the
        // peers' dialects of the workload have them): each its own files
        // and its own state file.
        let requires = match (chain, i) {
            (true, 1..) => format!("after m{:02}\n", i - 1),
            _ => String::new(),
        };
        write(&dir.join("requires"), &requires, 0o644);
        if empty {
            continue;
        }
        // Each module's own key: two modules may not default one key.
        write(
            &dir.join(format!("parameters/{m}/name")),
            &format!("{m}\n"),
            0o644,
        );
        for f in 1..=3 {
            let body: String = (0..16)
                .map(|l| {
                    format!("{m} file {f} line {l:02} ........................................\n")
                })
                .collect();
            write(
                &dir.join(format!("files/etc/bench/{m}/f{f}.conf")),
                &body,
                0o644,
            );
        }
        for t in 1..=2 {
            let tpl = match style {
                Style::Echo => format!("echo \"# template {t}\"\necho \"port=$(disco param get port)\"\necho \"name=$(disco param get {m}/name)\"\n"),
                Style::Idiomatic => format!("cat <<EOF\n# template {t}\nport=$(disco param get port)\nname=$(disco param get {m}/name)\nhost=$(hostname -s)\nEOF\n"),
            };
            write(
                &dir.join(format!("templates/etc/bench/{m}/t{t}.conf")),
                &tpl,
                0o644,
            );
        }
        let script = format!(
            "grep -qx {m} /var/lib/bench/{m}.state 2>/dev/null || {{ mkdir -p /var/lib/bench; echo {m} >> /var/lib/bench/{m}.state; }}\n"
        );
        write(&dir.join("scripts/10-state"), &script, 0o755);
    }
}

/// A fixture root at `root` (`scripts/make-fixture-root`), with the
/// shared libraries `disco` needs.
pub fn fixture_root(root: &Path, disco: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-fixture-root");
    let st = Command::new(script).arg(root).arg(disco).status().unwrap();
    assert!(st.success(), "make-fixture-root {}", root.display());
}

/// `to` made anew as a copy of `from` (`cp -a`).
pub fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// Runs per measurement: `DISCO_BENCH_RUNS`, else `default`.
pub fn runs(default: usize) -> usize {
    std::env::var("DISCO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Wall times (seconds) of the runs of a command, and the peak RSS (KiB)
/// over all of them.
pub struct Measure {
    pub wall: Vec<f64>,
    pub rss_kib: i64,
}

/// Runs the command `make` builds `runs` times, each to its end; its peak
/// RSS is `wait4`'s (the process and the children it reaped). A failed
/// run panics with its output.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not know
pub fn measure(runs: usize, mut make: impl FnMut() -> Command) -> Measure {
    let mut m = Measure {
        wall: Vec::new(),
        rss_kib: 0,
    };
    for _ in 0..runs {
        let t = Instant::now();
        let child = make()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: rusage is plain data, filled by wait4.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        m.wall.push(t.elapsed().as_secs_f64());
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let out = make().output().unwrap();
            panic!(
                "a benchmarked command failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        m.rss_kib = m.rss_kib.max(ru.ru_maxrss);
    }
    m
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
