//! The plan as a graph (DESIGN §3.5): which modules each module requires,
//! directly and transitively, and the two rules that follow from it.
//!
//! Owns the `requires` closure of every planned module (the layers its
//! sandbox stacks on the root), the relation "neither requires the other"
//! (who may run side by side), and the conflict rule: two such modules may
//! not change the same path, nor may one delete or replace a directory
//! under which the other changes something ([`Conflicts`]). Modules are
//! named by their position in the plan's stable order (0-based here;
//! layer numbers are that plus one).

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use crate::names::Name;
use crate::tree::{Direction, ServerTree};

/// A set of module positions, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bits(Vec<u64>);

impl Bits {
    fn with_len(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn union(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// The planned modules' requirements, by position in the plan's order.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Each module's direct requirements (the modules that run before it
    /// by an `after` line of its own or a `before` line of theirs).
    pub direct: Vec<Vec<usize>>,
    /// Each module's requires closure: every module it transitively
    /// requires (never itself).
    pub closure: Vec<Bits>,
}

impl Graph {
    /// The graph of `order` (a plan's order: every requirement sorts
    /// before what requires it) from the modules' `requires` lines in
    /// `tree`. Lines naming a module outside `order` (a `--only` cut)
    /// are not edges.
    pub fn of(tree: &ServerTree, order: &[Name]) -> Result<Graph> {
        let pos: HashMap<&Name, usize> = order.iter().enumerate().map(|(i, m)| (m, i)).collect();
        let mut direct: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
        for (i, m) in order.iter().enumerate() {
            for req in tree.requires(m)? {
                let Some(&j) = pos.get(&req.module) else {
                    continue;
                };
                let (before, after) = match req.direction {
                    Direction::After => (j, i),
                    Direction::Before => (i, j),
                };
                direct[after].push(before);
            }
        }
        Ok(Self::from_direct(direct))
    }

    /// The graph with these direct requirements (each earlier in the order
    /// than the module itself).
    pub fn from_direct(mut direct: Vec<Vec<usize>>) -> Graph {
        let n = direct.len();
        let mut closure: Vec<Bits> = Vec::with_capacity(n);
        for (i, reqs) in direct.iter_mut().enumerate() {
            reqs.sort_unstable();
            reqs.dedup();
            let mut c = Bits::with_len(n);
            for &j in reqs.iter() {
                assert!(j < i, "a plan's order puts requirements first");
                c.insert(j);
                c.union(&closure[j]);
            }
            closure.push(c);
        }
        Graph { direct, closure }
    }

    pub fn len(&self) -> usize {
        self.direct.len()
    }

    pub fn is_empty(&self) -> bool {
        self.direct.is_empty()
    }

    /// True when module `a` requires module `b`, directly or not.
    pub fn requires(&self, a: usize, b: usize) -> bool {
        self.closure[a].contains(b)
    }

    /// True when one of `a` and `b` requires the other (or they are one).
    pub fn ordered(&self, a: usize, b: usize) -> bool {
        a == b || self.requires(a, b) || self.requires(b, a)
    }

    /// The layers (1-based) module `i`'s sandbox stacks on the root: its
    /// requires closure, in the plan's order (the lowest first).
    pub fn lowers(&self, i: usize) -> Vec<usize> {
        self.closure[i].iter().map(|j| j + 1).collect()
    }
}

/// What a module did to a path, as far as the conflict rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Made or changed a directory, ending with these attributes (a
    /// hash of them): two modules ending a directory alike do not
    /// conflict.
    Dir(u64),
    /// Deleted or replaced the path: what is below it is gone.
    Removed,
    /// Anything else (a file, a link, a device).
    Other,
}

/// Two unordered modules that touched one path (the first, sorted, of
/// the paths they both touched, and how many more).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The earlier of the two in the plan's order, then the later.
    pub first: usize,
    pub second: usize,
    pub path: String,
    /// Other paths the two both touched.
    pub more: usize,
}

