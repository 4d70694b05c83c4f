//! Templates that are only data, rendered by disco without a process.
//!
//! Most templates an admin writes are a `cat <<EOF` here-doc, or a few
//! `echo "…"` lines, whose only expansions are `$(disco param get KEY)`
//! and `$(hostname)` / `$(hostname -s)`. For those, what bash would print
//! is known from the text alone: the literal text with each of those
//! replaced by the value the render driver's functions give
//! ([`super::RENDER_DRIVER`]), trailing newlines cut as `$(…)` cuts them.
//! [`Simple::parse`] recognizes such a template — strictly: anything it
//! is not sure of (another `$`, a backslash, a backquote, `<<-`, a line
//! after the delimiter, a template over [`MAX_SIMPLE`] bytes) leaves the
//! template to bash — and [`Simple::render`] answers it, saving the
//! subshell, the `$(…)` forks and `cat`'s exec; a module whose templates
//! are all simple starts no bash for them at all. Nothing of the
//! template runs, so there is nothing to isolate; a failed lookup is
//! said and recorded as the driver's function does, and fails the step
//! the same way.
//!
//! Deliberately not here: `$VAR`, `${…}`, arithmetic, any other command
//! substitution, quoting beyond the plain double quotes of `echo "…"`.

use std::fs;
use std::path::Path;

/// The largest template [`Simple::parse`] looks at (larger ones go to
/// bash): a here-doc of a few lines is far under it.
pub const MAX_SIMPLE: u64 = 4096;

/// The largest parameter value answered here; a larger one (read by
/// bash byte by byte, under the step's time limit) goes to bash.
const MAX_VALUE: u64 = 64 << 10;

/// One piece of a simple template's output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    /// `$(disco param get KEY)`
    Param(String),
    /// `$(hostname)` (`false`) or `$(hostname -s)` (`true`)
    Host(bool),
}

/// A template whose output is its text with known expansions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simple {
    pieces: Vec<Piece>,
    /// A here-doc: bash runs `cat`, which must be on `PATH`.
    needs_cat: bool,
}

/// What rendering a simple template gave.
pub enum Rendered {
    /// The output, and the failed lookups (each said as the driver says
    /// it); a failed lookup fails the step.
    Done(Vec<u8>, Vec<String>),
    /// Not answered here after all (a tool missing from `PATH`, a large
    /// value, no kernel host name): bash renders it.
    ToBash,
}

impl Simple {
    /// The template `src` when it is simple; `None` sends it to bash.
    pub fn read(src: &Path) -> Option<Simple> {
        let meta = fs::metadata(src).ok()?;
        if !meta.is_file() || meta.len() > MAX_SIMPLE {
            return None;
        }
        Simple::parse(&fs::read(src).ok()?)
    }

    /// Recognizes a simple template's text: comment and blank lines, then
    /// either one `cat <<WORD` here-doc ending the file (`'WORD'` or
    /// `"WORD"`: no expansion at all) or only `echo "TEXT"` lines.
    pub fn parse(text: &[u8]) -> Option<Simple> {
        if text.contains(&0) {
            return None;
        }
        let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        if lines.last() == Some(&&b""[..]) {
            lines.pop();
        }
        let skip = |l: &[u8]| l.is_empty() || l.starts_with(b"#");
        let first = lines.iter().position(|l| !skip(l))?;
        let lines = &lines[first..];
        if let Some(word) = lines[0].strip_prefix(b"cat <<") {
            return here_doc(word.strip_prefix(b" ").unwrap_or(word), &lines[1..]);
        }
        let mut pieces = Vec::new();
        for l in lines {
            if skip(l) {
                continue;
            }
            let inner = l.strip_prefix(b"echo \"")?.strip_suffix(b"\"")?;
            // echo takes a leading `-` for an option; a value may start
            // with one.
            if inner.starts_with(b"-") || inner.starts_with(b"$") {
                return None;
            }
            if inner.iter().any(|b| matches!(b, b'"' | b'\\' | b'`')) {
                return None;
            }
            pieces.extend(expansions(inner)?);
            pieces.push(Piece::Text(b"\n".to_vec()));
        }
        Some(Simple {
            pieces,
            needs_cat: false,
        })
    }

