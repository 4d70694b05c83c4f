//! The fleet's preview of a candidate snapshot, on the server: the
//! reports nodes uploaded after nooping the candidate on their own roots
//! (`ROOT/reports/NODE/candidate.json`), grouped by identical predicted
//! outcome (DESIGN §6, docs/fleet.md "Previewing a change").
//!
//! Owns the grouping and its data ([`Preview`], serialisable: the JSON of
//! `disco report --fleet --candidate --json` and what the HTML fleet page
//! renders). It prints nothing: `commands/report.rs` renders it as text.
//! Everything in a report is the node's word (masked by the node as every
//! report is): it is kept as data here and escaped where it is printed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::names::Name;
use crate::report::{Change, ChangeKind, RunReport, Summary};

/// The preview of the candidate published in a served directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// The candidate's snapshot id (`ROOT/candidate` → `snapshots/ID`).
    pub candidate: String,
    /// The nodes of the candidate snapshot, sorted: its `parameters/*`
    /// entries that no layer lists as a group.
    pub nodes: Vec<String>,
    /// The nodes that reported this candidate, grouped by identical
    /// outcome: failing groups first, then those that change something,
    /// then the converged one; within each, the bigger group first.
    pub groups: Vec<Group>,
    /// Nodes of the candidate with no report of it at all.
    pub not_reported: Vec<String>,
    /// Nodes whose last preview report is of another (older) candidate.
    pub outdated: Vec<Outdated>,
    /// Nodes in failing groups.
    pub failed: usize,
    /// 0: every node reported and none fails; 1: one fails; 2: not every
    /// node reported this candidate yet (and none that did fails).
    pub exit_code: i32,
}

/// Nodes whose previews of the candidate predict the same outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Sorted.
    pub nodes: Vec<String>,
    pub outcome: Outcome,
}

/// What the candidate would do on each node of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The dance of the candidate would fail: the first module that
    /// failed (plan order) and its error line, or, for a dance that
    /// failed outside any module (a conflict, the plan), no module and
    /// the dance's error.
    Fails {
        module: Option<String>,
        error: String,
    },
    /// The dance would succeed with these changes (none: converged).
    /// The same paths with the same new content (md5, or kind, mode and
    /// owner for what is not a regular file) on every node of the
    /// group; the changes shown (diffs included) are the first node's.
    Changes {
        /// Every change, kept in full or summarised.
        changes: usize,
        modules: Vec<ModuleChanges>,
    },
}

/// One module's predicted changes, as its report keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleChanges {
    pub name: String,
    /// The changes kept in full, in path order.
    pub changes: Vec<Change>,
    /// The changes its report counted per directory instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summarised: Vec<Summary>,
    /// What it could not do in the sandbox and said so (`disco pending`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// A node whose preview is of another candidate than the one published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outdated {
    pub node: String,
    /// The candidate its `candidate.json` is of.
    pub candidate: String,
    /// When that preview ended.
    pub ended: String,
}

impl Outcome {
    pub fn fails(&self) -> bool {
        matches!(self, Outcome::Fails { .. })
    }
}

/// Reads the candidate of `server_root` and its nodes' preview reports,
/// and groups them. An error when no candidate is published (or its link
/// is not `snapshots/ID`) or its tree cannot be read.
pub fn preview(server_root: &Path) -> Result<Preview> {
    let (candidate, snapshot) = candidate_of(server_root)?;
    let tree = crate::tree::ServerTree::open(&snapshot)
        .with_context(|| format!("the candidate {}", snapshot.display()))?;
    let layers: Vec<Name> = tree
        .names_in("parameters")
        .with_context(|| format!("the candidate {}", snapshot.display()))?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let nodes: Vec<String> = tree.nodes(&layers).iter().map(Name::to_string).collect();
    let reports = server_root.join("reports");
    let mut by_outcome: BTreeMap<String, Group> = BTreeMap::new();
    let (mut not_reported, mut outdated) = (Vec::new(), Vec::new());
    for node in &nodes {
        let path = reports.join(node).join(CANDIDATE_REPORT);
        let outcome = match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                not_reported.push(node.clone());
                continue;
            }
            Err(e) => unreadable(&format!("cannot read it: {e}")),
            Ok(bytes) => match serde_json::from_slice::<RunReport>(&bytes) {
                Err(e) => unreadable(&format!("it does not parse: {e}")),
                Ok(r) if r.candidate.as_deref() != Some(&candidate) => {
                    outdated.push(Outdated {
                        node: node.clone(),
                        candidate: r.candidate.unwrap_or(r.snapshot),
                        ended: r.ended,
                    });
                    continue;
                }
                Ok(r) => outcome_of(&r),
            },
        };
        by_outcome
            .entry(outcome_key(&outcome))
            .or_insert_with(|| Group {
                nodes: Vec::new(),
                outcome,
            })
            .nodes
            .push(node.clone());
    }
    let mut groups: Vec<Group> = by_outcome.into_values().collect();
    groups.sort_by_key(|g| {
        let rank = match &g.outcome {
            Outcome::Fails { .. } => 0,
            Outcome::Changes { changes, .. } if *changes > 0 => 1,
            Outcome::Changes { .. } => 2,
        };
        (rank, std::cmp::Reverse(g.nodes.len()), g.nodes[0].clone())
    });
    let failed = groups
        .iter()
        .filter(|g| g.outcome.fails())
        .map(|g| g.nodes.len())
        .sum();
    let exit_code = if failed > 0 {
        1
    } else if !not_reported.is_empty() || !outdated.is_empty() {
        2
    } else {
        0
    };
    Ok(Preview {
        candidate,
        nodes,
        groups,
        not_reported,
        outdated,
        failed,
        exit_code,
    })
}

