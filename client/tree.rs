//! The server tree as an admin edits it (DESIGN §2): reading nodes, groups,
//! module directories and `requires` files.
//!
//! Owns: where things live under a server root (`parameters/NODE/…`,
//! `modules/MODULE/…`), the naming rule applied to everything read, group
//! inheritance (with cycle detection), the `requires` syntax, and the rule
//! that a symlinked module or node directory is followed only while it stays
//! inside the server tree. It does not order modules (see [`crate::plan`])
//! nor read parameter values (see [`crate::params`]). The same code reads a
//! server tree and the client's cache, which has the same layout.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::names::{Name, NameError};

/// Everything that can be wrong with a server tree, phrased for the admin
/// who has to fix it. Paths are relative to the server root.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("node '{0}' has no parameters/{0} on the server")]
    NoNode(Name),
    #[error("group '{group}' (in {listed_in}) has no parameters/{group} on the server")]
    NoGroup { group: Name, listed_in: String },
    #[error("group cycle: {}", join_cycle(.0))]
    GroupCycle(Vec<Name>),
    #[error("module '{name}' ({why}) is not on the server")]
    ModuleMissing { name: Name, why: String },
    #[error("{file}:{line}: expected 'after NAME' or 'before NAME'")]
    BadDirective { file: String, line: usize },
    #[error("{path} is a symlink to {target}, outside the server tree; refusing to follow it")]
    Escapes { path: String, target: String },
    #[error("{path} is a symlink to {target}; disco publish, serve and lint never follow a top-level link of the tree (make it a directory; an admin may name the target to publish or lint with --allow-link-to {real})")]
    TopLink {
        path: String,
        target: String,
        real: String,
    },
    #[error("{path} should be a {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },
    #[error(transparent)]
    BadName(#[from] NameError),
    /// (Not a `source`: the io error is said once, in this line.)
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
    /// A file or directory of the tree that is not what it must be (a
    /// symlink, a FIFO, too big), said in full.
    #[error("{0}")]
    Untrusted(String),
}

/// Prints `a -> b -> a` for a cycle given as `[a, b]`.
pub fn join_cycle(members: &[Name]) -> String {
    let mut parts: Vec<&str> = members.iter().map(Name::as_str).collect();
    if let Some(first) = members.first() {
        parts.push(first.as_str());
    }
    parts.join(" -> ")
}

/// One line of a `requires` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Require {
    pub direction: Direction,
    pub module: Name,
    /// 1-based line number in `modules/M/requires`, for messages.
    pub line: usize,
}

/// `after X`: X runs first. `before X`: this module runs first and X joins the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    After,
    Before,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::After => "after",
            Direction::Before => "before",
        }
    }
}

/// A node as the server defines it, groups resolved.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: Name,
    /// Parameter layers, lowest precedence first: included groups
    /// (depth-first, in name order, each after the groups it includes),
    /// then the node itself last.
    pub layers: Vec<Name>,
    /// Modules listed by the node or one of its groups, each with the
    /// `parameters/X/modules` directory that first listed it.
    pub modules: BTreeMap<Name, String>,
}

/// The top-level entries of a server tree that may hold what a node
/// fetches or an admin signs: checked by [`check_top_links`].
pub const TOP_DIRS: [&str; 3] = ["parameters", "modules", "recipients"];

