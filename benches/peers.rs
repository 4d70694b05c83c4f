//! Benchmark: disco side by side with its peers — CFEngine 3 and Puppet 7,
//! from Debian's packages (installed with apt-get when missing) — on the
//! same workload: 20 modules of 3 static files of ~1 KiB, 2 templates
//! reading two parameters, 1 state script appending a line to its state
//! file only when it is missing; no module requires another (disco runs
//! them side by side, `jobs`). Each tool gets the workload in its own
//! dialect (disco modules; a CFEngine bundle with `copy_from`, mustache
//! `edit_template` and `commands`; a Puppet manifest with `source`,
//! `inline_epp` and `exec … unless`) and its own target tree, never the
//! host's: disco a fixture root (`--root`, its state dir inside it at
//! `var/lib/disco`, as on a node), the peers a directory their paths are
//! prefixed with.
//!
//! Two workloads, a table each: the project's (disco's templates `echo`
//! lines; the peers' templates given their values), and the idiomatic one
//! (disco's templates a `cat <<EOF` here-doc reading two parameters with
//! `$(disco param get KEY)` and the host with `$(hostname -s)`;
//! CFEngine's mustache reading `vars.bench.port` and `vars.sys.uqhost`
//! from the agent's own state, Puppet's EPP reading `$facts`).
//!
//! Four scenarios, medians of `DISCO_BENCH_RUNS` runs (default 7), the
//! tools taking turns run by run (a shared machine's load then weighs on
//! them alike):
//! first apply on an empty root, no-change re-apply, dry run on the
//! converged root, dry run on an empty root. After every run the target
//! tree is checked byte for byte against the expected one (the converged
//! tree, or no trace of the workload after a dry run on an empty root).
//! Prints, per workload, one table of medians, peak RSS and disco's ratio
//! to CFEngine. `DISCO_BENCH_PUPPET=0` leaves Puppet out (its runs take
//! seconds each, most of the benchmark's time); `DISCO_BENCH_BASE=PATH`
//! adds a column for another disco binary (an earlier build), measured
//! in the same run, for a before/after under the same load.
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

use workload::Style;

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

/// Whether Puppet is measured (`DISCO_BENCH_PUPPET=0` leaves it out).
fn with_puppet() -> bool {
    std::env::var("DISCO_BENCH_PUPPET").map_or(true, |v| v != "0")
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the peers benchmark needs root"
    );
    install_peers();
    let dir = tempfile::tempdir().unwrap();
    let mut tables = Vec::new();
    for (style, title) in [
        (Style::Echo, "project workload (echo templates)"),
        (
            Style::Idiomatic,
            "idiomatic workload (cat <<EOF, disco param get, hostname -s)",
        ),
    ] {
        let d = dir.path().join(format!("{style:?}").to_lowercase());
        fs::create_dir_all(&d).unwrap();
        tables.push((title, bench_workload(&d, style)));
    }
    for (title, (names, rows)) in &tables {
        print_table(title, names, rows);
    }
    println!(
        "(every run's tree checked against the expected one; {} runs per cell)",
        runs()
    );
}

/// Sets up the three tools on workload `style` under `d` and measures
/// them: their names and rows (CFEngine, Puppet when measured, disco).
fn bench_workload(d: &Path, style: Style) -> (Vec<&'static str>, Vec<Row>) {
    let server = d.join("disco-server");
    workload::workload_styled(&server, "bench", MODULES, false, style);
    let mut tools = vec![cfengine_tool(d, &server, style)];
    if with_puppet() {
        tools.push(puppet_tool(d, &server, style));
    }
    if let Ok(base) = std::env::var("DISCO_BENCH_BASE") {
        tools.push(disco_tool(d, "disco (base)", PathBuf::from(base)));
    }
    tools.push(disco_tool(
        d,
        "disco",
        PathBuf::from(env!("CARGO_BIN_EXE_disco")),
    ));
    let expected = expected_tree(&server, style);
    eprintln!("{style:?} workload: benchmarking the tools in turn …");
    let rows = bench_tools(&tools, &expected);
    (tools.iter().map(|t| t.name).collect(), rows)
}

