//! `disco lint`: checks a server tree where it lies — on the server, in a
//! git hook — before any node fetches it (issue 17).
//!
//! Owns: what may stand at the top of a module ([`MODULE_ENTRIES`]) and the
//! suggestion for a typo; the rule that a file of `scripts/` or
//! `handlers/` that would not run is a mistake unless it is a `README*`;
//! which checks run once per module and which once per node; the
//! [`Problem`] line (`FILE[:LINE]: message`, FILE relative to the server
//! tree); and the fast `bash -n` of many files ([`SYNTAX_DRIVER`]).
//!
//! The rules themselves stay with the stages that apply them: plans and
//! their errors come from [`crate::plan`], default clashes from
//! [`crate::params::claim`], `attributes` and `timeout` from the plan
//! stage's loaders in [`crate::pipeline`], what runs from
//! [`crate::exec::runs`], what is never installed from
//! [`crate::exec::is_leftover`], names from [`crate::names`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::names::{Name, NameError};
use crate::params::ParamTree;
use crate::plan::PlanError;
use crate::tree::{NodeSpec, ServerTree, TreeError};

/// What a module may hold at its top: (name, is a directory).
pub const MODULE_ENTRIES: &[(&str, bool)] = &[
    ("requires", false),
    ("parameters", true),
    ("files", true),
    ("templates", true),
    ("scripts", true),
    ("handlers", true),
    ("attributes", false),
    ("timeout", false),
    ("README", false),
    ("README.md", false),
];

/// One thing wrong with the tree, as `FILE[:LINE]: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Relative to the server tree.
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn new(file: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Problem {
        Problem {
            file: file.into(),
            line,
            message: message.into(),
        }
    }

    /// A problem from an error message: when the message starts with a
    /// place of the tree (`modules/m/attributes:3: …`, `parameters/x: …`)
    /// that place is its FILE and LINE, else `file` is.
    fn from_message(file: &str, message: &str) -> Problem {
        // `FILE is a symbolic link…` at FILE: the path once.
        if let Some(rest) = message.strip_prefix(file).and_then(|r| r.strip_prefix(' ')) {
            return Problem::new(file, None, rest);
        }
        if let Some((place, rest)) = message.split_once(": ") {
            if (place.starts_with("modules/") || place.starts_with("parameters/"))
                && !place.contains(' ')
            {
                let (f, line) = split_place(place);
                return Problem::new(f, line, rest);
            }
        }
        Problem::new(file, None, message)
    }

    fn from_error(file: &str, e: &anyhow::Error) -> Problem {
        if let Some(t) = e.downcast_ref::<TreeError>() {
            return Problem::from_tree(file, t);
        }
        Problem::from_message(file, &format!("{e:#}"))
    }

    fn from_tree(file: &str, e: &TreeError) -> Problem {
        match e {
            TreeError::BadName(NameError { at, .. }) => {
                let (f, line) = split_place(at);
                Problem::new(f, line, e.to_string())
            }
            TreeError::NoGroup { group, listed_in } => {
                Problem::new(format!("{listed_in}/{group}"), None, e.to_string())
            }
            TreeError::GroupCycle(members) if !members.is_empty() => {
                let next = members.get(1).unwrap_or(&members[0]);
                Problem::new(
                    format!("parameters/{}/groups/{next}", members[0]),
                    None,
                    e.to_string(),
                )
            }
            TreeError::BadDirective { file, line } => Problem::new(
                file.clone(),
                Some(*line),
                "expected 'after NAME' or 'before NAME'",
            ),
            _ => Problem::from_message(file, &e.to_string()),
        }
    }
}