/// Refuses a top-level `parameters`, `modules` or `recipients` of the
/// tree at `root` that is a symlink, unless it leads (resolved) to one of
/// `allowed`, directories the admin named on the command line: git
/// carries symlinks, so a pushed `modules -> /etc` must not make
/// `disco publish` (as root), `serve` or `lint` read what lies there.
/// Nothing behind a refused link is read, not even its names.
pub fn check_top_links(root: &Path, allowed: &[PathBuf]) -> Result<(), TreeError> {
    for sub in TOP_DIRS {
        let p = root.join(sub);
        let is_link = match fs::symlink_metadata(&p) {
            Ok(m) => m.file_type().is_symlink(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(TreeError::Io {
                    path: p.display().to_string(),
                    error,
                })
            }
        };
        if !is_link {
            continue;
        }
        let target = fs::read_link(&p)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let real = fs::canonicalize(&p).ok();
        let named = real.as_ref().is_some_and(|r| {
            allowed
                .iter()
                .any(|a| fs::canonicalize(a).is_ok_and(|a| &a == r))
        });
        if !named {
            return Err(TreeError::TopLink {
                path: p.display().to_string(),
                real: real.map_or_else(|| target.clone(), |r| r.display().to_string()),
                target,
            });
        }
    }
    Ok(())
}

/// A server tree (or a cache with the same layout) rooted at a directory.
#[derive(Debug, Clone)]
pub struct ServerTree {
    root: PathBuf,
    /// Canonical directories a symlinked node or module may point into.
    inside: Vec<PathBuf>,
    /// Directories already resolved (planning asks for the same module many times).
    resolved: RefCell<HashMap<String, Option<PathBuf>>>,
    /// `requires` files already parsed (`disco lint` plans every node).
    required: RefCell<HashMap<Name, Vec<Require>>>,
}

impl ServerTree {
    /// Opens the tree at `root`. Its top-level `parameters` and `modules`
    /// may themselves be symlinks (as in `server-layout/`); both count as
    /// "inside the tree" for later symlinks.
    pub fn open(root: &Path) -> Result<ServerTree, TreeError> {
        let meta = fs::metadata(root).map_err(|error| TreeError::Io {
            path: root.display().to_string(),
            error,
        })?;
        if !meta.is_dir() {
            return Err(TreeError::WrongType {
                path: root.display().to_string(),
                expected: "directory (the server tree)",
            });
        }
        let mut inside = Vec::new();
        for p in [
            root.to_path_buf(),
            root.join("parameters"),
            root.join("modules"),
        ] {
            if let Ok(c) = fs::canonicalize(&p) {
                inside.push(c);
            }
        }
        Ok(ServerTree {
            root: root.to_path_buf(),
            inside,
            resolved: RefCell::default(),
            required: RefCell::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Also lets symlinked node and module directories point into `dir`
    /// (the cache's content-addressed store).
    pub fn allow(mut self, dir: &Path) -> ServerTree {
        if let Ok(c) = fs::canonicalize(dir) {
            self.inside.push(c);
        }
        self
    }

    /// Resolves `rel` (a node, group or module directory) to a real
    /// directory, following a symlink only while it stays inside the tree.
    /// `Ok(None)` when nothing is there.
    pub fn resolve_dir(&self, rel: &str) -> Result<Option<PathBuf>, TreeError> {
        if let Some(known) = self.resolved.borrow().get(rel) {
            return Ok(known.clone());
        }
        let found = self.resolve_dir_uncached(rel)?;
        self.resolved
            .borrow_mut()
            .insert(rel.to_string(), found.clone());
        Ok(found)
    }

    fn resolve_dir_uncached(&self, rel: &str) -> Result<Option<PathBuf>, TreeError> {
        let path = self.root.join(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(TreeError::Io {
                    path: rel.to_string(),
                    error,
                })
            }
        };
        if !meta.file_type().is_symlink() {
            if !meta.is_dir() {
                return Err(TreeError::WrongType {
                    path: rel.to_string(),
                    expected: "directory",
                });
            }
            return Ok(Some(path));
        }
        let real = {
            let target = match fs::canonicalize(&path) {
                Ok(t) => t,
                // A dangling symlink: nothing usable is there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(error) => {
                    return Err(TreeError::Io {
                        path: rel.to_string(),
                        error,
                    })
                }
            };
            if !self.inside.iter().any(|i| target.starts_with(i)) {
                return Err(TreeError::Escapes {
                    path: rel.to_string(),
                    target: target.display().to_string(),
                });
            }
            target
        };
        if !fs::metadata(&real).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(TreeError::WrongType {
                path: rel.to_string(),
                expected: "directory",
            });
        }
        Ok(Some(real))
    }