/// The binary `disco` on the server tree `d/disco-server`, a fixture
/// root of its own.
fn disco_tool(d: &Path, name: &'static str, disco: PathBuf) -> Tool {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = d.join(format!("{}-root", name.replace([' ', '(', ')'], "")));
    let st = Command::new(repo.join("scripts/make-fixture-root"))
        .arg(&root)
        .arg(&disco)
        .status()
        .unwrap();
    assert!(st.success(), "make-fixture-root failed");
    fs::write(d.join("disco.toml"), "").unwrap();
    let d = d.to_path_buf();
    Tool {
        name,
        base: root.clone(),
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
}

/// CFEngine: one bundle, its own work dir.
fn cfengine_tool(d: &Path, server: &Path, style: Style) -> Tool {
    let cf_base = d.join("cfengine-root");
    let cf_work = d.join("cfengine-work");
    let policy = cfengine_policy(server, &d.join("cfengine-src"), &cf_base, style);
    fs::create_dir_all(cf_work.join("bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/cf-promises", cf_work.join("bin/cf-promises")).unwrap();
    let st = Command::new("cf-key")
        .env("CFENGINE_TEST_OVERRIDE_WORKDIR", &cf_work)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "cf-key failed");
    Tool {
        name: "CFEngine 3",
        base: cf_base,
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
    }
}

/// Puppet: one manifest, its own conf/var dirs.
fn puppet_tool(d: &Path, server: &Path, style: Style) -> Tool {
    let pp_base = d.join("puppet-root");
    let pp_dirs = d.join("puppet");
    let manifest = puppet_manifest(server, &d.join("puppet-src"), &pp_base, style);
    Tool {
        name: "Puppet 7",
        base: pp_base,
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
    }
}

/// Prints one workload's table: a column per tool, disco's ratio to
/// CFEngine (the first), peak RSS.
fn print_table(title: &str, names: &[&str], rows: &[Row]) {
    println!("\n{title}");
    print!("{:<26}", "median wall (peak RSS)");
    for n in names {
        print!(" {n:>12}");
    }
    println!(" {:>16}", "disco / CFEngine");
    let disco = rows.len() - 1;
    for (i, s) in SCENARIOS.iter().enumerate() {
        print!("{s:<26}");
        for r in rows {
            print!(" {:>12}", format!("{:.0} ms", r.wall[i] * 1e3));
        }
        println!(" {:>15.2}×", rows[disco].wall[i] / rows[0].wall[i]);
    }
    print!("{:<26}", "peak RSS");
    for r in rows {
        print!(" {:>12}", format!("{:.1} MB", r.rss_kib as f64 / 1024.0));
    }
    println!();
}

/// Installs CFEngine (and Puppet, when measured) from Debian's packages
/// when missing.
fn install_peers() {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut missing = Vec::new();
    if !have("cf-agent") {
        missing.push("cfengine3");
    }
    if with_puppet() && !have("puppet") {
        missing.push("puppet");
    }
    if missing.is_empty() {
        return;
    }
    eprintln!("installing {} from Debian's packages …", missing.join(" "));
    let st = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get");
    assert!(st.success(), "apt-get install {} failed", missing.join(" "));
}

/// Runs the four scenarios for every tool, checking its tree after each
/// run. The tools take turns run by run (in turn forwards, then
/// backwards), so a machine whose load moves meets them all alike.
fn bench_tools(tools: &[Tool], expected: &BTreeMap<String, (u32, Vec<u8>)>) -> Vec<Row> {
    let mut rows: Vec<Row> = tools.iter().map(|_| Row::default()).collect();
    let empty = |tool: &Tool| {
        for sub in ["etc/bench", "var/lib/bench"] {
            let _ = fs::remove_dir_all(tool.base.join(sub));
        }
        for sub in ["etc", "var/lib"] {
            fs::create_dir_all(tool.base.join(sub)).unwrap();
        }
    };
    // (dry run, from an empty root, converged after it)
    for (s, (dry, reset, converged)) in [
        (false, true, true),
        (false, false, true),
        (true, false, true),
        (true, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!("  {} …", SCENARIOS[s]);
        let mut wall = vec![Vec::new(); tools.len()];
        for r in 0..runs() {
            let mut order: Vec<usize> = (0..tools.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for t in order {
                let tool = &tools[t];
                if reset {
                    empty(tool);
                }
                let (secs, rss) = run_measured(&mut (tool.run)(dry), tool.name);
                rows[t].rss_kib = rows[t].rss_kib.max(rss);
                wall[t].push(secs);
                check_tree(tool, expected, converged);
            }
        }
        for (row, w) in rows.iter_mut().zip(&mut wall) {
            w.sort_by(|a, b| a.partial_cmp(b).unwrap());
            row.wall.push(w[w.len() / 2]);
        }
    }
    rows
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
fn expected_tree(server: &Path, style: Style) -> BTreeMap<String, (u32, Vec<u8>)> {
    let host = workload::short_hostname();
    let mut t = BTreeMap::new();
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
                (0o644, workload::rendered(style, &m, n, &host).into_bytes()),
            );
        }
        t.insert(
            format!("var/lib/bench/{m}.state"),
            (0, format!("{m}\n").into_bytes()),
        );
    }
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
        s = dir.join(format!("{m}.state")).display(),
        d = dir.display()
    )
}

