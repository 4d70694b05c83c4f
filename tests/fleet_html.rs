//! `disco report --fleet --html DIR`: the static fleet site, loaded in a
//! real browser (headless Chromium from Debian's packages) and checked as
//! a person would see it — the failed node first, a node's page reached
//! by its link, a hostile report's strings shown as text (no element of
//! theirs in the page), no script error in the console — plus replacing
//! the site and refusing a directory disco did not write.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root::FixtureRoot;
use common::{run, Fixture};
use disco::report::{Change, ChangeKind, Meta, ModuleReport, RunReport};

/// Headless Chromium with its own profile and HOME under a tempdir; every
/// process it started (its process group, and the crash handlers it
/// detaches, which name that HOME) is killed when it is dropped, even
/// when the test fails.
struct Browser {
    home: tempfile::TempDir,
    pgids: Vec<i32>,
}

/// What one Chromium run printed: the DOM or nothing, and its log (the
/// console's messages among it).
struct Load {
    stdout: String,
    log: String,
}

impl Browser {
    fn new() -> Browser {
        assert!(
            Path::new("/usr/bin/chromium").exists(),
            "chromium is not installed: run scripts/install-test-deps"
        );
        Browser {
            home: tempfile::tempdir().unwrap(),
            pgids: Vec::new(),
        }
    }