    /// Renders it with the parameters under `params` (`DISCO_PARAMS`),
    /// `PATH` being `path`.
    pub fn render(&self, params: &Path, path: &str) -> Rendered {
        if self.needs_cat && !on_path("cat", path) {
            return Rendered::ToBash;
        }
        let uses_host = self.pieces.iter().any(|p| matches!(p, Piece::Host(_)));
        let host = match uses_host {
            false => String::new(),
            true => match kernel_hostname() {
                Some(h) if on_path("hostname", path) => h,
                _ => return Rendered::ToBash,
            },
        };
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Host(short) => {
                    let h = if *short {
                        host.split('.').next().unwrap_or("")
                    } else {
                        &host
                    };
                    out.extend_from_slice(h.as_bytes());
                }
                Piece::Param(key) => match param(params, key) {
                    Some(Ok(v)) => out.extend_from_slice(&v),
                    Some(Err(e)) => errors.push(e),
                    None => return Rendered::ToBash,
                },
            }
        }
        Rendered::Done(out, errors)
    }
}

/// The here-doc `cat <<WORD` (`word` what follows `<<`), its body
/// `lines`, the delimiter the file's last line.
fn here_doc(word: &[u8], lines: &[&[u8]]) -> Option<Simple> {
    let (delim, quoted) = match word {
        [q @ (b'\'' | b'"'), rest @ ..] => (rest.strip_suffix(&[*q])?, true),
        _ => (word, false),
    };
    let ident = |w: &[u8]| {
        !w.is_empty()
            && !w[0].is_ascii_digit()
            && w.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    if !ident(delim) || lines.last() != Some(&delim) {
        return None;
    }
    let body = &lines[..lines.len() - 1];
    if body.contains(&delim) {
        return None;
    }
    let mut pieces = Vec::new();
    for l in body {
        if quoted {
            pieces.push(Piece::Text(l.to_vec()));
        } else {
            if l.iter().any(|b| matches!(b, b'\\' | b'`')) {
                return None;
            }
            pieces.extend(expansions(l)?);
        }
        pieces.push(Piece::Text(b"\n".to_vec()));
    }
    Some(Simple {
        pieces,
        needs_cat: true,
    })
}

/// `text` as pieces, when every `$` in it starts one of the known
/// expansions.
fn expansions(mut text: &[u8]) -> Option<Vec<Piece>> {
    let mut pieces = Vec::new();
    while let Some(at) = text.iter().position(|&b| b == b'$') {
        if at > 0 {
            pieces.push(Piece::Text(text[..at].to_vec()));
        }
        let rest = &text[at..];
        let end = rest.iter().position(|&b| b == b')')?;
        let piece = match &rest[..=end] {
            b"$(hostname)" => Piece::Host(false),
            b"$(hostname -s)" => Piece::Host(true),
            call => {
                let key = call
                    .strip_prefix(b"$(disco param get ")?
                    .strip_suffix(b")")?;
                let key = std::str::from_utf8(key).ok()?;
                if !valid_key(key) {
                    return None;
                }
                Piece::Param(key.to_string())
            }
        };
        pieces.push(piece);
        text = &rest[end + 1..];
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text.to_vec()));
    }
    Some(pieces)
}

/// The driver's key rule: `[A-Za-z0-9._/-]`, no leading, trailing or
/// double `/`, no `.` or `..` part. An invalid key goes to bash, which
/// says so.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// `$(disco param get KEY)` as the driver's function answers it: the file
/// up to its first NUL (`read -d ''`), trailing newlines cut (`$(…)`);
/// the error line otherwise. `None`: a value too large to answer here.
fn param(params: &Path, key: &str) -> Option<Result<Vec<u8>, String>> {
    let path = params.join(key);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() => {
            if m.len() > MAX_VALUE {
                return None;
            }
            let mut v = fs::read(&path).ok()?;
            if let Some(nul) = v.iter().position(|&b| b == 0) {
                v.truncate(nul);
            }
            while v.last() == Some(&b'\n') {
                v.pop();
            }
            Some(Ok(v))
        }
        Ok(m) if m.is_dir() => Some(Err(format!(
            "parameter '{key}' is a directory: use `disco param keys {key}`"
        ))),
        _ => Some(Err(format!("no parameter '{key}'"))),
    }
}

