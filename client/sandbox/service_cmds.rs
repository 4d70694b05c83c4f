//! What a service-manager shim does with the command a step called
//! (DESIGN §5, the table in docs/modules.md): `systemctl`, `service`,
//! `invoke-rc.d`, `update-rc.d` and `deb-systemd-invoke` run, inside the
//! sandbox, as `disco shim ARGV0 ARGS…` (the shim script execs disco's own
//! binary, bound into every sandbox). Each call is one of:
//!
//! - a **query** of the running system (`is-active`, `status`, `show`,
//!   `service X status`…): answered here, never queued — "not running",
//!   since no init runs in a sandbox; the same in noop and live;
//! - a **unit-file query** (`is-enabled`, `list-unit-files`, `cat`…):
//!   answered by the root's own `systemctl`, offline, from the files
//!   (those made earlier in the dance included); without one,
//!   `is-enabled` is read from the symlinks here;
//! - an **enablement change** (`systemctl enable|disable|mask|preset…`,
//!   `update-rc.d`): only files, so the root's own tool runs in the
//!   sandbox and its links land in the diff (`enable --now`: the enable
//!   here, the start deferred);
//! - a **state change** of the running system (start, restart, reboot…,
//!   and anything not known): queued as a deferred action.
//!
//! The classifier ([`classify`]) is a pure function of the argv; [`run`]
//! acts on its answer. Owns nothing else: the queue's format is
//! [`super::parse_queue`]'s, its readback the sandbox's.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commands whose shims call [`run`].
pub const SERVICE_COMMANDS: &[&str] = &[
    "systemctl",
    "service",
    "invoke-rc.d",
    "update-rc.d",
    "deb-systemd-invoke",
];

/// The commands whose real binary, from ROOT, is bound into the sandbox
/// under [`REAL_DIR`] (they change or read only files).
pub const REAL_TOOLS: &[&str] = &["systemctl", "update-rc.d"];

/// Where the root's own [`REAL_TOOLS`] appear inside the sandbox.
pub const REAL_DIR: &str = "/run/disco/real";

/// What to do with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A query of the running system, answered here.
    Answer { out: String, code: i32 },
    /// A query the unit files decide: the root's own tool, offline.
    FileQuery,
    /// Changes only files: the root's own tool runs in the sandbox, with
    /// these arguments; then `defer`, if any, is queued (`enable --now`).
    Sandbox {
        args: Vec<String>,
        defer: Option<Vec<String>>,
    },
    /// Acts on the running system: queued, replayed after the merge.
    Defer,
}

/// systemctl's long options that take a value (as the next argument
/// unless given with `=`).
const SYSTEMCTL_VALUE_LONG: &[&str] = &[
    "type",
    "property",
    "state",
    "signal",
    "kill-whom",
    "kill-who",
    "kill-value",
    "job-mode",
    "root",
    "image",
    "image-policy",
    "host",
    "machine",
    "lines",
    "output",
    "preset-mode",
    "what",
    "boot-loader-entry",
    "boot-loader-menu",
    "reboot-argument",
    "timestamp",
    "message",
    "when",
    "check-inhibitors",
    "drop-in",
    "legend",
];
/// systemctl's short options that take a value.
const SYSTEMCTL_VALUE_SHORT: &str = "tpPsHMno";

/// Verbs that ask the running manager: answered "not running".
const RUNTIME_QUERIES: &[&str] = &[
    "is-active",
    "is-failed",
    "status",
    "show",
    "list-units",
    "list-sockets",
    "list-timers",
    "list-jobs",
    "list-machines",
    "list-automounts",
    "list-paths",
    "is-system-running",
    "show-environment",
    "help",
];
/// Verbs the unit files answer.
const FILE_QUERIES: &[&str] = &[
    "is-enabled",
    "list-unit-files",
    "cat",
    "get-default",
    "list-dependencies",
];
/// Verbs that change only unit files and links.
const ENABLEMENT: &[&str] = &[
    "enable",
    "disable",
    "reenable",
    "preset",
    "preset-all",
    "mask",
    "unmask",
    "link",
    "revert",
    "add-wants",
    "add-requires",
    "set-default",
];

