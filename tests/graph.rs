//! The plan as a graph (issue 26), end to end: the real binary, real
//! overlayfs and namespaces, fixture roots under `--root`. A module runs
//! on the root plus the layers of its `requires` closure; modules that do
//! not require each other run side by side up to `jobs` (`--jobs`); two
//! unordered modules changing one path are a conflict refused before any
//! merge; a failed module stops only what requires it, and `on_failure`
//! says what a failed live dance merges; the result of a dance is the same
//! for every `jobs`.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::root::{snapshot_no_mtimes, FixtureRoot};
use common::{run, Fixture};
use serde_json::Value;

/// `[NOOP=true] disco --state-dir STATE --node n --root ROOT dance ARGS`.
fn dance(
    f: &Fixture,
    state: &Path,
    root: &Path,
    noop: bool,
    args: &[&str],
) -> (i32, String, String) {
    let mut c = f.disco_with_state(state);
    c.arg("--server").arg(f.server());
    if noop {
        c.env("NOOP", "true");
    }
    run(c
        .args(["--node", "n", "--root"])
        .arg(root)
        .arg("dance")
        .args(args))
}

/// The saved report of the last dance of `state`; null when there is
/// none (a dance refused before its lock saves none: the assertions on
/// what it printed say why).
fn last_report(state: &Path) -> Value {
    match fs::read(state.join("reports/last.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(_) => Value::Null,
    }
}

/// A report without what differs between two runs of one dance (ids,
/// dates, durations, timings and the paths of the run's root and state
/// dir), as pretty JSON: for byte-for-byte comparison.
fn normalized(report: &Value, root: &Path, state: &Path) -> String {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in ["id", "started", "ended", "duration", "figures", "root"] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = report.clone();
    strip(&mut v);
    serde_json::to_string_pretty(&v)
        .unwrap()
        .replace(&root.display().to_string(), "ROOT")
        .replace(&state.display().to_string(), "STATE")
}

/// Console output without what differs between two runs of one dance:
/// the paths of the root, state dir and server, and timings (a number
/// followed by `s` or `ms`).
fn console(text: &str, root: &Path, state: &Path, server: &Path) -> String {
    let text = text
        .replace(&root.display().to_string(), "ROOT")
        .replace(&state.display().to_string(), "STATE")
        .replace(&server.display().to_string(), "SERVER");
    let mut out = String::new();
    let mut rest = text.as_str();
    // `1.23 s`, `0.4s`, `12 ms`, `12ms` become `T`.
    while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let end = from
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(from.len());
        let (num, after) = from.split_at(end);
        let unit = after.trim_start_matches(' ');
        let is_time = ["ms", "s"].iter().find(|u| {
            unit.starts_with(*u)
                && !unit[u.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        });
        match is_time {
            Some(u) => {
                out.push('T');
                rest = &unit[u.len()..];
            }
            None => {
                out.push_str(num);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A fresh fixture root in `dir/root`, `dir` made.
fn root_in(dir: &Path) -> FixtureRoot {
    fs::create_dir_all(dir).unwrap();
    FixtureRoot::new(dir)
}

/// A fresh fixture root in `dir/root` with what the 30-module graph reads,
/// changes and deletes.
fn graph_root(dir: &Path) -> FixtureRoot {
    let r = root_in(dir);
    r.file("etc/graph/README", "root\n")
        .file("etc/graph/old", "to be deleted\n")
        .file("etc/graph/mode", "to be chmod\n")
        .file("etc/graph/own", "to be chown\n")
        .file("srv/graph/.keep", "");
    r
}

/// The 30 modules of the graph test, in the order `disco plan` gives
/// (Kahn's, the smallest ready name first).
const THIRTY_PLAN: [&str; 30] = [
    "a1", "a2", "a3", "a4", "a5", "d-top", "d-left", "d-right", "d-bottom", "e-base", "e-x", "e-y",
    "e-join", "i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "w-root", "w1",
    "w2", "w3", "w4", "w5", "w-end",
];

/// Node `n` with 30 modules: a chain of five (`a*`, each changing the
/// file the first made), a diamond (`d-*`, the bottom changing the top's
/// file, `attributes` on it), a diamond ordered by `before` (`e-*`), a fan
/// of five templates reading a parameter between a root and an end
/// (`w*`), and ten independent modules (`i*`: a file, templates, a
/// secret-mode file, an executable, a chown, a symlink, a deletion, a
/// chmod, a new tree, an xattr). Every module that does not require
/// another changes other paths than it: no conflict. Each script says
/// `NAME ran` on its stdout.
fn thirty(f: &Fixture) {
    f.node("n", &THIRTY_PLAN);
    for m in THIRTY_PLAN {
        f.module_file(m, "scripts/90-say", &format!("echo {m} ran\n"), 0o755);
    }
    let script = |m: &str, body: &str| {
        f.module_file(m, "scripts/10-run", &format!("{body}\n"), 0o755);
    };
    let template = |m: &str, path: &str, body: &str| {
        f.module_file(m, &format!("templates/{path}"), body, 0o644);
    };
    let file = |m: &str, path: &str, content: &str, mode: u32| {
        f.module_file(m, &format!("files/{path}"), content, mode);
    };
    // Chain a1 -> a2 -> a3 -> a4 -> a5.
    f.module("a1", "");
    file("a1", "etc/graph/chain", "a1\n", 0o644);
    f.module("a2", "after a1\n");
    script("a2", "echo a2 >> /etc/graph/chain");
    f.module("a3", "# the chain\nafter a2\n");
    template(
        "a3",
        "etc/graph/a3.conf",
        "echo \"a3 saw: $(tr '\\n' ' ' < /etc/graph/chain)\"\n",
    );
    script("a3", "echo a3 >> /etc/graph/chain");
    f.module("a4", "after a3\n");
    script("a4", "sed -i s/a1/A1/ /etc/graph/chain");
    f.module("a5", "after a4\n");
    script(
        "a5",
        "echo a5 >> /etc/graph/chain; cat /etc/graph/a3.conf > /etc/graph/a5-saw",
    );
    // Diamond d-top -> {d-left, d-right} -> d-bottom.
    f.module("d-top", "");
    file("d-top", "etc/graph/d/base", "top\n", 0o644);
    f.module_file(
        "d-top",
        "attributes",
        "/etc/graph/d/base 0640 daemon:daemon\n",
        0o644,
    );
    f.module("d-left", "after d-top\n");
    script(
        "d-left",
        "{ cat /etc/graph/d/base; echo left; } > /etc/graph/d/left",
    );
    f.module("d-right", "after d-top\n");
    template(
        "d-right",
        "etc/graph/d/right",
        "echo \"right of $(cat /etc/graph/d/base)\"\n",
    );
    f.module("d-bottom", "after d-left\nafter d-right\n");
    script(
        "d-bottom",
        "cat /etc/graph/d/left /etc/graph/d/right > /etc/graph/d/bottom; echo bottom >> /etc/graph/d/base",
    );
    // Diamond e-base -> {e-x, e-y} -> e-join, the top edges by `before`.
    f.module("e-base", "before e-x\nbefore e-y\n");
    script(
        "e-base",
        "mkdir /srv/graph/e; echo base > /srv/graph/e/base",
    );
    f.module("e-x", "");
    script(
        "e-x",
        "cp /srv/graph/e/base /srv/graph/e/x; echo x >> /srv/graph/e/x",
    );
    f.module("e-y", "");
    script(
        "e-y",
        "ln -s base /srv/graph/e/y-link; chmod 700 /srv/graph/e/base",
    );
    f.module("e-join", "after e-x\nafter e-y\n");
    script(
        "e-join",
        "ls /srv/graph/e > /srv/graph/e/listing; stat -c %a /srv/graph/e/base >> /srv/graph/e/listing",
    );
    // Ten independent modules.
    for i in 1..=10 {
        f.module(&format!("i{i:02}"), "");
    }
    file("i01", "etc/graph/i01.conf", "i01=1\n", 0o644);
    template("i02", "etc/graph/i02.conf", "printf 'line %s\\n' 1 2 3\n");
    script(
        "i03",
        "echo secret > /etc/graph/i03; chmod 600 /etc/graph/i03",
    );
    file("i04", "opt/i04/bin/tool", "#!/bin/sh\necho tool\n", 0o755);
    script("i05", "chown daemon:daemon /etc/graph/own");
    script("i06", "ln -s README /etc/graph/i06-link");
    script("i07", "rm /etc/graph/old");
    script("i08", "chmod 600 /etc/graph/mode");
    script("i09", "mkdir -p /opt/i09/a/b; echo deep > /opt/i09/a/b/f");
    template("i10", "etc/graph/i10", "cat /etc/graph/README\n");
    script("i10", "setfattr -n user.i10 -v yes /etc/graph/i10");
    // Fan w-root -> w1..w5 -> w-end.
    f.module("w-root", "");
    f.file("modules/w-root/parameters/w/greeting", "hello\n");
    file("w-root", "srv/graph/w/root", "root\n", 0o644);
    let mut end = String::new();
    for i in 1..=5 {
        let m = format!("w{i}");
        f.module(&m, "after w-root\n");
        template(
            &m,
            &format!("srv/graph/w/{m}"),
            &format!("echo \"$(disco param get w/greeting) from {m} on $(hostname -s)\"\n"),
        );
        end.push_str(&format!("after {m}\n"));
    }
    script("w3", "rm /srv/graph/w/root");
    script(
        "w4",
        "mkdir -p /srv/graph/w/w4.d/deep; echo 4 > /srv/graph/w/w4.d/deep/f",
    );
    f.module("w-end", &end);
    script(
        "w-end",
        "cat /srv/graph/w/w? > /srv/graph/w/end; ls /srv/graph/w >> /srv/graph/w/end",
    );
}

/// What the 30 modules leave, each having seen what its requirements
/// made: checked on a root after a live dance.
fn assert_thirty_landed(root: &Path) {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(read("etc/graph/chain"), "A1\na2\na3\na5\n");
    assert_eq!(read("etc/graph/a3.conf"), "a3 saw: a1 a2 \n");
    assert_eq!(read("etc/graph/a5-saw"), "a3 saw: a1 a2 \n");
    assert_eq!(read("etc/graph/d/left"), "top\nleft\n");
    assert_eq!(read("etc/graph/d/right"), "right of top\n");
    assert_eq!(read("etc/graph/d/bottom"), "top\nleft\nright of top\n");
    assert_eq!(read("etc/graph/d/base"), "top\nbottom\n");
    assert_eq!(meta("etc/graph/d/base").mode() & 0o7777, 0o640);
    assert_eq!(meta("etc/graph/d/base").uid(), 1);
    assert_eq!(read("srv/graph/e/x"), "base\nx\n");
    assert_eq!(
        read("srv/graph/e/listing"),
        "base\nlisting\nx\ny-link\n700\n"
    );
    assert_eq!(read("etc/graph/i01.conf"), "i01=1\n");
    assert_eq!(read("etc/graph/i02.conf"), "line 1\nline 2\nline 3\n");
    assert_eq!(meta("etc/graph/i03").mode() & 0o7777, 0o600);
    assert_eq!(meta("opt/i04/bin/tool").mode() & 0o7777, 0o755);
    assert_eq!(meta("etc/graph/own").uid(), 1);
    assert_eq!(
        fs::read_link(root.join("etc/graph/i06-link")).unwrap(),
        PathBuf::from("README")
    );
    assert!(!root.join("etc/graph/old").exists());
    assert_eq!(meta("etc/graph/mode").mode() & 0o7777, 0o600);
    assert_eq!(read("opt/i09/a/b/f"), "deep\n");
    assert_eq!(read("etc/graph/i10"), "root\n");
    assert_eq!(
        xattr::get(root.join("etc/graph/i10"), "user.i10").unwrap(),
        Some(b"yes".to_vec())
    );
    let end = read("srv/graph/w/end");
    let lines: Vec<&str> = end.lines().collect();
    for (i, line) in lines.iter().take(5).enumerate() {
        let m = format!("w{}", i + 1);
        assert!(line.starts_with(&format!("hello from {m} on ")), "{end}");
    }
    assert_eq!(
        lines[5..],
        ["end", "w1", "w2", "w3", "w4", "w4.d", "w5"],
        "{end}"
    );
    assert!(!root.join("srv/graph/w/root").exists());
}

/// The fixture itself, on whatever executor is there: the plan is the
/// order the graph tests expect, and a live dance of the 30 modules lands
/// what each module made having seen its requirements' changes.
#[test]
fn thirty_modules_plan_in_a_stable_order_and_land_as_their_requirements_say() {
    let f = Fixture::new();
    thirty(&f);
    let (code, out, err) = f.plan("n");
    assert_eq!(code, 0, "{err}");
    let planned: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(planned, THIRTY_PLAN, "{out}");
    let r = graph_root(&f.dir.path().join("live"));
    let (code, out, err) = dance(&f, &f.state(), &r.path, false, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_thirty_landed(&r.path);
}

/// Jobs 1, 2 and 8 give byte-identical normalized reports, roots and
/// console output, noop and live; and the modules' output comes in plan
/// order however many ran at once.
#[test]
fn jobs_1_2_and_8_give_identical_reports_roots_and_output() {
    let f = Fixture::new();
    thirty(&f);
    // One root for the three noops (each checked unchanged), then a
    // fresh copy per live dance.
    let roots: Vec<FixtureRoot> = (1..=3)
        .map(|i| graph_root(&f.dir.path().join(format!("r{i}"))))
        .collect();
    let pristine = snapshot_no_mtimes(&roots[0].path);
    // The normalized report of jobs 1, noop then live.
    let mut reports: Vec<String> = Vec::new();
    for noop in [true, false] {
        let mut runs = Vec::new();
        for (i, jobs) in ["1", "2", "8"].iter().enumerate() {
            let root = if noop { &roots[0] } else { &roots[i] };
            let state = f.dir.path().join(format!(
                "state-{}-{jobs}",
                if noop { "noop" } else { "live" }
            ));
            let (code, out, err) = dance(&f, &state, &root.path, noop, &["--jobs", jobs]);
            assert_eq!(code, 0, "jobs {jobs}, noop {noop}: {out}{err}");
            if noop {
                assert_eq!(
                    snapshot_no_mtimes(&root.path),
                    pristine,
                    "noop changed the root"
                );
            }
            let ran: Vec<&str> = out.lines().filter_map(|l| l.strip_suffix(" ran")).collect();
            assert_eq!(
                ran, THIRTY_PLAN,
                "jobs {jobs}, noop {noop}: modules' output in plan order:\n{out}"
            );
            runs.push((
                *jobs,
                normalized(&last_report(&state), &root.path, &state),
                console(&out, &root.path, &state, &f.server()),
                console(&err, &root.path, &state, &f.server()),
            ));
        }
        for (jobs, report, out, err) in &runs[1..] {
            let (_, report1, out1, err1) = &runs[0];
            assert_eq!(
                report, report1,
                "noop {noop}: the report of jobs {jobs} against jobs 1"
            );
            assert_eq!(
                out, out1,
                "noop {noop}: stdout of jobs {jobs} against jobs 1"
            );
            assert_eq!(
                err, err1,
                "noop {noop}: stderr of jobs {jobs} against jobs 1"
            );
        }
        reports.push(runs[0].1.clone());
    }
    assert_thirty_landed(&roots[0].path);
    let t1 = snapshot_no_mtimes(&roots[0].path);
    assert_ne!(t1, pristine);
    for (i, jobs) in [(1, 2), (2, 8)] {
        assert_eq!(
            snapshot_no_mtimes(&roots[i].path),
            t1,
            "the root merged with jobs {jobs} against jobs 1"
        );
    }
    // Noop reported what live merged.
    let modules = |r: &str| -> Value {
        let v: Value = serde_json::from_str(r).unwrap();
        v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["changes"].clone())
            .collect()
    };
    assert_eq!(modules(&reports[0]), modules(&reports[1]));
}

/// Node `n` with `alpha` and `beta`, which do not require each other, both
/// making `/etc/shared.conf`, and `gamma`, which changes another path.
fn two_writers(f: &Fixture) {
    f.node("n", &["alpha", "beta", "gamma"])
        .module("alpha", "")
        .module("beta", "")
        .module("gamma", "");
    f.module_file("alpha", "files/etc/shared.conf", "from alpha\n", 0o644)
        .module_file(
            "beta",
            "templates/etc/shared.conf",
            "echo from beta\n",
            0o644,
        )
        .module_file("gamma", "scripts/10-g", "echo g > /etc/gamma\n", 0o755);
}

const SHARED_CONFLICT: &str = "error: modules alpha and beta both change /etc/shared.conf and neither requires the other: add \"after alpha\" to modules/beta/requires (or the reverse)";

/// Two modules that do not require each other and change one path: the
/// dance fails before any merge with one line saying which, where and
/// how to order them, in noop and live, one job or several; nothing is
/// merged.
#[test]
fn two_unordered_modules_changing_one_path_are_refused_noop_and_live() {
    let f = Fixture::new();
    two_writers(&f);
    let r = FixtureRoot::new(f.dir.path());
    let before = snapshot_no_mtimes(&r.path);
    for (noop, args) in [
        (true, &["--jobs", "1"][..]),
        (true, &["--jobs", "2"][..]),
        (false, &["--jobs", "1"][..]),
        (false, &[][..]),
    ] {
        let (code, out, err) = dance(&f, &f.state(), &r.path, noop, args);
        assert_eq!(code, 1, "noop {noop} {args:?}: {out}{err}");
        assert!(
            err.lines().any(|l| l == SHARED_CONFLICT),
            "noop {noop} {args:?}: the conflict, said as\n{SHARED_CONFLICT}\n, got:\n{err}"
        );
        assert_eq!(
            snapshot_no_mtimes(&r.path),
            before,
            "noop {noop} {args:?}: nothing merged"
        );
        let report = last_report(&f.state());
        let error = report["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("both change /etc/shared.conf"),
            "noop {noop} {args:?}: the saved report's error: {report:#}"
        );
    }
}

/// A module that replaces a directory and an unordered one that changes
/// something under it are a conflict too (the line names a path of that
/// directory); nothing is merged.
#[test]
fn replacing_a_directory_another_module_changes_under_is_a_conflict() {
    let f = Fixture::new();
    f.node("n", &["tree-a", "tree-b"])
        .module("tree-a", "")
        .module("tree-b", "");
    f.module_file(
        "tree-a",
        "scripts/10-replace",
        "rm -rf /srv/tree; mkdir /srv/tree; echo a > /srv/tree/a\n",
        0o755,
    )
    .module_file(
        "tree-b",
        "scripts/10-under",
        "echo b > /srv/tree/sub/b\n",
        0o755,
    );
    let r = FixtureRoot::new(f.dir.path());
    r.file("srv/tree/sub/old", "old\n");
    let before = snapshot_no_mtimes(&r.path);
    for noop in [true, false] {
        let (code, out, err) = dance(&f, &f.state(), &r.path, noop, &[]);
        assert_eq!(code, 1, "noop {noop}: {out}{err}");
        let said = err.lines().any(|l| {
            l.strip_prefix("error: modules tree-a and tree-b both change /srv/tree")
                .and_then(|rest| rest.strip_suffix(" and neither requires the other: add \"after tree-a\" to modules/tree-b/requires (or the reverse)"))
                .is_some_and(|p| p.is_empty() || p.starts_with('/'))
        });
        assert!(
            said,
            "noop {noop}: the conflict under /srv/tree, got:\n{err}"
        );
        assert_eq!(
            snapshot_no_mtimes(&r.path),
            before,
            "noop {noop}: nothing merged"
        );
    }
}

/// Ordering the two (`after alpha` in beta's requires) ends the conflict:
/// the dance succeeds and the later module's content wins.
///
/// An override converges: the earlier module's version of the path is
/// neither reported nor merged, the later one's is diffed against the
/// root, so the next dance changes nothing (before, both reported a
/// change every dance and the merge wrote the file twice). A module that
/// requires only the earlier one still sees its version.
#[test]
fn ordering_the_two_ends_the_conflict_and_the_later_wins() {
    let f = Fixture::new();
    two_writers(&f);
    f.module("beta", "after alpha\n");
    f.module("gamma", "after alpha\n");
    f.module_file(
        "gamma",
        "scripts/10-g",
        "echo g > /etc/gamma\ncat /etc/shared.conf > /etc/gamma-saw\n",
        0o755,
    );
    let r = FixtureRoot::new(f.dir.path());
    let before = snapshot_no_mtimes(&r.path);
    let (code, out, err) = dance(&f, &f.state(), &r.path, true, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(snapshot_no_mtimes(&r.path), before);
    let changed = |report: &Value, m: &str| -> Vec<String> {
        report["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == m)
            .unwrap()["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["kind"].as_str().unwrap(),
                    c["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    let noop = last_report(&f.state());
    assert!(changed(&noop, "alpha").is_empty(), "{noop:#}");
    assert_eq!(changed(&noop, "beta"), ["Created /etc/shared.conf"]);
    let (code, out, err) = dance(&f, &f.state(), &r.path, false, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let live = last_report(&f.state());
    for m in ["alpha", "beta", "gamma"] {
        assert_eq!(
            changed(&live, m),
            changed(&noop, m),
            "the noop said what {m} did live"
        );
    }
    assert_eq!(r.read("etc/shared.conf").as_deref(), Some("from beta\n"));
    assert_eq!(r.read("etc/gamma").as_deref(), Some("g\n"));
    assert_eq!(r.read("etc/gamma-saw").as_deref(), Some("from alpha\n"));
    // Converged: the next dances, noop and live, change nothing.
    for noop in [true, false] {
        let (code, out, err) = dance(&f, &f.state(), &r.path, noop, &[]);
        assert_eq!(code, 0, "{out}{err}");
        let report = last_report(&f.state());
        assert_eq!(report["status"], "ok", "noop {noop}: {report:#}");
    }
    assert_eq!(r.read("etc/shared.conf").as_deref(), Some("from beta\n"));
}

/// Two unordered modules making the same directory with the same
/// attributes is no conflict: both land.
#[test]
fn two_unordered_modules_making_one_directory_alike_is_no_conflict() {
    let f = Fixture::new();
    f.node("n", &["mk1", "mk2"])
        .module("mk1", "")
        .module("mk2", "");
    f.module_file(
        "mk1",
        "scripts/10-mk",
        "mkdir -p /srv/made; echo 1 > /srv/made/one\n",
        0o755,
    )
    .module_file(
        "mk2",
        "scripts/10-mk",
        "mkdir -p /srv/made; echo 2 > /srv/made/two\n",
        0o755,
    );
    let r = FixtureRoot::new(f.dir.path());
    for noop in [true, false] {
        let (code, out, err) = dance(&f, &f.state(), &r.path, noop, &[]);
        assert_eq!(code, 0, "noop {noop}: {out}{err}");
    }
    assert_eq!(r.read("srv/made/one").as_deref(), Some("1\n"));
    assert_eq!(r.read("srv/made/two").as_deref(), Some("2\n"));
}

/// The failure graph's plan (Kahn's, the smallest ready name first).
const FAIL_PLAN: [&str; 11] = [
    "c1", "c2", "c3", "c4", "c5", "side", "solo1", "late", "solo2", "zfail", "zdep",
];

/// Node `n`: a chain c1 -> c2 -> c3 -> c4 -> c5 whose c3 fails (after
/// writing a file), `side` after c2 (a sibling of c3), independent
/// `solo1` and `solo2`, `late` after c5 and solo1, an independent `zfail`
/// that fails too, and `zdep` after zfail and c4 (two failed modules in
/// its closure; c3 comes first in the plan). Every module that gets to
/// its last script says `NAME ran`.
fn failing_chain(f: &Fixture) {
    f.node("n", &FAIL_PLAN);
    for m in FAIL_PLAN {
        f.module(m, "");
        f.module_file(m, "scripts/90-say", &format!("echo {m} ran\n"), 0o755);
    }
    f.module("c2", "after c1\n")
        .module("c3", "after c2\n")
        .module("c4", "after c3\n")
        .module("c5", "after c4\n")
        .module("side", "after c2\n")
        .module("late", "after c5\nafter solo1\n")
        .module("zdep", "after zfail\nafter c4\n");
    f.module_file("c1", "files/etc/g/c1", "c1\n", 0o644)
        .module_file("c2", "scripts/10-c2", "echo c2 >> /etc/g/c1\n", 0o755)
        .module_file(
            "c3",
            "scripts/10-fail",
            "echo partial > /etc/g/c3\nexit 3\n",
            0o755,
        )
        .module_file("c4", "files/etc/g/c4", "c4\n", 0o644)
        .module_file("c5", "scripts/10-c5", "echo c5 > /etc/g/c5\n", 0o755)
        .module_file(
            "side",
            "scripts/10-side",
            "echo side > /etc/g/side\n",
            0o755,
        )
        .module_file("solo1", "files/etc/g/solo1", "solo1\n", 0o644)
        .module_file("solo2", "templates/etc/g/solo2", "echo solo2\n", 0o644)
        .module_file("late", "files/etc/g/late", "late\n", 0o644)
        .module_file(
            "zfail",
            "scripts/10-fail",
            "echo partial > /etc/g/zfail\nexit 7\n",
            0o755,
        )
        .module_file("zdep", "files/etc/g/zdep", "zdep\n", 0o644);
}

/// What every dance of [`failing_chain`] says, noop and live: exit 1; c3
/// and zfail failed, with their errors; c4, c5, late and zdep not run,
/// each naming c3; every other module ran and is reported, in plan order;
/// the run's error is c3's.
fn assert_failed_as_planned(what: &str, (code, out, err): &(i32, String, String), report: &Value) {
    assert_eq!(*code, 1, "{what}: {out}{err}");
    let ran: Vec<&str> = out.lines().filter_map(|l| l.strip_suffix(" ran")).collect();
    assert_eq!(
        ran,
        ["c1", "c2", "side", "solo1", "solo2"],
        "{what}: the modules that ran, in plan order:\n{out}{err}"
    );
    let not_run: Vec<&str> = err.lines().filter(|l| l.contains(": not run: ")).collect();
    assert_eq!(
        not_run,
        [
            "warning: c4: not run: requires c3, which failed",
            "warning: c5: not run: requires c3, which failed",
            "warning: late: not run: requires c3, which failed",
            "warning: zdep: not run: requires c3, which failed",
        ],
        "{what}: {err}"
    );
    for m in ["c3", "zfail"] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!("error: {m}: "))),
            "{what}: {m}'s error:\n{err}"
        );
    }
    let modules = report["modules"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = modules.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(
        names, FAIL_PLAN,
        "{what}: every module reported: {report:#}"
    );
    for m in &modules {
        let name = m["name"].as_str().unwrap();
        let changes = m["changes"].as_array().map_or(0, |c| c.len());
        let error = m["error"].as_str();
        let not_run = m["not_run"].as_str();
        match name {
            "c3" | "zfail" => {
                assert!(
                    error.is_some_and(|e| e.contains("scripts/10-fail")),
                    "{what}: {name}'s entry: {m:#}"
                );
                assert_eq!(not_run, None, "{what}: {m:#}");
            }
            "c4" | "c5" | "late" | "zdep" => {
                assert_eq!(not_run, Some("requires c3, which failed"), "{what}: {m:#}");
                assert_eq!((error, changes), (None, 0), "{what}: {m:#}");
            }
            _ => {
                assert_eq!((error, not_run), (None, None), "{what}: {m:#}");
                assert!(changes > 0, "{what}: {name} changed something: {m:#}");
            }
        }
    }
    let c3_error = modules
        .get(2)
        .and_then(|m| m["error"].as_str())
        .unwrap_or("(none)");
    let run_error = report["error"].as_str().unwrap_or_default();
    assert!(
        run_error.contains("c3") && run_error.contains(c3_error),
        "{what}: the run's error is c3's ({c3_error}): {run_error}"
    );
}

/// Today's promise, whatever the executor: a failed module fails the
/// dance with its error, and a failed live dance merges nothing.
#[test]
fn a_failed_module_fails_the_dance_and_nothing_is_merged() {
    let f = Fixture::new();
    failing_chain(&f);
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/g/README", "g\n");
    let before = snapshot_no_mtimes(&r.path);
    let (code, out, err) = dance(&f, &f.state(), &r.path, false, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: c3: scripts/10-fail")),
        "{err}"
    );
    assert_eq!(snapshot_no_mtimes(&r.path), before, "nothing merged");
}

/// A failing module in the middle of a chain: what requires it is not run
/// and says why, its sibling and the independent modules run and are
/// reported, noop and live; by default (`on_failure = "nothing"`) live
/// merges nothing.
#[test]
fn a_failure_stops_only_what_requires_it_noop_and_live() {
    let f = Fixture::new();
    failing_chain(&f);
    let (code, out, err) = f.plan("n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), FAIL_PLAN);
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/g/README", "g\n");
    let before = snapshot_no_mtimes(&r.path);
    let mut noops = Vec::new();
    for (what, noop, args) in [
        ("noop", true, &[][..]),
        ("noop, jobs 1", true, &["--jobs", "1"][..]),
        ("live", false, &[][..]),
    ] {
        let result = dance(&f, &f.state(), &r.path, noop, args);
        let report = last_report(&f.state());
        assert_failed_as_planned(what, &result, &report);
        assert_eq!(
            snapshot_no_mtimes(&r.path),
            before,
            "{what}: nothing merged"
        );
        if noop {
            noops.push(normalized(&report, &r.path, &f.state()));
        }
    }
    assert_eq!(
        noops[0], noops[1],
        "the failed noop's report, jobs 1 against the default"
    );
    fs::write(f.config(), "on_failure = \"nothing\"\n").unwrap();
    let result = dance(&f, &f.state(), &r.path, false, &[]);
    assert_failed_as_planned(
        "live, on_failure = nothing",
        &result,
        &last_report(&f.state()),
    );
    assert_eq!(
        snapshot_no_mtimes(&r.path),
        before,
        "on_failure = nothing: nothing merged"
    );
}

/// `on_failure = "independent"`: a failed live dance merges exactly the
/// modules that succeeded with their whole requires closure (c1, c2,
/// side, solo1, solo2) — not a failed module's partial work, not what
/// was not run — and still exits 1.
#[test]
fn on_failure_independent_merges_exactly_what_did_not_depend_on_a_failure() {
    let f = Fixture::new();
    failing_chain(&f);
    fs::write(f.config(), "on_failure = \"independent\"\n").unwrap();
    let r = root_in(&f.dir.path().join("actual"));
    r.file("etc/g/README", "g\n");
    let expected = root_in(&f.dir.path().join("expected"));
    expected
        .file("etc/g/README", "g\n")
        .file("etc/g/c1", "c1\nc2\n")
        .file("etc/g/side", "side\n")
        .file("etc/g/solo1", "solo1\n")
        .file("etc/g/solo2", "solo2\n");
    let before = snapshot_no_mtimes(&r.path);
    let merged = "the modules whose requirements all succeeded: c1, c2, side, solo1, solo2\n";
    let result = dance(&f, &f.state(), &r.path, true, &[]);
    assert_failed_as_planned("noop, independent", &result, &last_report(&f.state()));
    assert_eq!(
        snapshot_no_mtimes(&r.path),
        before,
        "noop, independent: nothing merged"
    );
    assert!(
        result
            .2
            .contains(&format!("a live dance would merge {merged}")),
        "the noop says what live merges: {}",
        result.2
    );
    let result = dance(&f, &f.state(), &r.path, false, &[]);
    assert_failed_as_planned("live, independent", &result, &last_report(&f.state()));
    assert!(
        result.2.contains(&format!("merging {merged}")),
        "{}",
        result.2
    );
    let diff = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|l| !b.contains(l))
            .map(|l| format!("- {l}"))
            .chain(
                b.iter()
                    .filter(|l| !a.contains(l))
                    .map(|l| format!("+ {l}")),
            )
            .collect()
    };
    let (want, got) = (
        snapshot_no_mtimes(&expected.path),
        snapshot_no_mtimes(&r.path),
    );
    assert!(
        want == got,
        "merged exactly the independent modules' changes (- expected, + merged):\n{}",
        diff(&want, &got).join("\n")
    );
}

/// Node `n` with two independent modules whose script sleeps 1 s.
fn two_sleepers(f: &Fixture) {
    f.node("n", &["sleep-a", "sleep-b"])
        .module("sleep-a", "")
        .module("sleep-b", "");
    for m in ["sleep-a", "sleep-b"] {
        f.module_file(m, "scripts/10-sleep", "sleep 1\n", 0o755);
    }
}

/// The wall time of a noop dance, which must succeed.
fn timed_noop(f: &Fixture, root: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let (code, out, err) = dance(f, &f.state(), root, true, args);
    let took = started.elapsed();
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    took
}

/// Independent modules run side by side up to `jobs`: two that each sleep
/// 1 s take under 1.9 s as a whole with two jobs (a serial run cannot
/// take less than 2 s), and at least 2 s with one. The flag overrides
/// the setting both ways. (A property of concurrency, not a speed
/// target: the bound is generous.)
#[test]
fn independent_modules_run_side_by_side_up_to_jobs() {
    let f = Fixture::new();
    two_sleepers(&f);
    let r = FixtureRoot::new(f.dir.path());
    let serial = Duration::from_secs(2);
    let side_by_side = Duration::from_millis(1900);
    fs::write(f.config(), "jobs = 2\n").unwrap();
    let took = timed_noop(&f, &r.path, &[]);
    assert!(took < side_by_side, "jobs = 2: {took:?}");
    let took = timed_noop(&f, &r.path, &["--jobs", "1"]);
    assert!(took >= serial, "jobs = 2, --jobs 1: {took:?}");
    fs::write(f.config(), "jobs = 1\n").unwrap();
    let took = timed_noop(&f, &r.path, &[]);
    assert!(took >= serial, "jobs = 1: {took:?}");
    let took = timed_noop(&f, &r.path, &["--jobs", "2"]);
    assert!(took < side_by_side, "jobs = 1, --jobs 2: {took:?}");
}

/// Beside other modules, the first module not yet shown prints as it
/// goes: a long script's first line is seen while it runs (with `jobs` 2),
/// and a module after it in the plan that ended meanwhile is shown only
/// after it, in the plan's order.
#[test]
fn the_first_module_not_yet_shown_prints_as_it_goes() {
    use std::io::BufRead;
    let f = Fixture::new();
    f.node("n", &["a-slow", "b-fast"])
        .module("a-slow", "")
        .module("b-fast", "");
    f.module_file(
        "a-slow",
        "scripts/10-slow",
        "echo slow-started\nsleep 60\n",
        0o755,
    );
    f.module_file("b-fast", "scripts/10-fast", "echo fast-done\n", 0o755);
    fs::write(f.config(), "jobs = 2\n").unwrap();
    let r = FixtureRoot::new(f.dir.path());
    let mut c = f.process(&f.state(), &r.path);
    c.env("NOOP", "true")
        .arg("dance")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l: &String| l == "slow-started") && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
        }
    }
    // b-fast has had time to end; its line waits for a-slow's turn.
    std::thread::sleep(Duration::from_millis(500));
    seen.extend(rx.try_iter());
    common::kill_dance(&mut child);
    assert_eq!(seen, ["slow-started"], "while a-slow runs");
}

/// Asserts a refusal: exit 1 or 2, nothing on stdout, one stderr line,
/// an `error:` naming `setting`.
fn assert_refused(what: &str, (code, out, err): (i32, String, String), setting: &str) {
    assert!(code == 1 || code == 2, "{what}: exit {code}: {out}{err}");
    assert_eq!(out, "", "{what}");
    assert_eq!(err.lines().count(), 1, "{what}: one line:\n{err}");
    assert!(
        err.starts_with("error: ") && err.contains(setting),
        "{what}: an error naming {setting}: {err}"
    );
}

/// `jobs` defaults to the number of CPUs and `on_failure` to "nothing";
/// `--jobs 0`, `jobs = 0`, `jobs = "x"` and an unknown `on_failure` are
/// refused in one line naming the setting, before anything runs.
#[test]
fn jobs_and_on_failure_have_defaults_and_bad_values_are_refused_in_one_line() {
    let f = Fixture::new();
    two_sleepers(&f);
    let (code, out, err) = run(f.disco().arg("config"));
    assert_eq!(code, 0, "{err}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        out.contains(&format!("\njobs = {cpus}  # default")),
        "jobs defaults to the number of CPUs ({cpus}):\n{out}"
    );
    assert!(
        out.contains("\non_failure = \"nothing\"  # default\n"),
        "on_failure defaults to \"nothing\":\n{out}"
    );
    let (code, out, err) = run(f.disco().args(["dance", "--help"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("--jobs"),
        "dance --help tells of --jobs:\n{out}"
    );
    let r = FixtureRoot::new(f.dir.path());
    let before = snapshot_no_mtimes(&r.path);
    assert_refused(
        "--jobs 0",
        dance(&f, &f.state(), &r.path, true, &["--jobs", "0"]),
        "--jobs",
    );
    let config = f.config().display().to_string();
    for (text, setting) in [
        ("jobs = 0\n", "jobs"),
        ("jobs = \"x\"\n", "jobs"),
        ("on_failure = \"sometimes\"\n", "on_failure"),
    ] {
        fs::write(f.config(), text).unwrap();
        let result = dance(&f, &f.state(), &r.path, true, &[]);
        assert!(
            result.2.starts_with(&format!("error: {config}")),
            "{text}: names the file: {}",
            result.2
        );
        assert_refused(text.trim(), result, setting);
    }
    assert_eq!(snapshot_no_mtimes(&r.path), before);
}

/// A long chain (70 modules: the lowers of each past the 8th are
/// squashed, in chunks of 8 then of 64) among 500 modules, noop then
/// live: each module of the chain sees what every one before it wrote,
/// deleted and replaced, and the merge lands it all.
#[test]
fn a_long_chain_is_squashed_and_500_modules_dance() {
    let f = Fixture::new();
    let r = FixtureRoot::new(f.dir.path());
    r.file("etc/chain-gone", "root\n");
    let chain: Vec<String> = (0..70).map(|i| format!("c{i:03}")).collect();
    let alone: Vec<String> = (0..430).map(|i| format!("i{i:03}")).collect();
    let names: Vec<&str> = chain.iter().chain(&alone).map(String::as_str).collect();
    f.node("n", &names);
    for (i, m) in chain.iter().enumerate() {
        let requires = match i {
            0 => String::new(),
            _ => format!("after {}\n", chain[i - 1]),
        };
        f.module(m, &requires);
        // Each checks it sees the i lines before its own, and what the
        // modules before it deleted and replaced, across the squashes:
        // c010 deletes a file of ROOT, c040 one that c005 made, c045
        // replaces by a file the directory c006 made.
        let script = match i {
            5 => "echo t > /etc/chain-tmp".to_string(),
            6 => "mkdir /etc/chain-dir && echo d > /etc/chain-dir/in".to_string(),
            10 => "rm /etc/chain-gone".to_string(),
            40 => "rm /etc/chain-tmp".to_string(),
            45 => "rm -r /etc/chain-dir && echo f > /etc/chain-dir".to_string(),
            _ => String::new(),
        };
        let script = format!(
            "n=$(cat /etc/chain 2>/dev/null | wc -l); test $n = {i} || {{ echo \"{m} saw $n lines\"; exit 1; }}\n\
             test ! -e /etc/chain-gone || [ {i} -le 10 ] || exit 3\n\
             [ \"$([ -e /etc/chain-tmp ] && echo y)\" = \"$([ {i} -gt 5 ] && [ {i} -le 40 ] && echo y)\" ] || exit 4\n\
             if [ {i} -gt 45 ]; then test -f /etc/chain-dir || exit 5; elif [ {i} -gt 6 ]; then test -f /etc/chain-dir/in || exit 6; fi\n\
             {script}\necho {m} >> /etc/chain\n"
        );
        f.module_file(m, "scripts/10-x", &script, 0o755);
    }
    for m in &alone {
        f.module(m, "");
    }
    let (code, out, err) = dance(&f, &f.state(), &r.path, true, &[]);
    assert_eq!(code, 0, "noop: {out}{err}");
    let (code, out, err) = dance(&f, &f.state(), &r.path, false, &[]);
    assert_eq!(code, 0, "live: {out}{err}");
    let lines: Vec<String> = fs::read_to_string(r.path.join("etc/chain"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, chain);
    assert!(!r.path.join("etc/chain-gone").exists());
    assert!(!r.path.join("etc/chain-tmp").exists());
    assert_eq!(
        fs::read_to_string(r.path.join("etc/chain-dir")).unwrap(),
        "f\n"
    );
    assert_eq!(
        last_report(&f.state())["modules"].as_array().unwrap().len(),
        500
    );
}
