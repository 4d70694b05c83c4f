//! `modules/M/attributes`: the mode and owner of what a module's `files/`
//! and `templates/` install, since a git checkout keeps neither (only
//! 0644/0755, and the owner of whoever checked it out).
//!
//! Without a line, a file lands `0644 root:root` (`0755` when executable
//! in the module), a template's output `0644 root:root`, a directory the
//! module creates `0755 root:root`. A line is `PATH MODE [OWNER[:GROUP]]`
//! (`#` comments): `PATH` absolute as on the node, or `DIR/**` for
//! everything the module puts below `DIR`; owners and groups are names
//! of the target root as it stands when the module runs (a user an
//! earlier module created can own a file of a later one) or numbers.
//!
//! [`Attributes::parse`] checks the syntax and that every `PATH` is one
//! the module makes, before anything runs; [`Attributes::resolve`] turns
//! names into ids inside the module's sandbox, before its first step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One line of `attributes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Absolute path; with `tree`, the directory whose contents it covers.
    pub path: PathBuf,
    pub tree: bool,
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// 1-based line number, for messages.
    pub line: usize,
}

/// A rule with its owner and group as ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A module's `attributes`, in file order (a later line wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    pub rules: Vec<Rule>,
}

/// What `modules/M` installs: the target paths of its `files/` and
/// `templates/` (absolute), to check the rules against.
pub fn targets(module_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, at: &Path, out: &mut Vec<PathBuf>, depth: usize) {
        if depth > crate::fsutil::MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = at.join(e.file_name());
            out.push(p.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), &p, out, depth + 1);
            }
        }
    }
    let mut out = Vec::new();
    for sub in ["files", "templates"] {
        walk(&module_dir.join(sub), Path::new("/"), &mut out, 0);
    }
    out
}

impl Attributes {
    /// Parses `text` (the file `shown`), checking each line against the
    /// paths the module installs.
    pub fn parse(text: &str, shown: &str, installs: &[PathBuf]) -> Result<Attributes> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let fields: Vec<&str> = body.split_whitespace().collect();
            let at = format!("{shown}:{line}");
            let (path, mode, who) = match fields.as_slice() {
                [p, m] => (*p, *m, None),
                [p, m, o] => (*p, *m, Some(*o)),
                _ => bail!("{at}: expected `PATH MODE [OWNER[:GROUP]]`"),
            };
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                bail!("{at}: {path:?} must be an absolute path without '..'");
            }
            let Ok(mode) = u32::from_str_radix(mode, 8) else {
                bail!("{at}: mode {mode:?} is not octal (like 0640)");
            };
            if mode > 0o7777 {
                bail!("{at}: mode {mode:o} is more than 07777");
            }
            let (tree, path) = match path.strip_suffix("/**") {
                Some(dir) => (true, PathBuf::from(if dir.is_empty() { "/" } else { dir })),
                None => (false, PathBuf::from(path)),
            };
            let covered = installs.iter().any(|t| {
                if tree {
                    t.starts_with(&path) && *t != path
                } else {
                    *t == path
                }
            });
            if !covered {
                bail!(
                    "{at}: no file or template of this module makes {}{}",
                    path.display(),
                    if tree { "/**" } else { "" }
                );
            }
            let (owner, group) = match who.map(|w| w.split_once(':').unwrap_or((w, ""))) {
                None => (None, None),
                Some((o, g)) => (
                    Some(o.to_string()).filter(|o| !o.is_empty()),
                    Some(g.to_string()).filter(|g| !g.is_empty()),
                ),
            };
            for name in owner.iter().chain(group.iter()) {
                if !crate::names::is_valid(name.as_bytes()) {
                    bail!("{at}: {name:?} is not a user or group name");
                }
            }
            rules.push(Rule {
                path,
                tree,
                mode,
                owner,
                group,
                line,
            });
        }
        Ok(Attributes { rules })
    }

    /// Turns owner and group names into ids with the `passwd` and `group`
    /// texts of the root as the module sees it; an unknown name is an error
    /// naming the line.
    pub fn resolve(
        &self,
        shown: &str,
        passwd: &str,
        group: &str,
    ) -> Result<BTreeMap<usize, Resolved>> {
        let users = ids(passwd);
        let groups = ids(group);
        let mut out = BTreeMap::new();
        for r in &self.rules {
            let at = format!("{shown}:{}", r.line);
            let uid = match &r.owner {
                None => 0,
                Some(o) => match o.parse().ok().or_else(|| users.get(o).map(|(u, _)| *u)) {
                    Some(u) => u,
                    None => bail!("{at}: no user {o:?} in the root's /etc/passwd"),
                },
            };
            let gid = match (&r.group, &r.owner) {
                (Some(g), _) => match g.parse().ok().or_else(|| groups.get(g).map(|(g, _)| *g)) {
                    Some(g) => g,
                    None => bail!("{at}: no group {g:?} in the root's /etc/group"),
                },
                // OWNER alone: the user's primary group.
                (None, Some(o)) => users.get(o).map(|(_, g)| *g).unwrap_or(0),
                (None, None) => 0,
            };
            out.insert(
                r.line,
                Resolved {
                    mode: r.mode,
                    uid,
                    gid,
                },
            );
        }
        Ok(out)
    }

    /// The rule for `target` (absolute): the last line naming it, or the
    /// last `DIR/**` above it.
    pub fn rule_for(&self, target: &Path) -> Option<&Rule> {
        self.rules.iter().rev().find(|r| {
            if r.tree {
                target.starts_with(&r.path) && target != r.path
            } else {
                target == r.path
            }
        })
    }
}