    /// Loads `page` with `args` (`--dump-dom`, `--screenshot=…`), waiting
    /// at most 90 s.
    fn load(&mut self, page: &Path, args: &[&str]) -> Load {
        use std::os::unix::process::CommandExt;
        let n = self.pgids.len();
        let out = self.home.path().join(format!("out{n}"));
        let log = self.home.path().join(format!("log{n}"));
        let mut child = Command::new("chromium")
            .env("HOME", self.home.path())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-crash-reporter",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1200,800",
            ])
            .arg(format!(
                "--user-data-dir={}",
                self.home.path().join("profile").display()
            ))
            .args(args)
            .arg(format!("file://{}", page.display()))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        self.pgids.push(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "chromium ran over 90 s on {page:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = fs::read_to_string(&log).unwrap();
        assert!(status.success(), "chromium on {page:?}: {status}\n{log}");
        Load {
            stdout: fs::read_to_string(&out).unwrap(),
            log,
        }
    }

    /// The page's DOM after it loaded, and what the console said; fails
    /// on a script error or a blocked script.
    fn dom(&mut self, page: &Path) -> String {
        let l = self.load(page, &["--dump-dom"]);
        let console: Vec<&str> = l.log.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(
            !l.log.contains("Uncaught") && !l.log.contains("Refused to"),
            "a script error or a blocked script on {page:?}: {console:#?}"
        );
        assert!(l.stdout.contains("</html>"), "{page:?}: {}", l.stdout);
        l.stdout
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        for &g in &self.pgids {
            // SAFETY: plain syscall; the group is ours (process_group(0)).
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
        // Chromium's crash handlers leave its process group; they name the
        // HOME it was given, unique to this browser.
        let home = self.home.path().to_string_lossy().into_owned();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&home) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Copies the run reports of a node's state dir into the served
/// directory as `disco serve` stores an upload: `reports/NODE/RUN.json`
/// and `last.json`.
fn upload(served: &Path, state: &Path) {
    let mut runs: Vec<PathBuf> = fs::read_dir(state.join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap() != "last.json")
        .collect();
    runs.sort();
    for p in runs {
        let r: RunReport = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let dir = served.join("reports").join(&r.node);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        fs::copy(&p, dir.join("last.json")).unwrap();
    }
}

/// A real live dance of `node` on a fixture root of its own, its own state.
fn dance(f: &Fixture, node: &str) -> (i32, PathBuf) {
    let dir = f.dir.path().join(format!("node-{node}"));
    fs::create_dir(&dir).unwrap();
    let root = FixtureRoot::new(&dir);
    let state = dir.join("state");
    let (code, _, err) = run(f
        .disco_with_state(&state)
        .arg("--server")
        .arg(f.server())
        .args(["--node", node, "--root"])
        .arg(&root.path)
        .arg("dance"));
    assert!(code <= 2, "{node}: {err}");
    (code, state)
}

/// web1's secret parameter.
const SECRET: &str = "t0ken-Qx7-secret";

/// What a hostile node can put in its report: markup, quotes, `&`, an
/// escape sequence and a carriage return.
const HOSTILE: &str = "<script>alert(\"x\")</script>'\"><img src=x onerror=alert(1)>&amp;\x1b[2K\r";

/// A report of node `evil`, every text a node controls hostile.
fn hostile_report(i: u32) -> RunReport {
    let t = std::time::SystemTime::now() - Duration::from_secs(600 * (3 - i as u64));
    let ended = humantime::format_rfc3339_seconds(t).to_string();
    let meta = |md5: &str| Meta {
        kind: "regular file".into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        owner: format!("{HOSTILE}:root"),
        md5: Some(md5.into()),
        target: None,
        selinux: None,
        caps: None,
        size: 9,
    };
    RunReport {
        id: format!("2026010{i}T000000Z-{i}"),
        node: "evil".into(),
        started: ended.clone(),
        ended,
        status: "changed".into(),
        duration: 0.5 + f64::from(i),
        snapshot: format!("snap{HOSTILE}"),
        plan: vec![format!("m{HOSTILE}")],
        modules: vec![ModuleReport {
            name: format!("m{HOSTILE}"),
            changes: vec![Change {
                path: format!("/etc/{HOSTILE}"),
                kind: ChangeKind::Modified,
                old: Some(meta("0")),
                new: Some(meta("1")),
                diff: Some(format!(
                    "--- a\n+++ b\n@@ -1 +1 @@\n-old\n+</pre>{HOSTILE}\n"
                )),
                inside: None,
            }],
            ..ModuleReport::default()
        }],
        ..RunReport::default()
    }
}

/// Writes `r` as serve stores it.
fn store(served: &Path, r: &RunReport) {
    let dir = served.join("reports").join(&r.node);
    fs::create_dir_all(&dir).unwrap();
    let bytes = serde_json::to_vec(r).unwrap();
    fs::write(dir.join(format!("{}.json", r.id)), &bytes).unwrap();
    fs::write(dir.join("last.json"), &bytes).unwrap();
}

/// `disco report --fleet --html SITE --server SERVED`.
fn html(f: &Fixture, served: &Path, site: &Path) -> (i32, String, String) {
    run(f
        .disco_without_server()
        .arg("--server")
        .arg(served)
        .args(["report", "--fleet", "--html"])
        .arg(site))
}

/// The node of each row of the overview's table, in order (the text of
/// its first cell's link, or of the cell).
fn rows(dom: &str) -> Vec<(String, String)> {
    let body = &dom[dom.find("<tbody>").expect("the fleet table")..];
    body.split("<tr class=\"")
        .skip(1)
        .map(|row| {
            let class = row[..row.find('"').unwrap()].to_string();
            let cell = &row[row.find("<td>").unwrap() + 4..];
            let cell = &cell[..cell.find("</td>").unwrap()];
            let text = match cell.find("\">") {
                Some(i) if cell.starts_with("<a ") => &cell[i + 2..cell.find("</a>").unwrap()],
                _ => cell.split(" <span").next().unwrap(),
            };
            (text.to_string(), class)
        })
        .collect()
}

/// The text of the page's first `<pre>` as a person reads it: no tags,
/// entities decoded.
fn text_of_pre(dom: &str) -> String {
    let start = dom.find("<pre").expect("a <pre>");
    let pre = &dom[start..];
    let pre = &pre[pre.find('>').unwrap() + 1..pre.find("</pre>").unwrap()];
    let mut text = String::new();
    let mut rest = pre;
    while let Some(i) = rest.find('<') {
        text.push_str(&rest[..i]);
        rest = &rest[i + rest[i..].find('>').unwrap() + 1..];
    }
    text.push_str(rest);
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
        .trim_end()
        .to_string()
}

/// The `href` of the link whose text is `text`.
fn href<'a>(dom: &'a str, text: &str) -> &'a str {
    let end = dom
        .find(&format!("\">{text}</a>"))
        .unwrap_or_else(|| panic!("no link {text}: {dom}"));
    let start = dom[..end].rfind("href=\"").unwrap() + 6;
    &dom[start..end]
}

