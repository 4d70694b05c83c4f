//! `disco lint` end to end: a clean tree, then one tree per kind of
//! problem, each checked by its exact line.
mod common;

use common::{run, Fixture};
use std::fs;

/// Two nodes (one through a group), three modules with templates,
/// scripts, a handler, parameters, attributes and a timeout: no problem.
fn clean() -> Fixture {
    let f = Fixture::new();
    f.node("web1", &["web"]).group("web1", "base");
    f.node("base", &["base"]);
    f.node("db1", &["db"]);
    f.module("base", "# nothing first\n")
        .module("web", "after base\n")
        .module("db", "after base\n");
    f.module_file("base", "parameters/base/motd", "hello\n", 0o644)
        .module_file(
            "base",
            "templates/etc/motd",
            "echo \"$(disco param get base/motd)\"\n",
            0o644,
        )
        .module_file("base", "scripts/10-base", "true\n", 0o644)
        .module_file("base", "scripts/README", "what these do\n", 0o644)
        .module_file("base", "README.md", "# base\n", 0o644)
        .module_file("web", "parameters/web/port", "80\n", 0o644)
        .module_file(
            "web",
            "templates/etc/web.conf",
            "if true; then\n  echo \"port=$(disco param get web/port)\"\nfi\n",
            0o644,
        )
        .module_file("web", "files/etc/web/static.html", "<p>hi</p>\n", 0o644)
        .module_file("web", "attributes", "/etc/web.conf 0640 root:root\n", 0o644)
        .module_file("web", "timeout", "30\n", 0o644)
        .module_file("web", "scripts/20-web", "for i in 1 2; do :; done\n", 0o755)
        .module_file("web", "handlers/10-reload", "systemctl reload web\n", 0o755)
        .module_file("db", "parameters/db/port", "5432\n", 0o644);
    f
}

fn lint(f: &Fixture, args: &[&str]) -> (i32, String, String) {
    run(f.disco().arg("lint").args(args))
}

/// Asserts exit 1 and exactly these problem lines, then the summary.
fn assert_problems(f: &Fixture, args: &[&str], lines: &[&str], summary: &str) {
    let (code, out, err) = lint(f, args);
    let mut want: Vec<String> = lines.iter().map(|l| format!("error: {l}")).collect();
    want.push(summary.to_string());
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "stderr: {err}");
    assert_eq!(code, 1, "stderr: {err}");
    assert_eq!(err, "");
}

#[test]
fn clean_tree_exits_0_with_a_summary() {
    let f = clean();
    let (code, out, err) = lint(&f, &[]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "lint: 2 nodes, 3 modules, no problem\n", "")
    );
}

#[test]
fn template_syntax_error_names_file_and_line_and_runs_nothing() {
    let f = clean();
    let ran = f.dir.path().join("ran");
    f.module_file(
        "web",
        "templates/etc/web.conf",
        &format!("touch {}\nif true; then\n  echo a\nfi\nfi\n", ran.display()),
        0o644,
    );
    assert_problems(
        &f,
        &[],
        &["modules/web/templates/etc/web.conf:5: syntax error near unexpected token `fi'"],
        "lint: 2 nodes, 3 modules, 1 problem",
    );
    assert!(!ran.exists(), "lint ran a template");
}

#[test]
fn script_syntax_error() {
    let f = clean();
    f.module_file(
        "base",
        "scripts/20-loop",
        "for x in a b; do\n  echo \"$x\"\n",
        0o755,
    );
    assert_problems(
        &f,
        &[],
        &["modules/base/scripts/20-loop:3: syntax error: unexpected end of file"],
        "lint: 2 nodes, 3 modules, 1 problem",
    );
}

#[test]
fn handler_syntax_error() {
    let f = clean();
    f.module_file(
        "web",
        "handlers/10-reload",
        "systemctl reload web )\n",
        0o755,
    );
    assert_problems(
        &f,
        &[],
        &["modules/web/handlers/10-reload:1: syntax error near unexpected token `)'"],
        "lint: 2 nodes, 3 modules, 1 problem",
    );
}

#[test]
fn a_quote_left_open_does_not_hide_the_next_file() {
    // Each file is parsed on its own: an open quote in one script must
    // not swallow the next, nor its error.
    let f = clean();
    f.module_file("base", "scripts/20-open", "echo \"open\n", 0o755)
        .module_file("base", "scripts/30-close", "echo closed\"\nfi\n", 0o755);
    assert_problems(
        &f,
        &[],
        &[
            "modules/base/scripts/20-open:1: unexpected EOF while looking for matching `\"'",
            "modules/base/scripts/30-close:1: unexpected EOF while looking for matching `\"'",
        ],
        "lint: 2 nodes, 3 modules, 2 problems",
    );
}