/// name → (id, primary group id) from a passwd or group text.
fn ids(text: &str) -> BTreeMap<String, (u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let id = f.get(2)?.parse().ok()?;
            let primary = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
            Some((f[0].to_string(), (id, primary)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_and_names_resolved_against_the_root() {
        let installs = vec![
            PathBuf::from("/etc/app"),
            PathBuf::from("/etc/app/secret"),
            PathBuf::from("/etc/app/a.conf"),
        ];
        let text = "# modes\n/etc/app/secret 0600 app:adm\n/etc/app/** 0640 root:app\n";
        let a = Attributes::parse(text, "modules/m/attributes", &installs).unwrap();
        assert_eq!(
            a.rule_for(Path::new("/etc/app/a.conf")).unwrap().mode,
            0o640
        );
        assert_eq!(a.rule_for(Path::new("/etc/app/secret")).unwrap().line, 3);
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n";
        let group = "root:x:0:\nadm:x:4:\napp:x:1000:\n";
        let r = a.resolve("modules/m/attributes", passwd, group).unwrap();
        assert_eq!(
            r[&2],
            Resolved {
                mode: 0o600,
                uid: 1000,
                gid: 4
            }
        );
        assert_eq!(
            r[&3],
            Resolved {
                mode: 0o640,
                uid: 0,
                gid: 1000
            }
        );
        for (bad, why) in [
            (
                "/etc/app/secret 0689\n",
                "modules/m/attributes:1: mode \"0689\" is not octal",
            ),
            (
                "/etc/other 0600\n",
                "modules/m/attributes:1: no file or template of this module makes /etc/other",
            ),
            (
                "etc/app 0600\n",
                "modules/m/attributes:1: \"etc/app\" must be an absolute path",
            ),
        ] {
            let e = Attributes::parse(bad, "modules/m/attributes", &installs).unwrap_err();
            assert!(e.to_string().starts_with(why), "{e}");
        }
        let a =
            Attributes::parse("/etc/app/secret 0600 nobody\n", "m/attributes", &installs).unwrap();
        let e = a.resolve("m/attributes", passwd, group).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m/attributes:1: no user \"nobody\" in the root's /etc/passwd"
        );
    }
}
