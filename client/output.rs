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