    /// The directory of module `m`, or `None` when the server has no such module.
    pub fn module_dir(&self, m: &Name) -> Result<Option<PathBuf>, TreeError> {
        self.resolve_dir(&format!("modules/{m}"))
    }

    /// The directory `parameters/LAYER` of a node or group.
    pub fn layer_dir(&self, layer: &Name) -> Result<Option<PathBuf>, TreeError> {
        self.resolve_dir(&format!("parameters/{layer}"))
    }

    /// Reads node `name`, resolving its groups transitively.
    pub fn node(&self, name: &Name) -> Result<NodeSpec, TreeError> {
        if self.layer_dir(name)?.is_none() {
            return Err(TreeError::NoNode(name.clone()));
        }
        let mut walk = GroupWalk::default();
        walk.visit(self, name)?;
        let mut modules = BTreeMap::new();
        for layer in &walk.layers {
            let rel = format!("parameters/{layer}/modules");
            for (m, kind) in self.names_in(&rel)? {
                if kind.is_dir() {
                    return Err(TreeError::WrongType {
                        path: format!("{rel}/{m}"),
                        expected: "file (an empty file per module)",
                    });
                }
                modules.entry(m).or_insert_with(|| rel.clone());
            }
        }
        Ok(NodeSpec {
            name: name.clone(),
            layers: walk.layers,
            modules,
        })
    }

    /// The nodes among `layers` (the entries of `parameters/`): every one
    /// that no layer lists as a group. The same rule for `disco lint` and
    /// `disco secret`.
    pub fn nodes(&self, layers: &[Name]) -> Vec<Name> {
        let mut groups = BTreeSet::new();
        for l in layers {
            if let Ok(g) = self.names_in(&format!("parameters/{l}/groups")) {
                groups.extend(g.into_iter().map(|(n, _)| n));
            }
        }
        layers
            .iter()
            .filter(|l| !groups.contains(*l))
            .cloned()
            .collect()
    }

    /// Parses `modules/M/requires` (absent file: no requirements).
    pub fn requires(&self, m: &Name) -> Result<Vec<Require>, TreeError> {
        if let Some(known) = self.required.borrow().get(m) {
            return Ok(known.clone());
        }
        let parsed = self.requires_uncached(m)?;
        self.required.borrow_mut().insert(m.clone(), parsed.clone());
        Ok(parsed)
    }

    fn requires_uncached(&self, m: &Name) -> Result<Vec<Require>, TreeError> {
        let rel = format!("modules/{m}/requires");
        let Some(dir) = self.module_dir(m)? else {
            return Ok(Vec::new());
        };
        // Never followed, never a FIFO, never big: 64 KiB of `after X` lines is plenty.
        match crate::fsutil::read_small(&dir.join("requires"), &rel, 64 << 10) {
            Ok(Some(bytes)) => parse_requires(&bytes, &rel),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(TreeError::Untrusted(format!("{e:#}"))),
        }
    }