/// A served directory (0700, as publish wants it) holding the reports of
/// five nodes: web1 and db1 from real live dances on fixture roots (db1's
/// failed), evil's three hostile ones, old's of two days ago, and a
/// directory that is no node name and holds nothing. Returns it and
/// db1's state dir.
fn fleet_of_five(f: &Fixture) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    f.node("web1", &["app"]).module("app", "");
    f.module_file("app", "files/etc/app.conf", "port = 80\n", 0o644);
    // A secret in a path: the node masks it before it stores the report.
    f.file(
        "parameters/web1/parameters/secrets/token",
        &format!("{SECRET}\n"),
    );
    f.module_file(
        "app",
        "scripts/10-token",
        "echo x > \"/etc/app-$(disco param get secrets/token)\"\n",
        0o755,
    );
    f.node("db1", &["db"]).module("db", "");
    f.module_file("db", "files/etc/db.conf", "x\n", 0o644);
    f.module_file(
        "db",
        "scripts/10-check",
        "#!/bin/sh\necho 'db: bad <config>' >&2\nexit 3\n",
        0o755,
    );
    f.node("evil", &[]);
    let served = f.dir.path().join("srv");
    fs::create_dir(&served).unwrap();
    fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
    let (code, web1) = dance(f, "web1");
    assert_eq!(code, 0, "web1 converged");
    upload(&served, &web1);
    let (code, db1) = dance(f, "db1");
    assert_eq!(code, 1, "db1 failed");
    upload(&served, &db1);
    for i in 0..3 {
        store(&served, &hostile_report(i));
    }
    let mut old = hostile_report(0);
    (old.node, old.id, old.status) = ("old".into(), "20260101T000000Z-9".into(), "ok".into());
    old.ended = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(2 * 86400),
    )
    .to_string();
    old.modules.clear();
    store(&served, &old);
    fs::create_dir_all(served.join("reports/z<i>x")).unwrap();
    (served, db1)
}

/// Publishes the fixture's tree as the candidate of `served` (its nodes:
/// db1, evil, web1) and writes the previews of two of them as serve
/// stores them: db1's fails with a hostile error, web1's changes a file;
/// evil has not reported. Returns the candidate's id.
fn candidate_with_previews(f: &Fixture, served: &Path) -> String {
    let (code, _, err) = f.publish(served, &["--candidate"]);
    assert_eq!(code, 0, "{err}");
    let link = fs::read_link(served.join("candidate")).unwrap();
    let id = link.file_name().unwrap().to_string_lossy().into_owned();
    let mut db1 = hostile_report(2);
    (db1.node, db1.status) = ("db1".into(), "failed".into());
    db1.modules[0].name = "db".into();
    db1.modules[0].error = Some(format!("scripts/20-new exited 2: {HOSTILE}"));
    let mut web1 = hostile_report(2);
    web1.node = "web1".into();
    web1.modules[0].name = "app".into();
    web1.modules[0].changes[0].path = "/etc/app.conf".into();
    for r in [&mut db1, &mut web1] {
        (r.candidate, r.snapshot, r.noop) = (Some(id.clone()), id.clone(), true);
        let dir = served.join("reports").join(&r.node);
        fs::write(dir.join("candidate.json"), serde_json::to_vec(r).unwrap()).unwrap();
    }
    id
}

