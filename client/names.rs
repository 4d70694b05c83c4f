//! Names in the server tree: node, module, group and parameter-key components.
//!
//! Owns the one naming rule of DESIGN §2 — `[A-Za-z0-9._-]+`, never `.` or
//! `..` — and the [`Name`] type that can only hold a valid name. Paths of
//! files *inside* a module (`files/`, `templates/`) are not names and are not
//! checked here.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// A validated name: non-empty, only `[A-Za-z0-9._-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// A name that breaks the rule, with where it was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad name {shown} at {at}: names must match [A-Za-z0-9._-]+ and not be '.' or '..'")]
pub struct NameError {
    /// The offending name, quoted and escaped so it prints on one line.
    pub shown: String,
    /// Where the name was found (a path in the server tree, a flag, a key).
    pub at: String,
}

impl Name {
    /// Checks `raw` against the naming rule; `at` says where it was found.
    pub fn parse(raw: &str, at: impl fmt::Display) -> Result<Name, NameError> {
        Self::parse_bytes(raw.as_bytes(), at)
    }

    /// Same as [`Name::parse`] for an OS string such as a directory entry.
    pub fn parse_os(raw: &OsStr, at: impl fmt::Display) -> Result<Name, NameError> {
        Self::parse_bytes(raw.as_bytes(), at)
    }

    fn parse_bytes(raw: &[u8], at: impl fmt::Display) -> Result<Name, NameError> {
        if is_valid(raw) {
            // Valid names are ASCII, so this cannot fail.
            Ok(Name(String::from_utf8_lossy(raw).into_owned()))
        } else {
            Err(NameError {
                shown: quote_bytes(raw),
                at: at.to_string(),
            })
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `raw` follows the naming rule.
pub fn is_valid(raw: &[u8]) -> bool {
    !raw.is_empty()
        && raw != b"."
        && raw != b".."
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Quotes arbitrary bytes for a one-line message: `'a b'`, `''`, `'\xff'`.
pub fn quote_bytes(raw: &[u8]) -> String {
    let mut out = String::from("'");
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&c.escape_default().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('\'');
    out
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for Name {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rule() {
        for ok in [
            "a",
            "testmodule-1.0",
            "web1.example.com",
            "A_b-9",
            "...",
            ".hidden",
        ] {
            assert!(Name::parse(ok, "t").is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", ".", "..", "a/b", "a b", "a\nb", "é", "a:b", "/a"] {
            let err = Name::parse(bad, "modules/x").unwrap_err();
            assert_eq!(err.at, "modules/x");
        }
    }

    #[test]
    fn non_utf8_is_refused_and_shown_escaped() {
        let err = Name::parse_os(OsStr::from_bytes(b"a\xffb"), "p").unwrap_err();
        assert_eq!(err.shown, "'a\\xffb'");
        assert!(err.to_string().starts_with("bad name 'a\\xffb' at p:"));
    }
}
