//! The one mask of secret parameter values (DESIGN §6): every string disco
//! prints or stores on the node goes through it.
//!
//! Owns: which byte strings count as a secret (each line of 4 bytes or
//! more of each value under the top-level `secrets/` key, and every way
//! disco, bash and Rust render that line: bash's xtrace and `${v@Q}`
//! single quoting, `$'…'` and `printf %q` quoting, `declare -p` double
//! quoting, disco's own escapers [`crate::output::printable`],
//! [`crate::names::quote_bytes`] and [`crate::params::show_value`], Rust's
//! `{:?}`, JSON); the process-wide mask, set once the merged parameters
//! of a run are known ([`set`]) and applied by every printing function of
//! [`crate::output`] and by every writer of a state file; masked JSON for
//! reports ([`json`]); and sealing (a secret line replaced by a reference
//! to its key, [`Masks::seal`]) for `failed-actions.json`, whose argv must
//! run again later with the real value.
//!
//! It does not decide what is a secret parameter ([`crate::params`]), nor
//! where a file's content is withheld from a report (`diff::scrub_secret`).

use std::sync::{Arc, RwLock};

use anyhow::{bail, Result};

/// What a secret value is replaced with.
pub const MASK: &str = "********";

/// Shorter lines of a secret are not masked: they would mask ordinary text.
const MIN_LEN: usize = 4;

/// A secret's lines of at least [`MIN_LEN`] bytes, by line number.
type Lines = Vec<(usize, Vec<u8>)>;

/// Secret values and the mask that replaces them wherever they would be
/// printed or saved.
#[derive(Debug, Clone, Default)]
pub struct Masks {
    /// Every rendering of every secret line, longest first.
    patterns: Vec<Vec<u8>>,
    /// For each first byte, the indexes into `patterns` starting with it
    /// (empty when there are no patterns).
    by_first: Vec<Vec<usize>>,
    /// (key, its value's lines of at least [`MIN_LEN`] bytes, by line
    /// number), for [`Masks::seal`] and [`Masks::unseal`].
    keyed: Vec<(String, Lines)>,
}

impl Masks {
    /// From the values of secret parameters (no keys: nothing can be
    /// sealed, only masked).
    pub fn new<I: IntoIterator<Item = Vec<u8>>>(values: I) -> Masks {
        Masks::keyed(values.into_iter().map(|v| (String::new(), v)))
    }

    /// From a node's merged parameters: the values under `secrets/`.
    pub fn from_params(params: &crate::params::ParamTree) -> Masks {
        let keyed = params
            .value_keys()
            .into_iter()
            .filter(|k| k.starts_with("secrets/"))
            .filter_map(|k| {
                let key = crate::params::Key::parse(&k).ok()?;
                match params.get(&key)? {
                    crate::params::Param::Value(v) => Some((k, v.clone())),
                    crate::params::Param::Dir(_) => None,
                }
            });
        Masks::keyed(keyed)
    }

