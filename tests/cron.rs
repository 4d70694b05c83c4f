//! `disco report`, the lock, the status file, and the cron flags.
mod common;

use common::root::FixtureRoot;
use common::{run, Fixture};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn noop(f: &Fixture, r: &FixtureRoot, args: &[&str]) -> (i32, String, String) {
    f.noop_dance("n", &r.path, args)
}

fn last(f: &Fixture) -> serde_json::Value {
    serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap()).unwrap()
}

fn step<'a>(report: &'a serde_json::Value, module: usize, name: &str) -> &'a serde_json::Value {
    report["modules"][module]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[test]
fn figures_are_real() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-sleep", "sleep 0.2\n", 0o755)
        .module_file(
            "m",
            "scripts/20-alloc",
            "x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo ${#x}\n",
            0o755,
        );
    let (code, out, err) = noop(&f, &r, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let rep = last(&f);
    assert!(
        step(&rep, 0, "scripts/10-sleep")["figures"]["time_real"]
            .as_f64()
            .unwrap()
            >= 0.2
    );
    assert!(
        step(&rep, 0, "scripts/20-alloc")["figures"]["mem_max"]
            .as_i64()
            .unwrap()
            >= 50_000
    );
    let (code, out, _) = run(f.disco().arg("report"));
    assert_eq!(code, 0);
    assert!(
        out.contains("report: m: script 10-sleep\nreport:    time_real 0.2"),
        "{out}"
    );
    assert!(out.contains("report: disco: fetch\n"), "{out}");
    assert!(out.ends_with("report: exit: 0\n"), "{out}");
    // --json round-trips to the same report.
    let (_, json, _) = run(f.disco().args(["report", "--json"]));
    let parsed: disco::report::RunReport = serde_json::from_str(&json).unwrap();
    let again: serde_json::Value = serde_json::to_value(&parsed).unwrap();
    assert_eq!(again, rep);
}

#[test]
fn history_is_bounded() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "report_history = 3\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    for _ in 0..5 {
        assert_eq!(noop(&f, &r, &[]).0, 0);
        std::thread::sleep(Duration::from_millis(1100)); // run ids are per second
    }
    let (code, out, _) = run(f.disco().args(["report", "--history"]));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("ok") && l.contains("(noop)")),
        "{out}"
    );
    assert_eq!(
        fs::read_dir(f.state().join("reports")).unwrap().count(),
        4,
        "3 runs + last.json"
    );
}

#[test]
fn prometheus_output_parses() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let textfile = f.dir.path().join("disco.prom");
    fs::write(
        f.config(),
        format!("prometheus_textfile = \"{}\"\n", textfile.display()),
    )
    .unwrap();
    f.node("n", &["m", "m2"]).module("m", "").module("m2", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644);
    assert_eq!(noop(&f, &r, &[]).0, 0);
    let (_, out, _) = run(f.disco().args(["report", "--prometheus"]));
    assert_eq!(out, fs::read_to_string(&textfile).unwrap());
    // node_exporter reads it as its own user.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&textfile).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
    let mut samples = std::collections::BTreeMap::new();
    for line in out.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP disco_") || line.starts_with("# TYPE disco_"),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = series.split_once('{').unwrap();
        assert!(
            labels.ends_with('}') && labels.contains("node=\"n\""),
            "{line}"
        );
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        samples.insert(series.to_string(), v);
    }
    assert_eq!(samples["disco_last_run_changes{node=\"n\"}"], 1.0);
    assert_eq!(samples["disco_last_run_success{node=\"n\"}"], 1.0);
    assert!(samples.contains_key("disco_module_duration_seconds{node=\"n\",module=\"m2\"}"));
}

