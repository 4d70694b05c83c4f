//! Stage 4, plan: which modules run, and in what order (DESIGN §3.4).
//!
//! Owns the module graph. The plan holds the node's modules (from the node
//! and its groups) plus every module named in a `requires` line of a
//! planned module, transitively, as the original DISCO did: `after X` adds
//! X and orders it first, `before X` adds X and orders this module first. The graph is a petgraph `DiGraph` whose edge `a -> b`
//! means "a runs before b"; it is sorted with Kahn's algorithm taking the
//! smallest ready name first, so the order is stable. A cycle is reported
//! with every member in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction as Dir;

use crate::names::Name;
use crate::tree::{join_cycle, Direction, NodeSpec, Require, ServerTree, TreeError};

/// Why there is no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Members in order, following the `requires` lines as written:
    /// `a -> b` means a's requires names b.
    #[error("module cycle: {}", join_cycle(.0))]
    Cycle(Vec<Name>),
    #[error("--only: module '{0}' is not in this node's plan")]
    NotInPlan(Name),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The ordered modules of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub order: Vec<Name>,
    /// Modules the node does not list, pulled in by a `requires` line:
    /// (the module whose requires named it, the module), in discovery order.
    pub discovered: Vec<(Name, Name)>,
}

/// Builds the plan of `node` from the modules in `tree`.
pub fn plan(tree: &ServerTree, node: &NodeSpec) -> Result<Plan, PlanError> {
    let mut graph: DiGraph<Name, Direction> = DiGraph::new();
    let mut index: BTreeMap<Name, NodeIndex> = BTreeMap::new();
    let mut queue: VecDeque<Name> = VecDeque::new();

    for (m, listed_in) in &node.modules {
        if tree.module_dir(m)?.is_none() {
            return Err(TreeError::ModuleMissing {
                name: m.clone(),
                why: format!("listed in {listed_in}"),
            }
            .into());
        }
        index.insert(m.clone(), graph.add_node(m.clone()));
        queue.push_back(m.clone());
    }

    // Closure over every requires line, `after` and `before` alike.
    let mut discovered = Vec::new();
    while let Some(m) = queue.pop_front() {
        for req in tree.requires(&m)? {
            if tree.module_dir(&req.module)?.is_none() {
                return Err(required_missing(&m, &req).into());
            }
            let other = *index.entry(req.module.clone()).or_insert_with(|| {
                queue.push_back(req.module.clone());
                discovered.push((m.clone(), req.module.clone()));
                graph.add_node(req.module.clone())
            });
            match req.direction {
                Direction::After => graph.add_edge(other, index[&m], Direction::After),
                Direction::Before => graph.add_edge(index[&m], other, Direction::Before),
            };
        }
    }

    sort(&graph).map(|order| Plan { order, discovered })
}

/// The error for `req`, a line of `modules/M/requires` naming a module
/// the server does not have.
pub fn required_missing(m: &Name, req: &Require) -> TreeError {
    TreeError::ModuleMissing {
        name: req.module.clone(),
        why: format!("{}, in modules/{m}/requires", req.direction.as_str()),
    }
}

/// `--only`: the plan cut to `wanted` and every module they require
/// (named by a `requires` line, transitively), in the plan's order. A
/// wanted module that is not in the plan is an error.
pub fn only(tree: &ServerTree, plan: &Plan, wanted: &[Name]) -> Result<Plan, PlanError> {
    let mut keep: BTreeSet<Name> = BTreeSet::new();
    let mut queue: VecDeque<Name> = VecDeque::new();
    for w in wanted {
        if !plan.order.contains(w) {
            return Err(PlanError::NotInPlan(w.clone()));
        }
        queue.push_back(w.clone());
    }
    while let Some(m) = queue.pop_front() {
        if keep.insert(m.clone()) {
            for req in tree.requires(&m)? {
                queue.push_back(req.module);
            }
        }
    }
    Ok(Plan {
        order: plan
            .order
            .iter()
            .filter(|m| keep.contains(*m))
            .cloned()
            .collect(),
        discovered: Vec::new(),
    })
}

/// Kahn's algorithm, smallest ready name first.
fn sort(graph: &DiGraph<Name, Direction>) -> Result<Vec<Name>, PlanError> {
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.edges_directed(n, Dir::Incoming).count())
        .collect();
    let mut ready: BTreeSet<(&Name, NodeIndex)> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(|n| (&graph[n], n))
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some((name, n)) = ready.pop_first() {
        order.push(name.clone());
        for e in graph.edges_directed(n, Dir::Outgoing) {
            let t = e.target();
            indegree[t.index()] -= 1;
            if indegree[t.index()] == 0 {
                ready.insert((&graph[t], t));
            }
        }
    }
    if order.len() == graph.node_count() {
        Ok(order)
    } else {
        Err(PlanError::Cycle(find_cycle(graph)))
    }
}