#[test]
fn the_fleet_page_in_a_browser_shows_the_failed_node_first_and_hostile_reports_as_text() {
    let f = Fixture::new();
    let (served, db1_state) = fleet_of_five(&f);
    let candidate = candidate_with_previews(&f, &served);

    let site = f.dir.path().join("www/fleet");
    fs::create_dir(f.dir.path().join("www")).unwrap();
    let (code, out, err) = html(&f, &served, &site);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "wrote the fleet page to {}: 5 node(s), 2 failed, 1 stale; 4 node page(s); the candidate's preview (candidate.html)\n",
            site.display()
        )
    );

    let mut pages = vec![site.join("index.html"), site.join("candidate.html")];
    pages.extend(
        fs::read_dir(site.join("nodes"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for p in &pages {
        let html = fs::read_to_string(p).unwrap();
        assert!(!html.contains("Qx7"), "web1's secret in {p:?}");
    }

    let mut browser = Browser::new();
    let index = browser.dom(&site.join("index.html"));
    let order = rows(&index);
    let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["db1", "z&lt;i&gt;x", "old", "evil", "web1"],
        "failed first, then stale, each by name: {order:?}"
    );
    let classes: Vec<&str> = order.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(classes, ["failed", "failed", "stale", "ok", "ok"]);
    assert!(index.contains("no readable report"), "{index}");
    assert!(
        index.contains("5 node(s): <b>2 failed</b>, 1 stale (no run for 2h)"),
        "{index}"
    );

    // The failed node's page, by the link a person would click.
    let link = href(&index, "db1");
    assert_eq!(link, "nodes/db1.html");
    let db1_page = browser.dom(&site.join(link));
    assert!(db1_page.contains("<h1>node db1</h1>"), "{db1_page}");
    assert!(
        db1_page.contains("scripts/10-check exited 3"),
        "its failed module's error: {db1_page}"
    );
    assert!(
        db1_page.contains("File: /etc/db.conf : Created"),
        "the change the failed dance found: {db1_page}"
    );
    assert_eq!(db1_page.matches("<circle").count(), 1, "one run plotted");
    // Its changes are exactly what `disco diff` prints on the node.
    let (code, diff, err) = run(f.disco_with_state(&db1_state).arg("diff"));
    assert_eq!(code, 0, "{err}");
    let on_node: Vec<&str> = diff
        .lines()
        .skip(2) // the run's line, the module's count
        .map(|l| l.strip_prefix("info: ").unwrap_or(l))
        .take_while(|l| !l.starts_with("that run failed: "))
        .collect();
    assert!(on_node.len() >= 2, "a change and its diff: {diff}");
    assert_eq!(text_of_pre(&db1_page), on_node.join("\n"));
    let back = href(&db1_page, "← fleet");
    assert_eq!(
        site.join("nodes").join(back),
        site.join("nodes/../index.html")
    );

    let web1_page = browser.dom(&site.join(href(&index, "web1")));
    assert!(
        web1_page.contains("File: /etc/app.conf : Created"),
        "{web1_page}"
    );
    assert!(web1_page.contains("port = 80"), "its diff: {web1_page}");
    assert!(
        web1_page.contains("File: /etc/app-******** : Created") && !web1_page.contains("Qx7"),
        "the secret masked as on the node: {web1_page}"
    );

    // The hostile node's strings are text: no element of theirs, every
    // control character shown as \xNN.
    let evil = browser.dom(&site.join("nodes/evil.html"));
    assert_eq!(evil.matches("<circle").count(), 3, "three runs plotted");
    for injected in ["<script", "<img", "onerror=\"", "\x1b", "\r"] {
        assert!(!evil.contains(injected), "{injected:?} in {evil}");
        assert!(!index.contains(injected), "{injected:?} in {index}");
    }
    let shown = "&lt;script&gt;alert(\"x\")&lt;/script&gt;'\"&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;\\x1b[2K\\x0d";
    assert!(
        evil.contains(&format!("m{shown}: 1 change(s)")),
        "the module's name: {evil}"
    );
    assert!(
        evil.contains(&format!("File: /etc/{shown} : Modified")),
        "the path: {evil}"
    );
    // A diff's lines as `disco diff` prints them (a CR before the newline
    // ends the line).
    let in_diff = shown.strip_suffix("\\x0d").unwrap();
    assert!(
        evil.contains(&format!(
            "<span class=\"add\">+&lt;/pre&gt;{in_diff}</span>"
        )),
        "the diff: {evil}"
    );
    assert!(
        index.contains(&format!("snap{shown}")),
        "the snapshot: {index}"
    );

    // The candidate's preview, by its link from the overview: the failing
    // group first, each group's nodes linked, the nodes not reported.
    let link = href(&index, &format!("<code>{candidate}</code>"));
    assert_eq!(link, "candidate.html");
    let preview = browser.dom(&site.join(link));
    assert!(
        preview.contains(&format!("<h1>Candidate <code>{candidate}</code></h1>")),
        "{preview}"
    );
    assert!(preview.contains("3 node(s) · 2 group(s) · <b>1 fail</b> · some node fails"));
    let fails = preview
        .find("1 node(s)</span> fail in module db</h2>")
        .expect(&preview);
    let changes = preview
        .find("1 node(s)</span> 1 change(s)</h2>")
        .expect(&preview);
    assert!(fails < changes, "the failing group first: {preview}");
    assert!(
        preview.contains(&format!("db: scripts/20-new exited 2: {shown}</p>")),
        "the failure, escaped: {preview}"
    );
    assert!(
        preview.contains("File: /etc/app.conf : Modified"),
        "{preview}"
    );
    assert!(
        preview.contains(
            "<h2>Not reported yet: 1</h2>\n<ul><li><a href=\"nodes/evil.html\">evil</a></li></ul>"
        ),
        "{preview}"
    );
    assert_eq!(href(&preview, "db1"), "nodes/db1.html");
    for injected in ["<script", "<img", "\x1b", "\r"] {
        assert!(!preview.contains(injected), "{injected:?} in {preview}");
    }

    // What a person sees, for the closing note.
    let png = browser.home.path().join("overview.png");
    browser.load(
        &site.join("index.html"),
        &[&format!("--screenshot={}", png.display())],
    );
    let bytes = fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{}",
        bytes.len()
    );
    if let Some(to) = std::env::var_os("FLEET_SCREENSHOT") {
        fs::copy(&png, to).unwrap();
    }
}

