//! Benchmark: disco side by side with its peers — CFEngine 3 and Puppet 7,
//! from Debian's packages (installed with apt-get when missing) — on the
//! same workload: 20 modules of 3 static files of ~1 KiB, 2 templates
//! reading two parameters, 1 state script appending a line to a state
//! file only when it is missing. Each tool gets the workload in its own
//! dialect (disco modules; a CFEngine bundle with `copy_from`, mustache
//! `edit_template` and `commands`; a Puppet manifest with `source`,
//! `inline_epp` and `exec … unless`) and its own target tree, never the
//! host's: disco a fixture root (`--root`, its state dir inside it at
//! `var/lib/disco`, as on a node), the peers a directory their paths are
//! prefixed with.
//!
//! Four scenarios, run in turn for every tool, medians of
//! `DISCO_BENCH_RUNS` runs (default 7):
//! first apply on an empty root, no-change re-apply, dry run on the
//! converged root, dry run on an empty root. After every run the target
//! tree is checked byte for byte against the expected one (the converged
//! tree, or no trace of the workload after a dry run on an empty root).
//! Prints one table of medians, peak RSS and disco's ratio to CFEngine.
//!
//! Run as root: `cargo bench --bench peers`.

#[path = "common/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const MODULES: usize = 20;
const PORT: &str = "8080";

/// A tool under test: how to run it, and where its tree is.
struct Tool {
    name: &'static str,
    /// The root its paths land in.
    base: PathBuf,
    /// The command for a real run (`false`) or a dry run (`true`).
    run: Box<dyn Fn(bool) -> Command>,
}

#[derive(Default)]
struct Row {
    /// Medians in seconds, per scenario.
    wall: Vec<f64>,
    rss_kib: i64,
}

const SCENARIOS: [&str; 4] = [
    "first apply, empty root",
    "no-change re-apply",
    "dry run, converged",
    "dry run, empty root",
];

