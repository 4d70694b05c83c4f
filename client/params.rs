//! Parameters: plain trees of files (one file per value, directories nest
//! keys), their layering, and the operations behind `disco param`.
//!
//! Owns: parameter keys (`a/b/c`, each component a [`Name`]), loading a tree
//! from disk, layering (module defaults < groups < node, later layer wins;
//! a directory in a higher layer merges with a lower directory, anything
//! else replaces), reading one key across the layers without loading them
//! whole ([`merged_at`]), the `dump` line format, and the atomic
//! `set`/`delete` of a plain tree. Where the layers come from is [`crate::tree`]'s business.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::names::{quote_bytes, Name};
use crate::plan::Plan;
use crate::tree::{NodeSpec, ServerTree};

/// A parameter key: one or more names joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(Vec<Name>);

impl Key {
    /// Parses `a/b/c`. Refuses an empty key, a leading or doubled `/`,
    /// `.`/`..` and any character outside the naming rule.
    pub fn parse(raw: &str) -> Result<Key> {
        if raw.starts_with('/') {
            bail!("bad key '{raw}': keys are relative (no leading '/')");
        }
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        let parts = trimmed
            .split('/')
            .map(|c| Name::parse(c, format_args!("key '{raw}'")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Key(parts))
    }

    pub fn components(&self) -> &[Name] {
        &self.0
    }

    /// The key as a relative path.
    pub fn to_path(&self) -> PathBuf {
        self.0.iter().map(Name::as_str).collect()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = self.0.iter().map(Name::as_str).collect();
        f.write_str(&parts.join("/"))
    }
}

/// A value (the bytes of a file) or a directory of further keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Value(Vec<u8>),
    Dir(BTreeMap<Name, Param>),
}

/// A whole parameter tree (its root is always a directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamTree {
    root: BTreeMap<Name, Param>,
}