    /// The validated, sorted entry names of directory `rel` (empty if absent).
    pub fn names_in(&self, rel: &str) -> Result<Vec<(Name, fs::FileType)>, TreeError> {
        // `parameters/N/modules → /etc` must not list the client's /etc.
        // A top-level link was let in by `open` (local transport) or
        // checked by `check_top_links` (publish, serve, lint).
        let real = if rel.contains('/') {
            crate::fsutil::real_dir(&self.root.join(rel), rel)
        } else {
            Ok(fs::metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir()))
        };
        match real {
            Ok(true) => {}
            Ok(false) => return Ok(Vec::new()),
            Err(e) => return Err(TreeError::Untrusted(format!("{e:#}"))),
        }
        let entries = match fs::read_dir(self.root.join(rel)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(TreeError::Io {
                    path: rel.to_string(),
                    error,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| TreeError::Io {
                path: rel.to_string(),
                error,
            })?;
            let raw = entry.file_name();
            let shown = format!("{rel}/{}", raw.to_string_lossy());
            let name = Name::parse_os(&raw, &shown)?;
            let kind = entry
                .file_type()
                .map_err(|error| TreeError::Io { path: shown, error })?;
            out.push((name, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Depth-first walk over `parameters/X/groups`, detecting cycles.
#[derive(Default)]
struct GroupWalk {
    stack: Vec<Name>,
    done: BTreeSet<Name>,
    layers: Vec<Name>,
}

impl GroupWalk {
    fn visit(&mut self, tree: &ServerTree, layer: &Name) -> Result<(), TreeError> {
        if let Some(pos) = self.stack.iter().position(|n| n == layer) {
            return Err(TreeError::GroupCycle(self.stack[pos..].to_vec()));
        }
        if self.done.contains(layer) {
            return Ok(());
        }
        self.stack.push(layer.clone());
        let rel = format!("parameters/{layer}/groups");
        for (group, _) in tree.names_in(&rel)? {
            if tree.layer_dir(&group)?.is_none() {
                return Err(TreeError::NoGroup {
                    group,
                    listed_in: rel,
                });
            }
            self.visit(tree, &group)?;
        }
        self.stack.pop();
        self.done.insert(layer.clone());
        self.layers.push(layer.clone());
        Ok(())
    }
}

/// Parses the text of a `requires` file; `rel` names it in messages.
pub fn parse_requires(bytes: &[u8], rel: &str) -> Result<Vec<Require>, TreeError> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = match line.iter().position(|&b| b == b'#') {
            Some(p) => &line[..p],
            None => line,
        };
        let words: Vec<&[u8]> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        let direction = match words.as_slice() {
            [] => continue,
            [b"after", _] => Direction::After,
            [b"before", _] => Direction::Before,
            _ => {
                return Err(TreeError::BadDirective {
                    file: rel.to_string(),
                    line: line_no,
                })
            }
        };
        let module = Name::parse_os(
            std::os::unix::ffi::OsStrExt::from_bytes(words[1]),
            format!("{rel}:{line_no}"),
        )?;
        out.push(Require {
            direction,
            module,
            line: line_no,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s, "t").unwrap()
    }

    #[test]
    fn requires_skips_blanks_and_comments() {
        let text = b"# leading comment\n\nafter a\n  before b   # why\r\n\t\n";
        let r = parse_requires(text, "modules/y/requires").unwrap();
        assert_eq!(
            r,
            vec![
                Require {
                    direction: Direction::After,
                    module: n("a"),
                    line: 3
                },
                Require {
                    direction: Direction::Before,
                    module: n("b"),
                    line: 4
                },
            ]
        );
    }

    #[test]
    fn requires_unknown_directive_names_file_and_line() {
        let err = parse_requires(b"after a\n\nneeds b\n", "modules/y/requires").unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules/y/requires:3: expected 'after NAME' or 'before NAME'"
        );
        let err = parse_requires(b"after a b\n", "modules/y/requires").unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules/y/requires:1: expected 'after NAME' or 'before NAME'"
        );
        let err = parse_requires(b"after\n", "modules/y/requires").unwrap_err();
        assert!(matches!(err, TreeError::BadDirective { line: 1, .. }));
    }

    #[test]
    fn requires_bad_name_names_the_line() {
        let err = parse_requires(b"after ../x\n", "modules/y/requires").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad name '../x' at modules/y/requires:1: names must match [A-Za-z0-9._-]+ and not be '.' or '..'"
        );
    }

    #[test]
    fn cycle_prints_closed() {
        assert_eq!(join_cycle(&[n("a"), n("b"), n("c")]), "a -> b -> c -> a");
        assert_eq!(join_cycle(&[n("a")]), "a -> a");
    }
}
