//! `disco report --fleet --html DIR`: the fleet as a static site, written
//! on the server from the reports the nodes uploaded.
//!
//! Owns the pages — `index.html` (the overview: failed nodes first, then
//! stale ones, then the rest, each by name), `nodes/NODE.html` (a node's
//! kept runs, newest first, with their changes and a duration plot in
//! inline SVG) and, while a candidate is published, `candidate.html` (its
//! preview's groups) — the one HTML escape every string from a report goes
//! through ([`esc`]), and replacing the site atomically: it is built in a
//! hidden directory beside `DIR` and swapped in with one
//! `renameat2(RENAME_EXCHANGE)`. The pages hold no script and load
//! nothing: they open from the file system or any static web server, and
//! their Content-Security-Policy forbids scripts even if a string got
//! through unescaped.
//!
//! It does not read the fleet (the parent's `read_fleet` does) nor group
//! the preview ([`crate::preview`]), nor decide how changes are shown or
//! masked: a run's changes are the lines
//! `disco diff` prints ([`crate::output::changes_text`]), from a report
//! the node masked before it uploaded it.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::FleetNode;
use crate::output::{printable, RollUp};
use crate::preview::{Outcome, Preview};
use crate::report::{Change, RunReport, Summary};

/// The file that marks a directory as a site this command wrote, which a
/// later run may replace.
pub const MARKER: &str = ".disco-fleet-page";

/// `s` as HTML text (also safe inside a quoted attribute): `& < > " '` as
/// entities; a control character (an escape sequence, a carriage return)
/// as `\xNN` for each of its bytes, as the terminal table shows it; a
/// bidirectional override as `\u{…}`, so no string can reorder the text
/// around it. A tab stays.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' => out.push('\t'),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// What the command says once the site is written.
pub struct Written {
    pub nodes: usize,
    /// Nodes with a page (a directory under `reports/` that is no node
    /// name gets a row but no page).
    pub pages: usize,
    /// `candidate.html` was written (a candidate is published).
    pub candidate: bool,
}

/// Writes the site of `nodes` (read from `served`/reports, stale past
/// `max_age`) into `out`, replacing the site there; changes shown as
/// `roll` says.
pub fn write(
    out: &Path,
    served: &Path,
    nodes: &[FleetNode],
    roll: &RollUp,
    max_age: std::time::Duration,
) -> Result<Written> {
    let target = Target::check(out)?;
    let reports = served.join("reports");
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut pages = 0;
    let mut with_candidate = false;
    target.build(|tmp| {
        let dir = tmp.join("nodes");
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut rows = Vec::with_capacity(nodes.len());
        for n in nodes {
            let page = crate::names::is_valid(n.node.as_bytes());
            if page {
                let runs = read_runs(&reports.join(&n.node));
                let html = node_page(n, &runs, roll, &now);
                write_file(&dir.join(format!("{}.html", n.node)), &html)?;
                pages += 1;
            }
            rows.push(Row { node: n, page });
        }
        rows.sort_by_key(|r| rank(r.node));
        let candidate = candidate(served);
        if let Some(c) = &candidate {
            let html = candidate_page(c, &rows, roll, &now);
            write_file(&tmp.join("candidate.html"), &html)?;
            with_candidate = true;
        }
        let stale = humantime::format_duration(max_age).to_string();
        let html = overview(&rows, candidate.as_ref(), &stale, &now);
        write_file(&tmp.join("index.html"), &html)
    })?;
    Ok(Written {
        nodes: nodes.len(),
        pages,
        candidate: with_candidate,
    })
}

/// 0 failed (or unreadable), 1 stale, 2 the rest: the overview's order
/// (a stable sort keeps the names' order within each).
fn rank(n: &FleetNode) -> u8 {
    if n.failed() {
        0
    } else if n.stale {
        1
    } else {
        2
    }
}

/// A node's line of the overview.
struct Row<'a> {
    node: &'a FleetNode,
    /// Whether `nodes/NODE.html` was written.
    page: bool,
}