impl ParamTree {
    /// Loads the tree under `dir` (a missing directory is an empty tree).
    /// `label` names `dir` in messages, e.g. `parameters/web1/parameters`.
    /// Symlinks are followed only while they stay inside `dir`.
    pub fn load(dir: &Path, label: &str) -> Result<ParamTree> {
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ParamTree::default()),
            Err(e) => return Err(e).with_context(|| label.to_string()),
            Ok(m) if !m.is_dir() => bail!("{label} should be a directory of parameters"),
            Ok(_) => {}
        }
        Ok(ParamTree {
            root: load_dir(dir, label, dir)?,
        })
    }

    /// Lays `upper` over this tree: `upper` wins wherever both have a key,
    /// except that two directories merge.
    /// Every value's key, as `a/b/c` strings.
    pub fn value_keys(&self) -> Vec<String> {
        fn walk(dir: &BTreeMap<Name, Param>, at: &str, out: &mut Vec<String>) {
            for (name, p) in dir {
                let key = if at.is_empty() {
                    name.to_string()
                } else {
                    format!("{at}/{name}")
                };
                match p {
                    Param::Value(_) => out.push(key),
                    Param::Dir(d) if d.is_empty() => out.push(key),
                    Param::Dir(d) => walk(d, &key, out),
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, "", &mut out);
        out
    }

    /// The values under the top-level `secrets/` key, at any depth.
    pub fn secret_values(&self) -> Vec<Vec<u8>> {
        fn walk(p: &Param, out: &mut Vec<Vec<u8>>) {
            match p {
                Param::Value(v) => out.push(v.clone()),
                Param::Dir(d) => d.values().for_each(|p| walk(p, out)),
            }
        }
        let mut out = Vec::new();
        if let Some(p) = self
            .root
            .iter()
            .find(|(k, _)| k.as_str() == "secrets")
            .map(|(_, p)| p)
        {
            walk(p, &mut out);
        }
        out
    }

    /// Calls `f(KEY, value)` for every value under the top-level
    /// `secrets/` key, in key order, letting it replace the value; stops at
    /// the first error.
    pub fn for_each_secret_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        fn walk(
            p: &mut Param,
            at: &str,
            f: &mut dyn FnMut(&str, &mut Vec<u8>) -> Result<()>,
        ) -> Result<()> {
            match p {
                Param::Value(v) => f(at, v),
                Param::Dir(d) => d
                    .iter_mut()
                    .try_for_each(|(k, p)| walk(p, &format!("{at}/{k}"), f)),
            }
        }
        match self
            .root
            .iter_mut()
            .find(|(k, _)| k.as_str() == crate::secrets::SECRETS)
        {
            Some((_, p)) => walk(p, crate::secrets::SECRETS, f),
            None => Ok(()),
        }
    }

    /// True when `key` is a secret (under the top-level `secrets/`).
    pub fn is_secret(key: &Key) -> bool {
        key.components()
            .first()
            .is_some_and(|c| c.as_str() == crate::secrets::SECRETS)
    }

    pub fn overlay(&mut self, upper: ParamTree) {
        merge_into(&mut self.root, upper.root);
    }

    /// Sets `key` to `value` (directories above it made as needed; a
    /// value in the way is replaced).
    pub fn insert(&mut self, key: &Key, value: Vec<u8>) {
        let Some((last, parents)) = key.0.split_last() else {
            return;
        };
        let mut dir = &mut self.root;
        for c in parents {
            let entry = dir
                .entry(c.clone())
                .or_insert_with(|| Param::Dir(BTreeMap::new()));
            if !matches!(entry, Param::Dir(_)) {
                *entry = Param::Dir(BTreeMap::new());
            }
            let Param::Dir(d) = entry else { unreachable!() };
            dir = d;
        }
        dir.insert(last.clone(), Param::Value(value));
    }

    /// The value or directory at `key`.
    pub fn get(&self, key: &Key) -> Option<&Param> {
        let (last, parents) = key.0.split_last()?;
        let mut dir = &self.root;
        for c in parents {
            match dir.get(c)? {
                Param::Dir(d) => dir = d,
                Param::Value(_) => return None,
            }
        }
        dir.get(last)
    }

    /// The entries directly under `key` (the root when `None`).
    pub fn children(&self, key: Option<&Key>) -> Result<&BTreeMap<Name, Param>> {
        match key {
            None => Ok(&self.root),
            Some(k) => match self.get(k) {
                Some(Param::Dir(d)) => Ok(d),
                Some(Param::Value(_)) => bail!("parameter '{k}' is a value, not a directory"),
                None => bail!("no parameter '{k}'"),
            },
        }
    }

    /// `path = value` lines, sorted, for everything under `key` (or all).
    /// Directories print as `path = {}`; see [`show_value`] for values.
    /// With `mask`, values under `secrets/` print as [`SECRET_SHOWN`].
    pub fn dump(&self, key: Option<&Key>, mask: bool) -> Result<Vec<String>> {
        let mut out = Vec::new();
        match key {
            None => dump_dir(&self.root, "", mask, &mut out),
            Some(k) => match self.get(k) {
                None => bail!("no parameter '{k}'"),
                Some(Param::Value(v)) => {
                    out.push(format!("{k} = {}", shown_value(&k.to_string(), v, mask)))
                }
                Some(Param::Dir(d)) => {
                    out.push(format!("{k} = {{}}"));
                    dump_dir(d, &format!("{k}/"), mask, &mut out);
                }
            },
        }
        Ok(out)
    }

    /// Writes the tree as files under `dir` (which must not exist yet),
    /// read-only for everyone but root: directories 0755, values 0644.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        write_dir(&self.root, dir)
    }
}

/// Refuses a directory nested deeper than [`crate::fsutil::MAX_DEPTH`]
/// (counted on its label, as a whole load counts it).
fn check_depth(label: &str) -> Result<()> {
    if label.matches('/').count() > crate::fsutil::MAX_DEPTH {
        bail!(
            "{label}: more than {} levels of directories",
            crate::fsutil::MAX_DEPTH
        );
    }
    Ok(())
}

/// Loads one directory; `top` is the tree's root, the bound for symlinks.
fn load_dir(dir: &Path, label: &str, top: &Path) -> Result<BTreeMap<Name, Param>> {
    check_depth(label)?;
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(dir).with_context(|| label.to_string())?;
    for entry in entries {
        let entry = entry.with_context(|| label.to_string())?;
        let raw = entry.file_name();
        let shown = format!("{label}/{}", raw.to_string_lossy());
        let name = Name::parse_os(&raw, &shown)?;
        let meta = fs::symlink_metadata(entry.path()).with_context(|| shown.clone())?;
        let param = load_entry(entry.path(), meta, &shown, top, &mut |path, shown| {
            load_dir(path, shown, top)
        })?;
        out.insert(name, param);
    }
    Ok(out)
}

