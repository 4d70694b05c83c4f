//! Output: the `info:` / `warning:` / `error:` / `report:` line prefixes of
//! DESIGN §7, coloured only when stderr is a terminal and `NO_COLOR` is unset.
//!
//! Owns how diagnostics look. Diagnostics go to stderr; command results
//! (a plan, a parameter value) go to stdout through the commands themselves,
//! so stdout stays machine-readable.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::report::{Figures, RunReport, Step};

static QUIET: AtomicBool = AtomicBool::new(false);

/// While a [`Diversion`] lives: what would be printed, kept in order.
static DIVERTED: std::sync::Mutex<Option<Section>> = std::sync::Mutex::new(None);

/// Output kept for later, stdout and stderr chunks in the order written:
/// a module's lines while other modules run beside it, printed when its
/// turn in the plan's order comes (so the console reads the same for any
/// `jobs`).
#[derive(Debug, Default)]
pub struct Section(Vec<(bool, Vec<u8>)>);

impl Section {
    /// Keeps `bytes` for stdout (`to_stdout`) or stderr.
    pub fn push(&mut self, to_stdout: bool, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some((s, b)) if *s == to_stdout => b.extend_from_slice(bytes),
            _ => self.0.push((to_stdout, bytes.to_vec())),
        }
    }

    /// Prints (or keeps) a copy of what was kept.
    pub fn show(&self) {
        for (to_stdout, bytes) in &self.0 {
            put(*to_stdout, bytes);
        }
    }

    /// What was kept, stdout's and stderr's chunks in the order written,
    /// as text (invalid UTF-8 replaced).
    pub fn into_text(self) -> String {
        let bytes: Vec<u8> = self.0.into_iter().flat_map(|(_, b)| b).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Adds what `other` kept after what this one did.
    pub fn append(&mut self, other: Section) {
        self.0.extend(other.0);
    }

    /// Prints (or, inside a diversion, keeps) what was kept.
    pub fn print(self) {
        for (to_stdout, bytes) in self.0 {
            put(to_stdout, &bytes);
        }
    }
}

/// From now until the guard ends (or [`Diversion::take`]), everything
/// this module prints is kept instead.
pub struct Diversion {
    /// What an outer diversion kept so far.
    outer: Option<Section>,
    /// Still keeping (not yet taken): the outer one is put back once.
    active: bool,
}

/// Starts keeping what is printed; what an outer diversion kept so far
/// stays kept, and continues when this one ends.
pub fn divert() -> Diversion {
    let outer = DIVERTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(Section::default());
    Diversion {
        outer,
        active: true,
    }
}

impl Diversion {
    /// What was kept; printing is direct again (or back to the outer one).
    pub fn take(mut self) -> Section {
        self.restore()
    }
    /// Puts the outer diversion back (once: a taken diversion's drop must
    /// not take the outer one's lines) and returns what this one kept.
    fn restore(&mut self) -> Section {
        if !std::mem::replace(&mut self.active, false) {
            return Section::default();
        }
        let mut slot = DIVERTED.lock().unwrap_or_else(|e| e.into_inner());
        let kept = std::mem::replace(&mut *slot, self.outer.take());
        kept.unwrap_or_default()
    }
}

impl Drop for Diversion {
    fn drop(&mut self) {
        let kept = self.restore();
        kept.print();
    }
}