    /// From (key, value) pairs; an empty key is masked but never sealed.
    fn keyed<I: IntoIterator<Item = (String, Vec<u8>)>>(values: I) -> Masks {
        let mut keyed = Vec::new();
        let mut patterns = Vec::new();
        for (key, value) in values {
            let lines = lines_of(&value);
            for (_, l) in &lines {
                patterns.extend(renderings(l));
            }
            // The whole value too: a rendering of several lines at once.
            if lines.len() > 1 {
                let whole = value.strip_suffix(b"\n").unwrap_or(&value);
                patterns.extend(renderings(whole).into_iter().skip(1));
            }
            if !key.is_empty() && !lines.is_empty() {
                keyed.push((key, lines));
            }
        }
        patterns.retain(|p| p.len() >= MIN_LEN);
        // Longest first, so a secret containing another is masked whole.
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        patterns.dedup();
        let mut by_first = Vec::new();
        if !patterns.is_empty() {
            by_first = vec![Vec::new(); 256];
            for (i, p) in patterns.iter().enumerate() {
                by_first[p[0] as usize].push(i);
            }
        }
        Masks {
            patterns,
            by_first,
            keyed,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest pattern at the start of `bytes`, if any.
    fn match_at(&self, bytes: &[u8]) -> Option<usize> {
        let first = *bytes.first()?;
        self.by_first[first as usize]
            .iter()
            .map(|&i| &self.patterns[i])
            .find(|p| bytes.starts_with(p))
            .map(Vec::len)
    }

    /// `bytes` with every secret (in any of its renderings) replaced by [`MASK`].
    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match self.match_at(&bytes[i..]) {
                Some(n) => {
                    out.extend_from_slice(MASK.as_bytes());
                    i += n;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// `text` with every secret masked.
    pub fn text(&self, text: &str) -> String {
        if self.patterns.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.bytes(text.as_bytes())).into_owned()
    }

    /// Streams `bytes` through `pending` (a partial line), returning the
    /// complete lines masked (everything, at `end`). Without secrets,
    /// bytes pass as they come.
    pub fn lines(&self, pending: &mut Vec<u8>, bytes: &[u8], end: bool) -> Vec<u8> {
        if self.patterns.is_empty() {
            let mut out = std::mem::take(pending);
            out.extend_from_slice(bytes);
            return out;
        }
        pending.extend_from_slice(bytes);
        let cut = if end {
            pending.len()
        } else {
            match pending.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None if pending.len() > 1 << 16 => pending.len(),
                None => return Vec::new(),
            }
        };
        let done: Vec<u8> = pending.drain(..cut).collect();
        self.bytes(&done)
    }

    /// `text` for a file that must run again later (`failed-actions.json`):
    /// each secret line as it is becomes `\0KEY:N\0` (line N of the value
    /// of KEY; an argument or a path never holds a NUL byte), any other
    /// rendering of a secret [`MASK`]. [`Masks::unseal`] puts the lines back.
    pub fn seal(&self, text: &str) -> String {
        if self.patterns.is_empty() {
            return text.to_string();
        }
        let mut lines: Vec<(&[u8], String)> = self
            .keyed
            .iter()
            .flat_map(|(k, ls)| {
                ls.iter()
                    .map(move |(n, l)| (l.as_slice(), format!("\0{k}:{n}\0")))
            })
            .collect();
        lines.sort_by_key(|l| std::cmp::Reverse(l.0.len()));
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        'outer: while i < bytes.len() {
            for (l, token) in &lines {
                if bytes[i..].starts_with(l) {
                    out.extend_from_slice(token.as_bytes());
                    i += l.len();
                    continue 'outer;
                }
            }
            match self.match_at(&bytes[i..]) {
                Some(n) => {
                    out.extend_from_slice(MASK.as_bytes());
                    i += n;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Undoes [`Masks::seal`] with the values of now; an error names a
    /// secret the parameters no longer hold.
    pub fn unseal(&self, text: &str) -> Result<String> {
        let mut parts = text.split('\0');
        let mut out = parts.next().unwrap_or_default().as_bytes().to_vec();
        while let Some(token) = parts.next() {
            let Some((key, n)) = token.rsplit_once(':') else {
                bail!("a sealed secret reference is damaged");
            };
            let line = n
                .parse::<usize>()
                .ok()
                .and_then(|n| {
                    self.keyed
                        .iter()
                        .find(|(k, _)| k == key)
                        .and_then(|(_, ls)| ls.iter().find(|(i, _)| *i == n))
                })
                .map(|(_, l)| l);
            match line {
                Some(l) => out.extend_from_slice(l),
                None => bail!("it needs the secret parameter {key}, which this node no longer has"),
            }
            out.extend_from_slice(parts.next().unwrap_or_default().as_bytes());
        }
        String::from_utf8(out).map_err(|_| anyhow::anyhow!("a secret is not UTF-8"))
    }
}

/// The lines of a value (a trailing `\r` dropped) of at least [`MIN_LEN`]
/// bytes, with their line numbers.
fn lines_of(value: &[u8]) -> Lines {
    value
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| l.len() >= MIN_LEN)
        .map(|(i, l)| (i, l.to_vec()))
        .collect()
}

/// `s` as it is, then every way it is rendered by bash, disco and Rust
/// (the quotes around a quoted word left out: what is between them is
/// masked, so the quotes stay and the mask is in them).
pub fn renderings(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![s.to_vec()];
    out.push(ansi_c(s, true));
    out.push(ansi_c(s, false));
    let quoted = crate::names::quote_bytes(s);
    out.push(quoted.as_bytes()[1..quoted.len() - 1].to_vec());
    out.push(crate::params::show_value(s).into_bytes());
    let Ok(t) = std::str::from_utf8(s) else {
        return out;
    };
    // bash: xtrace and ${v@Q} ('…'\''…'), declare -p ("…\$…"), printf %q.
    out.push(t.replace('\'', r"'\''").into_bytes());
    out.push(escaped(t, |c, _| matches!(c, '$' | '`' | '"' | '\\')).into_bytes());
    out.push(
        escaped(t, |c, at| {
            backslashed(c) || (at == 0 && matches!(c, '#' | '~'))
        })
        .into_bytes(),
    );
    out.push(escaped(t, |c, _| backslashed(c)).into_bytes());
    // disco: the one-line escaper of everything it prints.
    out.push(crate::output::printable(t).into_bytes());
    // Rust: {:?} of a string and of its characters; JSON.
    let debug = format!("{t:?}");
    out.push(debug.as_bytes()[1..debug.len() - 1].to_vec());
    out.push(t.escape_debug().to_string().into_bytes());
    out.push(t.escape_default().to_string().into_bytes());
    if let Ok(json) = serde_json::to_string(t) {
        out.push(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    out
}

/// The characters bash's `printf %q` puts a backslash before (bash 5.2's
/// `sh_backslash_quote`; `#` and `~` only at the start of a word).
fn backslashed(c: char) -> bool {
    " \t\n!\"$&'()*,;<>?[\\]^`{|}".contains(c)
}

/// `t` with a backslash before each character `quote(c, index)` says.
fn escaped(t: &str, quote: impl Fn(char, usize) -> bool) -> String {
    let mut out = String::with_capacity(t.len() + 8);
    for (i, c) in t.chars().enumerate() {
        if quote(c, i) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What bash puts between `$'` and `'` (`ansic_quote`, used by xtrace for
/// words with control characters and by `printf %q`): `\E`, `\a`, `\t`…,
/// `\\`, `\'`, other unprintable bytes as `\ooo`; `utf8`: printable
/// multibyte characters kept (a UTF-8 locale), else every byte ≥ 0x80 as
/// `\ooo` (the C locale).
fn ansi_c(s: &[u8], utf8: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let octal = |out: &mut Vec<u8>, b: u8| out.extend_from_slice(format!("\\{b:03o}").as_bytes());
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            let named = match c {
                '\x1b' => Some('E'),
                '\x07' => Some('a'),
                '\x0b' => Some('v'),
                '\x08' => Some('b'),
                '\x0c' => Some('f'),
                '\n' => Some('n'),
                '\r' => Some('r'),
                '\t' => Some('t'),
                '\\' | '\'' => Some(c),
                _ => None,
            };
            let mut buf = [0u8; 4];
            let enc = c.encode_utf8(&mut buf).as_bytes();
            match named {
                Some(n) => {
                    out.push(b'\\');
                    out.push(n as u8);
                }
                None if c.is_ascii() && (c.is_ascii_graphic() || c == ' ') => out.push(c as u8),
                None if !c.is_ascii() && utf8 && !c.is_control() => out.extend_from_slice(enc),
                None => enc.iter().for_each(|b| octal(&mut out, *b)),
            }
        }
        chunk.invalid().iter().for_each(|b| octal(&mut out, *b));
    }
    out
}

/// The mask of this process.
static GLOBAL: RwLock<Option<Arc<Masks>>> = RwLock::new(None);

/// Sets the mask of this process (once the merged parameters of a run are
/// known; again when they change).
pub fn set(masks: Masks) {
    let mut g = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    *g = Some(Arc::new(masks));
}

/// The mask of this process (empty until [`set`]).
pub fn current() -> Arc<Masks> {
    GLOBAL
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// `text` through the mask of this process.
pub fn text(text: &str) -> String {
    current().text(text)
}

/// `value` as pretty JSON (`pretty`) or compact, every string in it
/// (keys too) through the mask of this process: what a saved or uploaded
/// report holds.
pub fn json<T: serde::Serialize>(value: &T, pretty: bool) -> serde_json::Result<Vec<u8>> {
    json_with(value, pretty, &current())
}

fn json_with<T: serde::Serialize>(
    value: &T,
    pretty: bool,
    masks: &Masks,
) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(value)?;
    if !masks.is_empty() {
        mask_value(masks, &mut v);
    }
    if pretty {
        serde_json::to_vec_pretty(&v)
    } else {
        serde_json::to_vec(&v)
    }
}

/// [`json`] of a run report — the same bytes — without the tree of
/// values of every change at once: the report is made a tree without its
/// modules' changes, and each change is made one (and masked) only as it
/// is written, in its place (a module's 10,000 kept changes as one tree
/// cost about five times the report's size).
pub fn report_json(report: &crate::report::RunReport, pretty: bool) -> serde_json::Result<Vec<u8>> {
    report_json_with(report, pretty, &current())
}

fn report_json_with(
    report: &crate::report::RunReport,
    pretty: bool,
    masks: &Masks,
) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(report.without_changes())?;
    if !masks.is_empty() {
        mask_value(masks, &mut v);
    }
    let lazy = Lazy {
        v: &v,
        masks,
        report,
        at: At::Top,
    };
    if pretty {
        serde_json::to_vec_pretty(&lazy)
    } else {
        serde_json::to_vec(&lazy)
    }
}

/// Where [`Lazy`] is in the report's tree.
#[derive(Clone, Copy)]
enum At {
    Top,
    Modules,
    Module(usize),
    Other,
}

/// A report's tree written as a [`serde_json::Value`] writes itself, with
/// each module's `changes` taken from the report itself.
struct Lazy<'a> {
    v: &'a serde_json::Value,
    masks: &'a Masks,
    report: &'a crate::report::RunReport,
    at: At,
}

impl serde::Serialize for Lazy<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        use serde_json::Value;
        let inner = |v, at| Lazy { v, at, ..*self };
        match self.v {
            Value::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    match (self.at, k == &self.masks.text("changes")) {
                        (At::Module(i), true) => map.serialize_entry(
                            k,
                            &Changes {
                                list: &self.report.modules[i].changes,
                                masks: self.masks,
                            },
                        )?,
                        (At::Top, _) if k == &self.masks.text("modules") => {
                            map.serialize_entry(k, &inner(v, At::Modules))?
                        }
                        _ => map.serialize_entry(k, &inner(v, At::Other))?,
                    }
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for (i, v) in a.iter().enumerate() {
                    let at = match self.at {
                        At::Modules => At::Module(i),
                        _ => At::Other,
                    };
                    seq.serialize_element(&inner(v, at))?;
                }
                seq.end()
            }
            v => v.serialize(s),
        }
    }
}

/// A module's changes, each made a masked tree of values as it is written.
struct Changes<'a> {
    list: &'a [crate::report::Change],
    masks: &'a Masks,
}

impl serde::Serialize for Changes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.list.len()))?;
        for c in self.list {
            let mut v = serde_json::to_value(c).map_err(S::Error::custom)?;
            if !self.masks.is_empty() {
                mask_value(self.masks, &mut v);
            }
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

fn mask_value(masks: &Masks, v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = masks.text(s),
        Value::Array(a) => a.iter_mut().for_each(|v| mask_value(masks, v)),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut v) in old {
                mask_value(masks, &mut v);
                o.insert(masks.text(&k), v);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_written_change_by_change_is_the_same_bytes() {
        use crate::report::{Change, ChangeKind, ModuleReport, RunReport, Summary};
        let change = |p: &str, diff: Option<&str>| Change {
            path: p.into(),
            kind: ChangeKind::Created,
            old: None,
            new: None,
            diff: diff.map(Into::into),
            inside: None,
        };
        let report = RunReport {
            id: "r".into(),
            modules: vec![
                ModuleReport {
                    name: "a".into(),
                    changes: vec![
                        change("/etc/x", Some("+hunter2secret\n")),
                        change("/y", None),
                    ],
                    summarised_changes: 3,
                    summarised: vec![Summary {
                        path: "/opt/*".into(),
                        changes: 3,
                        ..Summary::default()
                    }],
                    ..ModuleReport::default()
                },
                ModuleReport {
                    name: "b".into(),
                    ..ModuleReport::default()
                },
            ],
            plan: vec!["a".into(), "b".into()],
            ..RunReport::default()
        };
        for m in [Masks::default(), masks(&[b"hunter2secret\n"])] {
            for pretty in [true, false] {
                let got = String::from_utf8(report_json_with(&report, pretty, &m).unwrap());
                let want = String::from_utf8(json_with(&report, pretty, &m).unwrap());
                assert_eq!(got, want);
                assert_eq!(m.is_empty(), got.unwrap().contains("hunter2"));
            }
        }
    }

    fn masks(values: &[&[u8]]) -> Masks {
        Masks::new(values.iter().map(|v| v.to_vec()))
    }

    #[test]
    fn short_values_are_not_masked() {
        let m = masks(&[b"abc\n"]);
        assert!(m.is_empty());
        assert_eq!(m.text("abc"), "abc");
    }

    #[test]
    fn bash_quotings_are_masked() {
        let m = masks(&[b"Pa$$w'rd-Qx7\n"]);
        for (shown, want) in [
            ("pw='Pa$$w'\\''rd-Qx7'", "pw='********'"),
            ("Pa\\$\\$w\\'rd-Qx7", "********"),
            (
                "declare -- pw=\"Pa\\$\\$w'rd-Qx7\"",
                "declare -- pw=\"********\"",
            ),
            ("x Pa$$w'rd-Qx7 y", "x ******** y"),
        ] {
            assert_eq!(m.text(shown), want, "{shown}");
        }
        let t = masks(&[b"tok\tEN-998877"]);
        for shown in [
            "$'tok\\tEN-998877'",
            "'tok\\tEN-998877'",
            "tok\\tEN-998877",
            "tok\tEN-998877",
        ] {
            assert!(!t.text(shown).contains("EN-998877"), "{shown}");
        }
        let e = masks(&["a\x01b\u{e9}cdef".as_bytes()]);
        for shown in [
            "$'a\\001b\u{e9}cdef'",
            "$'a\\001b\\303\\251cdef'",
            "a\\x01b\u{e9}cdef",
        ] {
            assert!(!e.text(shown).contains("cdef"), "{shown}");
        }
    }

    #[test]
    fn seal_and_unseal_round_trip_with_the_values_of_now() {
        let mut p = crate::params::ParamTree::default();
        let key = crate::params::Key::parse("secrets/app").unwrap();
        p.insert(&key, b"S3cretPW-42\nline-two\n".to_vec());
        let m = Masks::from_params(&p);
        let argv = "restart app-S3cretPW-42 line-two";
        let sealed = m.seal(argv);
        assert!(
            !sealed.contains("S3cret") && !sealed.contains("line-two"),
            "{sealed:?}"
        );
        assert_eq!(m.unseal(&sealed).unwrap(), argv);
        let gone = Masks::default();
        let err = gone.unseal(&sealed).unwrap_err().to_string();
        assert!(err.contains("secrets/app"), "{err}");
        assert_eq!(m.unseal("plain").unwrap(), "plain");
    }

    #[test]
    fn json_masks_every_string() {
        set(masks(&[b"S3cretPW-42"]));
        let v = serde_json::json!({"a": ["x S3cretPW-42"], "S3cretPW-42": 1});
        let out = String::from_utf8(json(&v, false).unwrap()).unwrap();
        set(Masks::default());
        assert!(!out.contains("S3cret"), "{out}");
        assert!(out.contains(MASK), "{out}");
    }
}