/// Loads a directory of a tree at (its path, its label).
type DirLoader<'a> = dyn FnMut(&Path, &str) -> Result<BTreeMap<Name, Param>> + 'a;

/// One entry of a tree at `path` (`meta` its `lstat`): a symlink followed
/// only while it stays inside `top`, a file read as a value, a directory
/// loaded by `dir`.
fn load_entry(
    mut path: PathBuf,
    mut meta: fs::Metadata,
    shown: &str,
    top: &Path,
    dir: &mut DirLoader<'_>,
) -> Result<Param> {
    if meta.file_type().is_symlink() {
        let target =
            fs::canonicalize(&path).with_context(|| format!("{shown}: cannot follow symlink"))?;
        let bound = fs::canonicalize(top).with_context(|| shown.to_string())?;
        if !target.starts_with(&bound) {
            bail!(
                "{shown} is a symlink to {}, outside the parameter tree",
                target.display()
            );
        }
        meta = fs::metadata(&target).with_context(|| shown.to_string())?;
        path = target;
    }
    if meta.is_dir() {
        Ok(Param::Dir(dir(&path, shown)?))
    } else if meta.is_file() {
        // A parameter is a value, not a payload: 16 MiB at most.
        let value = crate::fsutil::read_small(&path, shown, 16 << 20)?
            .with_context(|| format!("{shown} went away while it was read"))?;
        Ok(Param::Value(value))
    } else {
        bail!("{shown} is neither a file nor a directory");
    }
}

/// The part of the tree at `dir` that lies on the way to `key`: each
/// component of `key` that exists (a value stops the walk), and whatever
/// is at `key` itself, a value or a directory (whole only for a secret,
/// whose values are all opened; else empty: `get` of a directory is an
/// error whatever it holds). Merging these
/// parts layer by layer gives, at `key`, exactly what merging the whole
/// layers gives: a merge decides at each name on the path from that
/// name's entries alone. A missing `dir` is an empty tree.
fn load_along(dir: &Path, label: &str, key: &Key) -> Result<ParamTree> {
    fn along(
        dir: &Path,
        label: &str,
        top: &Path,
        path: &[Name],
        whole: bool,
    ) -> Result<BTreeMap<Name, Param>> {
        check_depth(label)?;
        let mut out = BTreeMap::new();
        let Some((first, rest)) = path.split_first() else {
            return Ok(out);
        };
        let shown = format!("{label}/{first}");
        let at = dir.join(first.as_str());
        let meta = match fs::symlink_metadata(&at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| shown.clone()),
            Ok(m) => m,
        };
        let param = load_entry(at, meta, &shown, top, &mut |p, shown| {
            if rest.is_empty() {
                if whole {
                    load_dir(p, shown, top)
                } else {
                    Ok(BTreeMap::new())
                }
            } else {
                along(p, shown, top, rest, whole)
            }
        })?;
        out.insert(first.clone(), param);
        Ok(out)
    }
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ParamTree::default()),
        Err(e) => return Err(e).with_context(|| label.to_string()),
        Ok(m) if !m.is_dir() => bail!("{label} should be a directory of parameters"),
        Ok(_) => {}
    }
    Ok(ParamTree {
        root: along(dir, label, dir, key.components(), ParamTree::is_secret(key))?,
    })
}

fn merge_into(lower: &mut BTreeMap<Name, Param>, upper: BTreeMap<Name, Param>) {
    for (k, v) in upper {
        match (lower.get_mut(&k), v) {
            (Some(Param::Dir(l)), Param::Dir(u)) => merge_into(l, u),
            (_, v) => {
                lower.insert(k, v);
            }
        }
    }
}

