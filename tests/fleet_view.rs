//! `disco report --fleet` on the server: every node-controlled field is
//! printed escaped, `--json` is one JSON document for monitoring, a failed
//! dance that merged nothing counts 0 changes, and `disco serve` refuses
//! to store an uploaded report whose text fields hold control characters.
mod common;

use std::fs;
use std::path::Path;

use common::root::FixtureRoot;
use common::{run, Fixture};
use disco::report::{ModuleReport, RunReport};

/// A report as a node's dance makes it, ended `ended` with `status`.
fn report(node: &str, ended: &str, status: &str) -> RunReport {
    RunReport {
        id: "20260101T000000Z-1".into(),
        node: node.into(),
        started: "2026-01-01T00:00:00Z".into(),
        ended: ended.into(),
        status: status.into(),
        snapshot: "20260101T000000Z-9".into(),
        duration: 1.5,
        plan: vec!["m".into()],
        modules: vec![ModuleReport {
            name: "m".into(),
            summarised_changes: 1,
            ..ModuleReport::default()
        }],
        pending_failed_actions: 2,
        ..RunReport::default()
    }
}

/// Writes `r` as `disco serve` stores it: `reports/NODE/last.json`.
fn store(served: &Path, r: &RunReport) {
    let dir = served.join("reports").join(&r.node);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("last.json"), serde_json::to_vec(r).unwrap()).unwrap();
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn fleet(f: &Fixture, extra: &[&str]) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .arg("--server")
        .arg(f.server())
        .args(["report", "--fleet"])
        .args(extra))
}

/// What a node that forges its `ended` puts there: back to the start of
/// the line, one line up, erase it, and a fake "ok" row for node b.
const FORGED: &str = "\r\x1b[1A\x1b[2Kb                        2026-01-01T00:00:00Z  ok";

#[test]
fn a_forged_ended_field_is_printed_escaped_and_json_carries_it_as_data() {
    let f = Fixture::new();
    store(&f.server(), &report("a", FORGED, "changed"));
    store(&f.server(), &report("b", &now(), "failed"));
    fs::create_dir_all(f.server().join("reports/c")).unwrap();
    let (code, out, err) = fleet(&f, &[]);
    assert_eq!(code, 1, "b failed, c unreadable: {out}{err}");
    assert!(
        !out.contains('\x1b') && !out.contains('\r'),
        "raw control characters reached the terminal: {out:?}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].starts_with("a ")
            && lines[1].contains("\\x0d\\x1b[1A\\x1b[2Kb ")
            && lines[1].contains(" changed "),
        "{out}"
    );
    assert!(
        lines[1].contains("STALE"),
        "an ended that is no time is stale: {out}"
    );
    // b's failed dance merged nothing: 0 changes, its pending actions
    // shown; the snapshot it runs in its own column.
    let b: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        (b[0], b[1], b[3], b[4], b[7]),
        ("b", "20260101T000000Z-9", "failed", "0", "2"),
        "{out}"
    );
    assert_eq!(lines[3], format!("{:<24} (no readable report)", "c"));

    let (code, out, err) = fleet(&f, &["--json"]);
    assert_eq!(code, 1, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{out}");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(a["node"], "a");
    assert_eq!(a["last_run"], FORGED, "the field as data, JSON-escaped");
    assert_eq!(
        (&a["status"], &a["changes"], &a["age"], &a["stale"]),
        (
            &serde_json::json!("changed"),
            &serde_json::json!(1),
            &serde_json::Value::Null,
            &serde_json::json!(true)
        )
    );
    assert_eq!(b["node"], "b");
    assert_eq!(b["snapshot"], "20260101T000000Z-9");
    assert_eq!(b["status"], "failed");
    assert_eq!(b["changes"], 0, "a failed dance merged nothing");
    assert_eq!(b["duration"], 1.5);
    assert_eq!(b["pending_failed_actions"], 2);
    assert_eq!(b["stale"], false);
    assert!(b["age"].as_u64().unwrap() < 3600, "{out}");
    assert_eq!((&c["node"], &c["readable"]), (&"c".into(), &false.into()));
    assert_eq!(
        (&doc["failed"], &doc["stale"], &doc["exit_code"]),
        (&2.into(), &1.into(), &1.into()),
        "{out}"
    );
}

#[test]
fn a_live_dance_that_failed_before_the_merge_counts_no_change() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    f.node("n", &["m"]).module("m", "");
    f.module_file("m", "files/etc/x", "x\n", 0o644);
    f.module_file("m", "scripts/10-fail.sh", "#!/bin/sh\nexit 3\n", 0o755);
    let (code, _, err) = run(f
        .disco()
        .args(["--node", "n", "--root"])
        .arg(&r.path)
        .arg("dance"));
    assert_eq!(code, 1, "{err}");
    assert_eq!(r.read("etc/x"), None, "nothing merged");
    let last = fs::read(f.state().join("reports/last.json")).unwrap();
    let saved: RunReport = serde_json::from_slice(&last).unwrap();
    assert_eq!(saved.status, "failed");
    assert!(
        saved.change_count() >= 1,
        "the sandbox had the change: {saved:?}"
    );
    assert!(!saved.merged);
    // As serve stores the upload.
    fs::create_dir_all(f.server().join("reports/n")).unwrap();
    fs::write(f.server().join("reports/n/last.json"), &last).unwrap();
    let (code, out, _) = fleet(&f, &["--json"]);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["nodes"][0]["changes"], 0, "{out}");
    let (_, prom, _) = run(f.disco().args(["report", "--prometheus"]));
    assert!(
        prom.contains("disco_last_run_changes{node=\"n\"} 0\n"),
        "{prom}"
    );
}

#[test]
fn disco_serve_refuses_an_uploaded_report_with_control_characters() {
    use common::sshd::{forced, keygen, Sshd};
    use disco::transport::{ssh::SshOptions, ServerUri};
    let f = Fixture::new();
    f.node("a", &["m"]).module("m", "");
    let key = f.dir.path().join("key");
    let pubkey = keygen(&key);
    let sshd = Sshd::start(
        &f.dir.path().join("sshd"),
        &[forced(&pubkey, &f.server(), Some("a"))],
    );
    let uri = ServerUri::parse(&sshd.uri(f.server().to_str().unwrap())).unwrap();
    let node = disco::names::Name::parse("a", "node").unwrap();
    let opts = SshOptions {
        identity: Some(key.clone()),
        known_hosts: Some(sshd.dir.join("known_hosts")),
        connect_timeout: 5,
        ..SshOptions::default()
    };
    let upload = |r: &RunReport| {
        disco::transport::ssh::upload(&uri, &node, &opts, &serde_json::to_vec(r).unwrap())
    };
    let err = upload(&report("a", FORGED, "ok")).expect_err("a forged report is refused");
    let err = format!("{err:#}");
    assert!(
        err.contains("server refused: the report's ended holds a control character (\\x0d\\x1b[1A"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(!f.server().join("reports/a/last.json").exists());
    let mut status = report("a", &now(), "ok");
    status.status = "ok\x1b[2K".into();
    let err = format!("{:#}", upload(&status).unwrap_err());
    assert!(err.contains("the report's status holds"), "{err}");
    // The same node's honest report is stored.
    upload(&report("a", &now(), "ok")).expect("an honest report is stored");
    assert!(f.server().join("reports/a/last.json").exists());
    let (code, out, err) = fleet(&f, &[]);
    assert_eq!(code, 0, "{out}{err}");
}