/// A systemctl command line split into its options and its words.
#[derive(Debug, Default)]
struct Systemctl {
    verb: Option<String>,
    /// The words after the verb (units, mostly).
    words: Vec<String>,
    quiet: bool,
    now: bool,
    value: bool,
    no_block: bool,
    version: bool,
    properties: Vec<String>,
}

fn parse_systemctl(args: &[String]) -> Systemctl {
    let mut p = Systemctl::default();
    let mut i = 0;
    let mut only_words = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_words || !a.starts_with('-') || a == "-" {
            match p.verb {
                None => p.verb = Some(a.clone()),
                Some(_) => p.words.push(a.clone()),
            }
            continue;
        }
        if a == "--" {
            only_words = true;
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let value = if SYSTEMCTL_VALUE_LONG.contains(&name) {
                match inline {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        args.get(i - 1).cloned()
                    }
                }
            } else {
                None
            };
            match name {
                "quiet" => p.quiet = true,
                "now" => p.now = true,
                "value" => p.value = true,
                "no-block" => p.no_block = true,
                "version" => p.version = true,
                "property" => p.properties.extend(split_props(value.as_deref())),
                _ => {}
            }
            continue;
        }
        // A cluster of short options: `-q`, `-qp ActiveState`, `-pFoo`.
        let cluster: Vec<char> = a[1..].chars().collect();
        for (k, c) in cluster.iter().enumerate() {
            if SYSTEMCTL_VALUE_SHORT.contains(*c) {
                let rest: String = cluster[k + 1..].iter().collect();
                let value = if rest.is_empty() {
                    i += 1;
                    args.get(i - 1).cloned()
                } else {
                    Some(rest)
                };
                if *c == 'p' || *c == 'P' {
                    p.properties.extend(split_props(value.as_deref()));
                    p.value |= *c == 'P';
                }
                break;
            }
            if *c == 'q' {
                p.quiet = true;
            }
        }
    }
    p
}