#[test]
fn typo_at_the_top_of_a_module_gets_a_suggestion() {
    let f = clean();
    f.module_file("db", "template/etc/db.conf", "echo x\n", 0o644)
        .module_file("db", "notes", "x\n", 0o644);
    assert_problems(
        &f,
        &[],
        &[
            "modules/db/notes: unknown entry notes in a module; a module holds only requires, parameters/, files/, templates/, scripts/, handlers/, attributes, timeout, README, README.md",
            "modules/db/template: unknown entry template/ in a module; did you mean templates/?",
        ],
        "lint: 2 nodes, 3 modules, 2 problems",
    );
}

#[test]
fn stray_file_in_scripts_is_a_problem_but_a_readme_is_not() {
    let f = clean();
    f.module_file("base", "scripts/notes.txt", "remember\n", 0o644)
        .module_file("base", "scripts/README.md", "# scripts\n", 0o644);
    assert_problems(
        &f,
        &[],
        &["modules/base/scripts/notes.txt: is not a script name, so it never runs (a note or an editor's backup?): move it out of scripts/, or rename it to NN-name"],
        "lint: 2 nodes, 3 modules, 1 problem",
    );
}

#[test]
fn bad_attributes_line() {
    let f = clean();
    f.module_file(
        "web",
        "attributes",
        "# modes\n/etc/web.conf 0640 root:root\n/etc/web.conf 0986\n",
        0o644,
    );
    assert_problems(
        &f,
        &[],
        &["modules/web/attributes:3: mode \"0986\" is not octal (like 0640)"],
        "lint: 2 nodes, 3 modules, 1 problem",
    );
}

/// Two modules of one plan that do not require each other and install
/// one path (a file, a template) are the dance's conflict, said at lint,
/// once; ordering them ends it.
#[test]
fn two_unordered_modules_installing_one_path_are_a_conflict() {
    let f = clean();
    f.node("web1", &["web", "banner"])
        .module("banner", "")
        .module_file("banner", "files/etc/motd", "welcome\n", 0o644);
    assert_problems(
        &f,
        &[],
        &["modules/base: modules banner and base both change /etc/motd and neither requires the other: add \"after banner\" to modules/base/requires (or the reverse)"],
        "lint: 2 nodes, 4 modules, 1 problem",
    );
    f.module("banner", "before base\n");
    let (code, out, err) = lint(&f, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn two_modules_defaulting_one_key_is_said_once() {
    let f = clean();
    // Both nodes plan base and its clash with web and db; one line each.
    f.module_file("web", "parameters/base/motd", "web's\n", 0o644)
        .module_file("db", "parameters/base/motd", "db's\n", 0o644);
    assert_problems(
        &f,
        &[],
        &[
            "modules/base/parameters/base/motd: parameter 'base/motd' has a default in two modules, base and db: keep the default in one of them, or move it to the node or a group",
            "modules/base/parameters/base/motd: parameter 'base/motd' has a default in two modules, base and web: keep the default in one of them, or move it to the node or a group",
        ],
        "lint: 2 nodes, 3 modules, 2 problems",
    );
}

#[test]
fn required_module_missing() {
    let f = clean();
    f.module("web", "after base\nafter ghost\n");
    f.node("db1", &["db", "phantom"]);
    assert_problems(
        &f,
        &[],
        &[
            "modules/web/requires:2: module 'ghost' (after, in modules/web/requires) is not on the server",
            "parameters/db1/modules/phantom: module 'phantom' (listed in parameters/db1/modules) is not on the server",
        ],
        "lint: 2 nodes, 3 modules, 2 problems",
    );
}

#[test]
fn cycle_is_named_at_the_line_that_closes_it() {
    let f = clean();
    f.module("base", "# loops\nafter db\n");
    assert_problems(
        &f,
        &[],
        &["modules/base/requires:2: module cycle: base -> db -> base"],
        "lint: 2 nodes, 3 modules, 1 problem",
    );
}

#[test]
fn node_restricts_to_that_node_and_its_modules() {
    let f = clean();
    f.module_file("web", "scripts/30-bad", "fi\n", 0o755);
    let (code, out, err) = lint(&f, &["--node", "db1"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "lint: 1 node, 2 modules, no problem\n", "")
    );
    assert_problems(
        &f,
        &["--node", "web1"],
        &["modules/web/scripts/30-bad:1: syntax error near unexpected token `fi'"],
        "lint: 1 node, 2 modules, 1 problem",
    );
    let (code, out, err) = lint(&f, &["--node", "nobody"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: node 'nobody' has no parameters/nobody on the server\n"
    );
}

#[test]
fn bad_server_is_one_line() {
    let f = clean();
    let missing = f.dir.path().join("nowhere");
    let (code, out, err) = run(f
        .disco_without_server()
        .args(["lint", "--server"])
        .arg(&missing));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "error: no server tree at {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    // A directory that is no server tree is not a clean one.
    let (code, out, err) = run(f
        .disco_without_server()
        .args(["lint", "--server"])
        .arg(f.etc()));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "error: {} is not a server tree: it has no parameters/ directory\n",
            f.etc().display()
        )
    );
    let (code, _, err) = run(f.disco_without_server().args([
        "lint",
        "--server",
        "ssh://disco@example.org/srv/disco",
    ]));
    assert_eq!(code, 1);
    assert_eq!(err, "error: disco lint reads the server tree where it lies, and ssh://disco@example.org/srv/disco is remote: run it on the server (or in a git hook there) with --server DIR\n");
}

#[test]
fn server_defaults_to_the_configured_one() {
    let f = clean();
    fs::write(
        f.config(),
        format!("server = \"{}\"\n", f.server().display()),
    )
    .unwrap();
    let (code, out, err) = run(f.disco_without_server().arg("lint"));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "lint: 2 nodes, 3 modules, no problem\n", "")
    );
}