/// The kernel's host name, its first line (`read -r h`).
fn kernel_hostname() -> Option<String> {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let (line, _) = h.split_once('\n')?;
    Some(line.to_string())
}

/// Whether `name` is an executable file in a directory of `path`, as
/// bash's `type -P` finds it.
fn on_path(name: &str, path: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.split(':').filter(|d| !d.is_empty()).any(|d| {
        let p = Path::new(d).join(name);
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: access on a NUL-terminated path we own.
        p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Simple) -> String {
        s.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => String::from_utf8_lossy(t).into_owned(),
                Piece::Param(k) => format!("<{k}>"),
                Piece::Host(s) => format!("<host{}>", if *s { " -s" } else { "" }),
            })
            .collect()
    }

    #[test]
    fn here_docs_and_echo_lines_are_recognized() {
        let s = Simple::parse(
            b"# c\n\ncat <<EOF\nport=$(disco param get port)\nh=$(hostname -s) $(hostname)\n\nEOF\n",
        )
        .unwrap();
        assert_eq!(text(&s), "port=<port>\nh=<host -s> <host>\n\n");
        assert!(s.needs_cat);
        let s = Simple::parse(b"cat << 'X'\n$(not run) \\ `x`\nX").unwrap();
        assert_eq!(text(&s), "$(not run) \\ `x`\n");
        let s = Simple::parse(b"echo \"# t\"\necho \"n=$(disco param get m/name)\"\n").unwrap();
        assert_eq!(text(&s), "# t\nn=<m/name>\n");
        assert!(!s.needs_cat);
    }

    #[test]
    fn anything_else_goes_to_bash() {
        for t in [
            &b"cat <<EOF\n$HOME\nEOF\n"[..],
            b"cat <<EOF\n${x}\nEOF\n",
            b"cat <<EOF\n$(date)\nEOF\n",
            b"cat <<EOF\n\\$(hostname)\nEOF\n",
            b"cat <<EOF\n`hostname`\nEOF\n",
            b"cat <<-EOF\nx\nEOF\n",
            b"cat <<EOF\nx\nEOF\necho more\n",
            b"cat <<EOF\nx\nEOF\nx\nEOF\n",
            b"cat <<EOF\nx\n",
            b"cat <<EOF >/etc/x\nx\nEOF\n",
            b"cat <<EOF\n$(disco param get /abs)\nEOF\n",
            b"cat <<EOF\n$(disco param get a/../b)\nEOF\n",
            b"cat <<EOF\n$(disco param get a b)\nEOF\n",
            b"echo \"$(disco param get x)\"\n",
            b"echo \"-n x\"\n",
            b"echo \"a\\\"b\"\n",
            b"echo x\n",
            b"set -e\necho \"x\"\n",
            b"cat <<EOF\n\0\nEOF\n",
            b"",
        ] {
            assert_eq!(Simple::parse(t), None, "{}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn values_are_read_as_the_driver_reads_them() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "v\n\n").unwrap();
        fs::write(d.path().join("z"), b"x\0y\n").unwrap();
        fs::create_dir(d.path().join("dir")).unwrap();
        let s = Simple::parse(
            b"cat <<EOF\n$(disco param get a)|$(disco param get z)|$(disco param get dir)|$(disco param get no)\nEOF\n",
        )
        .unwrap();
        let Rendered::Done(out, errors) = s.render(d.path(), "/usr/bin:/bin") else {
            panic!("cat is on PATH");
        };
        assert_eq!(out, b"v|x||\n");
        assert_eq!(
            errors,
            [
                "parameter 'dir' is a directory: use `disco param keys dir`",
                "no parameter 'no'"
            ]
        );
        assert!(matches!(s.render(d.path(), "/nowhere"), Rendered::ToBash));
    }
}