fn runs() -> usize {
    workload::runs(7)
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the peers benchmark needs root"
    );
    install_peers();
    let disco = PathBuf::from(env!("CARGO_BIN_EXE_disco"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // disco: the workload as a server tree, a fixture root.
    let server = d.join("disco-server");
    workload::workload(&server, "bench", MODULES, false);
    let disco_root = d.join("disco-root");
    let st = Command::new(repo.join("scripts/make-fixture-root"))
        .arg(&disco_root)
        .arg(&disco)
        .status()
        .unwrap();
    assert!(st.success(), "make-fixture-root failed");
    fs::write(d.join("disco.toml"), "").unwrap();
    let disco_tool = {
        let (root, d) = (disco_root.clone(), d.to_path_buf());
        Tool {
            name: "disco",
            base: disco_root.clone(),
            run: Box::new(move |dry| {
                let mut c = Command::new(&disco);
                c.env_remove("NOOP")
                    .arg("--config")
                    .arg(d.join("disco.toml"))
                    .arg("--server")
                    .arg(d.join("disco-server"))
                    .args(["--node", "bench", "--root"])
                    .arg(&root)
                    .arg("--state-dir")
                    // Where a node keeps it: inside the root it manages.
                    .arg(root.join("var/lib/disco"))
                    .args(["dance", "--quiet"]);
                if dry {
                    c.env("NOOP", "true");
                }
                c
            }),
        }
    };

    // CFEngine: one bundle, its own work dir.
    let cf_base = d.join("cfengine-root");
    let cf_src = d.join("cfengine-src");
    let cf_work = d.join("cfengine-work");
    let policy = cfengine_policy(&server, &cf_src, &cf_base);
    fs::create_dir_all(cf_work.join("bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/cf-promises", cf_work.join("bin/cf-promises")).unwrap();
    let st = Command::new("cf-key")
        .env("CFENGINE_TEST_OVERRIDE_WORKDIR", &cf_work)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "cf-key failed");
    let cf_tool = Tool {
        name: "CFEngine 3",
        base: cf_base.clone(),
        run: Box::new(move |dry| {
            let mut c = Command::new("cf-agent");
            c.env("CFENGINE_TEST_OVERRIDE_WORKDIR", &cf_work)
                .args(["--no-lock", "--inform", "-f"])
                .arg(&policy);
            if dry {
                c.arg("--dry-run");
            }
            c
        }),
    };

    // Puppet: one manifest, its own conf/var dirs.
    let pp_base = d.join("puppet-root");
    let pp_src = d.join("puppet-src");
    let pp_dirs = d.join("puppet");
    let manifest = puppet_manifest(&server, &pp_src, &pp_base);
    let pp_tool = Tool {
        name: "Puppet 7",
        base: pp_base.clone(),
        run: Box::new(move |dry| {
            let mut c = Command::new("puppet");
            c.arg("apply");
            for (flag, sub) in [
                ("--confdir", "conf"),
                ("--vardir", "var"),
                ("--codedir", "code"),
                ("--logdir", "log"),
                ("--rundir", "run"),
            ] {
                c.arg(flag).arg(pp_dirs.join(sub));
            }
            c.arg(&manifest);
            if dry {
                c.arg("--noop");
            }
            c
        }),
    };

    let expected = expected_tree(&server);
    let mut rows = Vec::new();
    for tool in [&cf_tool, &pp_tool, &disco_tool] {
        eprintln!("benchmarking {} …", tool.name);
        rows.push(bench_tool(tool, &expected));
    }

    println!(
        "{:<26} {:>12} {:>12} {:>12} {:>16}",
        "median wall (peak RSS)", cf_tool.name, pp_tool.name, "disco", "disco / CFEngine"
    );
    for (i, s) in SCENARIOS.iter().enumerate() {
        let cell = |r: &Row| format!("{:.0} ms", r.wall[i] * 1e3);
        println!(
            "{s:<26} {:>12} {:>12} {:>12} {:>15.2}×",
            cell(&rows[0]),
            cell(&rows[1]),
            cell(&rows[2]),
            rows[2].wall[i] / rows[0].wall[i]
        );
    }
    let rss = |r: &Row| format!("{:.1} MB", r.rss_kib as f64 / 1024.0);
    println!(
        "{:<26} {:>12} {:>12} {:>12}",
        "peak RSS",
        rss(&rows[0]),
        rss(&rows[1]),
        rss(&rows[2])
    );
    println!(
        "(every run's tree checked against the expected one; {} runs per cell)",
        runs()
    );
}

/// Installs CFEngine and Puppet from Debian's packages when missing.
fn install_peers() {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("cf-agent") && have("puppet") {
        return;
    }
    eprintln!("installing cfengine3 and puppet from Debian's packages …");
    let st = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "cfengine3",
            "puppet",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get");
    assert!(st.success(), "apt-get install cfengine3 puppet failed");
}

/// Runs the four scenarios for `tool`, checking its tree after each run.
fn bench_tool(tool: &Tool, expected: &BTreeMap<String, (u32, Vec<u8>)>) -> Row {
    let mut row = Row::default();
    let empty = || {
        for sub in ["etc/bench", "var/lib/bench"] {
            let _ = fs::remove_dir_all(tool.base.join(sub));
        }
        for sub in ["etc", "var/lib"] {
            fs::create_dir_all(tool.base.join(sub)).unwrap();
        }
    };
    let time = |dry: bool, reset: bool, want_converged: bool, row: &mut Row| {
        let mut wall = Vec::new();
        for _ in 0..runs() {
            if reset {
                empty();
            }
            let (secs, rss) = run_measured(&mut (tool.run)(dry), tool.name);
            row.rss_kib = row.rss_kib.max(rss);
            wall.push(secs);
            check_tree(tool, expected, want_converged);
        }
        wall.sort_by(|a, b| a.partial_cmp(b).unwrap());
        row.wall.push(wall[wall.len() / 2]);
    };
    time(false, true, true, &mut row);
    time(false, false, true, &mut row);
    time(true, false, true, &mut row);
    time(true, true, false, &mut row);
    row
}

/// Runs `cmd`, output discarded; wall seconds and peak RSS (KiB) from
/// `wait4`. A failing run stops the benchmark with its output.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not know
fn run_measured(cmd: &mut Command, name: &str) -> (f64, i64) {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let mut status = 0;
    // SAFETY: plain data filled by wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let secs = started.elapsed().as_secs_f64();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        panic!(
            "{name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (secs, ru.ru_maxrss)
}

/// The converged workload: path under the root → (mode, content). The
/// state file's mode is left out (it is whatever umask the tool runs
/// its commands with).
fn expected_tree(server: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut t = BTreeMap::new();
    let mut state = String::new();
    for i in 0..MODULES {
        let m = format!("m{i:02}");
        for f in 1..=3 {
            let rel = format!("etc/bench/{m}/f{f}.conf");
            let body = fs::read(server.join("modules").join(&m).join("files").join(&rel)).unwrap();
            t.insert(rel, (0o644, body));
        }
        for n in 1..=2 {
            t.insert(
                format!("etc/bench/{m}/t{n}.conf"),
                (
                    0o644,
                    format!("# template {n}\nport={PORT}\nname={m}\n").into_bytes(),
                ),
            );
        }
        state.push_str(&format!("{m}\n"));
    }
    t.insert("var/lib/bench/state".into(), (0, state.into_bytes()));
    t
}

/// Checks the tool's tree: exactly the expected files when converged,
/// no trace of the workload otherwise.
fn check_tree(tool: &Tool, expected: &BTreeMap<String, (u32, Vec<u8>)>, converged: bool) {
    let mut found = BTreeMap::new();
    for sub in ["etc/bench", "var/lib/bench"] {
        walk(&tool.base, &tool.base.join(sub), &mut found);
    }
    if !converged {
        assert!(
            found.is_empty(),
            "{}: a dry run on an empty root left {:?}",
            tool.name,
            found.keys().collect::<Vec<_>>()
        );
        return;
    }
    for (rel, (mode, content)) in expected {
        let Some((m, c, uid)) = found.remove(rel) else {
            panic!("{}: {rel} is missing", tool.name);
        };
        assert!(c == *content, "{}: {rel} differs", tool.name);
        assert!(*mode == 0 || m == *mode, "{}: {rel} mode {m:o}", tool.name);
        assert_eq!(uid, 0, "{}: {rel} owner", tool.name);
    }
    assert!(
        found.is_empty(),
        "{}: files that should not be there: {:?}",
        tool.name,
        found.keys().collect::<Vec<_>>()
    );
}

type Found = BTreeMap<String, (u32, Vec<u8>, u32)>;

fn walk(base: &Path, dir: &Path, found: &mut Found) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            walk(base, &p, found);
        } else {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let content = fs::read(&p).unwrap_or_default();
            found.insert(rel, (meta.mode() & 0o7777, content, meta.uid()));
        }
    }
}