/// One cycle of a graph known to have one: the strongly connected component
/// holding the smallest name that is on a cycle, then the shortest way back
/// from that name to itself. Printed in the direction the `requires` lines
/// were written (after-edges point backwards), starting at the smallest name.
fn find_cycle(graph: &DiGraph<Name, Direction>) -> Vec<Name> {
    let on_cycle = |scc: &Vec<NodeIndex>| scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
    let scc = petgraph::algo::tarjan_scc(graph)
        .into_iter()
        .filter(on_cycle)
        .min_by(|a, b| min_name(graph, a).cmp(min_name(graph, b)))
        .expect("a graph that failed to sort has a cycle");
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let start = *scc
        .iter()
        .min_by_key(|&&n| &graph[n])
        .expect("non-empty SCC");

    // Breadth-first from `start` inside the component until an edge returns to it.
    let mut parent: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = start;
    'search: while let Some(n) = queue.pop_front() {
        for e in graph.edges_directed(n, Dir::Outgoing) {
            let t = e.target();
            if t == start {
                last = n;
                break 'search;
            }
            if members.contains(&t) && !parent.contains_key(&t) {
                parent.insert(t, n);
                queue.push_back(t);
            }
        }
    }
    let mut path = vec![last];
    while let Some(&p) = parent.get(path.last().expect("non-empty")) {
        path.push(p);
    }
    path.reverse(); // start … last, in run order

    // Count how the edges on the cycle were written to choose the direction.
    let mut afters = 0usize;
    for (i, &n) in path.iter().enumerate() {
        let next = path[(i + 1) % path.len()];
        let written_after = graph
            .edges_connecting(n, next)
            .any(|e| *e.weight() == Direction::After);
        if written_after {
            afters += 1;
        }
    }
    let mut names: Vec<Name> = path.iter().map(|&n| graph[n].clone()).collect();
    if afters * 2 > names.len() {
        names.reverse();
        names.rotate_right(1); // keep the smallest name first
    }
    names
}

fn min_name<'g>(graph: &'g DiGraph<Name, Direction>, scc: &[NodeIndex]) -> &'g Name {
    scc.iter().map(|&n| &graph[n]).min().expect("non-empty SCC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    /// A throwaway server tree: `modules` maps a module to its requires text.
    fn tree(dir: &Path, node_modules: &[&str], modules: &[(&str, &str)]) -> (ServerTree, NodeSpec) {
        fs::create_dir_all(dir.join("parameters/n/modules")).unwrap();
        for m in node_modules {
            fs::write(dir.join("parameters/n/modules").join(m), "").unwrap();
        }
        for (m, req) in modules {
            fs::create_dir_all(dir.join("modules").join(m)).unwrap();
            fs::write(dir.join("modules").join(m).join("requires"), req).unwrap();
        }
        let t = ServerTree::open(dir).unwrap();
        let node = t.node(&Name::parse("n", "t").unwrap()).unwrap();
        (t, node)
    }

    fn order(p: Plan) -> Vec<String> {
        p.order.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn chain_runs_dependencies_first() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(
            d.path(),
            &["a", "b", "c"],
            &[("a", "after b"), ("b", "after c"), ("c", "")],
        );
        assert_eq!(order(plan(&t, &n).unwrap()), ["c", "b", "a"]);
    }

    #[test]
    fn ties_break_by_name() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(
            d.path(),
            &["z", "y", "x", "top"],
            &[
                ("top", "after z\nafter x\nafter y"),
                ("x", ""),
                ("y", ""),
                ("z", ""),
            ],
        );
        assert_eq!(order(plan(&t, &n).unwrap()), ["x", "y", "z", "top"]);
    }

    #[test]
    fn after_and_before_both_pull_in() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(
            d.path(),
            &["a"],
            &[
                ("a", "before b\nafter c"),
                ("b", "before d"),
                ("c", ""),
                ("d", ""),
            ],
        );
        let p = plan(&t, &n).unwrap();
        let found: Vec<String> = p
            .discovered
            .iter()
            .map(|(a, b)| format!("{a} -> {b}"))
            .collect();
        assert_eq!(found, ["a -> b", "a -> c", "b -> d"]);
        assert_eq!(order(p), ["c", "a", "b", "d"]);
    }

    #[test]
    fn after_cycle_prints_as_written() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(
            d.path(),
            &["a", "b", "c"],
            &[("a", "after b"), ("b", "after c"), ("c", "after a")],
        );
        let err = plan(&t, &n).unwrap_err();
        assert_eq!(err.to_string(), "module cycle: a -> b -> c -> a");
    }

    #[test]
    fn before_cycle_prints_as_written() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(
            d.path(),
            &["a"],
            &[("a", "before b"), ("b", "before c"), ("c", "before a")],
        );
        let err = plan(&t, &n).unwrap_err();
        assert_eq!(err.to_string(), "module cycle: a -> b -> c -> a");
    }

    #[test]
    fn cycle_beside_a_valid_part_names_only_members() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(
            d.path(),
            &["ok", "p", "q"],
            &[("ok", ""), ("p", "after q\nafter ok"), ("q", "after p")],
        );
        let err = plan(&t, &n).unwrap_err();
        assert_eq!(err.to_string(), "module cycle: p -> q -> p");
    }

    #[test]
    fn self_requirement_is_a_cycle() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(d.path(), &["a"], &[("a", "after a")]);
        assert_eq!(
            plan(&t, &n).unwrap_err().to_string(),
            "module cycle: a -> a"
        );
    }

    #[test]
    fn missing_module_names_who_asked() {
        let d = tempfile::tempdir().unwrap();
        let (t, n) = tree(d.path(), &["y"], &[("y", "\nafter x")]);
        assert_eq!(
            plan(&t, &n).unwrap_err().to_string(),
            "module 'x' (after, in modules/y/requires) is not on the server"
        );
    }
}