#[test]
fn the_console_check_sees_a_script_error() {
    // The check the page test relies on: a page with a script error is
    // caught by it.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    fs::write(&page, "<html><body><script>nope()</script></body></html>").unwrap();
    let mut browser = Browser::new();
    let l = browser.load(&page, &["--dump-dom"]);
    assert!(
        l.log
            .contains("Uncaught ReferenceError: nope is not defined"),
        "{}",
        l.log
    );
}

#[test]
fn a_second_run_replaces_the_site_and_a_foreign_directory_is_refused() {
    let f = Fixture::new();
    store(&f.server(), &hostile_report(0));
    let www = f.dir.path().join("www");
    let site = www.join("fleet");
    fs::create_dir(&www).unwrap();
    let (code, _, err) = html(&f, &f.server(), &site);
    assert_eq!(code, 0, "{err}");
    assert!(site.join("nodes/evil.html").exists());

    // evil's reports are gone, web1 reported: the site follows.
    fs::remove_dir_all(f.server().join("reports/evil")).unwrap();
    let mut web1 = hostile_report(1);
    web1.node = "web1".into();
    store(&f.server(), &web1);
    // What a run killed while it built the site left beside it.
    fs::create_dir_all(www.join(".fleet.tmp-20260101T000000Z-1/nodes")).unwrap();
    let (code, _, err) = html(&f, &f.server(), &site);
    assert_eq!(code, 0, "{err}");
    assert!(
        !site.join("nodes/evil.html").exists(),
        "the old site is replaced whole"
    );
    assert!(site.join("nodes/web1.html").exists());
    let left: Vec<_> = fs::read_dir(&www)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        ["fleet"],
        "no temporary directory is left beside it, nor one a killed run left"
    );

    // A damaged candidate link is its page's error; the rest is written.
    std::os::unix::fs::symlink("elsewhere", f.server().join("candidate")).unwrap();
    let (code, _, err) = html(&f, &f.server(), &site);
    assert_eq!(code, 0, "{err}");
    let page = fs::read_to_string(site.join("candidate.html")).unwrap();
    assert!(
        page.contains(&format!(
            "<p class=\"error\">{}/candidate points nowhere",
            f.server().display()
        )),
        "{page}"
    );
    let index = fs::read_to_string(site.join("index.html")).unwrap();
    assert!(index.contains("cannot be previewed"), "{index}");
    assert!(index.contains("nodes/web1.html"), "{index}");

    // A directory of someone else's files is never thrown away.
    let foreign = www.join("html");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("index.html"), "theirs").unwrap();
    common::assert_error(
        html(&f, &f.server(), &foreign),
        &format!(
            "error: {} holds files that disco did not write (it has no .disco-fleet-page): give a new or empty directory; the fleet page replaces it as a whole",
            foreign.display()
        ),
    );
    assert_eq!(
        fs::read_to_string(foreign.join("index.html")).unwrap(),
        "theirs"
    );
    // Nor written through a link.
    let link = www.join("link");
    std::os::unix::fs::symlink(&site, &link).unwrap();
    let (code, _, err) = html(&f, &f.server(), &link);
    assert_eq!(code, 1);
    assert!(err.contains("is a symbolic link"), "{err}");
    // And --html needs --fleet.
    let (code, _, err) = run(f
        .disco_without_server()
        .args(["report", "--html"])
        .arg(&site));
    assert_eq!(code, 2, "{err}");
}