/// The state script of module `m`, with its state file under `base`.
fn state_script(m: &str, base: &Path) -> String {
    let dir = base.join("var/lib/bench");
    format!(
        "grep -qx {m} {s} 2>/dev/null || {{ mkdir -p {d}; echo {m} >> {s}; }}\n",
        s = dir.join("state").display(),
        d = dir.display()
    )
}

fn write(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// The workload as one CFEngine policy file; its sources under `src`.
fn cfengine_policy(server: &Path, src: &Path, base: &Path) -> PathBuf {
    let mut p = String::from(
        r#"body common control { bundlesequence => { "bench" }; }
body copy_from bench_cp(from) { source => "$(from)"; compare => "digest"; copy_backup => "false"; }
body perms bench_m(mode) { mode => "$(mode)"; owners => { "root" }; groups => { "root" }; rxdirs => "false"; }
body edit_defaults bench_nobackup { edit_backup => "false"; }
bundle agent bench {
  vars:
    "port" string => "8080";
  files:
"#,
    );
    let mut commands = String::from("  commands:\n");
    for i in 0..MODULES {
        let m = format!("m{i:02}");
        let dir = base.join(format!("etc/bench/{m}"));
        p.push_str(&format!(
            "    \"{}/.\" create => \"true\", perms => bench_m(\"755\");\n",
            dir.display()
        ));
        for f in 1..=3 {
            let from = server.join(format!("modules/{m}/files/etc/bench/{m}/f{f}.conf"));
            p.push_str(&format!(
                "    \"{}/f{f}.conf\" copy_from => bench_cp(\"{}\"), perms => bench_m(\"644\");\n",
                dir.display(),
                from.display()
            ));
        }
        for t in 1..=2 {
            let tpl = src.join(format!("{m}/t{t}.mustache"));
            write(
                &tpl,
                &format!("# template {t}\nport={{{{port}}}}\nname={{{{name}}}}\n"),
            );
            p.push_str(&format!(
                "    \"{}/t{t}.conf\" create => \"true\", edit_template => \"{}\", template_method => \"mustache\", template_data => parsejson('{{\"port\": \"$(port)\", \"name\": \"{m}\"}}'), edit_defaults => bench_nobackup, perms => bench_m(\"644\");\n",
                dir.display(),
                tpl.display()
            ));
        }
        let script = src.join(format!("{m}/state.sh"));
        write(&script, &state_script(&m, base));
        commands.push_str(&format!("    \"/bin/sh {}\";\n", script.display()));
    }
    p.push_str(&commands);
    p.push_str("}\n");
    let file = src.join("promises.cf");
    write(&file, &p);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// The workload as one Puppet manifest; its sources under `src`.
fn puppet_manifest(server: &Path, src: &Path, base: &Path) -> PathBuf {
    let attrs = "owner => 'root', group => 'root'";
    let mut p = format!(
        "$port = '{PORT}'\nfile {{ '{}': ensure => directory, mode => '0755', {attrs} }}\n",
        base.join("etc/bench").display()
    );
    for i in 0..MODULES {
        let m = format!("m{i:02}");
        let dir = base.join(format!("etc/bench/{m}"));
        p.push_str(&format!(
            "file {{ '{}': ensure => directory, mode => '0755', {attrs} }}\n",
            dir.display()
        ));
        for f in 1..=3 {
            let from = server.join(format!("modules/{m}/files/etc/bench/{m}/f{f}.conf"));
            p.push_str(&format!(
                "file {{ '{}/f{f}.conf': source => '{}', mode => '0644', {attrs} }}\n",
                dir.display(),
                from.display()
            ));
        }
        for t in 1..=2 {
            let tpl = src.join(format!("{m}/t{t}.epp"));
            write(
                &tpl,
                &format!("# template {t}\nport=<%= $port %>\nname=<%= $name %>\n"),
            );
            p.push_str(&format!(
                "file {{ '{}/t{t}.conf': content => inline_epp(file('{}'), {{ 'port' => $port, 'name' => '{m}' }}), mode => '0644', {attrs} }}\n",
                dir.display(),
                tpl.display()
            ));
        }
        let script = src.join(format!("{m}/state.sh"));
        write(&script, &state_script(&m, base));
        p.push_str(&format!(
            "exec {{ '{m}-state': command => '/bin/sh {}', unless => '/bin/grep -qx {m} {}' }}\n",
            script.display(),
            base.join("var/lib/bench/state").display()
        ));
    }
    let file = src.join("site.pp");
    write(&file, &p);
    file
}
