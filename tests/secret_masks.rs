//! Issue 22, the node's side: one mask on everything disco prints or
//! stores. Each row of the leak table is a real dance (noop, and
//! live where the row is about live) on a fixture root (`--root`, never
//! the host's `/`) whose console, saved reports, `STATE/status`,
//! `STATE/failed-actions.json` and whole state dir are searched for the
//! secret (as it is and as bash or disco would quote it); each test also
//! finds the masked line, so it cannot pass because nothing ran. Secrets
//! are plain files under `parameters/NODE/parameters/secrets/`.
mod common;

use common::root::FixtureRoot;
use common::{run, Fixture};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `disco --node n --root ROOT dance ARGS`, `NOOP=true` when `noop`.
fn dance(f: &Fixture, root: &Path, noop: bool, args: &[&str]) -> (i32, String) {
    let mut c = f.disco();
    if noop {
        c.env("NOOP", "true");
    }
    let (code, out, err) = run(c
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance")
        .args(args));
    (code, format!("{out}{err}"))
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file of the state dir that is not where the plaintext must be
/// (the fetched parameters in `cache/` and `store/`; a kept run's
/// parameters and layers; the backups of live files), with its content.
fn state_files(state: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(state: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(state).unwrap().to_path_buf();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let in_run = rel.starts_with("run") && rel.components().count() >= 3;
            let layer = in_run
                && ["params", "u", "w", "q", "s", "mem", "merged"]
                    .iter()
                    .any(|d| rel.components().nth(2).unwrap().as_os_str() == *d);
            // scratch.img: the filesystem of the layers (the uppers).
            if ["cache", "store", "backup", "scratch.img"].contains(&first.as_ref())
                || first.starts_with(".cache.new")
                || layer
            {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.push((rel, Vec::new()));
                walk(state, &p, out);
            } else if m.is_file() {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(state, state, &mut out);
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// No `leaks` (the secret, or a piece of it every rendering holds) in the
/// console, the reports, `status`, `failed-actions.json` or any other file
/// of the state dir (names included); `shown` is in the console; the state
/// dir is 0700, the files that can carry a value 0600.
fn assert_masked(f: &Fixture, console: &str, leaks: &[&str], shown: &str) {
    for leak in leaks {
        assert!(
            !console.contains(leak),
            "{leak:?} is in the console:\n{console}"
        );
    }
    assert!(
        console.contains(shown),
        "the masked line {shown:?} is missing:\n{console}"
    );
    let state = f.state();
    assert!(
        state.join("reports/last.json").is_file(),
        "the dance saved no report"
    );
    for (rel, bytes) in state_files(&state) {
        for leak in leaks {
            assert!(
                !contains(rel.as_os_str().as_encoded_bytes(), leak),
                "{leak:?} names {}",
                rel.display()
            );
            assert!(
                !contains(&bytes, leak),
                "{leak:?} is in {}:\n{}",
                rel.display(),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    for (rel, _) in state_files(&state) {
        let p = state.join(&rel);
        let is_value_file = rel.starts_with("reports") && p.is_file()
            || ["status", "failed-actions.json", "hashes.json"].contains(&rel.to_str().unwrap());
        if is_value_file {
            assert_eq!(mode(&p), 0o600, "{}", rel.display());
        }
    }
    assert_eq!(mode(&state), 0o700, "the state dir");
    assert_eq!(mode(&state.join("reports")), 0o700, "the reports dir");
    assert_eq!(mode(&state.join("status")), 0o600, "status");
}

/// A fixture with node `n` running module `m`, and `secrets/KEY` = VALUE.
fn fixture(secrets: &[(&str, &str)]) -> (Fixture, FixtureRoot) {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    for (k, v) in secrets {
        f.file(
            &format!("parameters/n/parameters/secrets/{k}"),
            &format!("{v}\n"),
        );
    }
    (f, r)
}

/// An executable in the fixture root (a fake command for the actions).
fn root_exe(r: &FixtureRoot, rel: &str, content: &str) {
    r.file(rel, content);
    fs::set_permissions(r.path.join(rel), fs::Permissions::from_mode(0o755)).unwrap();
}

const QUOTED: &str = "Pa$$w'rd-Qx7";

#[test]
fn set_x_and_printf_q_of_a_value_with_a_quote_are_masked() {
    let (f, r) = fixture(&[("pw", QUOTED)]);
    f.module_file(
        "m",
        "scripts/10-trace",
        "set -x\npw=$(disco param get secrets/pw)\n: \"$pw\"\nset +x\nprintf 'q=%q\\n' \"$pw\"\necho \"plain=$pw\"\n",
        0o755,
    );
    // Every rendering holds `rd-Qx7` or `rd\-Qx7`; none may be left.
    let leaks = [QUOTED, "rd-Qx7", "w'\\''rd", "w\\'rd"];
    for noop in [true, false] {
        let (code, console) = dance(&f, &r.path, noop, &[]);
        assert_eq!(code, 0, "{console}");
        assert_masked(&f, &console, &leaks, "pw='********'");
        assert!(console.contains("q=********"), "{console}");
        assert!(console.contains("plain=********"), "{console}");
    }
}

#[test]
fn a_path_built_from_the_secret_is_masked_in_change_lines_and_reports() {
    let (f, r) = fixture(&[("pw", QUOTED)]);
    f.module_file(
        "m",
        "scripts/10-path",
        "echo x > \"/etc/pw-$(disco param get secrets/pw)\"\n",
        0o755,
    );
    let (code, console) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 0, "{console}");
    assert_masked(
        &f,
        &console,
        &[QUOTED, "rd-Qx7"],
        "info: File: /etc/pw-******** : Created",
    );
    let (code, console) = dance(&f, &r.path, false, &[]);
    assert_eq!(code, 0, "{console}");
    assert_masked(
        &f,
        &console,
        &[QUOTED, "rd-Qx7"],
        "info: File: /etc/pw-******** : Created",
    );
    assert!(
        r.path.join(format!("etc/pw-{QUOTED}")).exists(),
        "the node itself gets the real path"
    );
}

#[test]
fn disco_s_own_step_error_shows_an_escaped_secret_masked() {
    let secret = "missing-tok\tEN-998877";
    let (f, r) = fixture(&[("tok", secret)]);
    f.module_file(
        "m",
        "scripts/10-key",
        "disco param get \"$(disco param get secrets/tok)\"\n",
        0o755,
    );
    let leaks = [secret, "EN-998877", "missing-tok"];
    for noop in [true, false] {
        let (code, console) = dance(&f, &r.path, noop, &[]);
        assert_eq!(code, 1, "{console}");
        assert_masked(&f, &console, &leaks, "invalid parameter key '********'");
        let status = fs::read_to_string(f.state().join("status")).unwrap();
        assert!(
            status.starts_with("failed at ") && status.contains("invalid parameter key '********'"),
            "{status}"
        );
        let last = fs::read_to_string(f.state().join("reports/last.json")).unwrap();
        assert!(last.contains("invalid parameter key '********'"), "{last}");
    }
}

#[test]
fn a_leftover_process_showing_the_secret_is_masked() {
    let secret = "Sup3rS3cretPW-42";
    let (f, r) = fixture(&[("app", secret)]);
    f.module_file(
        "m",
        "scripts/10-left",
        "s=$(disco param get secrets/app)\nsetsid bash -c \"sleep 100; : leftover-$s\" >/dev/null 2>&1 < /dev/null &\nsleep 0.3\n",
        0o755,
    );
    for noop in [true, false] {
        let (code, console) = dance(&f, &r.path, noop, &[]);
        assert_eq!(code, 0, "{console}");
        assert_masked(
            &f,
            &console,
            &[secret, "S3cretPW"],
            "its steps left running: bash -c sleep 100; : leftover-******** (bash)",
        );
        let last = fs::read_to_string(f.state().join("reports/last.json")).unwrap();
        assert!(last.contains("leftover-********"), "{last}");
    }
}

#[test]
fn live_deferred_actions_their_errors_and_failed_actions_json_are_masked() {
    let secret = "Sup3rS3cretPW-42";
    let (f, r) = fixture(&[("app", secret)]);
    // The fake systemctl of the fixture root (actions run chrooted there):
    // fails while /etc/fail-actions exists, and logs what it was called with.
    root_exe(
        &r,
        "usr/sbin/systemctl",
        "#!/bin/sh\necho \"${0##*/} $*\" >> /var/log/actions\n[ -e /etc/fail-actions ] && exit 5\nexit 0\n",
    );
    r.file("etc/fail-actions", "");
    f.module_file("m", "files/etc/app.conf", "v1\n", 0o644)
        .module_file(
            "m",
            "scripts/10-restart",
            "systemctl restart \"app-$(disco param get secrets/app)\"\n",
            0o755,
        );
    let leaks = [secret, "S3cretPW"];
    let (code, console) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 0, "{console}");
    assert_masked(
        &f,
        &console,
        &leaks,
        "warning: would execute: systemctl restart app-********",
    );
    let (code, console) = dance(&f, &r.path, false, &["--run-actions"]);
    assert_eq!(code, 1, "{console}");
    assert_masked(
        &f,
        &console,
        &leaks,
        "info: running deferred action: systemctl restart app-********",
    );
    assert!(
        console.contains("error: action systemctl restart app-******** exited 5"),
        "{console}"
    );
    let failed = f.state().join("failed-actions.json");
    assert_eq!(mode(&failed), 0o600);
    let status = fs::read_to_string(f.state().join("status")).unwrap();
    assert!(status.starts_with("failed at "), "{status}");
    // `disco actions` lists it masked, its error line too.
    let (code, out, err) = common::run(f.disco_without_server().arg("actions"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  m  action systemctl restart app-********\n")
            && out.contains(": action systemctl restart app-******** exited 5\n"),
        "{out}"
    );
    for leak in leaks {
        assert!(!out.contains(leak) && !err.contains(leak), "{out}{err}");
    }
    // Run again later, the action gets the real value back.
    fs::remove_file(r.path.join("etc/fail-actions")).unwrap();
    let (code, console) = dance(&f, &r.path, false, &["--run-actions"]);
    assert_eq!(code, 0, "{console}");
    assert_masked(
        &f,
        &console,
        &leaks,
        "running again what failed before in m: 1 action(s), 0 handler(s)",
    );
    assert!(!failed.exists(), "nothing waits any more");
    assert_eq!(
        r.read("var/log/actions").unwrap(),
        format!("systemctl restart app-{secret}\nsystemctl restart app-{secret}\n"),
        "the action ran with the value, twice"
    );
}

#[test]
fn handler_output_is_masked() {
    let secret = "Sup3rS3cretPW-42";
    let (f, r) = fixture(&[("app", secret)]);
    f.module_file("m", "files/etc/app.conf", "v1\n", 0o644)
        .module_file(
            "m",
            "handlers/10-say",
            "echo \"handler sees $(disco param get secrets/app)\"\necho \"handler errs $(disco param get secrets/app)\" >&2\n",
            0o755,
        );
    let (code, console) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 0, "{console}");
    assert_masked(
        &f,
        &console,
        &[secret],
        "would run handler m/handlers/10-say",
    );
    let (code, console) = dance(&f, &r.path, false, &["--run-actions"]);
    assert_eq!(code, 0, "{console}");
    assert_masked(&f, &console, &[secret, "S3cretPW"], "handler sees ********");
    assert!(console.contains("handler errs ********"), "{console}");
}

#[test]
fn a_state_dir_left_open_by_an_earlier_version_is_tightened() {
    let secret = "Sup3rS3cretPW-42";
    let (f, r) = fixture(&[("app", secret)]);
    f.module_file(
        "m",
        "scripts/10-say",
        "echo \"says $(disco param get secrets/app)\"\n",
        0o755,
    );
    let textfile = f.state().join("disco.prom");
    fs::write(
        f.config(),
        format!("prometheus_textfile = \"{}\"\n", textfile.display()),
    )
    .unwrap();
    fs::create_dir_all(f.state().join("reports")).unwrap();
    for (rel, m) in [("", 0o755), ("reports", 0o755)] {
        fs::set_permissions(f.state().join(rel), fs::Permissions::from_mode(m)).unwrap();
    }
    for rel in ["status", "failed-actions.json", "reports/old.json"] {
        fs::write(f.state().join(rel), "").unwrap();
        fs::set_permissions(f.state().join(rel), fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::write(
        f.state().join("failed-actions.json"),
        "{\"node\":\"n\",\"root\":\"/\",\"params_dir\":\"/\",\"run_actions\":false,\"modules\":[]}",
    )
    .unwrap();
    let (code, console) = dance(&f, &r.path, true, &[]);
    assert_eq!(code, 0, "{console}");
    assert_masked(&f, &console, &[secret], "says ********");
    assert_eq!(mode(&f.state().join("failed-actions.json")), 0o600);
    assert_eq!(mode(&f.state().join("reports/old.json")), 0o600);
    assert_eq!(mode(&textfile), 0o600, "the textfile in the state dir");
}

/// A failed step's error says why — the module's last line on stderr —
/// masked and escaped, on the console, in the report and in `disco
/// report`.
#[test]
fn a_failed_step_s_last_stderr_line_is_its_reason_masked_and_escaped() {
    let (f, r) = fixture(&[("pw", QUOTED)]);
    f.module_file(
        "m",
        "scripts/10-fail",
        "echo 'an earlier line' >&2\nprintf 'bad \\033[31mtoken %s\\n\\n' \"$(disco param get secrets/pw)\" >&2\necho 'on stdout'\nexit 4\n",
        0o755,
    );
    let why = "scripts/10-fail exited 4 (stderr: bad \\x1b[31mtoken ********)";
    for noop in [true, false] {
        let (code, console) = dance(&f, &r.path, noop, &[]);
        assert_eq!(code, 1, "{console}");
        assert_masked(
            &f,
            &console,
            &[QUOTED, "rd-Qx7"],
            &format!("error: m: {why}\n"),
        );
        let last: serde_json::Value =
            serde_json::from_slice(&fs::read(f.state().join("reports/last.json")).unwrap())
                .unwrap();
        assert_eq!(last["modules"][0]["error"], why, "{last}");
        let (code, out, err) = run(f.disco().args(["--node", "n", "report"]));
        assert_eq!(code, 0, "{err}");
        assert!(
            format!("{out}{err}").contains(&format!("report: m: failed: {why}\n")),
            "{out}{err}"
        );
    }
}