fn spawn_dance(f: &Fixture, r: &FixtureRoot, extra: &[&str]) -> std::process::Child {
    f.process(&f.state(), &r.path)
        .env("NOOP", "1")
        .arg("dance")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_lock_holder(f: &Fixture) {
    let started = Instant::now();
    while !fs::read_to_string(f.state().join("status"))
        .unwrap_or_default()
        .starts_with("running")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the first dance did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn concurrent_dances_serialize_and_no_wait_exits_at_once() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "scripts/10-sleep", "sleep 1.5\n", 0o755);
    let first = spawn_dance(&f, &r, &[]);
    wait_for_lock_holder(&f);
    let t = Instant::now();
    let (code, _, err) = noop(&f, &r, &["--no-wait"]);
    assert_eq!(code, 1);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "--no-wait is fast"
    );
    assert!(
        err.starts_with(&format!(
            "error: another dance is running (pid {}",
            first.id()
        )),
        "{err}"
    );
    let second = spawn_dance(&f, &r, &[]);
    let first = first.wait_with_output().unwrap();
    let first_report = last(&f);
    let second = second.wait_with_output().unwrap();
    assert!(first.status.success() && second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("waiting for it to finish"));
    let second_report = last(&f);
    let t = |v: &serde_json::Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(
        t(&second_report["started"]) >= t(&first_report["ended"]),
        "the second started after the first ended"
    );
    // The root's lock file went with the last dance that held it.
    let m = fs::metadata(&r.path).unwrap();
    let lock = format!("/run/disco/root-{:x}-{}.lock", m.dev(), m.ino());
    assert!(!std::path::Path::new(&lock).exists(), "{lock} left behind");
}

#[test]
fn a_killed_dance_leaves_no_lock_and_says_so_in_status() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    // A sleep of its own: other tests on this machine sleep too.
    let sleep = format!("sleep 30.{}", std::process::id());
    f.module_file("m", "scripts/10-sleep", &format!("{sleep}\n"), 0o755);
    let mut first = spawn_dance(&f, &r, &[]);
    wait_for_lock_holder(&f);
    common::kill_dance(&mut first); // SIGKILL
    f.module_file("m", "scripts/10-sleep", "true\n", 0o755);
    let t = Instant::now();
    let (code, _, err) = noop(&f, &r, &["--no-wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(fs::read_to_string(f.state().join("status"))
        .unwrap()
        .starts_with("done at "));
    let ps = Command::new("pgrep")
        .args(["-fx", &sleep])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "the killed dance's sandbox went with it"
    );
}

#[test]
fn quiet_on_a_converged_node_prints_nothing() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/app.conf", "a\n", 0o644)
        .module_file(
            "m",
            "scripts/10-talk",
            "echo hello from the script\nsystemctl restart app\n",
            0o755,
        );
    let (code, out, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["dance", "--quiet"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("info: m: File: /etc/app.conf : Created"),
        "changes are printed, each naming its module: {err}"
    );
    // On the stream it wrote to, as without --quiet.
    assert!(
        out.contains("hello from the script"),
        "a changing module's output is shown: {out}{err}"
    );
    let (code, out, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["dance", "--quiet"]));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}

#[test]
fn if_changed_skips_until_a_publish_changes_the_inputs() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/v", "1\n", 0o644);
    let served = f.dir.path().join("served");
    let publish = || f.publish(&served, &[]);
    assert_eq!(publish().0, 0);
    let dance = |args: &[&str]| {
        run(f
            .disco_without_server()
            .env("NOOP", "1")
            .arg("--server")
            .arg(&served)
            .args(["--node", "n", "--root"])
            .arg(&r.path)
            .arg("dance")
            .args(args))
    };
    assert_eq!(dance(&[]).0, 0);
    let (code, _, err) = dance(&["--if-changed"]);
    assert_eq!(code, 0);
    assert!(err.contains("skipped: the server's snapshot"), "{err}");
    std::thread::sleep(Duration::from_millis(1100));
    f.module_file("m", "files/etc/v", "2\n", 0o644);
    assert_eq!(publish().0, 0);
    let (code, _, err) = dance(&["--if-changed"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("skipped") && err.contains("File: /etc/v"),
        "{err}"
    );
    let (_, _, err) = dance(&["--if-changed", "--max-age", "0s"]);
    assert!(
        !err.contains("skipped"),
        "too old a last run dances anyway: {err}"
    );
}