/// A node's kept reports, `reports/NODE/RUN.json`, oldest first.
#[derive(Default)]
struct Runs {
    runs: Vec<RunReport>,
    /// Files that could not be read or do not parse, by name.
    unreadable: Vec<String>,
}

/// Every dated report in `dir` (not `last.json`, a copy of the newest,
/// nor `candidate.json`, a preview), oldest first: run ids sort by time.
fn read_runs(dir: &Path) -> Runs {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && n != "last.json" && n != "candidate.json")
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let mut runs = Runs::default();
    for name in names {
        let parsed = fs::read(dir.join(&name))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunReport>(&b).ok());
        match parsed {
            Some(r) => runs.runs.push(r),
            None => runs.unreadable.push(name),
        }
    }
    runs
}

/// Writes one page.
fn write_file(path: &Path, html: &str) -> Result<()> {
    fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))
}

/// The style of every page: no file to load.
const CSS: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:78em;padding:0 1em;color:#1d2327;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em;margin:.6em 0}
.meta{color:#50575e}a{color:#135e96}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #dcdcde;vertical-align:top}
th{background:#f6f7f7;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.n,td.t{white-space:nowrap}td code{word-break:break-all}
tr.failed td{background:#fcf0f1}tr.stale td{background:#fcf9e8}
.status{display:inline-block;padding:0 .45em;border-radius:.3em;font-weight:600}
.status.failed{background:#d63638;color:#fff}.status.stale{background:#dba617;color:#000}
.status.ok{background:#00a32a;color:#fff}.status.changed{background:#2271b1;color:#fff}
.pinned{font-size:.85em;color:#8a2424;font-weight:600}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
pre .file{font-weight:600}pre .add{color:#006b1b}pre .del{color:#b32d2e}pre .hunk{color:#72777c}
.error{color:#b32d2e}details{margin:.4em 0;border:1px solid #dcdcde;border-radius:.3em;padding:.3em .6em}
summary{cursor:pointer}svg.plot{max-width:100%;height:auto;border:1px solid #dcdcde}
svg .axis{stroke:#8c8f94}svg .line{fill:none;stroke:#2271b1;stroke-width:1.5}
svg circle.ok,svg circle.changed{fill:#2271b1}svg circle.failed{fill:#d63638}
svg text{font:11px system-ui,sans-serif;fill:#50575e}
";

/// A whole page around `body` (already HTML); `title` is text.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"disco report --fleet --html\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        esc(title)
    )
}

/// The class of a status (a fixed word, never the node's own text).
fn status_class(status: &str) -> &'static str {
    match status {
        "ok" => "ok",
        "changed" => "changed",
        _ => "failed",
    }
}

/// `12 s`, `15 min`, `3 h 5 min`, `2 d 4 h`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// The candidate's preview when one is published (`ROOT/candidate`
/// exists), or why it cannot be read; `None` without a candidate.
fn candidate(served: &Path) -> Option<Result<Preview, String>> {
    fs::symlink_metadata(served.join("candidate")).ok()?;
    Some(crate::preview::preview(served).map_err(|e| format!("{e:#}")))
}

/// The overview's line about the candidate, linking its page.
fn candidate_line(c: &Result<Preview, String>) -> String {
    match c {
        Ok(p) => format!(
            "<p class=\"candidate\">Candidate <a href=\"candidate.html\"><code>{}</code></a>: \
             {} group(s), {} of {} node(s) reported, <b>{} fail</b>.</p>\n",
            esc(&p.candidate),
            p.groups.len(),
            p.groups.iter().map(|g| g.nodes.len()).sum::<usize>(),
            p.nodes.len(),
            p.failed
        ),
        Err(e) => format!(
            "<p class=\"error\">Candidate: <a href=\"candidate.html\">cannot be previewed</a>: {}</p>\n",
            line(e)
        ),
    }
}

/// The overview: a header with the counts, then a row per node.
fn overview(
    rows: &[Row],
    candidate: Option<&Result<Preview, String>>,
    max_age: &str,
    now: &str,
) -> String {
    let failed = rows.iter().filter(|r| r.node.failed()).count();
    let stale = rows.iter().filter(|r| r.node.stale).count();
    let mut body = format!(
        "<h1>disco fleet</h1>\n<p class=\"meta\">{} node(s): <b>{failed} failed</b>, {stale} stale \
         (no run for {max_age}) \
         · written {} by <code>disco report --fleet --html</code></p>\n",
        rows.len(),
        esc(now)
    );
    if let Some(c) = candidate {
        body.push_str(&candidate_line(c));
    }
    body.push_str(
        "<table class=\"fleet\">\n<thead><tr><th>node</th><th>snapshot</th><th>last run</th>\
         <th>status</th><th>changes</th><th>duration</th><th>age</th>\
         <th>pending failed actions</th></tr></thead>\n<tbody>\n",
    );
    for r in rows {
        body.push_str(&overview_row(r));
    }
    body.push_str("</tbody>\n</table>\n");
    page("disco fleet", &body)
}

/// One node's `<tr>`.
fn overview_row(r: &Row) -> String {
    let n = r.node;
    let class = match rank(n) {
        0 => "failed",
        1 => "stale",
        _ => "ok",
    };
    let name = if r.page {
        format!("<a href=\"nodes/{0}.html\">{0}</a>", esc(&n.node))
    } else {
        format!(
            "{} <span class=\"meta\">(not a node name: no page)</span>",
            esc(&n.node)
        )
    };
    if !n.readable {
        return format!(
            "<tr class=\"failed\"><td>{name}</td><td colspan=\"7\">\
             <span class=\"status failed\">no readable report</span></td></tr>\n"
        );
    }
    let status = n.status.as_deref().unwrap_or_default();
    let stale = if n.stale {
        " <span class=\"status stale\">stale</span>"
    } else {
        ""
    };
    format!(
        "<tr class=\"{class}\"><td>{name}</td><td>{}</td><td class=\"t\">{}</td>\
         <td class=\"t\"><span class=\"status {}\">{}</span>{stale}{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{:.2} s</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
        snapshot_cell(n),
        esc(n.last_run.as_deref().unwrap_or_default()),
        status_class(status),
        esc(status),
        if n.noop == Some(true) { " (noop)" } else { "" },
        n.changes.unwrap_or_default(),
        n.duration.unwrap_or_default(),
        n.age.map_or("?".to_string(), age),
        n.pending_failed_actions.unwrap_or_default(),
    )
}

/// A node's page: its state, the duration plot, its runs and their
/// changes, newest first.
fn node_page(n: &FleetNode, runs: &Runs, roll: &RollUp, now: &str) -> String {
    let mut body = format!(
        "<nav><a href=\"../index.html\">&larr; fleet</a></nav>\n<h1>node {}</h1>\n",
        esc(&n.node)
    );
    let state = match (&n.status, n.readable) {
        (Some(s), true) => format!(
            "last run {} <span class=\"status {}\">{}</span>{}, {} ago; pending failed actions {}",
            esc(n.last_run.as_deref().unwrap_or_default()),
            status_class(s),
            esc(s),
            if n.stale { " (stale)" } else { "" },
            n.age.map_or("?".to_string(), age),
            n.pending_failed_actions.unwrap_or_default()
        ),
        _ => "<span class=\"status failed\">no readable report</span> (last.json)".to_string(),
    };
    let _ = writeln!(
        body,
        "<p class=\"meta\">{state}<br>{} run(s) kept on the server · written {}</p>",
        runs.runs.len(),
        esc(now)
    );
    for name in &runs.unreadable {
        let _ = writeln!(
            body,
            "<p class=\"error\">reports/{}/{}: cannot be read as a report; left out</p>",
            esc(&n.node),
            esc(name)
        );
    }
    body.push_str("<h2>Duration of the kept runs</h2>\n");
    body.push_str(&duration_plot(&runs.runs));
    body.push_str("<h2>Runs</h2>\n");
    body.push_str(&runs_table(&runs.runs));
    body.push_str("<h2>Changes of each run</h2>\n");
    for (i, r) in runs.runs.iter().rev().enumerate() {
        body.push_str(&run_section(r, roll, i == 0));
    }
    page(&format!("disco: node {}", n.node), &body)
}

/// The kept runs, newest first, each linked to its section.
fn runs_table(runs: &[RunReport]) -> String {
    if runs.is_empty() {
        return "<p>No run is kept for this node.</p>\n".into();
    }
    let mut t = String::from(
        "<table class=\"runs\">\n<thead><tr><th>ended</th><th>run</th><th>mode</th><th>status</th>\
         <th>changes</th><th>duration</th><th>snapshot</th></tr></thead>\n<tbody>\n",
    );
    for r in runs.iter().rev() {
        let _ = writeln!(
            t,
            "<tr class=\"{}\"><td class=\"t\">{}</td><td class=\"t\"><a href=\"#run-{id}\">{id}</a></td><td>{}</td>\
             <td><span class=\"status {}\">{}</span></td><td class=\"n\">{}</td>\
             <td class=\"n\">{:.2} s</td><td><code>{}</code></td></tr>",
            if status_class(&r.status) == "failed" {
                "failed"
            } else {
                "ok"
            },
            esc(&r.ended),
            if r.noop { "noop" } else { "live" },
            status_class(&r.status),
            esc(&r.status),
            r.merged_changes(),
            r.duration,
            esc(&r.snapshot),
            id = esc(&r.id),
        );
    }
    t.push_str("</tbody>\n</table>\n");
    t
}

/// One run: why it failed, and each module's changes as `disco diff`
/// prints them; open when it is the newest.
fn run_section(r: &RunReport, roll: &RollUp, open: bool) -> String {
    let mut s = format!(
        "<section id=\"run-{}\"><details{}><summary>run <code>{}</code> ended {}: \
         <span class=\"status {}\">{}</span>, {} change(s){}</summary>\n",
        esc(&r.id),
        if open { " open" } else { "" },
        esc(&r.id),
        esc(&r.ended),
        status_class(&r.status),
        esc(&r.status),
        r.change_count(),
        match (r.noop, r.merged_changes() == r.change_count()) {
            (true, _) => " found (noop)".to_string(),
            (false, true) => String::new(),
            (false, false) => format!(" found, {} merged", r.merged_changes()),
        },
    );
    if let Some(e) = &r.error {
        let _ = writeln!(s, "<p class=\"error\">the run failed: {}</p>", line(e));
    }
    let mut shown = 0;
    for m in &r.modules {
        if let Some(why) = &m.not_run {
            let _ = writeln!(s, "<p>{}: not run: {}</p>", esc(&m.name), line(why));
        }
        if let Some(e) = &m.error {
            let _ = writeln!(
                s,
                "<p class=\"error\">{}: failed: {}</p>",
                esc(&m.name),
                line(e)
            );
        }
        if m.changes.is_empty() && m.summarised_changes == 0 {
            continue;
        }
        shown += 1;
        let _ = writeln!(
            s,
            "<h3>{}: {} change(s)</h3>\n<pre class=\"changes\">{}</pre>",
            esc(&m.name),
            m.change_count(),
            change_lines(&m.changes, &m.summarised, roll)
        );
    }
    if shown == 0 {
        s.push_str("<p>No change.</p>\n");
    }
    if r.pending_failed_actions > 0 {
        let _ = writeln!(
            s,
            "<p class=\"error\">{} failed action(s)/handler(s) wait to run again</p>",
            r.pending_failed_actions
        );
    }
    s.push_str("</details></section>\n");
    s
}

/// A one-line text from a report (an error), as the terminal shows it.
fn line(text: &str) -> String {
    esc(&printable(text))
}

/// A module's changes as `disco diff` prints them (its `info:` lines
/// bold, a diff's added and removed lines coloured), then the lines of
/// the changes the report only counted.
fn change_lines(changes: &[Change], summarised: &[Summary], roll: &RollUp) -> String {
    let text = crate::output::changes_text(changes, roll);
    let summaries = summarised
        .iter()
        .map(|s| format!("info: {}", printable(&s.line())));
    let mut out = String::new();
    for l in text.lines().map(str::to_string).chain(summaries) {
        let (class, l) = match l.strip_prefix("info: ") {
            Some(rest) => ("file", rest),
            None if l.starts_with("+++") || l.starts_with("---") => ("", l.as_str()),
            None if l.starts_with('+') => ("add", l.as_str()),
            None if l.starts_with('-') => ("del", l.as_str()),
            None if l.starts_with("@@") => ("hunk", l.as_str()),
            None => ("", l.as_str()),
        };
        if class.is_empty() {
            let _ = writeln!(out, "{}", esc(l));
        } else {
            let _ = writeln!(out, "<span class=\"{class}\">{}</span>", esc(l));
        }
    }
    out
}

/// `DIR/candidate.html`: the candidate's preview grouped as `disco report
/// --fleet --candidate` prints it — per group its nodes (linked to their
/// pages), then its changes once or its failure — and the nodes not
/// reported or reported for an older candidate.
fn candidate_page(c: &Result<Preview, String>, rows: &[Row], roll: &RollUp, now: &str) -> String {
    let mut body = String::from("<nav><a href=\"index.html\">&larr; fleet</a></nav>\n");
    let p = match c {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(
                body,
                "<h1>Candidate</h1>\n<p class=\"error\">{}</p>",
                line(e)
            );
            return page("disco: candidate", &body);
        }
    };
    let verdict = match p.exit_code {
        0 => "every node reported and none fails",
        1 => "some node fails",
        _ => "not every node reported yet",
    };
    let _ = writeln!(
        body,
        "<h1>Candidate <code>{}</code></h1>\n<p class=\"meta\">{} node(s) · {} group(s) · \
         <b>{} fail</b> · {verdict} · written {}</p>",
        esc(&p.candidate),
        p.nodes.len(),
        p.groups.len(),
        p.failed,
        esc(now)
    );
    let link = |node: &str| node_link(node, rows);
    for (i, g) in p.groups.iter().enumerate() {
        body.push_str(&group_section(i + 1, g, &link, roll));
    }
    let not_reported: Vec<String> = p.not_reported.iter().map(|n| link(n)).collect();
    let outdated: Vec<String> = p
        .outdated
        .iter()
        .map(|o| {
            format!(
                "{} (<code>{}</code>, ended {})",
                link(&o.node),
                esc(&o.candidate),
                esc(&o.ended)
            )
        })
        .collect();
    for (title, items) in [
        ("Not reported yet", not_reported),
        ("Reported an older candidate", outdated),
    ] {
        if !items.is_empty() {
            let _ = writeln!(
                body,
                "<h2>{title}: {}</h2>\n<ul><li>{}</li></ul>",
                items.len(),
                items.join("</li><li>")
            );
        }
    }
    page(&format!("disco: candidate {}", p.candidate), &body)
}

/// A node's name, linked to its page when it has one.
fn node_link(node: &str, rows: &[Row]) -> String {
    if rows.iter().any(|r| r.page && r.node.node == node) {
        format!("<a href=\"nodes/{0}.html\">{0}</a>", esc(node))
    } else {
        esc(node)
    }
}

/// One group of the preview: its nodes, then its failure or its changes.
fn group_section(
    number: usize,
    g: &crate::preview::Group,
    link: &dyn Fn(&str) -> String,
    roll: &RollUp,
) -> String {
    let (class, what) = match &g.outcome {
        Outcome::Fails {
            module: Some(m), ..
        } => ("failed", format!("fail in module {}", esc(m))),
        Outcome::Fails { module: None, .. } => ("failed", "fail".to_string()),
        Outcome::Changes { changes: 0, .. } => ("ok", "converged: no change".to_string()),
        Outcome::Changes { changes, .. } => ("changed", format!("{changes} change(s)")),
    };
    let nodes: Vec<String> = g.nodes.iter().map(|n| link(n)).collect();
    let mut s = format!(
        "<section class=\"group\"><h2>Group {number}: <span class=\"status {class}\">{} node(s)</span> {what}</h2>\n\
         <p>{}</p>\n",
        g.nodes.len(),
        nodes.join(", ")
    );
    match &g.outcome {
        Outcome::Fails { module, error } => {
            let who = module
                .as_deref()
                .map_or(String::new(), |m| format!("{}: ", esc(m)));
            let _ = writeln!(s, "<p class=\"error\">{who}{}</p>", line(error));
        }
        Outcome::Changes { modules, .. } => {
            for m in modules {
                let counted: u64 = m.summarised.iter().map(|x| x.changes).sum();
                let _ = writeln!(
                    s,
                    "<h3>{}: {} change(s)</h3>\n<pre class=\"changes\">{}</pre>",
                    esc(&m.name),
                    m.changes.len() as u64 + counted,
                    change_lines(&m.changes, &m.summarised, roll)
                );
                for p in &m.pending {
                    let _ = writeln!(s, "<p>{}: pending: {}</p>", esc(&m.name), line(p));
                }
            }
        }
    }
    s.push_str("</section>\n");
    s
}

/// The kept runs' durations as an inline SVG: a point per run, oldest
/// left, the failed ones red, each with its time, duration and status as
/// a tooltip.
fn duration_plot(runs: &[RunReport]) -> String {
    if runs.is_empty() {
        return "<p>No run to plot.</p>\n".into();
    }
    let (w, h, left, right, top, bottom) = (720.0, 180.0, 64.0, 16.0, 14.0, 30.0);
    let max = runs
        .iter()
        .map(|r| r.duration.max(0.0))
        .fold(0.0, f64::max)
        .max(0.01);
    let n = runs.len();
    let x = |i: usize| match n {
        1 => left + (w - left - right) / 2.0,
        _ => left + (w - left - right) * i as f64 / (n - 1) as f64,
    };
    let y = |d: f64| top + (h - top - bottom) * (1.0 - d.max(0.0) / max);
    let mut svg = format!(
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" \
         width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"duration of the last {n} run(s), \
         longest {max:.2} s\">\n\
         <line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\n\
         <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{max:.2} s</text>\
         <text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0 s</text>\n",
        b = h - bottom,
        r = w - right,
        tx = left - 6.0,
        ty = top + 4.0,
    );
    let points: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.duration)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline class=\"line\" points=\"{}\"/>",
        points.join(" ")
    );
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>{} · {:.2} s · {}</title></circle>",
            status_class(&r.status),
            x(i),
            y(r.duration),
            esc(&r.ended),
            r.duration,
            esc(&r.status)
        );
    }
    let (first, last) = (&runs[0], &runs[n - 1]);
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{ly}\">{}</text><text x=\"{r}\" y=\"{ly}\" text-anchor=\"end\">{}</text>\n</svg>\n",
        esc(&first.ended),
        esc(&last.ended),
        ly = h - 8.0,
        r = w - right,
    );
    svg
}

/// Where the site goes: `DIR`, and the hidden directory beside it the
/// new site is built in.
struct Target {
    dir: PathBuf,
    /// DIR's parent, locked while a site is built (`flock`), and the
    /// prefix of the hidden directories in it (`.NAME.tmp-`).
    parent: PathBuf,
    prefix: String,
    tmp: PathBuf,
}

impl Target {
    /// `out` is new, empty, or a site this command wrote (its
    /// [`MARKER`]): never a directory of someone else's files, which the
    /// swap would throw away.
    fn check(out: &Path) -> Result<Target> {
        let Some(name) = out.file_name() else {
            bail!(
                "--html {}: give the site's own directory (it is replaced as a whole)",
                out.display()
            );
        };
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match fs::symlink_metadata(out) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot look at {}", out.display())),
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{} is a symbolic link: give the directory itself (the site is replaced by a rename, which would replace the link)",
                out.display()
            ),
            Ok(m) if !m.is_dir() => bail!("{} is not a directory", out.display()),
            Ok(_) => {
                let mut entries = fs::read_dir(out)
                    .with_context(|| format!("cannot read {}", out.display()))?;
                if !out.join(MARKER).exists() && entries.next().is_some() {
                    bail!(
                        "{} holds files that disco did not write (it has no {MARKER}): give a new or empty directory; the fleet page replaces it as a whole",
                        out.display()
                    );
                }
            }
        }
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        let tmp = parent.join(format!("{prefix}{}", crate::run::new_run_id()));
        Ok(Target {
            dir: out.to_path_buf(),
            parent,
            prefix,
            tmp,
        })
    }

    /// Builds the site with `fill` in the hidden directory, then swaps it
    /// in; on any failure the hidden directory is removed and `DIR` stays
    /// as it was.
    fn build(&self, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let _lock = self.lock()?;
        self.sweep();
        fs::create_dir(&self.tmp).with_context(|| {
            format!(
                "cannot write the fleet page beside {}: cannot create {}",
                self.dir.display(),
                self.tmp.display()
            )
        })?;
        let done = fill(&self.tmp)
            .and_then(|()| {
                write_file(
                    &self.tmp.join(MARKER),
                    "written by disco report --fleet --html; replaced as a whole at each run\n",
                )
            })
            .and_then(|()| self.swap());
        if done.is_err() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
        done
    }

    /// Takes the parent's `flock` (held until the returned file closes):
    /// one run at a time builds a site there.
    fn lock(&self) -> Result<fs::File> {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(&self.parent).with_context(|| {
            format!(
                "cannot write the fleet page into {}: cannot open its parent {}",
                self.dir.display(),
                self.parent.display()
            )
        })?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot lock {}", self.parent.display()));
        }
        Ok(f)
    }

    /// Removes the hidden directories a run that was killed left beside
    /// DIR (under the lock, none is being built).
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.parent) else {
            return;
        };
        for e in entries.flatten() {
            let left = e.file_name().to_string_lossy().starts_with(&self.prefix)
                && e.file_type().is_ok_and(|t| t.is_dir());
            if left {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Makes the new site durable, then puts it at `DIR` in one rename
    /// (an exchange with the old site, which is then removed).
    fn swap(&self) -> Result<()> {
        use nix::fcntl::{renameat2, RenameFlags};
        let f = fs::File::open(&self.tmp)
            .with_context(|| format!("cannot open {}", self.tmp.display()))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
            .with_context(|| format!("syncfs {}", self.tmp.display()))?;
        match renameat2(
            None,
            &self.tmp,
            None,
            &self.dir,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => fs::remove_dir_all(&self.tmp).with_context(|| {
                format!(
                    "the new site is in place; cannot remove the old one (now {})",
                    self.tmp.display()
                )
            }),
            Err(nix::errno::Errno::ENOENT) => fs::rename(&self.tmp, &self.dir)
                .with_context(|| format!("cannot move the site to {}", self.dir.display())),
            Err(e) => Err(io::Error::from(e))
                .with_context(|| format!("cannot swap the new site in at {}", self.dir.display())),
        }
    }
}

/// The overview's snapshot cell: the id its last run ran, and the pin a
/// canary promotion gave it.
fn snapshot_cell(n: &FleetNode) -> String {
    let ran = format!("<code>{}</code>", esc(n.snapshot.as_deref().unwrap_or("?")));
    match &n.pinned {
        Some(p) if Some(p.as_str()) == n.snapshot.as_deref() => {
            format!("{ran} <span class=\"pinned\">pinned</span>")
        }
        Some(p) => format!(
            "{ran} <span class=\"pinned\">pinned to <code>{}</code></span>",
            esc(p)
        ),
        None => ran,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_leaves_no_markup_and_shows_control_characters() {
        let hostile = "<script>alert('x')</script> \"a\" & b\x1b[2K\r\u{202e}\tz";
        let e = esc(hostile);
        assert_eq!(
            e,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &quot;a&quot; &amp; b\\x1b[2K\\x0d\\u{202e}\tz"
        );
        assert!(!e.contains(['<', '>', '"', '\'', '\x1b', '\r']));
        assert_eq!(esc("web1.example-2_x"), "web1.example-2_x");
    }

    #[test]
    fn ages_read_as_a_person_would_say_them() {
        assert_eq!(age(5), "5 s");
        assert_eq!(age(900), "15 min");
        assert_eq!(age(3 * 3600 + 300), "3 h 5 min");
        assert_eq!(age(2 * 86400 + 4 * 3600), "2 d 4 h");
    }
}