fn split_props(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A unit name as systemctl completes it: `.service` unless it has a type.
fn unit(word: &str) -> String {
    let base = word.rsplit('/').next().unwrap_or(word);
    const TYPES: &[&str] = &[
        ".service",
        ".socket",
        ".timer",
        ".path",
        ".target",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    if TYPES.iter().any(|t| base.ends_with(t)) {
        base.to_string()
    } else {
        format!("{base}.service")
    }
}

/// The answer of a runtime query `verb` about `units`: nothing runs in
/// a sandbox, so every unit is inactive.
fn runtime_answer(p: &Systemctl, verb: &str) -> Class {
    let units: Vec<String> = p.words.iter().map(|w| unit(w)).collect();
    let say = |line: &str| -> String {
        if p.quiet {
            String::new()
        } else {
            units.iter().map(|_| format!("{line}\n")).collect()
        }
    };
    match verb {
        "is-active" => Class::Answer {
            out: say("inactive"),
            code: 3,
        },
        "is-failed" => Class::Answer {
            out: say("inactive"),
            code: 1,
        },
        "status" => Class::Answer {
            out: String::new(),
            code: 3,
        },
        "show" => {
            let props: Vec<String> = if p.properties.is_empty() {
                vec!["Id".into(), "ActiveState".into(), "SubState".into()]
            } else {
                p.properties.clone()
            };
            let blocks: Vec<String> = (if units.is_empty() {
                vec![String::new()]
            } else {
                units.clone()
            })
            .iter()
            .map(|u| {
                props
                    .iter()
                    .map(|prop| {
                        let v = match prop.as_str() {
                            "Id" | "Names" => u.clone(),
                            "ActiveState" => "inactive".into(),
                            "SubState" => "dead".into(),
                            "MainPID" | "ExecMainPID" | "ControlPID" => "0".into(),
                            _ => String::new(),
                        };
                        if p.value {
                            format!("{v}\n")
                        } else {
                            format!("{prop}={v}\n")
                        }
                    })
                    .collect()
            })
            .collect();
            Class::Answer {
                out: blocks.join("\n"),
                code: 0,
            }
        }
        "is-system-running" => Class::Answer {
            out: if p.quiet {
                String::new()
            } else {
                "offline\n".into()
            },
            code: 1,
        },
        _ => Class::Answer {
            out: String::new(),
            code: 0,
        },
    }
}

/// Classifies a call of `name` (the command's file name) with `args`.
pub fn classify(name: &str, args: &[String]) -> Class {
    match name {
        "systemctl" => classify_systemctl(args),
        "deb-systemd-invoke" => {
            // deb-systemd-invoke [--user] [--no-dbus] ACTION UNIT…
            let rest: Vec<String> = args
                .iter()
                .filter(|a| !a.starts_with("--"))
                .cloned()
                .collect();
            match rest.first().map(String::as_str) {
                Some(v) if RUNTIME_QUERIES.contains(&v) || FILE_QUERIES.contains(&v) => {
                    runtime_answer(&parse_systemctl(&rest), v)
                }
                _ => Class::Defer,
            }
        }
        "service" => match args.first().map(String::as_str) {
            Some("--status-all") | Some("--help") | Some("-h") | Some("--version") => {
                Class::Answer {
                    out: String::new(),
                    code: 0,
                }
            }
            _ if args.get(1).map(String::as_str) == Some("status") => Class::Answer {
                out: String::new(),
                code: 3,
            },
            _ => Class::Defer,
        },
        "invoke-rc.d" => {
            // invoke-rc.d [--quiet --force --query …] NAME ACTION [ARGS]
            if args.iter().any(|a| a == "--query") {
                // "action allowed": what invoke-rc.d says without a policy.
                return Class::Answer {
                    out: String::new(),
                    code: 104,
                };
            }
            let rest: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
            match rest.get(1).map(|s| s.as_str()) {
                Some("status") => Class::Answer {
                    out: String::new(),
                    code: 3,
                },
                _ => Class::Defer,
            }
        }
        "update-rc.d" => Class::Sandbox {
            args: args.to_vec(),
            defer: None,
        },
        _ => Class::Defer,
    }
}

fn classify_systemctl(args: &[String]) -> Class {
    let p = parse_systemctl(args);
    let Some(verb) = p.verb.clone() else {
        if p.version {
            return Class::FileQuery;
        }
        // No verb: list-units.
        return runtime_answer(&p, "list-units");
    };
    if RUNTIME_QUERIES.contains(&verb.as_str()) {
        return runtime_answer(&p, &verb);
    }
    if FILE_QUERIES.contains(&verb.as_str()) {
        return Class::FileQuery;
    }
    if ENABLEMENT.contains(&verb.as_str()) {
        let defer = if p.now {
            let action = match verb.as_str() {
                "enable" | "reenable" => Some("start"),
                "disable" | "mask" => Some("stop"),
                _ => None,
            };
            action.map(|a| {
                let mut d = Vec::new();
                if p.no_block {
                    d.push("--no-block".to_string());
                }
                d.push(a.to_string());
                d.extend(p.words.iter().map(|w| unit(w)));
                d
            })
        } else {
            None
        };
        let args = args.iter().filter(|a| *a != "--now").cloned().collect();
        return Class::Sandbox { args, defer };
    }
    Class::Defer
}

/// True for `systemctl [opts] daemon-reload` (and `daemon-reexec`): one
/// a module is enough, so the readback keeps the first only.
pub fn is_daemon_reload(argv: &[String]) -> bool {
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    name == "systemctl"
        && parse_systemctl(&argv[1..])
            .verb
            .is_some_and(|v| v == "daemon-reload")
}

/// A module's queue with every `systemctl daemon-reload` after the first
/// dropped (each module's queue is replayed as a whole, after the merge:
/// one reload sees every unit file it merged).
pub fn dedupe_reloads(actions: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut seen = false;
    actions
        .into_iter()
        .filter(|a| {
            if !is_daemon_reload(a) {
                return true;
            }
            let first = !seen;
            seen = true;
            first
        })
        .collect()
}

/// `disco shim ARGV0 ARGS…` inside the sandbox: acts on [`classify`];
/// returns the exit status (or execs the root's own tool).
pub fn run(argv: &[String]) -> i32 {
    let Some(argv0) = argv.first() else {
        eprintln!("error: usage: disco shim ARGV0 [ARGS…]");
        return 2;
    };
    let name = argv0.rsplit('/').next().unwrap_or(argv0).to_string();
    let args = &argv[1..];
    match classify(&name, args) {
        Class::Answer { out, code } => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(out.as_bytes()).and_then(|()| o.flush());
            code
        }
        Class::Defer => queue(argv),
        Class::FileQuery => match real(&name) {
            Some(tool) => {
                let err = real_command(&tool, &name, args).exec();
                eprintln!("error: disco shim: cannot run {}: {err}", tool.display());
                1
            }
            None if name == "systemctl" => is_enabled_from_files(&parse_systemctl(args)),
            None => missing(&name, args),
        },
        Class::Sandbox {
            args: run_args,
            defer,
        } => {
            let Some(tool) = real(&name) else {
                return missing(&name, args);
            };
            let mut cmd = real_command(&tool, &name, &run_args);
            let Some(d) = defer else {
                let err = cmd.exec();
                eprintln!("error: disco shim: cannot run {}: {err}", tool.display());
                return 1;
            };
            match cmd.status() {
                Ok(s) if s.success() => {
                    let mut q = vec![argv0.clone()];
                    q.extend(d);
                    queue(&q)
                }
                Ok(s) => s.code().unwrap_or(1),
                Err(e) => {
                    eprintln!("error: disco shim: cannot run {}: {e}", tool.display());
                    1
                }
            }
        }
    }
}

/// The root's own `name`, bound into the sandbox, when it has one.
fn real(name: &str) -> Option<PathBuf> {
    let p = Path::new(REAL_DIR).join(name);
    fs::metadata(&p).ok().filter(|m| m.is_file()).map(|_| p)
}

fn real_command(tool: &Path, name: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(tool);
    cmd.arg0(name).args(args);
    // systemctl: work on the unit files, never ask a manager.
    cmd.env("SYSTEMD_OFFLINE", "1");
    cmd
}

fn missing(name: &str, args: &[String]) -> i32 {
    eprintln!(
        "error: {name} {}: {name} is not installed in this root (it changes files, so it runs in the sandbox)",
        args.join(" ")
    );
    127
}

/// Appends `argv` to the deferred-action queue.
fn queue(argv: &[String]) -> i32 {
    let mut record = Vec::new();
    for field in
        std::iter::once(argv.len().saturating_sub(1).to_string()).chain(argv.iter().cloned())
    {
        record.extend_from_slice(field.as_bytes());
        record.push(0);
    }
    let written = fs::OpenOptions::new()
        .append(true)
        .open(super::shims::QUEUE_IN_SANDBOX)
        .and_then(|mut f| f.write_all(&record));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "error: disco shim: cannot queue {}: {e}",
                super::shims::QUEUE_IN_SANDBOX
            );
            1
        }
    }
}