#[test]
fn uploaded_reports_land_under_the_nodes_own_dir_and_the_fleet_view_lists_them() {
    use common::sshd::{forced, keygen, Sshd};
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("a", &["m"]).node("b", &["m"]).module("m", "");
    let key = f.dir.path().join("key");
    let pubkey = keygen(&key);
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced(&pubkey, &f.server(), Some("a"))],
    );
    fs::write(
        f.config(),
        sshd.client_config(&key) + "report_upload = true\n",
    )
    .unwrap();
    let uri = sshd.uri(f.server().to_str().unwrap());
    let (code, _, err) = run(f
        .disco_without_server()
        .env("NOOP", "1")
        .args(["--server", &uri, "--node", "a", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not uploaded"), "{err}");
    let stored: serde_json::Value =
        serde_json::from_slice(&fs::read(f.server().join("reports/a/last.json")).unwrap()).unwrap();
    assert_eq!(stored["node"], "a");
    assert_eq!(
        fs::read_dir(f.server().join("reports")).unwrap().count(),
        1,
        "only a's own directory"
    );
    let (code, out, _) = run(f
        .disco_without_server()
        .arg("--server")
        .arg(f.server())
        .args(["report", "--fleet"]));
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].starts_with("a ") && lines[1].contains(" ok ") && !lines[1].contains("STALE"),
        "{out}"
    );
    let (code, out, _) = run(f
        .disco_without_server()
        .arg("--server")
        .arg(f.server())
        .args(["report", "--fleet", "--max-age", "0s"]));
    assert!(out.lines().nth(1).unwrap().ends_with("STALE"), "{out}");
    assert_eq!(code, 2, "a stale node: exit 2");
    // A failed last report: exit 1, whatever the age.
    let last = f.server().join("reports/a/last.json");
    let text = fs::read_to_string(&last)
        .unwrap()
        .replace("\"status\":\"ok\"", "\"status\":\"failed\"");
    fs::write(&last, text).unwrap();
    let (code, _, _) = run(f
        .disco_without_server()
        .arg("--server")
        .arg(f.server())
        .args(["report", "--fleet", "--max-age", "0s"]));
    assert_eq!(code, 1, "a failed node: exit 1");
}

/// The run directories a dance left in the state dir.
fn run_dirs(state: &std::path::Path) -> Vec<String> {
    fs::read_dir(state.join("run"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A live dance that changes one file, with `prometheus_textfile = textfile`
/// and `extra` config: (exit code, stderr) of `--detailed-exitcodes`.
fn live_with_textfile(f: &Fixture, r: &FixtureRoot, textfile: &std::path::Path) -> (i32, String) {
    fs::write(
        f.config(),
        format!("prometheus_textfile = \"{}\"\n", textfile.display()),
    )
    .unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644);
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["dance", "--detailed-exitcodes"]));
    (code, err)
}

/// What a dance that merged one change must have left, whatever became of
/// its monitoring outputs: exit 2, status, saved report agreeing, no run dir.
fn assert_changed_everywhere(f: &Fixture, r: &FixtureRoot, code: i32, err: &str) {
    assert_eq!(code, 2, "{err}");
    assert_eq!(r.read("etc/x").as_deref(), Some("x\n"), "merged");
    let status = fs::read_to_string(f.state().join("status")).unwrap();
    assert!(
        status.starts_with("done at ") && status.contains("(1 change(s))"),
        "{status}"
    );
    let rep = last(f);
    assert_eq!(
        (rep["status"].as_str(), rep["exit_code"].as_i64()),
        (Some("changed"), Some(2))
    );
    assert_eq!(
        run_dirs(&f.state()),
        Vec::<String>::new(),
        "no run dir left"
    );
}

#[test]
fn a_textfile_under_a_missing_directory_chain_is_a_warning_not_a_failure() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    let textfile = f.dir.path().join("no/such/dir/disco.prom");
    let (code, err) = live_with_textfile(&f, &r, &textfile);
    assert_changed_everywhere(&f, &r, code, &err);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [format!(
            "warning: cannot write the Prometheus textfile {}: no directory {} (made only where its parent exists)",
            textfile.display(),
            textfile.parent().unwrap().display()
        )],
        "{err}"
    );
    assert!(!err.contains("error:"), "{err}");
    assert!(
        !f.dir.path().join("no").exists(),
        "no chain of directories made"
    );
}