/// `path:12` → (`path`, 12); `path` → (`path`, none).
fn split_place(place: &str) -> (&str, Option<usize>) {
    match place.rsplit_once(':') {
        Some((f, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (f, n.parse().ok())
        }
        _ => (place, None),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The outcome of [`lint`].
#[derive(Debug, Default)]
pub struct Lint {
    /// Nodes whose plan and parameters were checked.
    pub nodes: usize,
    /// Modules checked (each once).
    pub modules: usize,
    /// Sorted, without duplicates.
    pub problems: Vec<Problem>,
}

/// A file `bash -n` must accept: (shown path, real path).
type SyntaxJob = (String, PathBuf);

/// Lints the server tree at `root`: every node (or only `only`), and
/// every module (or only those the given nodes may plan). An `Err` only
/// when there is no tree to lint or bash cannot be run; everything wrong
/// inside the tree is a [`Problem`].
///
/// A top-level `parameters`, `modules` or `recipients` symlink is refused
/// (one error naming the link and its target, nothing behind it read)
/// unless it leads to one of `allowed`, named by the admin.
pub fn lint(root: &Path, only: &[Name], allowed: &[PathBuf]) -> Result<Lint> {
    let root = std::path::absolute(root)
        .with_context(|| format!("cannot make {} absolute", root.display()))?;
    let tree = open_tree(&root, allowed)?;
    let mut problems: BTreeSet<Problem> = BTreeSet::new();
    let nodes = nodes_to_lint(&root, &tree, only, &mut problems)?;
    let mut specs: Vec<NodeSpec> = Vec::new();
    for n in &nodes {
        match tree.node(n) {
            Ok(spec) => specs.push(spec),
            Err(e) => {
                problems.insert(Problem::from_tree(&format!("parameters/{n}"), &e));
            }
        }
    }
    // The modules: all of them, or what the given nodes may reach.
    let modules: Vec<Name> = if only.is_empty() {
        list_names(&root, "modules", &mut problems)?
    } else {
        reach(&tree, &specs)
    };
    let (keys, jobs) = check_modules(&tree, &modules, &mut problems);
    check_module_defaults(&keys, &mut problems);
    check_secrets(&root, &tree, &specs, only.is_empty(), &mut problems);
    let syntax = check_nodes_beside_syntax(&tree, &specs, &keys, &jobs, &mut problems)?;
    problems.extend(syntax);
    Ok(Lint {
        nodes: nodes.len(),
        modules: modules.len(),
        problems: problems.into_iter().collect(),
    })
}

/// The server tree at `root` (absolute), refused when it is not one or a
/// top-level link leads outside `allowed`.
fn open_tree(root: &Path, allowed: &[PathBuf]) -> Result<ServerTree> {
    let tree = match ServerTree::open(root) {
        Ok(t) => t,
        Err(TreeError::Io { error, .. }) => {
            bail!("no server tree at {}: {error}", root.display())
        }
        Err(e) => bail!("no server tree at {}: {e}", root.display()),
    };
    crate::tree::check_top_links(root, allowed)?;
    for sub in ["parameters", "modules"] {
        if !fs::metadata(root.join(sub)).is_ok_and(|m| m.is_dir()) {
            bail!(
                "{} is not a server tree: it has no {sub}/ directory",
                root.display()
            );
        }
    }
    Ok(tree)
}

/// The nodes to lint: `only` (each must be a layer), else every layer of
/// `parameters/` that no layer lists as a group.
fn nodes_to_lint(
    root: &Path,
    tree: &ServerTree,
    only: &[Name],
    problems: &mut BTreeSet<Problem>,
) -> Result<Vec<Name>> {
    let layers = list_names(root, "parameters", problems)?;
    if only.is_empty() {
        return Ok(tree.nodes(&layers));
    }
    for n in only {
        if tree.layer_dir(n)?.is_none() {
            return Err(TreeError::NoNode(n.clone()).into());
        }
    }
    Ok(only.to_vec())
}

/// Checks each module once; returns the keys each one defaults and the
/// files for `bash -n` (checked later, while the nodes are).
fn check_modules(
    tree: &ServerTree,
    modules: &[Name],
    problems: &mut BTreeSet<Problem>,
) -> (HashMap<Name, Vec<String>>, Vec<SyntaxJob>) {
    let mut keys: HashMap<Name, Vec<String>> = HashMap::new();
    let mut jobs: Vec<SyntaxJob> = Vec::new();
    for m in modules {
        match tree.module_dir(m) {
            Ok(Some(dir)) => {
                let mut check = ModuleCheck {
                    tree,
                    name: m,
                    dir: &dir,
                    problems: &mut *problems,
                    jobs: &mut jobs,
                };
                if let Some(k) = check.run() {
                    keys.insert(m.clone(), k);
                }
            }
            Ok(None) => {}
            Err(e) => {
                problems.insert(Problem::from_tree(&format!("modules/{m}"), &e));
            }
        }
    }
    (keys, jobs)
}

/// A module's default is every node's: it cannot be a secret.
fn check_module_defaults(keys: &HashMap<Name, Vec<String>>, problems: &mut BTreeSet<Problem>) {
    for (m, ks) in keys {
        for k in ks.iter().filter(|k| k.starts_with("secrets/")) {
            problems.insert(Problem::new(
                format!("modules/{m}/parameters/{k}"),
                None,
                "a module's default cannot be a secret (every node running the module would need to read it): set it per node or group with `disco secret set`",
            ));
        }
    }
}

/// Checks every node (see [`check_node`]) while `bash -n` checks `jobs`
/// on other threads; returns the syntax problems.
fn check_nodes_beside_syntax(
    tree: &ServerTree,
    specs: &[NodeSpec],
    keys: &HashMap<Name, Vec<String>>,
    jobs: &[SyntaxJob],
    problems: &mut BTreeSet<Problem>,
) -> Result<Vec<Problem>> {
    std::thread::scope(|s| -> Result<Vec<Problem>> {
        let running: Vec<_> = chunks(jobs)
            .into_iter()
            .map(|chunk| s.spawn(move || bash_n(chunk)))
            .collect();
        let mut done_layers = HashSet::new();
        let mut targets = HashMap::new();
        for spec in specs {
            check_node(tree, spec, keys, (&mut done_layers, &mut targets), problems);
        }
        let mut out = Vec::new();
        for r in running {
            out.extend(
                r.join()
                    .map_err(|_| anyhow::anyhow!("the bash -n check panicked"))??,
            );
        }
        Ok(out)
    })
}

/// Secrets: every file under a layer's `secrets/` is age-encrypted to
/// every node that uses the layer (each with a recorded, usable key) and
/// the admins list a key. `all`: every layer's secrets, else only those of
/// the layers of `specs`.
fn check_secrets(
    root: &Path,
    tree: &ServerTree,
    specs: &[NodeSpec],
    all: bool,
    problems: &mut BTreeSet<Problem>,
) {
    use crate::secrets::{self, Fleet};
    let admins = read_admins(root, problems);
    let fleet = Fleet::from_specs(root, tree.clone(), admins, specs);
    // A node key that is there but unusable, secrets or not.
    for (n, k) in &fleet.nodes {
        if let Some(Err(e)) = &k.key {
            problems.insert(Problem::from_message(
                &format!("parameters/{n}/{}", secrets::NODE_KEY),
                e,
            ));
        }
    }
    let files = match fleet.secret_files() {
        Ok(f) => f,
        Err(e) => {
            problems.insert(Problem::from_error("parameters", &e));
            return;
        }
    };
    let linted: BTreeSet<&Name> = specs.iter().flat_map(|s| s.layers.iter()).collect();
    let mut admins_said = false;
    for f in files.iter().filter(|f| all || linted.contains(&f.layer)) {
        let Some(header) = secret_header(&fleet, f, problems) else {
            continue;
        };
        if fleet.admins.is_empty() && !admins_said {
            admins_said = true;
            problems.insert(Problem::new(
                secrets::ADMINS,
                None,
                "lists no key, but the tree has secrets: add the admins' SSH public keys (one a line), then `disco secret rekey`",
            ));
        }
        check_readers(&fleet, f, &header, problems);
    }
}

/// The admins' keys of the tree; an unreadable list is a problem (and no
/// key).
fn read_admins(root: &Path, problems: &mut BTreeSet<Problem>) -> Vec<crate::secrets::Recipient> {
    use crate::secrets;
    match secrets::read_recipients(&root.join(secrets::ADMINS), secrets::ADMINS) {
        Ok(a) => a,
        Err(e) => {
            let m = format!("{e:#}");
            let (place, rest) = m.split_once(": ").unwrap_or((secrets::ADMINS, &m));
            let (f, line) = split_place(place);
            problems.insert(Problem::new(f, line, rest));
            Vec::new()
        }
    }
}

/// The age header of a secret file; `None` when it cannot be read, is not
/// encrypted or not age (each a problem).
fn secret_header(
    fleet: &crate::secrets::Fleet,
    f: &crate::secrets::SecretFile,
    problems: &mut BTreeSet<Problem>,
) -> Option<crate::secrets::Header> {
    use crate::secrets;
    let bytes = match secrets::read_secret(f) {
        Ok(b) => b,
        Err(e) => {
            problems.insert(Problem::from_error(&f.rel, &e));
            return None;
        }
    };
    if !secrets::is_encrypted(&bytes) {
        let flag = if fleet.nodes.contains_key(&f.layer) {
            "--node"
        } else {
            "--group"
        };
        problems.insert(Problem::new(
            f.rel.clone(),
            None,
            format!(
                "not encrypted: disco secret set {flag} {} {}",
                f.layer, f.key
            ),
        ));
        return None;
    }
    match secrets::Header::read(&bytes) {
        Ok(h) => Some(h),
        Err(e) => {
            problems.insert(Problem::new(
                f.rel.clone(),
                None,
                format!("not a readable age file: {e}"),
            ));
            None
        }
    }
}

/// Every node that uses the secret's layer has a usable key and the
/// secret is encrypted to it.
fn check_readers(
    fleet: &crate::secrets::Fleet,
    f: &crate::secrets::SecretFile,
    header: &crate::secrets::Header,
    problems: &mut BTreeSet<Problem>,
) {
    for n in fleet.readers(&f.layer) {
        match fleet.nodes[n].usable(n) {
            Err(why) => {
                if fleet.nodes[n].key.is_none() {
                    problems.insert(Problem::new(
                        format!("parameters/{n}"),
                        None,
                        format!("has secrets, but {why}"),
                    ));
                }
            }
            Ok(k) if !header.includes(k) => {
                problems.insert(Problem::new(
                    f.rel.clone(),
                    None,
                    format!(
                        "node {n} uses it but cannot decrypt it (not encrypted to parameters/{n}/{}): disco secret rekey",
                        crate::secrets::NODE_KEY
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
}

/// The valid names in `root/sub`, sorted; a bad name is a problem.
fn list_names(root: &Path, sub: &str, problems: &mut BTreeSet<Problem>) -> Result<Vec<Name>> {
    let dir = root.join(sub);
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot read {sub}/"))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot read {sub}/"))?;
        // A README beside the modules (stdlib/ used as modules/) is not one.
        let name = e.file_name();
        if sub == "modules"
            && name.to_string_lossy().starts_with("README")
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        let shown = format!("{sub}/{}", crate::fsutil::shown(Path::new(&name)));
        match Name::parse_os(&e.file_name(), &shown) {
            Ok(n) => out.push(n),
            Err(err) => {
                problems.insert(Problem::new(shown, None, err.to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The modules `specs` list and every module their `requires` name,
/// transitively (what their plans may hold, even when a plan fails).
fn reach(tree: &ServerTree, specs: &[NodeSpec]) -> Vec<Name> {
    let mut seen: BTreeSet<Name> = BTreeSet::new();
    let mut queue: VecDeque<Name> = specs
        .iter()
        .flat_map(|s| s.modules.keys().cloned())
        .collect();
    while let Some(m) = queue.pop_front() {
        if !matches!(tree.module_dir(&m), Ok(Some(_))) || !seen.insert(m.clone()) {
            continue;
        }
        if let Ok(reqs) = tree.requires(&m) {
            queue.extend(reqs.into_iter().map(|r| r.module));
        }
    }
    seen.into_iter().collect()
}

/// The checks of one module, each once whatever the number of nodes.
struct ModuleCheck<'a> {
    tree: &'a ServerTree,
    name: &'a Name,
    dir: &'a Path,
    problems: &'a mut BTreeSet<Problem>,
    jobs: &'a mut Vec<SyntaxJob>,
}

impl ModuleCheck<'_> {
    /// Runs every check; returns the keys the module defaults (none when
    /// its parameters cannot be read, which is then a problem).
    fn run(&mut self) -> Option<Vec<String>> {
        let m = self.name;
        let at = format!("modules/{m}");
        self.top_entries(&at);
        match self.tree.requires(m) {
            Ok(reqs) => {
                for r in reqs {
                    if matches!(self.tree.module_dir(&r.module), Ok(None)) {
                        let e = crate::plan::required_missing(m, &r);
                        self.problem(format!("{at}/requires"), Some(r.line), e.to_string());
                    }
                }
            }
            Err(e) => {
                self.problems
                    .insert(Problem::from_tree(&format!("{at}/requires"), &e));
            }
        }
        if let Err(e) = crate::pipeline::load_attributes(self.dir, m) {
            self.problems
                .insert(Problem::from_error(&format!("{at}/attributes"), &e));
        }
        if let Err(e) = crate::pipeline::load_timeout(self.dir, m) {
            self.problems
                .insert(Problem::from_error(&format!("{at}/timeout"), &e));
        }
        self.walk("files", Path::new(""), 0);
        self.walk("templates", Path::new(""), 0);
        self.runnables("scripts");
        self.runnables("handlers");
        let label = format!("{at}/parameters");
        match ParamTree::load(&self.dir.join("parameters"), &label) {
            Ok(defaults) => Some(defaults.value_keys()),
            Err(e) => {
                self.problems.insert(Problem::from_error(&label, &e));
                None
            }
        }
    }

    fn problem(&mut self, file: String, line: Option<usize>, message: impl Into<String>) {
        self.problems.insert(Problem::new(file, line, message));
    }

    /// Only [`MODULE_ENTRIES`], each of its kind; a typo gets a suggestion.
    fn top_entries(&mut self, at: &str) {
        let entries = match fs::read_dir(self.dir) {
            Ok(e) => e,
            Err(e) => return self.problem(at.to_string(), None, format!("cannot read: {e}")),
        };
        for e in entries.flatten() {
            let raw = e.file_name();
            let name = raw.to_string_lossy();
            let shown = format!("{at}/{}", crate::fsutil::shown(Path::new(&raw)));
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            match MODULE_ENTRIES.iter().find(|(n, _)| *n == name) {
                Some((_, want_dir)) if *want_dir == is_dir => {}
                Some((n, want_dir)) => {
                    let kind = fs::symlink_metadata(e.path())
                        .map(|m| crate::fsutil::kind_name(&m))
                        .unwrap_or("special file");
                    let want = if *want_dir {
                        "a directory"
                    } else {
                        "a regular file"
                    };
                    self.problem(shown, None, format!("{n} is a {kind}; it must be {want}"));
                }
                None => {
                    let slash = if is_dir { "/" } else { "" };
                    let hint = match suggest(&name) {
                        Some(s) => format!("did you mean {s}?"),
                        None => format!(
                            "a module holds only {}",
                            MODULE_ENTRIES
                                .iter()
                                .map(|(n, d)| format!("{n}{}", if *d { "/" } else { "" }))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    self.problem(
                        shown,
                        None,
                        format!("unknown entry {name}{slash} in a module; {hint}"),
                    );
                }
            }
        }
    }

    /// `files/` or `templates/` below `rel`: what a dance would refuse
    /// (leftovers, special files, symlinks among templates); templates
    /// go to `bash -n`.
    fn walk(&mut self, sub: &str, rel: &Path, depth: usize) {
        let top = self.dir.join(sub);
        let shown_dir = format!(
            "modules/{}/{sub}{}",
            self.name,
            if rel.as_os_str().is_empty() {
                String::new()
            } else {
                format!("/{}", crate::fsutil::shown(rel))
            }
        );
        if depth == 0 {
            match crate::fsutil::real_dir(&top, &format!("{sub}/")) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return self.problem(shown_dir, None, format!("{e:#}")),
            }
        }
        if depth >= crate::fsutil::MAX_DEPTH {
            let max = crate::fsutil::MAX_DEPTH;
            return self.problem(
                shown_dir,
                None,
                format!("more than {max} levels of directories"),
            );
        }
        let mut entries: Vec<_> = match fs::read_dir(top.join(rel)) {
            Ok(e) => e.flatten().collect(),
            Err(e) => return self.problem(shown_dir, None, format!("cannot read: {e}")),
        };
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let shown = format!("modules/{}/{sub}/{}", self.name, crate::fsutil::shown(&r));
            let meta = match fs::symlink_metadata(e.path()) {
                Ok(m) => m,
                Err(err) => {
                    self.problem(shown, None, format!("cannot read: {err}"));
                    continue;
                }
            };
            let ft = meta.file_type();
            if let Some(why) = crate::exec::not_installable(sub, &e.file_name(), &meta) {
                self.problem(shown, None, why);
            } else if ft.is_dir() {
                self.walk(sub, &r, depth + 1);
            } else if ft.is_file() && sub == "templates" {
                self.syntax(shown, e.path());
            }
        }
    }

    /// `scripts/` or `handlers/`: what runs goes to `bash -n`; anything
    /// else but a `README*` would be skipped, which is probably a mistake.
    fn runnables(&mut self, sub: &str) {
        use crate::exec::Runnable;
        let at = format!("modules/{}/{sub}", self.name);
        let entries = match crate::exec::runnables(self.dir, sub) {
            Ok(e) => e,
            Err(e) => return self.problem(at, None, format!("{e:#}")),
        };
        let what = &sub[..sub.len() - 1]; // script, handler
        let shown =
            |name: &std::ffi::OsStr| format!("{at}/{}", crate::fsutil::shown(Path::new(name)));
        for r in entries {
            match r {
                Runnable::Runs(path) => {
                    let name = shown(path.file_name().unwrap_or_default());
                    self.syntax(name, path)
                }
                Runnable::Skipped(name) if !name.to_string_lossy().starts_with("README") => {
                    self.problem(
                        shown(&name),
                        None,
                        format!("is not a {what} name, so it never runs (a note or an editor's backup?): move it out of {sub}/, or rename it to NN-name"),
                    );
                }
                Runnable::Skipped(_) => {}
                Runnable::Refused(name, why) => self.problem(shown(&name), None, why),
            }
        }
    }

    /// Queues `path` for `bash -n` (once it is known to open).
    fn syntax(&mut self, shown: String, path: PathBuf) {
        match fs::File::open(&path) {
            Ok(_) => self.jobs.push((shown, path)),
            Err(e) => self.problem(shown, None, format!("cannot read: {e}")),
        }
    }
}

/// The entry of [`MODULE_ENTRIES`] `name` was probably meant to be.
fn suggest(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    MODULE_ENTRIES
        .iter()
        .filter_map(|(n, dir)| {
            let d = distance(&lower, &n.to_ascii_lowercase());
            let close = d <= 2 || (lower.len() >= 4 && n.starts_with(lower.as_str()));
            close.then_some((d, n, dir))
        })
        .min_by_key(|(d, n, _)| (*d, **n))
        .map(|(_, n, dir)| format!("{n}{}", if *dir { "/" } else { "" }))
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The checks of one node: its plan, default clashes and static
/// conflicts along it, and the parameters of each of its layers (each
/// layer, and each module's installed paths, read once).
fn check_node(
    tree: &ServerTree,
    spec: &NodeSpec,
    keys: &HashMap<Name, Vec<String>>,
    (done_layers, targets): (&mut HashSet<Name>, &mut HashMap<Name, Vec<String>>),
    problems: &mut BTreeSet<Problem>,
) {
    for layer in &spec.layers {
        if !done_layers.insert(layer.clone()) {
            continue;
        }
        let label = format!("parameters/{layer}/parameters");
        let loaded = tree
            .layer_dir(layer)
            .map_err(anyhow::Error::from)
            .and_then(|d| match d {
                Some(d) => ParamTree::load(&d.join("parameters"), &label).map(|_| ()),
                None => Ok(()),
            });
        if let Err(e) = loaded {
            problems.insert(Problem::from_error(&label, &e));
        }
    }
    match crate::plan::plan(tree, spec) {
        Ok(plan) => {
            problems.extend(default_clash(&plan.order, keys));
            problems.extend(static_conflict(tree, &plan.order, targets));
        }
        Err(e) => problems.extend(plan_problem(tree, spec, e)),
    }
}

/// The first two modules of `order` that do not require each other and
/// install the same path from `files/` or `templates/`: the conflict the
/// dance would fail with, said at lint (each module's paths read once,
/// kept in `targets`).
fn static_conflict(
    tree: &ServerTree,
    order: &[Name],
    targets: &mut HashMap<Name, Vec<String>>,
) -> Option<Problem> {
    let graph = crate::graph::Graph::of(tree, order).ok()?;
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for m in order {
        if !targets.contains_key(m) {
            targets.insert(m.clone(), crate::graph::installed_paths(tree, m));
        }
    }
    let mut found: Option<crate::graph::Conflict> = None;
    for (i, m) in order.iter().enumerate() {
        for p in &targets[m] {
            match owner.get(p.as_str()) {
                Some(&j) if !graph.ordered(i, j) => {
                    let c = crate::graph::Conflict {
                        first: j,
                        second: i,
                        path: p.clone(),
                        more: 0,
                    };
                    if found.as_ref().is_none_or(|f| c < *f) {
                        found = Some(c);
                    }
                }
                _ => {
                    owner.insert(p, i);
                }
            }
        }
    }
    found.map(|c| {
        Problem::new(
            format!("modules/{}", order[c.second]),
            None,
            c.message(order),
        )
    })
}

/// Where and how a node's plan error is said; `None` when another check
/// says it (a module's own file, a missing module named by `requires`).
fn plan_problem(tree: &ServerTree, spec: &NodeSpec, error: PlanError) -> Option<Problem> {
    let n = &spec.name;
    match error {
        PlanError::Tree(TreeError::ModuleMissing { name, why }) => {
            // Listed by a layer: the listing file. Named by a `requires`
            // line: the module check said it, with the line.
            let listed_in = spec.modules.get(&name)?;
            let e = TreeError::ModuleMissing {
                name: name.clone(),
                why,
            };
            Some(Problem::new(
                format!("{listed_in}/{name}"),
                None,
                e.to_string(),
            ))
        }
        PlanError::Cycle(members) => {
            // At the `requires` line of the first member naming the next.
            let next = members.get(1).unwrap_or(&members[0]);
            let file = format!("modules/{}/requires", members[0]);
            let line = tree.requires(&members[0]).ok().and_then(|r| {
                r.iter()
                    .find(|r| &r.module == next)
                    .map(|r| r.line)
                    .or_else(|| r.first().map(|r| r.line))
            });
            let e = PlanError::Cycle(members);
            Some(Problem::new(file, line, e.to_string()))
        }
        PlanError::Tree(e) => {
            // A module's own file is said once, by that module's check.
            (!e.to_string().starts_with("modules/"))
                .then(|| Problem::from_tree(&format!("parameters/{n}"), &e))
        }
        e => Some(Problem::new(format!("parameters/{n}"), None, e.to_string())),
    }
}

/// The first default two modules of `order` both set, at the first
/// module's file; modules named in name order, so nodes planning the two
/// in either order say it once.
fn default_clash(order: &[Name], keys: &HashMap<Name, Vec<String>>) -> Option<Problem> {
    let mut owner: BTreeMap<String, Name> = BTreeMap::new();
    for m in order {
        let Some(k) = keys.get(m) else { continue };
        if let Err(clash) = crate::params::claim(&mut owner, m, k.clone()) {
            let (a, b) = if clash.first <= clash.second {
                (clash.first.clone(), clash.second.clone())
            } else {
                (clash.second.clone(), clash.first.clone())
            };
            let file = format!("modules/{}/parameters/{}", clash.first, clash.key);
            let sorted = crate::params::DefaultClash {
                key: clash.key,
                first: a,
                second: b,
            };
            return Some(Problem::new(file, None, sorted.to_string()));
        }
    }
    None
}

/// Splits the files into one batch per bash: about 300 files each, at
/// most one bash per CPU (up to 4).
fn chunks(jobs: &[SyntaxJob]) -> Vec<&[SyntaxJob]> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let k = jobs.len().div_ceil(300).clamp(1, cpus);
    jobs.chunks(jobs.len().div_ceil(k)).collect()
}

/// One bash checks many files, each as `bash -n FILE` would, without a
/// process per file. For each NUL-terminated path on stdin it reads the
/// file into `s` (a NUL byte ends the read: `nul=1`) and evals
/// `set -n; $s` in a function with `local -`: `set -n` runs first, so
/// nothing of the file ever runs (noexec is checked before every
/// command, and a line that does not parse runs nothing), and the parse
/// reports `eval: line N:` with the file's own line numbers; on return
/// `local -` turns noexec off again for the next file. Each file ends
/// with a record `\x1e NONCE INDEX STATUS NUL`.
/// (`check` stands on the driver's first line: bash counts the lines of
/// an eval in a function from the line the function starts on.)
pub const SYNTAX_DRIVER: &str = r#"check() { local -; eval "set -n; $1"; }
exec 2>&1
i=0
while IFS= read -r -d '' f; do
  s= nul=0
  if [[ -r $f ]]; then
    { IFS= read -r -d '' s && nul=1; } < "$f"
    check "$s"
    printf '\036%s %d %d %d\n' "$1" "$i" "$?" "$nul"
  else
    printf '\036%s %d unreadable 0\n' "$1" "$i"
  fi
  i=$((i + 1))
done
"#;

/// Runs [`SYNTAX_DRIVER`] over `jobs`; the problems it found.
fn bash_n(jobs: &[SyntaxJob]) -> Result<Vec<Problem>> {
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut child = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", SYNTAX_DRIVER, "disco-lint"])
        .arg(&nonce)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run bash for the syntax check (bash -n)")?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut out = Vec::new();
    let read = std::thread::scope(|s| {
        s.spawn(move || {
            for (_, path) in jobs {
                let mut p = path.as_os_str().as_bytes().to_vec();
                p.push(0);
                if stdin.write_all(&p).is_err() {
                    break;
                }
            }
            // Dropping stdin ends the driver's loop.
        });
        stdout.read_to_end(&mut out)
    });
    let status = child.wait().context("bash -n")?;
    read.context("reading bash -n")?;
    let records = parse_records(&out, &nonce);
    if records.len() != jobs.len() {
        bail!(
            "the syntax check (bash -n) ended after {} of {} files ({status})",
            records.len(),
            jobs.len()
        );
    }
    let mut problems = Vec::new();
    for ((shown, _), r) in jobs.iter().zip(records) {
        problems.extend(r.problems(shown));
    }
    Ok(problems)
}

/// What the driver said of one file.
struct Record {
    messages: Vec<String>,
    status: Option<i32>,
    nul: bool,
}

impl Record {
    fn problems(self, shown: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let Some(status) = self.status else {
            out.push(Problem::new(shown, None, "cannot be read"));
            return out;
        };
        let mut echo_next = false;
        for m in &self.messages {
            let (m, parsed) = located(m);
            match parsed {
                // bash echoes the line it could not parse after the error.
                Some((_, msg)) if echo_next && msg.starts_with('`') => echo_next = false,
                Some((line, msg)) => {
                    echo_next = msg.starts_with("syntax error near");
                    out.push(Problem::new(
                        shown,
                        Some(line),
                        crate::output::printable(msg),
                    ));
                }
                None => out.push(Problem::new(shown, None, crate::output::printable(m))),
            }
        }
        if self.nul {
            out.push(Problem::new(
                shown,
                None,
                "holds a NUL byte: bash takes it for a binary file (only what precedes it was checked)",
            ));
        }
        if status != 0 && out.is_empty() {
            out.push(Problem::new(
                shown,
                None,
                format!("bash -n failed (exit status {status})"),
            ));
        }
        out
    }
}

/// bash's `NAME: [eval: ]line N: message` (NAME is the driver's, or
/// `environment` for a function of a `-c` string) as (the message
/// without NAME, and (N, message) when it has a line).
fn located(m: &str) -> (&str, Option<(usize, &str)>) {
    let mut rest = m;
    for _ in 0..3 {
        if let Some((n, msg)) = rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
            if let Ok(n) = n.parse::<usize>() {
                return (rest, Some((n, msg)));
            }
        }
        match rest.split_once(": ") {
            Some((_, r)) => rest = r,
            None => break,
        }
    }
    (m.strip_prefix("disco-lint: ").unwrap_or(m), None)
}

/// Splits the driver's output into one record per file, in order.
fn parse_records(out: &[u8], nonce: &str) -> Vec<Record> {
    let tag = format!("\x1e{nonce} ");
    let mut records = Vec::new();
    let mut messages = Vec::new();
    for line in out.split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if let Some(rest) = text.strip_prefix(&tag) {
            let f: Vec<&str> = rest.split(' ').collect();
            records.push(Record {
                messages: std::mem::take(&mut messages),
                status: f.get(1).and_then(|s| s.parse().ok()),
                nul: f.get(2) == Some(&"1"),
            });
        } else if !line.is_empty() {
            messages.push(text.into_owned());
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_for_typos() {
        assert_eq!(suggest("template").as_deref(), Some("templates/"));
        assert_eq!(suggest("script").as_deref(), Some("scripts/"));
        assert_eq!(suggest("Files").as_deref(), Some("files/"));
        assert_eq!(suggest("require").as_deref(), Some("requires"));
        assert_eq!(suggest("handler").as_deref(), Some("handlers/"));
        assert_eq!(suggest("param").as_deref(), Some("parameters/"));
        assert_eq!(suggest("notes.txt"), None);
    }

    #[test]
    fn places_split_into_file_and_line() {
        let p = Problem::from_message("x", "modules/m/attributes:3: mode \"9\" is not octal");
        assert_eq!(
            p.to_string(),
            "modules/m/attributes:3: mode \"9\" is not octal"
        );
        assert_eq!(p.line, Some(3));
        let p = Problem::from_message("modules/m/timeout", "cannot read: denied");
        assert_eq!(p.to_string(), "modules/m/timeout: cannot read: denied");
    }

    /// Each file is checked as `bash -n FILE` would, and none of it runs.
    #[test]
    fn bash_n_of_many_files_is_per_file_and_runs_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ran = d.path().join("ran");
        let files: &[(&str, &str)] = &[
            ("ok", "echo fine\n"),
            ("fi", "if true; then\n  echo a\nfi\nfi\n"),
            // A quote left open must not swallow the next file.
            ("quote", "echo \"open\n"),
            ("after-quote", "echo closed\"\n"),
            ("first-line", ")\ntouch RAN\n"),
            ("eof", "if true; then\n  echo x\n"),
            ("heredoc", "cat <<EOF\nx\n"),
            ("runs", "touch RAN\n"),
        ];
        let mut jobs = Vec::new();
        for (name, text) in files {
            let p = d.path().join(name);
            fs::write(&p, text.replace("RAN", &ran.display().to_string())).unwrap();
            jobs.push((name.to_string(), p));
        }
        let got: Vec<String> = bash_n(&jobs)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let mut want = Vec::new();
        for (name, p) in &jobs {
            let out = Command::new("bash").arg("-n").arg(p).output().unwrap();
            for l in String::from_utf8_lossy(&out.stderr).lines() {
                let l = l.strip_prefix(&format!("{}: ", p.display())).unwrap();
                if !l.contains(": `") {
                    want.push(format!("{name}:{}", l.strip_prefix("line ").unwrap()));
                }
            }
        }
        assert_eq!(got, want);
        assert!(!ran.exists(), "a checked file ran");
        assert!(got.iter().any(|l| l.starts_with("fi:4: syntax error")));
    }
}