/// Writes `bytes` to stdout or stderr, or keeps them while diverted.
pub fn put(to_stdout: bool, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    {
        let mut slot = DIVERTED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(section) = slot.as_mut() {
            section.push(to_stdout, bytes);
            return;
        }
    }
    if to_stdout {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(bytes).and_then(|()| o.flush());
    } else {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

/// `--quiet`: from now on only changes, warnings and errors are printed.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

#[derive(Clone, Copy)]
enum Level {
    Info,
    Warning,
    Error,
}

fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// How a module's changes are printed: in full while there are few,
/// rolled up per directory beyond that.
#[derive(Debug, Clone)]
pub struct RollUp {
    /// Paths printed in full (line and diff) while a module changes at
    /// most this many (`diff_limit`).
    pub diff_limit: usize,
    /// Beyond `diff_limit`, paths under `/etc` still printed in full, up
    /// to this many.
    pub etc_limit: usize,
    /// `--quiet`: the same lines, no diff text.
    pub quiet: bool,
    /// Globs of paths merged but never printed (`report_ignore`).
    pub ignore: Vec<String>,
    /// To stdout (`disco diff`) instead of stderr.
    pub to_stdout: bool,
}

/// The default `report_ignore`: shadow-utils backups, apt and dpkg locks,
/// logs and caches.
pub const DEFAULT_IGNORE: &[&str] = &[
    "/etc/*-",
    "/var/lib/dpkg/lock*",
    "/var/lib/dpkg/triggers/Lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
    "/var/log/**",
    "/var/cache/**",
];

/// `path` against a glob: `**` matches anything (slashes too), `*` and
/// `?` anything within one path component.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| m(rest, &s[i..])),
            [b'*', rest @ ..] => {
                let mut i = 0;
                loop {
                    if m(rest, &s[i..]) {
                        return true;
                    }
                    if i == s.len() || s[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            [b'?', rest @ ..] => !s.is_empty() && s[0] != b'/' && m(rest, &s[1..]),
            [c, rest @ ..] => s.first() == Some(c) && m(rest, &s[1..]),
        }
    }
    m(pattern.as_bytes(), path.as_bytes())
}

fn say(line: &str, to_stdout: bool) {
    if to_stdout {
        put(true, format!("info: {}\n", shown(line)).as_bytes());
    } else {
        emit(Level::Info, line);
    }
}

/// Prints one module's changes as [`RollUp`] says: every path in full
/// while there are at most `diff_limit` of them; beyond that `/etc` in
/// full (up to `etc_limit`) and the rest one line per created, deleted or
/// replaced directory (`/usr/share/doc/x/** : Created 37 file(s), 2
/// dir(s), 412 KiB`) or per parent directory of scattered changes.
pub fn changes(list: &[crate::report::Change], r: &RollUp) {
    let mut console = Console::new(r);
    list.iter().for_each(|c| console.push(c));
    console.finish();
}

/// What [`changes`] prints for `list` (as `disco diff` does, to stdout):
/// the `info: File: …` lines, diffs and roll-up lines, masked and made
/// printable, as text — for a page that shows them elsewhere (the fleet
/// page of `disco report --fleet --html`).
pub fn changes_text(list: &[crate::report::Change], r: &RollUp) -> String {
    let r = RollUp {
        to_stdout: true,
        ..r.clone()
    };
    let kept = divert();
    changes(list, &r);
    kept.take().into_text()
}

/// [`changes`] fed one change at a time (sorted by path), holding at
/// most `diff_limit` of them: what is printed in full is printed as it
/// comes, the rest is counted per directory ([`Rolling`]) and its lines
/// printed by [`Console::finish`].
pub struct Console<'r> {
    r: &'r RollUp,
    /// The first `diff_limit` changes shown, until there are more.
    first: Vec<crate::report::Change>,
    /// Past `diff_limit`: the roll-up, and the `/etc` paths printed.
    rolling: Option<(Rolling, usize)>,
    /// `--quiet` in a dance: the module, named on each line (its
    /// `Processing` line is not printed).
    module: Option<String>,
}

impl<'r> Console<'r> {
    pub fn new(r: &'r RollUp) -> Console<'r> {
        Console {
            r,
            first: Vec::new(),
            rolling: None,
            module: None,
        }
    }

    /// The console of a module's changes in a dance: with `--quiet`, each
    /// line starts with `MODULE: `, since no `Processing MODULE` line says
    /// whose they are.
    pub fn of_module(r: &'r RollUp, module: &str) -> Console<'r> {
        Console {
            module: r.quiet.then(|| module.to_string()),
            ..Console::new(r)
        }
    }

    fn say(&self, line: &str) {
        match &self.module {
            Some(m) => say(&format!("{m}: {line}"), self.r.to_stdout),
            None => say(line, self.r.to_stdout),
        }
    }

    fn full(&self, c: &crate::report::Change) {
        if self.r.quiet {
            // The line alone, saying what its diff would have shown.
            self.say(&quiet_change_line(c));
        } else {
            change(c, self.r.to_stdout);
        }
    }

    fn rolled(&mut self, c: &crate::report::Change) {
        let (rolling, etc) = self.rolling.as_mut().expect("rolling");
        if c.path.starts_with("/etc/") && *etc < self.r.etc_limit {
            *etc += 1;
            self.full(c);
        } else {
            rolling.add(c);
        }
    }

    /// The next change (in path order).
    pub fn push(&mut self, c: &crate::report::Change) {
        if self.r.ignore.iter().any(|g| glob_match(g, &c.path)) {
            return;
        }
        if self.rolling.is_none() {
            if self.first.len() < self.r.diff_limit {
                self.first.push(c.clone());
                return;
            }
            self.rolling = Some((Rolling::new(true), 0));
            for f in std::mem::take(&mut self.first) {
                self.rolled(&f);
            }
        }
        self.rolled(c);
    }

    /// Prints what is left: every change when there were few, else the
    /// roll-up's lines.
    pub fn finish(self) {
        match &self.rolling {
            None => self.first.iter().for_each(|c| self.full(c)),
            Some((rolling, _)) => {
                for g in &rolling.groups {
                    match &g.single {
                        Some(c) if g.changes == 1 => self.full(c),
                        _ => self.say(&g.summary().line()),
                    }
                }
            }
        }
    }
}

/// One directory's changes rolled up: a created, deleted or replaced
/// directory with everything below it (`tree`), or the scattered changes
/// of one parent directory; counted, not held.
pub struct Group {
    pub dir: String,
    pub tree: bool,
    /// The kinds seen (bit per [`crate::report::ChangeKind`]).
    kinds: u8,
    pub changes: u64,
    dirs: u64,
    bytes: u64,
    inside: u64,
    /// Its one change, while it has only one (when [`Rolling`] keeps
    /// them: the console prints a group of one in full).
    pub single: Option<crate::report::Change>,
}

fn is_dir(c: &crate::report::Change) -> bool {
    [&c.new, &c.old]
        .into_iter()
        .flatten()
        .any(|m| m.kind == "directory")
}

/// Groups changes (fed sorted by path) per directory as the console
/// rolls them up: a directory created, deleted or replaced takes
/// everything below it; any other change goes with its parent
/// directory's. Groups keep the order of their first member. Holds one
/// counter per group, never the changes.
pub struct Rolling {
    pub groups: Vec<Group>,
    tree_of: std::collections::HashMap<String, usize>,
    parent_of: std::collections::HashMap<String, usize>,
    keep_single: bool,
}

impl Rolling {
    /// `keep_single`: keep a group's change while it is its only one.
    pub fn new(keep_single: bool) -> Rolling {
        Rolling {
            groups: Vec::new(),
            tree_of: Default::default(),
            parent_of: Default::default(),
            keep_single,
        }
    }

    fn new_group(&mut self, dir: String, tree: bool, c: &crate::report::Change) -> usize {
        self.groups.push(Group {
            dir,
            tree,
            kinds: 0,
            changes: 0,
            dirs: 0,
            bytes: 0,
            inside: 0,
            single: self.keep_single.then(|| c.clone()),
        });
        self.groups.len() - 1
    }

    /// Counts `c` in its group.
    pub fn add(&mut self, c: &crate::report::Change) {
        use crate::report::ChangeKind;
        // The outermost ancestor that is a created, deleted or replaced directory.
        let mut tree = None;
        let mut p = c.path.as_str();
        while let Some((up, _)) = p.rsplit_once('/') {
            if let Some(&i) = self.tree_of.get(up) {
                tree = Some(i);
            }
            p = up;
        }
        let i = match tree {
            Some(i) => i,
            None if is_dir(c) && c.kind != ChangeKind::Modified => {
                let i = self.new_group(c.path.clone(), true, c);
                self.tree_of.insert(c.path.clone(), i);
                i
            }
            None => {
                let parent = c.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                match self.parent_of.get(parent) {
                    Some(&i) => i,
                    None => {
                        let i = self.new_group(parent.to_string(), false, c);
                        self.parent_of.insert(parent.to_string(), i);
                        i
                    }
                }
            }
        };
        let g = &mut self.groups[i];
        g.changes += 1;
        if g.changes > 1 {
            g.single = None;
        }
        g.kinds |= 1
            << match c.kind {
                ChangeKind::Created => 0,
                ChangeKind::Deleted => 1,
                ChangeKind::Modified => 2,
                ChangeKind::Replaced => 3,
            };
        if is_dir(c) {
            g.dirs += 1;
        }
        g.inside += c.inside.as_ref().map_or(0, |i| i.files + i.dirs);
        g.bytes += c.new.as_ref().or(c.old.as_ref()).map_or(0, |m| m.size);
    }
}

impl Group {
    /// What the group's line says, as data.
    pub fn summary(&self) -> crate::report::Summary {
        // Bits in the names' sorted order.
        let names = ["Created", "Deleted", "Modified", "Replaced"];
        let kind = if self.kinds.count_ones() == 1 {
            names[self.kinds.trailing_zeros() as usize]
        } else {
            "Changed"
        };
        crate::report::Summary {
            path: if self.tree {
                format!("{}/**", self.dir)
            } else {
                format!("{}/*", self.dir)
            },
            kind: kind.to_string(),
            changes: self.changes,
            files: self.changes - self.dirs,
            dirs: self.dirs,
            bytes: self.bytes,
            inside: self.inside,
        }
    }
}

pub use crate::masks::{Masks, MASK};

/// `text` through the process's mask, made [`printable`], then masked
/// again (a secret's escaped rendering is masked too).
fn shown(text: &str) -> String {
    let masks = crate::masks::current();
    masks.text(&printable(&masks.text(text)))
}

/// Longest line disco prints; the rest is cut with an ellipsis (a
/// server can name a module with 10 MB).
const MAX_LINE: usize = 4096;

/// `text` safe to print on one terminal line: control characters (an
/// escape sequence, a newline that would forge an `info:` line) as
/// `\xNN`, tabs kept, cut after `MAX_LINE` (4096) characters with `…`.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LINE + 8));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_LINE {
            out.push('…');
            break;
        }
        push_printable(&mut out, c);
    }
    out
}