#[test]
fn a_textfile_whose_directory_is_missing_gets_it_made() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    // node_exporter's textfile directory on a node without node_exporter.
    let textfile = f.dir.path().join("node-exporter/disco.prom");
    let (code, err) = live_with_textfile(&f, &r, &textfile);
    assert_changed_everywhere(&f, &r, code, &err);
    assert!(!err.contains("warning:"), "{err}");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
    };
    assert_eq!(mode(textfile.parent().unwrap()), 0o755);
    assert_eq!(mode(&textfile), 0o644);
    assert!(fs::read_to_string(&textfile)
        .unwrap()
        .contains("disco_last_run_changes{node=\"n\"} 1\n"));
}

#[test]
fn an_unwritable_textfile_keeps_the_verdict_and_the_report_is_uploaded() {
    use common::sshd::{forced, keygen, Sshd};
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644);
    // Its directory is a regular file: nothing can be written there.
    fs::write(f.dir.path().join("plain-file"), "").unwrap();
    let textfile = f.dir.path().join("plain-file/disco.prom");
    let key = f.dir.path().join("key");
    let pubkey = keygen(&key);
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced(&pubkey, &f.server(), Some("n"))],
    );
    fs::write(
        f.config(),
        sshd.client_config(&key)
            + "report_upload = true\n"
            + &format!("prometheus_textfile = \"{}\"\n", textfile.display()),
    )
    .unwrap();
    let (code, _, err) = run(f
        .disco_without_server()
        .args(["--server", &sshd.uri(f.server().to_str().unwrap())])
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .args(["dance", "--detailed-exitcodes"]));
    assert_changed_everywhere(&f, &r, code, &err);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [format!(
            "warning: cannot write the Prometheus textfile {}: {} is not a directory",
            textfile.display(),
            textfile.parent().unwrap().display()
        )],
        "{err}"
    );
    assert!(!err.contains("error:"), "{err}");
    let uploaded: serde_json::Value =
        serde_json::from_slice(&fs::read(f.server().join("reports/n/last.json")).unwrap()).unwrap();
    assert_eq!(uploaded, last(&f), "the uploaded report is the saved one");
}

#[test]
fn quiet_change_lines_say_the_content_changed() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/secret.conf", "pw=1\n")
        .file("etc/open.conf", "a=1\n");
    fs::set_permissions(
        r.path.join("etc/secret.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    f.node("n", &["m"]).module("m", "");
    // Same sizes: only the content differs.
    f.module_file("m", "files/etc/secret.conf", "pw=2\n", 0o644)
        .module_file("m", "files/etc/open.conf", "a=2\n", 0o644)
        .module_file("m", "attributes", "/etc/secret.conf 0600\n", 0o644);
    let (code, _, err) = noop(&f, &r, &["--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("info: m: File: /etc/secret.conf : Modified : type=[regular file] mode=[0600] owner=[root:root] content changed\n"),
        "{err}"
    );
    assert!(
        err.contains("info: m: File: /etc/open.conf : Modified : "),
        "{err}"
    );
    assert!(
        err.lines()
            .find(|l| l.contains("/etc/open.conf"))
            .unwrap()
            .ends_with(" content changed"),
        "{err}"
    );
    assert!(!err.contains("xattrs="), "{err}");
    assert!(!err.contains("+a=2"), "no diff text with --quiet: {err}");
}

/// Runs `cmd` (a dance) under an outer limit of the test's own: past 60 s
/// it is killed and the test fails. Returns (exit code, stderr, seconds).
/// A thread reading `child`'s piped stderr to its end.
fn read_stderr(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    })
}