/// The standard modules as they ship are a clean `modules/` — their own
/// README.md beside them included.
#[test]
fn the_standard_modules_lint_clean_as_a_modules_dir() {
    let f = Fixture::new();
    fs::remove_dir_all(f.server().join("modules")).unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/stdlib"),
        f.server().join("modules"),
    )
    .unwrap();
    let stdlib = fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/stdlib"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    let names: Vec<&str> = stdlib.iter().map(String::as_str).collect();
    f.node("web1", &names);
    // The admin names the link's target: a pushed link could not.
    let (code, out, err) = lint(
        &f,
        &[
            "--allow-link-to",
            concat!(env!("CARGO_MANIFEST_DIR"), "/stdlib"),
        ],
    );
    assert_eq!(
        (code, out, err),
        (
            0,
            format!("lint: 1 node, {} modules, no problem\n", stdlib.len()),
            String::new()
        )
    );
}

/// A module's broken file is one problem, said at that file once, however
/// many nodes plan the module.
#[test]
fn a_broken_module_file_is_said_once() {
    let f = clean();
    let req = f.server().join("modules/web/requires");
    let target = f.dir.path().join("elsewhere");
    fs::write(&target, "").unwrap();
    fs::remove_file(&req).unwrap();
    std::os::unix::fs::symlink(&target, &req).unwrap();
    let (code, out, _) = lint(&f, &[]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..lines.len() - 1],
        ["error: modules/web/requires: is a symbolic link; it must be a regular file"],
        "{out}"
    );
}

/// A pushed top-level `modules` (or `parameters`, `recipients`) link out
/// of the tree is refused in one line naming the link and its target, and
/// nothing behind it is read: no name of what lies there is printed.
#[test]
fn a_top_level_link_out_of_the_tree_is_refused_naming_nothing_behind_it() {
    use std::os::unix::fs::PermissionsExt;
    for sub in ["modules", "parameters", "recipients"] {
        let f = clean();
        let outside = f.dir.path().join("outside");
        fs::create_dir_all(outside.join("ssh-behind-link")).unwrap();
        let secret = outside.join("ssh-behind-link/host-key-behind-link");
        fs::write(&secret, "PRIVATE-KEY-BYTES\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(outside.join("shadow-behind-link"), "root:x\n").unwrap();
        let link = f.server().join(sub);
        let _ = fs::remove_dir_all(&link);
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let (code, out, err) = lint(&f, &[]);
        assert_ne!(code, 0, "{sub}: {out}{err}");
        let all = format!("{out}{err}");
        assert!(
            !all.contains("behind-link"),
            "{sub}: a name behind the link: {all}"
        );
        assert_eq!(all.lines().count(), 1, "{sub}: one line: {all}");
        assert!(
            all.contains(&format!(
                "{} is a symlink to {}",
                link.display(),
                outside.display()
            )),
            "{sub}: {all}"
        );
        // Named on the command line, the same link is followed.
        let (_, out, err) = lint(&f, &["--allow-link-to", outside.to_str().unwrap()]);
        assert!(
            !format!("{out}{err}").contains("is a symlink to"),
            "{sub}: {out}{err}"
        );
    }
}