/// The name of a node's preview report under `reports/NODE/`.
pub const CANDIDATE_REPORT: &str = "candidate.json";

/// The candidate's id and snapshot directory (`ROOT/candidate`, read
/// by [`crate::transport::candidate::read_link`]); an error naming the
/// command that publishes one when there is none.
pub fn candidate_of(root: &Path) -> Result<(String, std::path::PathBuf)> {
    use crate::transport::candidate;
    match candidate::read_link(root, candidate::CANDIDATE)? {
        Some(l) => Ok((l.id, l.path)),
        None => bail!(
            "no candidate is published in {} (publish one with `disco publish SRC --root {} --candidate`)",
            root.display(),
            root.display()
        ),
    }
}

fn unreadable(why: &str) -> Outcome {
    Outcome::Fails {
        module: None,
        error: format!("its {CANDIDATE_REPORT} is unreadable: {why}"),
    }
}

/// What a preview report predicts: a failure (its first failed module in
/// plan order and its error, else the dance's error), or its changes.
/// A status other than `ok` or `changed` is a failure, as in the fleet
/// view.
pub fn outcome_of(r: &RunReport) -> Outcome {
    if !matches!(r.status.as_str(), "ok" | "changed") {
        if let Some(m) = r.modules.iter().find(|m| m.error.is_some()) {
            return Outcome::Fails {
                module: Some(m.name.clone()),
                error: m.error.clone().unwrap_or_default(),
            };
        }
        return Outcome::Fails {
            module: None,
            error: r
                .error
                .clone()
                .unwrap_or_else(|| format!("the preview ended with status {:?}", r.status)),
        };
    }
    let modules: Vec<ModuleChanges> = r
        .modules
        .iter()
        .filter(|m| m.change_count() > 0 || !m.pending.is_empty())
        .map(|m| ModuleChanges {
            name: m.name.clone(),
            changes: m.changes.clone(),
            summarised: m.summarised.clone(),
            pending: m.pending.clone(),
        })
        .collect();
    Outcome::Changes {
        changes: r.change_count(),
        modules,
    }
}

/// The key two outcomes are the same by: a failure's module and error;
/// a change list's modules, paths, kinds and new content (md5 of a
/// regular file, a link's target, else kind, mode and owner; a file's
/// mode and owner too), summaries and pending lines — never the diff
/// text or the old content, which differ from node to node.
fn outcome_key(o: &Outcome) -> String {
    match o {
        Outcome::Fails { module, error } => format!("F\0{module:?}\0{error}"),
        Outcome::Changes { modules, .. } => {
            let mut key = String::from("C");
            for m in modules {
                key.push_str(&format!("\0M{}", m.name));
                for c in &m.changes {
                    key.push_str(&format!("\0{}\0{}", c.path, change_key(c)));
                }
                for s in &m.summarised {
                    key.push_str(&format!("\0S{}", s.line()));
                }
                for p in &m.pending {
                    key.push_str(&format!("\0P{p}"));
                }
            }
            key
        }
    }
}