fn dump_dir(dir: &BTreeMap<Name, Param>, prefix: &str, mask: bool, out: &mut Vec<String>) {
    for (k, v) in dir {
        match v {
            Param::Value(bytes) => out.push(format!(
                "{prefix}{k} = {}",
                shown_value(&format!("{prefix}{k}"), bytes, mask)
            )),
            Param::Dir(d) => {
                out.push(format!("{prefix}{k} = {{}}"));
                dump_dir(d, &format!("{prefix}{k}/"), mask, out);
            }
        }
    }
}

/// What `dump` and `explain` print for a secret's value.
pub const SECRET_SHOWN: &str = "******** (secret)";

/// [`show_value`], or [`SECRET_SHOWN`] for a key under `secrets/` when `mask`.
pub fn shown_value(key: &str, bytes: &[u8], mask: bool) -> String {
    let secret =
        key == crate::secrets::SECRETS || key.starts_with(&format!("{}/", crate::secrets::SECRETS));
    if mask && secret {
        SECRET_SHOWN.to_string()
    } else {
        show_value(bytes)
    }
}

/// A value on one line: one trailing newline dropped; backslash, newlines,
/// other control characters and non-UTF-8 bytes escaped (`\\`, `\n`, `\xff`).
pub fn show_value(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let quoted = quote_bytes(bytes);
    // quote_bytes wraps in quotes and escapes `'`; dump shows values bare.
    quoted[1..quoted.len() - 1].replace("\\'", "'")
}

fn write_dir(dir: &BTreeMap<Name, Param>, path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).create(path)?;
    for (k, v) in dir {
        let p = path.join(k.as_str());
        match v {
            Param::Dir(d) => write_dir(d, &p)?,
            Param::Value(bytes) => {
                fs::write(&p, bytes)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
            }
        }
    }
    Ok(())
}

/// Two modules of one plan default the same key (or one a key and the
/// other a directory above or below it): which one wins would depend on
/// the plan's order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter '{key}' has a default in two modules, {first} and {second}: keep the default in one of them, or move it to the node or a group")]
pub struct DefaultClash {
    /// The key as the first module holds it.
    pub key: String,
    /// The module that gave it first (in plan order).
    pub first: Name,
    pub second: Name,
}

/// Records that module `m` defaults `keys` (its [`ParamTree::value_keys`])
/// in `owner` (key → the module that defaults it), refusing a key another
/// module already defaults, or a key and a directory above or below it.
pub fn claim(
    owner: &mut BTreeMap<String, Name>,
    m: &Name,
    keys: Vec<String>,
) -> Result<(), DefaultClash> {
    for key in keys {
        let mut prefixes: Vec<String> = Vec::new();
        let mut at = String::new();
        for part in key.split('/') {
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            prefixes.push(at.clone());
        }
        let below = format!("{key}/");
        let clash = prefixes
            .iter()
            .find_map(|p| owner.get(p).map(|o| (p.clone(), o.clone())))
            .or_else(|| {
                owner
                    .range(below.clone()..)
                    .take_while(|(k, _)| k.starts_with(&below))
                    .map(|(k, o)| (k.clone(), o.clone()))
                    .next()
            });
        if let Some((key, first)) = clash {
            return Err(DefaultClash {
                key,
                first,
                second: m.clone(),
            });
        }
        owner.insert(key, m.clone());
    }
    Ok(())
}

/// The merged parameters of `node`: the defaults of each planned module in
/// plan order, then each of the node's layers (groups, then the node).
pub fn merged(tree: &ServerTree, node: &NodeSpec, plan: &Plan) -> Result<ParamTree> {
    merge_layers(tree, node, plan, true, &|dir, label| {
        ParamTree::load(dir, label)
    })
}

/// What [`merged`] holds at `key` and on the way to it, reading only the
/// files on that path in each layer (not the whole tree): `disco param
/// get KEY` with thousands of keys. Same layers, same precedence, same
/// value or error for `key` as [`merged`]; what lies off that path (a bad
/// name elsewhere, two modules defaulting one key) is not looked at: the
/// fetch checked the whole tree with [`merged`], and every dance does.
pub fn merged_at(tree: &ServerTree, node: &NodeSpec, plan: &Plan, key: &Key) -> Result<ParamTree> {
    merge_layers(tree, node, plan, false, &|dir, label| {
        load_along(dir, label, key)
    })
}