impl Conflict {
    /// The one line the dance fails with, for the pair.
    pub fn message(&self, order: &[Name]) -> String {
        let (a, b) = (&order[self.first], &order[self.second]);
        let more = match self.more {
            0 => String::new(),
            1 => " (and 1 more path)".to_string(),
            n => format!(" (and {n} more paths)"),
        };
        format!(
            "modules {a} and {b} both change {}{more} and neither requires the other: add \"after {a}\" to modules/{b}/requires (or the reverse)",
            self.path
        )
    }
}

/// Finds conflicts as modules report their changes, in any order (the
/// modules of a concurrent dance end in any order): the result, sorted,
/// is the same. Holds a 64-bit hash per changed path and per directory
/// above one, with the modules that touched it; the path itself only for
/// a conflict found.
#[derive(Debug, Default)]
pub struct Conflicts {
    /// Path hash → (module, touch) of every module that changed it.
    changed: HashMap<u64, Vec<(u32, Touch)>>,
    /// Directory hash → modules that changed something below it.
    below: HashMap<u64, Vec<u32>>,
    found: Vec<Conflict>,
}

fn hash(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// The hash of a directory's resulting attributes, for [`Touch::Dir`].
pub fn dir_touch(meta: &crate::report::Meta) -> Touch {
    use std::hash::{Hash, Hasher};
    // A directory's attributes only: its size (the bytes of its entries)
    // differs with what each module put in it and is not something either
    // module chose.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &meta.kind,
        meta.mode,
        meta.uid,
        meta.gid,
        &meta.selinux,
        &meta.caps,
    )
        .hash(&mut h);
    Touch::Dir(h.finish())
}

impl Conflicts {
    /// Module `m` changed `path` (`/`-separated, absolute) as `touch`.
    pub fn record(&mut self, graph: &Graph, m: usize, path: &str, touch: Touch) {
        let key = hash(path);
        let unordered = |other: u32| !graph.ordered(m, other as usize);
        let hit = |found: &mut Vec<Conflict>, other: u32, at: &str| {
            let (first, second) = (m.min(other as usize), m.max(other as usize));
            found.push(Conflict {
                first,
                second,
                path: at.to_string(),
                more: 0,
            });
        };
        // The same path.
        let entry = self.changed.entry(key).or_default();
        for &(other, t) in entry.iter() {
            let alike = matches!((t, touch), (Touch::Dir(a), Touch::Dir(b)) if a == b)
                || (t == Touch::Removed && touch == Touch::Removed);
            if unordered(other) && !alike {
                hit(&mut self.found, other, path);
            }
        }
        if !entry.iter().any(|(o, _)| *o as usize == m) {
            entry.push((m as u32, touch));
        }
        // Removed here, changed below by another.
        if touch == Touch::Removed {
            for &other in self.below.get(&key).into_iter().flatten() {
                if unordered(other) {
                    hit(&mut self.found, other, path);
                }
            }
        }
        // Changed here, below a path another removed.
        let mut at = path;
        while let Some(cut) = at.rfind('/').filter(|&c| c > 0) {
            at = &at[..cut];
            let k = hash(at);
            if let Some(list) = self.changed.get(&k) {
                for &(other, t) in list {
                    if t == Touch::Removed && unordered(other) {
                        hit(&mut self.found, other, at);
                    }
                }
            }
            let b = self.below.entry(k).or_default();
            if !b.contains(&(m as u32)) {
                b.push(m as u32);
            }
        }
    }

    /// Every conflicting pair found, sorted (plan order), once each,
    /// with the first of its paths (sorted) and how many more.
    pub fn found(mut self) -> Vec<Conflict> {
        self.found.sort();
        self.found.dedup();
        let mut pairs: Vec<Conflict> = Vec::new();
        for c in self.found {
            match pairs.last_mut() {
                Some(p) if (p.first, p.second) == (c.first, c.second) => p.more += 1,
                _ => pairs.push(c),
            }
        }
        pairs
    }
}