fn write(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// The workload as one CFEngine policy file; its sources under `src`.
/// The idiomatic style's templates read the agent's own state
/// (`datastate()`, mustache's default data): `vars.bench.*` and
/// `vars.sys.uqhost`.
fn cfengine_policy(server: &Path, src: &Path, base: &Path, style: Style) -> PathBuf {
    let mut p = String::from(
        r#"body common control { bundlesequence => { "bench" }; }
body copy_from bench_cp(from) { source => "$(from)"; compare => "digest"; copy_backup => "false"; }
body perms bench_m(mode) { mode => "$(mode)"; owners => { "root" }; groups => { "root" }; rxdirs => "false"; }
body edit_defaults bench_nobackup { edit_backup => "false"; }
bundle agent bench {
  vars:
    "port" string => "8080";
"#,
    );
    for i in 0..MODULES {
        p.push_str(&format!("    \"name_m{i:02}\" string => \"m{i:02}\";\n"));
    }
    p.push_str("  files:\n");
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
            let (text, data) = match style {
                Style::Echo => (
                    format!("# template {t}\nport={{{{port}}}}\nname={{{{name}}}}\n"),
                    format!(" template_data => parsejson('{{\"port\": \"$(port)\", \"name\": \"{m}\"}}'),"),
                ),
                Style::Idiomatic => (
                    format!("# template {t}\nport={{{{vars.bench.port}}}}\nname={{{{vars.bench.name_{m}}}}}\nhost={{{{vars.sys.uqhost}}}}\n"),
                    String::new(),
                ),
            };
            write(&tpl, &text);
            p.push_str(&format!(
                "    \"{}/t{t}.conf\" create => \"true\", edit_template => \"{}\", template_method => \"mustache\",{data} edit_defaults => bench_nobackup, perms => bench_m(\"644\");\n",
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
/// The idiomatic style's templates read the host from `$facts`.
fn puppet_manifest(server: &Path, src: &Path, base: &Path, style: Style) -> PathBuf {
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
            let host = match style {
                Style::Echo => "",
                Style::Idiomatic => "host=<%= $facts['networking']['hostname'] %>\n",
            };
            write(
                &tpl,
                &format!("# template {t}\nport=<%= $port %>\nname=<%= $name %>\n{host}"),
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
            base.join(format!("var/lib/bench/{m}.state")).display()
        ));
    }
    let file = src.join("site.pp");
    write(&file, &p);
    file
}