/// What a change makes of its path, for [`outcome_key`].
fn change_key(c: &Change) -> String {
    let kind = match c.kind {
        ChangeKind::Created => "c",
        ChangeKind::Modified => "m",
        ChangeKind::Deleted => "d",
        ChangeKind::Replaced => "r",
    };
    match &c.new {
        None => kind.to_string(),
        Some(n) => format!(
            "{kind} {} {:o} {} {} {}",
            n.kind,
            n.mode,
            n.owner,
            n.md5.as_deref().unwrap_or("-"),
            n.target.as_deref().unwrap_or("-"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Meta, ModuleReport};

    fn file(path: &str, md5: &str, diff: &str) -> Change {
        Change {
            path: path.into(),
            kind: ChangeKind::Modified,
            old: None,
            new: Some(Meta {
                kind: "regular file".into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                owner: "root:root".into(),
                md5: Some(md5.into()),
                target: None,
                selinux: None,
                caps: None,
                size: 1,
            }),
            diff: Some(diff.into()),
            inside: None,
        }
    }

    fn report(node: &str, candidate: &str, status: &str, changes: Vec<Change>) -> RunReport {
        RunReport {
            node: node.into(),
            status: status.into(),
            snapshot: candidate.into(),
            candidate: Some(candidate.into()),
            modules: vec![ModuleReport {
                name: "app".into(),
                changes,
                error: (status == "failed").then(|| "scripts/10-check exited 3".into()),
                ..ModuleReport::default()
            }],
            ..RunReport::default()
        }
    }

    /// A served directory with snapshot `id` of `nodes` (and group g) as
    /// the candidate, and these preview reports.
    fn served(id: &str, nodes: &[&str], reports: &[RunReport]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join("snapshots").join(id);
        for n in nodes {
            fs::create_dir_all(snap.join("parameters").join(n).join("groups")).unwrap();
            fs::write(snap.join("parameters").join(n).join("groups/g"), "").unwrap();
        }
        fs::create_dir_all(snap.join("parameters/g")).unwrap();
        fs::create_dir_all(snap.join("modules")).unwrap();
        std::os::unix::fs::symlink(format!("snapshots/{id}"), d.path().join("candidate")).unwrap();
        for r in reports {
            let dir = d.path().join("reports").join(&r.node);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(CANDIDATE_REPORT), serde_json::to_vec(r).unwrap()).unwrap();
        }
        d
    }

    #[test]
    fn the_same_new_content_groups_whatever_the_diff_and_another_does_not() {
        let d = served(
            "c2",
            &["a", "b", "c", "d"],
            &[
                report(
                    "a",
                    "c2",
                    "changed",
                    vec![file("/etc/x", "m1", "-old a\n+new\n")],
                ),
                report(
                    "b",
                    "c2",
                    "changed",
                    vec![file("/etc/x", "m1", "-old b\n+new\n")],
                ),
                report("c", "c2", "changed", vec![file("/etc/x", "m2", "+other\n")]),
                report("d", "c2", "failed", vec![]),
            ],
        );
        let p = preview(d.path()).unwrap();
        assert_eq!(p.candidate, "c2");
        assert_eq!(p.nodes, ["a", "b", "c", "d"], "g is a group, not a node");
        let groups: Vec<Vec<String>> = p.groups.iter().map(|g| g.nodes.clone()).collect();
        assert_eq!(groups, [vec!["d"], vec!["a", "b"], vec!["c"]]);
        assert_eq!(
            p.groups[0].outcome,
            Outcome::Fails {
                module: Some("app".into()),
                error: "scripts/10-check exited 3".into()
            }
        );
        assert_eq!((p.failed, p.exit_code), (1, 1));
    }

    #[test]
    fn a_missing_or_older_report_is_not_reported_and_exits_2() {
        let d = served(
            "c2",
            &["a", "b", "c"],
            &[
                report("a", "c2", "ok", vec![]),
                report("b", "c1", "failed", vec![]),
            ],
        );
        let p = preview(d.path()).unwrap();
        assert_eq!(p.not_reported, ["c"]);
        assert_eq!(p.outdated.len(), 1);
        assert_eq!(
            (
                p.outdated[0].node.as_str(),
                p.outdated[0].candidate.as_str()
            ),
            ("b", "c1")
        );
        assert_eq!(p.groups.len(), 1);
        assert_eq!(
            (p.failed, p.exit_code),
            (0, 2),
            "an older failure does not count"
        );
    }

    #[test]
    fn no_candidate_is_one_error_naming_the_command() {
        let d = tempfile::tempdir().unwrap();
        let e = preview(d.path()).unwrap_err().to_string();
        assert!(e.starts_with("no candidate is published in "), "{e}");
        assert!(e.contains("--candidate"), "{e}");
    }
}