/// The paths a module's `files/` and `templates/` install (not their
/// directories, which modules share), sorted: what two unordered modules
/// of one plan may not both write (the dance's conflict rule, seen
/// before any dance), and what a later module overrides ([`Overrides`]).
pub fn installed_paths(tree: &ServerTree, m: &Name) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(Some(dir)) = tree.module_dir(m) else {
        return out;
    };
    for sub in ["files", "templates"] {
        let base = dir.join(sub);
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&base) {
                    out.push(format!("/{}", rel.display()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Paths one module installs (`files/`, `templates/`) over the same path
/// installed by a module it requires: an override, which the dance
/// resolves as the later module's alone, so that it converges. The
/// earlier module's version is still in its layer, for what it and the
/// modules that require it (but not the later one) see, but it is neither
/// reported nor merged (`hidden`); the later module's version is diffed
/// against the root, not against the earlier version below it
/// (`from_root`). Without this, both would report a change every dance
/// (A over B, then B over A) and the merge would write the file twice.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Per module (plan order): paths a module requiring it installs too.
    pub hidden: Vec<HashSet<String>>,
    /// Per module: paths it installs over a module of its closure.
    pub from_root: Vec<HashSet<String>>,
}

impl Overrides {
    /// The overrides among `installed` (each module's
    /// [`installed_paths`], plan order) under `graph`.
    pub fn of(graph: &Graph, installed: &[Vec<String>]) -> Overrides {
        let n = installed.len();
        let mut o = Overrides {
            hidden: vec![HashSet::new(); n],
            from_root: vec![HashSet::new(); n],
        };
        let mut by_path: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, paths) in installed.iter().enumerate() {
            for p in paths {
                by_path.entry(p.as_str()).or_default().push(i);
            }
        }
        for (p, ms) in by_path.into_iter().filter(|(_, ms)| ms.len() > 1) {
            for (x, &later) in ms.iter().enumerate() {
                for &earlier in &ms[..x] {
                    if graph.requires(later, earlier) {
                        o.hidden[earlier].insert(p.to_string());
                        o.from_root[later].insert(p.to_string());
                    }
                }
            }
        }
        o
    }

    /// The overrides of the plan `order` in `tree`.
    pub fn of_tree(tree: &ServerTree, order: &[Name], graph: &Graph) -> Overrides {
        let installed: Vec<Vec<String>> = order.iter().map(|m| installed_paths(tree, m)).collect();
        Overrides::of(graph, &installed)
    }

    /// Paths module `i` installs that a later module overrides.
    pub fn hidden(&self, i: usize) -> Option<&HashSet<String>> {
        self.hidden.get(i).filter(|h| !h.is_empty())
    }

    /// Paths module `i` installs over a module it requires.
    pub fn from_root(&self, i: usize) -> Option<&HashSet<String>> {
        self.from_root.get(i).filter(|h| !h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a; b after a; c after a; d after b and c; e alone.
    fn diamond() -> Graph {
        Graph::from_direct(vec![vec![], vec![0], vec![0], vec![1, 2], vec![]])
    }

    #[test]
    fn an_override_hides_the_earlier_version_only_for_a_module_that_requires_it() {
        // 0 <- 1 <- 2, and 3 alone: 0, 2 and 3 install /etc/x.
        let g = Graph::from_direct(vec![vec![], vec![0], vec![1], vec![]]);
        let x = || vec!["/etc/x".to_string()];
        let o = Overrides::of(&g, &[x(), vec![], x(), x()]);
        assert!(o.hidden(0).unwrap().contains("/etc/x"));
        assert!(o.from_root(2).unwrap().contains("/etc/x"));
        // 3 is unordered with both: a conflict, not an override.
        assert!(o.hidden(2).is_none() && o.from_root(3).is_none() && o.hidden(1).is_none());
    }

    #[test]
    fn closures_are_transitive_and_exclude_self() {
        let g = diamond();
        assert_eq!(g.lowers(3), vec![1, 2, 3]);
        assert_eq!(g.lowers(1), vec![1]);
        assert!(g.lowers(4).is_empty());
        assert!(g.requires(3, 0) && !g.requires(0, 3));
        assert!(!g.ordered(1, 2) && g.ordered(1, 3) && !g.ordered(4, 0));
    }

    #[test]
    fn a_directory_touch_is_its_attributes_not_its_size() {
        let meta = |mode, size| crate::report::Meta {
            kind: "directory".into(),
            mode,
            uid: 0,
            gid: 0,
            owner: "root:root".into(),
            md5: None,
            target: None,
            selinux: None,
            caps: None,
            size,
        };
        assert_eq!(dir_touch(&meta(0o755, 4096)), dir_touch(&meta(0o755, 8192)));
        assert_ne!(dir_touch(&meta(0o755, 4096)), dir_touch(&meta(0o700, 4096)));
    }

    #[test]
    fn unordered_modules_changing_one_path_conflict_in_any_order() {
        let g = diamond();
        for order in [[1, 2], [2, 1]] {
            let mut c = Conflicts::default();
            for m in order {
                c.record(&g, m, "/etc/x", Touch::Other);
            }
            assert_eq!(
                c.found(),
                vec![Conflict {
                    first: 1,
                    second: 2,
                    path: "/etc/x".into(),
                    more: 0,
                }]
            );
        }
    }

    #[test]
    fn a_pair_that_shares_several_paths_is_one_conflict_naming_the_first() {
        let g = diamond();
        let mut c = Conflicts::default();
        for p in [
            "/var/lib/dpkg/status",
            "/var/log/dpkg.log",
            "/etc/ld.so.cache",
        ] {
            c.record(&g, 2, p, Touch::Other);
            c.record(&g, 1, p, Touch::Other);
        }
        c.record(&g, 4, "/etc/y", Touch::Other);
        c.record(&g, 1, "/etc/y", Touch::Other);
        let found = c.found();
        assert_eq!(found.len(), 2);
        let order: Vec<Name> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| Name::parse(n, "test").unwrap())
            .collect();
        assert_eq!(
            found[0].message(&order),
            "modules b and c both change /etc/ld.so.cache (and 2 more paths) and neither requires the other: add \"after b\" to modules/c/requires (or the reverse)"
        );
        assert_eq!(found[1].path, "/etc/y");
        assert_eq!(found[1].more, 0);
    }

    #[test]
    fn ordered_modules_and_alike_directories_do_not_conflict() {
        let g = diamond();
        let mut c = Conflicts::default();
        c.record(&g, 0, "/etc/x", Touch::Other);
        c.record(&g, 3, "/etc/x", Touch::Other);
        c.record(&g, 1, "/opt/d", Touch::Dir(7));
        c.record(&g, 2, "/opt/d", Touch::Dir(7));
        assert!(c.found().is_empty());
        let mut c = Conflicts::default();
        c.record(&g, 1, "/opt/d", Touch::Dir(7));
        c.record(&g, 2, "/opt/d", Touch::Dir(8));
        assert_eq!(c.found().len(), 1);
    }

    #[test]
    fn removing_a_directory_conflicts_with_changes_below_it_either_way() {
        let g = diamond();
        for (x, y) in [(1, 4), (4, 1)] {
            let mut c = Conflicts::default();
            c.record(&g, x, "/opt/app", Touch::Removed);
            c.record(&g, y, "/opt/app/conf/x", Touch::Other);
            let found = c.found();
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].path, "/opt/app");
            let mut c = Conflicts::default();
            c.record(&g, y, "/opt/app/conf/x", Touch::Other);
            c.record(&g, x, "/opt/app", Touch::Removed);
            assert_eq!(c.found()[0].path, "/opt/app");
        }
    }

    #[test]
    fn a_third_module_is_checked_against_each_earlier_one() {
        // 0 and 3 are ordered; 4 is unordered with both.
        let g = diamond();
        let mut c = Conflicts::default();
        c.record(&g, 0, "/etc/x", Touch::Other);
        c.record(&g, 3, "/etc/x", Touch::Other);
        c.record(&g, 4, "/etc/x", Touch::Other);
        let pairs: Vec<(usize, usize)> = c.found().iter().map(|c| (c.first, c.second)).collect();
        assert_eq!(pairs, vec![(0, 4), (3, 4)]);
    }
}