/// Lays each layer, as `load(DIR, LABEL)` reads it, over the last: the
/// module defaults in plan order, then the node's layers. With
/// `check_claims`, refuses two modules defaulting one key ([`claim`];
/// only whole layers can tell).
fn merge_layers(
    tree: &ServerTree,
    node: &NodeSpec,
    plan: &Plan,
    check_claims: bool,
    load: &dyn Fn(&Path, &str) -> Result<ParamTree>,
) -> Result<ParamTree> {
    let mut params = ParamTree::default();
    // Which module gave each default: two modules may not give the same
    // key (nor a key and a directory above it), or which one wins would
    // depend on the plan's order.
    let mut owner: BTreeMap<String, Name> = BTreeMap::new();
    for m in &plan.order {
        if let Some(dir) = tree.module_dir(m)? {
            let defaults = load(&dir.join("parameters"), &format!("modules/{m}/parameters"))?;
            if check_claims {
                claim(&mut owner, m, defaults.value_keys())?;
            }
            params.overlay(defaults);
        }
    }
    for layer in &node.layers {
        if let Some(dir) = tree.layer_dir(layer)? {
            params.overlay(load(
                &dir.join("parameters"),
                &format!("parameters/{layer}/parameters"),
            )?);
        }
    }
    Ok(params)
}

/// `disco param explain KEY`: every layer that holds `key`, lowest first
/// (module defaults in plan order, then each group, then the node), as
/// (where, the value as stored, `None` for a directory); the last one wins.
pub fn explain(
    tree: &ServerTree,
    node: &NodeSpec,
    plan: &Plan,
    key: &Key,
) -> Result<Vec<(String, Option<Vec<u8>>)>> {
    let mut out = Vec::new();
    let mut look = |dir: Option<PathBuf>, label: String| -> Result<()> {
        let Some(dir) = dir else { return Ok(()) };
        let t = ParamTree::load(&dir.join("parameters"), &label)?;
        match t.get(key) {
            Some(Param::Value(v)) => out.push((format!("{label}/{key}"), Some(v.clone()))),
            Some(Param::Dir(_)) => out.push((format!("{label}/{key}"), None)),
            None => {}
        }
        Ok(())
    };
    for m in &plan.order {
        look(tree.module_dir(m)?, format!("modules/{m}/parameters"))?;
    }
    for layer in &node.layers {
        look(
            tree.layer_dir(layer)?,
            format!("parameters/{layer}/parameters"),
        )?;
    }
    Ok(out)
}

/// Which file of the tree gave the winning value of `key` (as `explain`
/// says it), for messages; `key` itself when none can be told.
pub fn origin(tree: &ServerTree, node: &NodeSpec, plan: &Plan, key: &str) -> String {
    Key::parse(key)
        .ok()
        .and_then(|k| explain(tree, node, plan, &k).ok())
        .and_then(|mut l| l.pop())
        .map(|(at, _)| at)
        .unwrap_or_else(|| key.to_string())
}

/// What `set` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewValue {
    Value(Vec<u8>),
    /// `set KEY {}`: an (empty) directory.
    Dir,
}

