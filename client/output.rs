//! Output: the `info:` / `warning:` / `error:` / `report:` line prefixes of
//! DESIGN §7, coloured only when stderr is a terminal and `NO_COLOR` is unset.
//!
//! Owns how diagnostics look. Diagnostics go to stderr; command results
//! (a plan, a parameter value) go to stdout through the commands themselves,
//! so stdout stays machine-readable.

use std::io::{IsTerminal, Write};

#[derive(Clone, Copy)]
enum Level {
    Info,
    Warning,
    Error,
}

fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

fn emit(level: Level, msg: &str) {
    let (tag, code) = match level {
        Level::Info => ("info", "32"),
        Level::Warning => ("warning", "33"),
        Level::Error => ("error", "31"),
    };
    let mut err = std::io::stderr().lock();
    let _ = if colour() {
        writeln!(err, "\x1b[{code}m{tag}:\x1b[0m {msg}")
    } else {
        writeln!(err, "{tag}: {msg}")
    };
}

/// `info: …` on stderr.
pub fn info(msg: &str) {
    emit(Level::Info, msg);
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
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "info: {line}");
        if let Some(d) = &c.diff {
            let _ = write!(out, "{}", with_newline(d));
        }
    } else {
        info(&line);
        if let Some(d) = &c.diff {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{}", with_newline(d));
        }
    }
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
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
    format!(
        "File: {} : {kind} : {}{xattr_note}",
        c.path,
        fields.join(" ")
    )
}