fn dance_within_60s(mut cmd: Command) -> (i32, String, f64) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = read_stderr(&mut child);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = reader.join().unwrap();
            return (
                status.code().unwrap_or(-1),
                err,
                started.elapsed().as_secs_f64(),
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the dance still ran after 60 s (outer limit)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if line.contains(marker) {
                found.push(format!("{}: {line}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// After a dance past its deadline: it failed in the status file and the
/// saved report, left no run dir, and the lock is free — a `--no-wait`
/// dance right after takes it (and succeeds, `benign` made the module so).
fn ended_cleanly(f: &Fixture, r: &FixtureRoot, line: &str, benign: impl FnOnce()) {
    let status = fs::read_to_string(f.state().join("status")).unwrap();
    assert!(
        status.starts_with("failed at ") && status.contains(line),
        "{status}"
    );
    let rep = last(f);
    assert_eq!(rep["status"], "failed", "{rep}");
    assert!(rep["error"].as_str().unwrap().contains(line), "{rep}");
    let runs = f.state().join("run");
    let left: Vec<_> = fs::read_dir(&runs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run dirs left: {left:?}");
    benign();
    let mut again = f.process(&f.state(), &r.path);
    again.env("NOOP", "true").args(["dance", "--no-wait"]);
    let (code, err, _) = dance_within_60s(again);
    assert_eq!(code, 0, "the lock was released: {err}");
}

#[test]
fn a_hang_its_step_timeout_does_not_catch_ends_at_dance_timeout() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "dance_timeout = 3\nstep_timeout = 600\n").unwrap();
    let marker = format!("disco-deadline-{}", std::process::id());
    f.node("n", &["m"]).module("m", "");
    f.module_file(
        "m",
        "scripts/10-hang",
        &format!("setsid bash -c 'sleep 1000' {marker}-a &\nbash -c 'sleep 1000' {marker}-b\n"),
        0o755,
    );
    let mut cmd = f.process(&f.state(), &r.path);
    cmd.env("NOOP", "true").arg("dance");
    let (code, err, took) = dance_within_60s(cmd);
    assert_eq!(code, 1, "{err}");
    let line = "the dance ran past dance_timeout (3 s): module m, in its sandbox";
    assert!(err.contains(&format!("error: {line}")), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "one error line: {err}");
    assert!((3.0..8.0).contains(&took), "{took} s");
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    ended_cleanly(&f, &r, line, || {
        fs::write(f.server().join("modules/m/scripts/10-hang"), "true\n").unwrap();
    });
}

/// `systemctl stop` (SIGTERM) or Ctrl-C (SIGINT) during a dance ends it
/// as its deadline would: the sandbox killed, one error line saying so,
/// the report and status written, nothing merged, no run dir left, the
/// lock free for the next dance.
#[test]
fn a_dance_stopped_by_a_signal_ends_with_its_report() {
    for (sig, name) in [
        (nix::sys::signal::Signal::SIGTERM, "SIGTERM"),
        (nix::sys::signal::Signal::SIGINT, "SIGINT"),
    ] {
        let f = Fixture::new();
        let r = FixtureRoot::new(f.dir.path());
        let sleep = format!("sleep 1000.{}", std::process::id());
        f.node("n", &["m"]).module("m", "");
        f.module_file("m", "files/etc/from-m", "x\n", 0o644)
            .module_file("m", "scripts/10-wait", &format!("{sleep}\n"), 0o755);
        let mut child = f
            .process(&f.state(), &r.path)
            .arg("dance")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let reader = read_stderr(&mut child);
        // The script runs.
        let started = Instant::now();
        while processes_with(&sleep).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name}: never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopped = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if stopped.elapsed() > Duration::from_secs(30) {
                common::kill_dance(&mut child);
                panic!("{name}: the dance still ran 30 s after the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = reader.join().unwrap();
        assert_eq!(code, 1, "{name}: {err}");
        let line = format!("the dance was stopped by {name}: module m, in its sandbox");
        assert!(err.contains(&format!("error: {line}")), "{err}");
        assert!(
            processes_with(&sleep).is_empty(),
            "{name}: the sandbox went"
        );
        assert!(
            !r.path.join("etc/from-m").exists(),
            "{name}: nothing merged"
        );
        ended_cleanly(&f, &r, &line, || {
            fs::write(f.server().join("modules/m/scripts/10-wait"), "true\n").unwrap();
        });
    }
}

#[test]
fn a_live_dance_past_its_deadline_merges_nothing() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "dance_timeout = 2\nstep_timeout = 600\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/from-m", "x\n", 0o644)
        .module_file("m", "scripts/10-hang", "sleep 1000\n", 0o755);
    let mut cmd = f.process(&f.state(), &r.path);
    cmd.args(["dance", "--detailed-exitcodes"]);
    let (code, err, took) = dance_within_60s(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: the dance ran past dance_timeout (2 s): module m, in its sandbox"),
        "{err}"
    );
    assert!(took < 7.0, "{took} s");
    assert!(!r.path.join("etc/from-m").exists(), "nothing merged");
}

#[test]
fn a_main_thread_stuck_where_no_kill_reaches_ends_by_the_last_resort() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "dance_timeout = 2\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    let mut cmd = f.process(&f.state(), &r.path);
    // disco's main thread stops for good in fact gathering, as a read of
    // a FIFO in ROOT would.
    cmd.env("NOOP", "true")
        .env("DISCO_FAILPOINT", "hang:facts")
        .arg("dance");
    let (code, err, took) = dance_within_60s(cmd);
    assert_eq!(code, 1, "{err}");
    let line = "the dance ran past dance_timeout (2 s): gathering the facts of the root (plan)";
    assert!(err.contains(&format!("error: {line}")), "{err}");
    // The deadline, then the grace (3 s) the main thread had to come back.
    assert!((4.5..7.0).contains(&took), "{took} s");
    ended_cleanly(&f, &r, line, || {});
}

#[test]
fn a_template_that_replaces_its_output_by_a_fifo_cannot_hang_the_dance() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "dance_timeout = 3\nstep_timeout = 600\n").unwrap();
    let marker = format!("disco-fifo-{}", std::process::id());
    f.node("n", &["m"]).module("m", "");
    // The first template's output is /run/disco/render/0 in the sandbox:
    // disco already holds that pipe, so what the template prints lands.
    f.module_file(
        "m",
        "templates/etc/t",
        &format!("bash -c 'sleep 1000' {marker} >/dev/null 2>&1 &\nrm -f /run/disco/render/0\nmkfifo /run/disco/render/0\necho x\n"),
        0o644,
    );
    let mut cmd = f.process(&f.state(), &r.path);
    cmd.env("NOOP", "true").arg("dance");
    let (code, err, took) = dance_within_60s(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("+x"), "{err}");
    assert!(took < 8.0, "{took} s: {err}");
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    let mut again = f.process(&f.state(), &r.path);
    again.env("NOOP", "true").args(["dance", "--no-wait"]);
    let (code, err, _) = dance_within_60s(again);
    assert_eq!(code, 0, "the lock was released: {err}");
}