/// Sets `key` in the plain tree at `root`, creating parent directories. A
/// value is written to a temporary file beside the target and renamed over
/// it, so readers see the old or the new value, never half of one.
pub fn tree_set(root: &Path, key: &Key, value: &NewValue) -> Result<()> {
    let target = checked_target(root, key)?;
    let parent = target.parent().expect("a key has at least one component");
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let existing = fs::symlink_metadata(&target).ok();
    match value {
        NewValue::Dir => match existing {
            Some(m) if m.is_dir() => Ok(()),
            Some(_) => bail!("parameter '{key}' is a value; delete it first to make a directory"),
            None => fs::create_dir(&target)
                .with_context(|| format!("cannot create {}", target.display())),
        },
        NewValue::Value(bytes) => {
            if existing.is_some_and(|m| m.is_dir()) {
                bail!("parameter '{key}' is a directory; delete it with -r first to set a value");
            }
            let mut tmp = tempfile::Builder::new()
                .prefix(".disco-set-")
                .tempfile_in(parent)
                .with_context(|| format!("cannot write in {}", parent.display()))?;
            tmp.write_all(bytes)
                .and_then(|_| tmp.as_file().sync_all())
                .with_context(|| format!("cannot write {}", target.display()))?;
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
            tmp.persist(&target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            Ok(())
        }
    }
}

/// Deletes `key` from the plain tree at `root`; a directory needs `recursive`.
pub fn tree_delete(root: &Path, key: &Key, recursive: bool) -> Result<()> {
    let target = checked_target(root, key)?;
    let meta = match fs::symlink_metadata(&target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("no parameter '{key}'"),
        Err(e) => return Err(e).with_context(|| target.display().to_string()),
    };
    if meta.is_dir() {
        if !recursive {
            bail!("parameter '{key}' is a directory; use delete -r to remove it and everything under it");
        }
        fs::remove_dir_all(&target)
    } else {
        fs::remove_file(&target)
    }
    .with_context(|| format!("cannot delete {}", target.display()))
}

/// `root/key`, after checking that `root` is a directory and no parent of
/// the key is a symlink (which could lead the write outside the tree).
fn checked_target(root: &Path, key: &Key) -> Result<PathBuf> {
    if !fs::metadata(root).map(|m| m.is_dir()).unwrap_or(false) {
        bail!("parameter tree {} is not a directory", root.display());
    }
    let mut p = root.to_path_buf();
    for c in key.components() {
        p.push(c.as_str());
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!("{} is a symlink; refusing to write through it", p.display());
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, ParamTree) {
        let d = tempfile::tempdir().unwrap();
        for (p, v) in files {
            let path = d.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            if *v == "{}" {
                fs::create_dir_all(&path).unwrap();
            } else {
                fs::write(&path, v).unwrap();
            }
        }
        let t = ParamTree::load(d.path(), "t").unwrap();
        (d, t)
    }

    #[test]
    fn keys_refuse_escapes_and_bad_characters() {
        for bad in ["", "/etc", "..", "a/../b", "a//b", "a b", "a\\b", "./a"] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(k("a/b.c/d_e-f").to_string(), "a/b.c/d_e-f");
        assert_eq!(k("a/").to_string(), "a");
    }

    #[test]
    fn layering_later_wins_and_directories_merge() {
        let (_a, mut module) = tree(&[("port", "80\n"), ("users/alice", "1\n"), ("tls", "{}")]);
        let (_b, group) = tree(&[("port", "8080\n"), ("users/bob", "2\n")]);
        let (_c, node) = tree(&[("users/alice", "9\n"), ("tls", "off\n")]);
        module.overlay(group);
        module.overlay(node);
        assert_eq!(
            module.dump(None, true).unwrap(),
            [
                "port = 8080",
                "tls = off",
                "users = {}",
                "users/alice = 9",
                "users/bob = 2",
            ]
        );
    }

    #[test]
    fn dump_escapes_so_each_value_is_one_line() {
        assert_eq!(show_value(b"a\nb\n"), "a\\nb");
        assert_eq!(show_value(b"x\xff\\"), "x\\xff\\\\");
        assert_eq!(show_value(b"it's"), "it's");
    }

    #[test]
    fn get_and_children() {
        let (_d, t) = tree(&[("a/b", "v"), ("c", "w")]);
        assert_eq!(t.get(&k("a/b")), Some(&Param::Value(b"v".to_vec())));
        assert_eq!(t.get(&k("c/x")), None);
        assert_eq!(t.children(Some(&k("a"))).unwrap().len(), 1);
        assert!(t.children(Some(&k("c"))).is_err());
    }

    #[test]
    fn set_and_delete_on_a_plain_tree() {
        let d = tempfile::tempdir().unwrap();
        tree_set(d.path(), &k("x/y"), &NewValue::Value(b"1\n".to_vec())).unwrap();
        tree_set(d.path(), &k("z"), &NewValue::Dir).unwrap();
        assert_eq!(fs::read(d.path().join("x/y")).unwrap(), b"1\n");
        assert!(tree_set(d.path(), &k("x"), &NewValue::Value(b"2".to_vec())).is_err());
        assert!(tree_delete(d.path(), &k("x"), false).is_err());
        tree_delete(d.path(), &k("x"), true).unwrap();
        assert!(tree_delete(d.path(), &k("x"), true).is_err());
        assert!(d.path().join("z").is_dir());
    }
}