/// Pushes `c`, or `\xNN` for each byte of a control character (a tab stays).
fn push_printable(out: &mut String, c: char) {
    match c {
        '\t' => out.push(c),
        c if c.is_control() => {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        c => out.push(c),
    }
}

/// A diff as it is printed: every line made [`printable`] (no escape
/// sequence in a file's content reaches the terminal), not cut.
fn printable_diff(d: &str) -> String {
    let masks = crate::masks::current();
    let d = masks.text(d);
    let mut out = String::with_capacity(d.len() + 1);
    for line in d.lines() {
        for c in line.chars() {
            push_printable(&mut out, c);
        }
        out.push('\n');
    }
    masks.text(&out)
}

fn emit(level: Level, msg: &str) {
    let msg = shown(msg);
    let (tag, code) = match level {
        Level::Info => ("info", "32"),
        Level::Warning => ("warning", "33"),
        Level::Error => ("error", "31"),
    };
    let line = if colour() {
        format!("\x1b[{code}m{tag}:\x1b[0m {msg}\n")
    } else {
        format!("{tag}: {msg}\n")
    };
    put(false, line.as_bytes());
}

/// `info: …` on stderr (not with `--quiet`).
pub fn info(msg: &str) {
    if !is_quiet() {
        emit(Level::Info, msg);
    }
}

/// `warning: …` on stderr.
pub fn warning(msg: &str) {
    emit(Level::Warning, msg);
}

/// `error: …` on stderr; multi-line messages are folded onto one line.
pub fn error(msg: &str) {
    let one_line = msg.replace('\n', " ");
    emit(Level::Error, &one_line);
}

/// Prints one change as DESIGN §7 shows it: the `info: File: …` line, then
/// the unified diff (or `binary files differ`) as it is. `to_stdout` for
/// commands whose result is the report (`disco diff`).
pub fn change(c: &crate::report::Change, to_stdout: bool) {
    let line = change_line(c);
    if to_stdout {
        put(true, format!("info: {}\n", shown(&line)).as_bytes());
    } else {
        emit(Level::Info, &line);
    }
    if let Some(d) = &c.diff {
        put(to_stdout, printable_diff(d).as_bytes());
    }
}

/// [`change_line`] for `--quiet`, which prints no diff: a modified file
/// whose content changed says so (`content changed`), the only word a
/// file reported without md5 (not world-readable) has for it.
pub fn quiet_change_line(c: &crate::report::Change) -> String {
    let line = change_line(c);
    match (c.kind, &c.diff) {
        (crate::report::ChangeKind::Modified, Some(_)) => format!("{line} content changed"),
        _ => line,
    }
}

/// `File: /PATH : Kind : type=[…] mode=[…] owner=[…] md5=[…]`, each field
/// shown as `old => new` where it changed.
pub fn change_line(c: &crate::report::Change) -> String {
    use crate::report::{ChangeKind, Meta};
    let field = |name: &str, get: &dyn Fn(&Meta) -> Option<String>| -> Option<String> {
        let old = c.old.as_ref().and_then(get);
        let new = c.new.as_ref().and_then(get);
        match (c.kind, old, new) {
            (ChangeKind::Modified | ChangeKind::Replaced, o, n) if o != n => Some(format!(
                "{name}=[{} => {}]",
                o.unwrap_or_else(|| "-".into()),
                n.unwrap_or_else(|| "-".into())
            )),
            (_, _, Some(n)) => Some(format!("{name}=[{n}]")),
            (_, Some(o), None) => Some(format!("{name}=[{o}]")),
            _ => None,
        }
    };
    let kind = match c.kind {
        ChangeKind::Created => "Created",
        ChangeKind::Modified => "Modified",
        ChangeKind::Deleted => "Deleted",
        ChangeKind::Replaced => "Replaced",
    };
    let is_link = |m: &Meta| m.kind == "symbolic link";
    let fields: Vec<String> = [
        field("type", &|m| Some(m.kind.clone())),
        field("mode", &|m| {
            (!is_link(m)).then(|| format!("{:04o}", m.mode))
        }),
        field("owner", &|m| Some(m.owner.clone())),
        field("md5", &|m| m.md5.clone()),
        field("target", &|m| m.target.clone()),
        field("selinux", &|m| m.selinux.clone()),
        field("caps", &|m| m.caps.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let xattr_note = match (&c.old, &c.new) {
        (Some(o), Some(n)) if c.kind == ChangeKind::Modified && o == n && c.diff.is_none() => {
            " xattrs=[changed]"
        }
        _ => "",
    };
    let inside = match &c.inside {
        Some(i) => format!(" ({} file(s), {} dir(s) inside)", i.files, i.dirs),
        None => String::new(),
    };
    format!(
        "File: {} : {kind} : {}{xattr_note}{inside}",
        c.path,
        fields.join(" ")
    )
}

/// How a step is named in a report: `files`, `template PATH`, `script NAME`, …
fn step_title(name: &str) -> String {
    if let Some(t) = name.strip_prefix("templates/") {
        format!("template {t}")
    } else if let Some(t) = name.strip_prefix("scripts/") {
        format!("script {t}")
    } else {
        name.to_string()
    }
}

fn figure_lines(out: &mut Vec<String>, f: &Figures, s: &Step) {
    out.push(format!(
        "report:    time_real {:.2} : time_user {:.2} : time_sys {:.2}",
        f.time_real, f.time_user, f.time_sys
    ));
    out.push(format!(
        "report:    mem_max {} : mem_faults_major {} : mem_faults_minor {}",
        f.mem_max, f.mem_faults_major, f.mem_faults_minor
    ));
    out.push(format!(
        "report:    io_fsin {} : io_fsout {}",
        f.io_fsin, f.io_fsout
    ));
    if let (Some(sent), Some(received)) = (s.sent, s.received) {
        out.push(format!(
            "report:    bytes_sent {sent} : bytes_received {received}"
        ));
    }
    match (&s.exit, &s.error) {
        (Some(code), _) => out.push(format!("report:    exit: {code}")),
        (None, Some(e)) => out.push(format!("report:    error: {e}")),
        (None, None) => out.push("report:    exit: 0".into()),
    }
}

/// A run in the DESIGN §6 layout: `report: MODULE: STEP` and its figures.
pub fn report_lines(r: &RunReport) -> Vec<String> {
    let mut out = vec![format!(
        "report: run {} of node {} ({}) on {}: started {}, {:.2} s, {}, {} change(s)",
        r.id,
        r.node,
        if r.noop { "noop" } else { "live" },
        r.root.display(),
        r.started,
        r.duration,
        if r.status.is_empty() {
            "unknown"
        } else {
            &r.status
        },
        r.change_count()
    )];
    let stage = |out: &mut Vec<String>, name: &str| {
        for s in r.stages.iter().filter(|s| s.name == name) {
            out.push(format!("report: disco: {}", s.name));
            figure_lines(out, &s.figures, s);
        }
    };
    stage(&mut out, "fetch");
    stage(&mut out, "plan");
    for m in &r.modules {
        if let Some(why) = &m.not_run {
            out.push(format!("report: {}: not run: {why}", m.name));
        }
        for s in &m.steps {
            out.push(format!("report: {}: {}", m.name, step_title(&s.name)));
            figure_lines(&mut out, &s.figures, s);
        }
        if let Some(e) = &m.error {
            out.push(format!("report: {}: failed: {}", m.name, shown(e)));
        }
    }
    stage(&mut out, "merge");
    if r.pending_failed_actions > 0 {
        out.push(format!(
            "report: pending_failed_actions {}",
            r.pending_failed_actions
        ));
    }
    for s in &r.actions {
        out.push(format!("report: disco: {}", s.name));
        figure_lines(&mut out, &s.figures, s);
    }
    out.push(format!("report: exit: {}", r.exit_code));
    out
}

/// One line of `disco report --history`.
pub fn history_line(r: &RunReport) -> String {
    if !r.forgot.is_empty() {
        return format!(
            "{}  {:<7}  {} action(s)/handler(s) by {}: {}  {}{}",
            r.started,
            r.status,
            r.forgot.len(),
            r.by.as_deref().unwrap_or("?"),
            r.forgot.join("; "),
            r.id,
            if r.noop { "  (noop)" } else { "" }
        );
    }
    format!(
        "{}  {:<7}  {:>4} change(s)  {:>7.2}s  {}{}",
        r.started,
        r.status,
        r.change_count(),
        r.duration,
        r.id,
        if r.noop { "  (noop)" } else { "" }
    )
}

fn label(v: &str) -> String {
    crate::masks::text(v)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The node_exporter textfile format for the last run.
pub fn prometheus(r: &RunReport) -> String {
    let node = label(&r.node);
    let ended = humantime::parse_rfc3339(&r.ended)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}\n"
        ));
    };
    gauge(
        "disco_last_run_timestamp_seconds",
        "When the last dance ended (unix time).",
        ended.to_string(),
    );
    gauge(
        "disco_last_run_duration_seconds",
        "How long the last dance took.",
        format!("{:.3}", r.duration),
    );
    gauge(
        "disco_last_run_success",
        "1 if the last dance succeeded.",
        u8::from(r.status != "failed").to_string(),
    );
    gauge(
        "disco_last_run_changes",
        "Changes the last dance applied (or, in noop, found).",
        r.merged_changes().to_string(),
    );
    gauge(
        "disco_last_run_noop",
        "1 if the last dance was a noop.",
        u8::from(r.noop).to_string(),
    );
    gauge(
        "disco_pending_failed_actions",
        "Deferred actions and handlers that failed and run again at the next dance.",
        r.pending_failed_actions.to_string(),
    );
    out.push_str("# HELP disco_module_duration_seconds Wall time of each module's steps in the last dance.\n");
    out.push_str("# TYPE disco_module_duration_seconds gauge\n");
    for m in &r.modules {
        let secs: f64 = m.steps.iter().map(|s| s.figures.time_real).sum();
        out.push_str(&format!(
            "disco_module_duration_seconds{{node=\"{node}\",module=\"{}\"}} {secs:.3}\n",
            label(&m.name)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diversion inside another, taken, gives back only its own lines
    /// and leaves the outer one keeping (and holding) what it kept.
    #[test]
    fn a_taken_inner_diversion_leaves_the_outer_one_keeping() {
        let outer = divert();
        put(false, b"outer 1\n");
        let inner = divert();
        put(false, b"inner\n");
        let kept = inner.take();
        put(false, b"outer 2\n");
        let all = outer.take();
        assert_eq!(kept.0, vec![(false, b"inner\n".to_vec())]);
        assert_eq!(all.0, vec![(false, b"outer 1\nouter 2\n".to_vec())]);
    }
}