/// Where systemd looks for unit files, first wins.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// `systemctl is-enabled` without a systemctl in the root: from the files.
fn is_enabled_from_files(p: &Systemctl) -> i32 {
    if p.verb.as_deref() != Some("is-enabled") || p.words.is_empty() {
        return missing("systemctl", &[p.verb.clone().unwrap_or_default()]);
    }
    let mut code = 1;
    for w in &p.words {
        let u = unit(w);
        let state = unit_file_state(Path::new("/"), &u);
        match state {
            Some(s) => {
                if !p.quiet {
                    println!("{s}");
                }
                if matches!(s, "enabled" | "static" | "alias" | "indirect") {
                    code = 0;
                }
            }
            None => eprintln!("Failed to get unit file state for {u}: No such file or directory"),
        }
    }
    code
}

/// The state `systemctl is-enabled` gives `unit` under `root`, from its
/// files: masked, enabled (a `.wants`/`.requires` link or an alias),
/// static (no `[Install]`), disabled; a SysV script by its `rc?.d` links;
/// `None` when there is no such unit.
pub fn unit_file_state(root: &Path, unit: &str) -> Option<&'static str> {
    let etc = root.join("etc/systemd/system");
    if fs::read_link(etc.join(unit)).is_ok_and(|t| t == Path::new("/dev/null")) {
        return Some("masked");
    }
    // A unit file is ROOT's, untrusted: resolved inside `root`, never
    // blocking, capped (a FIFO or a link to /dev/zero reads as empty).
    let file = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d.trim_start_matches('/')).join(unit))
        .find_map(|rel| {
            let shown = rel.display().to_string();
            crate::fsutil::read_in_root(root, &rel, &shown, 1 << 20)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        });
    let linked = fs::read_dir(&etc).ok().is_some_and(|dir| {
        dir.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            (n.ends_with(".wants") || n.ends_with(".requires"))
                && fs::symlink_metadata(e.path().join(unit)).is_ok()
        })
    });
    match file {
        Some(text) => {
            if linked {
                return Some("enabled");
            }
            let installs = text
                .lines()
                .map(str::trim)
                .skip_while(|l| *l != "[Install]")
                .any(|l| {
                    l.starts_with("WantedBy")
                        || l.starts_with("RequiredBy")
                        || l.starts_with("Alias")
                });
            Some(if installs { "disabled" } else { "static" })
        }
        None => {
            let name = unit.strip_suffix(".service")?;
            if !root.join("etc/init.d").join(name).is_file() {
                return None;
            }
            let started = (2..=5).any(|n| {
                fs::read_dir(root.join(format!("etc/rc{n}.d")))
                    .ok()
                    .is_some_and(|d| {
                        d.flatten().any(|e| {
                            let f = e.file_name();
                            let f = f.to_string_lossy();
                            f.starts_with('S') && f.get(3..) == Some(name)
                        })
                    })
            });
            Some(if started { "enabled" } else { "disabled" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn answer(out: &str, code: i32) -> Class {
        Class::Answer {
            out: out.into(),
            code,
        }
    }

    #[test]
    fn every_form_of_a_runtime_query_is_answered_not_running() {
        for (name, args, want) in [
            ("systemctl", "is-active nginx", answer("inactive\n", 3)),
            ("systemctl", "--quiet is-active nginx", answer("", 3)),
            ("systemctl", "-q is-active nginx", answer("", 3)),
            ("systemctl", "is-active --quiet nginx", answer("", 3)),
            (
                "systemctl",
                "--system is-active a b",
                answer("inactive\ninactive\n", 3),
            ),
            ("systemctl", "is-failed nginx", answer("inactive\n", 1)),
            ("systemctl", "status nginx", answer("", 3)),
            ("systemctl", "--no-pager -l status nginx", answer("", 3)),
            (
                "systemctl",
                "show -p ActiveState nginx",
                answer("ActiveState=inactive\n", 0),
            ),
            (
                "systemctl",
                "show --property=ActiveState,SubState nginx",
                answer("ActiveState=inactive\nSubState=dead\n", 0),
            ),
            (
                "systemctl",
                "show --value -p ActiveState nginx",
                answer("inactive\n", 0),
            ),
            (
                "systemctl",
                "-P ActiveState show nginx",
                answer("inactive\n", 0),
            ),
            ("systemctl", "list-units --type service", answer("", 0)),
            ("systemctl", "--type=service list-units", answer("", 0)),
            ("systemctl", "", answer("", 0)),
            ("systemctl", "is-system-running", answer("offline\n", 1)),
            ("service", "nginx status", answer("", 3)),
            ("service", "--status-all", answer("", 0)),
            ("invoke-rc.d", "nginx status", answer("", 3)),
            ("invoke-rc.d", "--quiet nginx status", answer("", 3)),
            ("invoke-rc.d", "--query nginx start", answer("", 104)),
            (
                "deb-systemd-invoke",
                "is-active nginx.service",
                answer("inactive\n", 3),
            ),
            ("deb-systemd-invoke", "--user status x", answer("", 3)),
        ] {
            assert_eq!(classify(name, &v(args)), want, "{name} {args}");
        }
    }

    #[test]
    fn unit_file_queries_go_to_the_files() {
        for args in [
            "is-enabled nginx",
            "-q is-enabled nginx",
            "--quiet --root=/ is-enabled nginx",
            "list-unit-files",
            "cat nginx",
            "get-default",
            "--version",
        ] {
            assert_eq!(classify("systemctl", &v(args)), Class::FileQuery, "{args}");
        }
    }

    #[test]
    fn enablement_runs_in_the_sandbox_and_now_defers_the_start() {
        for args in [
            "enable nginx",
            "--quiet --no-reload enable x",
            "-q disable x",
            "--root / mask x",
            "unmask x",
            "preset x",
            "reenable x",
            "--system --preset-mode=enable-only preset-all",
        ] {
            assert_eq!(
                classify("systemctl", &v(args)),
                Class::Sandbox {
                    args: v(args),
                    defer: None
                },
                "{args}"
            );
        }
        assert_eq!(
            classify("systemctl", &v("enable --now nginx")),
            Class::Sandbox {
                args: v("enable nginx"),
                defer: Some(v("start nginx.service"))
            }
        );
        assert_eq!(
            classify("systemctl", &v("--now --no-block disable a.timer b")),
            Class::Sandbox {
                args: v("--no-block disable a.timer b"),
                defer: Some(v("--no-block stop a.timer b.service"))
            }
        );
        for args in [
            "nginx defaults",
            "-f nginx remove",
            "nginx disable",
            "nginx enable",
        ] {
            assert!(
                matches!(classify("update-rc.d", &v(args)), Class::Sandbox { .. }),
                "{args}"
            );
        }
    }

    #[test]
    fn state_changes_are_deferred() {
        for (name, args) in [
            ("systemctl", "restart nginx"),
            ("systemctl", "--no-block -q try-restart nginx"),
            ("systemctl", "reload-or-restart nginx"),
            ("systemctl", "--job-mode replace start x"),
            ("systemctl", "-H host start x"),
            ("systemctl", "daemon-reload"),
            ("systemctl", "reboot"),
            ("systemctl", "condrestart x"),
            ("systemctl", "force-reload x"),
            ("systemctl", "frobnicate x"),
            ("service", "nginx restart"),
            ("service", "nginx start"),
            ("invoke-rc.d", "nginx restart"),
            ("invoke-rc.d", "--quiet --skip-systemd-native nginx upgrade"),
            ("deb-systemd-invoke", "restart nginx.service"),
            ("reboot", ""),
        ] {
            assert_eq!(classify(name, &v(args)), Class::Defer, "{name} {args}");
        }
    }

    #[test]
    fn only_the_first_daemon_reload_of_a_module_is_kept() {
        let q = vec![
            v("/bin/systemctl daemon-reload"),
            v("/bin/systemctl restart a"),
            v("/bin/systemctl --system daemon-reload"),
            v("/usr/sbin/service b reload"),
        ];
        assert_eq!(
            dedupe_reloads(q),
            vec![
                v("/bin/systemctl daemon-reload"),
                v("/bin/systemctl restart a"),
                v("/usr/sbin/service b reload"),
            ]
        );
    }

    #[test]
    fn is_enabled_from_the_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("lib/systemd/system")).unwrap();
        fs::create_dir_all(r.join("etc/systemd/system/multi-user.target.wants")).unwrap();
        fs::write(
            r.join("lib/systemd/system/a.service"),
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        fs::write(r.join("lib/systemd/system/s.service"), "[Service]\n").unwrap();
        assert_eq!(unit_file_state(r, "a.service"), Some("disabled"));
        assert_eq!(unit_file_state(r, "s.service"), Some("static"));
        assert_eq!(unit_file_state(r, "none.service"), None);
        std::os::unix::fs::symlink(
            "/lib/systemd/system/a.service",
            r.join("etc/systemd/system/multi-user.target.wants/a.service"),
        )
        .unwrap();
        assert_eq!(unit_file_state(r, "a.service"), Some("enabled"));
        std::os::unix::fs::symlink("/dev/null", r.join("etc/systemd/system/a.service")).unwrap();
        assert_eq!(unit_file_state(r, "a.service"), Some("masked"));
        fs::create_dir_all(r.join("etc/init.d")).unwrap();
        fs::create_dir_all(r.join("etc/rc2.d")).unwrap();
        fs::write(r.join("etc/init.d/old"), "").unwrap();
        assert_eq!(unit_file_state(r, "old.service"), Some("disabled"));
        std::os::unix::fs::symlink("../init.d/old", r.join("etc/rc2.d/S01old")).unwrap();
        assert_eq!(unit_file_state(r, "old.service"), Some("enabled"));
    }
}