#[test]
fn step_timeout_ends_a_hung_template_before_dance_timeout() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "dance_timeout = 600\nstep_timeout = 2\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "templates/etc/t", "echo x\nsleep 1000\n", 0o644);
    let mut cmd = f.process(&f.state(), &r.path);
    cmd.env("NOOP", "true").arg("dance");
    let (code, err, took) = dance_within_60s(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: m: templates/etc/t: was killed after 2 s (step_timeout)"),
        "{err}"
    );
    assert!(!err.contains("dance_timeout"), "{err}");
    assert!(took < 8.0, "{took} s: {err}");
    let mut again = f.process(&f.state(), &r.path);
    fs::write(f.server().join("modules/m/templates/etc/t"), "echo x\n").unwrap();
    again.env("NOOP", "true").args(["dance", "--no-wait"]);
    let (code, err, _) = dance_within_60s(again);
    assert_eq!(code, 0, "the lock was released: {err}");
}

#[test]
fn a_dance_stuck_once_the_merge_began_exits_4() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    fs::write(f.config(), "dance_timeout = 2\n").unwrap();
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/from-m", "x\n", 0o644);
    let mut cmd = f.process(&f.state(), &r.path);
    cmd.env("DISCO_FAILPOINT", "hang:merge")
        .args(["dance", "--detailed-exitcodes"]);
    let (code, err, took) = dance_within_60s(cmd);
    assert_eq!(code, 4, "{err}");
    let line = "the dance ran past dance_timeout (2 s): the merge";
    assert!(err.contains(&format!("error: {line}")), "{err}");
    assert!(took < 8.0, "{took} s");
    // Stuck before the first entry was touched: no merge marker left.
    assert!(!r.path.join("etc/from-m").exists());
    assert!(!f.state().join("merging").exists());
    ended_cleanly(&f, &r, line, || {});
}
