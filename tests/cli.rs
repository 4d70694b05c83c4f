//! The command line itself: help, version, config precedence and errors.
mod common;

use common::{run, Fixture};
use std::fs;

/// Every subcommand, in the order `disco --help` lists them.
const SUBCOMMANDS: [&str; 18] = [
    "dance",
    "undo",
    "actions",
    "serve",
    "publish",
    "promote",
    "report",
    "diff",
    "shell",
    "plan",
    "lint",
    "param",
    "secret",
    "config",
    "facts",
    "init",
    "completions",
    "man",
];

#[test]
fn help_lists_only_working_commands() {
    let (code, out, _) = run(assert_cmd::Command::cargo_bin("disco")
        .unwrap()
        .arg("--help"));
    assert_eq!(code, 0);
    let commands: Vec<&str> = out
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands, [SUBCOMMANDS.as_slice(), &["help"]].concat());
    for flag in [
        "--server",
        "--node",
        "--root",
        "--state-dir",
        "--config",
        "--noop",
    ] {
        assert!(out.contains(flag), "{flag}");
    }
}

#[test]
fn version_prints_name_and_version() {
    let (code, out, _) = run(assert_cmd::Command::cargo_bin("disco")
        .unwrap()
        .arg("--version"));
    assert_eq!(
        (code, out),
        (0, format!("disco {}\n", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn config_shows_each_setting_and_its_source() {
    let f = Fixture::new();
    fs::write(
        f.config(),
        "server = \"/from/main\"\nstate_dir = \"/s\"\nroot = \"/r\"\n",
    )
    .unwrap();
    fs::create_dir(f.etc().join("disco.d")).unwrap();
    fs::write(
        f.etc().join("disco.d/50-root.toml"),
        "root = \"/from/dropin\"\n",
    )
    .unwrap();
    let mut cmd = assert_cmd::Command::cargo_bin("disco").unwrap();
    cmd.env("NOOP", "yes")
        .env("DISCO_NODE", "envnode")
        .env_remove("DISCO_SERVER")
        .arg("--config")
        .arg(f.config())
        .args(["--state-dir", "/flag/state", "config"]);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let main = f.config().display().to_string();
    let dropin = f.etc().join("disco.d/50-root.toml").display().to_string();
    // max_memory's default: half the RAM, at most 4 GiB.
    let info = fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let memory = (kib * 1024 / 2).min(4 << 30);
    let jobs = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        out,
        format!(
            "server = \"/from/main\"  # {main}\nnode = \"envnode\"  # env DISCO_NODE\nroot = \"/from/dropin\"  # {dropin}\nstate_dir = \"/flag/state\"  # flag --state-dir\nnoop = true  # env NOOP\nkeep_backups = 5  # default\nservers = []  # default\n# ssh_identity is not set (ssh's default)\n# ssh_known_hosts is not set (ssh's default)\nssh_options = []  # default\nconnect_timeout = 10  # default\nio_timeout = 60  # default\nfetch_timeout = 3600  # default\nmax_file_size = 1073741824  # default\nnoop_network = \"none\"  # default\n# scratch_max is not set (2 GiB or 10% of the state dir's filesystem, whichever is less)\nscratch_reserve = \"10%\"  # default\ndiff_limit = 50  # default\nreport_ignore = [\"/etc/*-\", \"/var/lib/dpkg/lock*\", \"/var/lib/dpkg/triggers/Lock\", \"/var/lib/apt/lists/lock\", \"/var/cache/apt/archives/lock\", \"/var/log/**\", \"/var/cache/**\"]  # default\nreport_max_changes = 10000  # default\nreport_max_bytes = 16777216  # default\nmax_processes = 4096  # default\nmax_memory = {memory}  # default\njobs = {jobs}  # default\non_failure = \"nothing\"  # default\nstep_timeout = 1800  # default\ndance_timeout = 7200  # default\nreport_history = 50  # default\nreport_history_bytes = 104857600  # default\n# prometheus_textfile is not set\nreport_upload = false  # default\npreview = false  # default\n"
        )
    );
}

#[test]
fn malformed_config_names_file_and_line() {
    let f = Fixture::new();
    fs::write(f.config(), "# disco\nserver = \"/x\"\nnoop = \"perhaps\n").unwrap();
    let (code, out, err) = run(f.disco().arg("config"));
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!("error: {}:3: ", f.config().display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_noop_env_is_refused() {
    let f = Fixture::new();
    let (code, _, err) = run(f.disco().env("NOOP", "sometimes").arg("config"));
    assert_eq!(code, 1);
    assert!(err.starts_with("error: env NOOP=\"sometimes\""), "{err}");
}

#[test]
fn explicit_missing_config_is_an_error() {
    let f = Fixture::new();
    fs::remove_file(f.config()).unwrap();
    let (code, _, err) = run(f.disco().arg("config"));
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "error: cannot read config {}:",
            f.config().display()
        )),
        "{err}"
    );
}

#[test]
fn unknown_server_scheme_is_refused_clearly() {
    let f = Fixture::new();
    f.node("n", &[]);
    let (code, _, err) =
        run(f
            .disco_without_server()
            .args(["--server", "ftp://h/srv", "--node", "n", "plan"]));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: server 'ftp://h/srv': unknown scheme ftp://"),
        "{err}"
    );
}

/// Completions and manual pages come from the command line's definition:
/// every subcommand is in them, bash accepts the script, man renders it —
/// with a broken config in place, which they do not read.
#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let f = Fixture::new();
    fs::write(f.config(), "not toml [").unwrap();
    let subcommands = SUBCOMMANDS;
    // How each shell's script names a subcommand.
    type Naming = fn(&str) -> String;
    let named: [(&str, Naming); 3] = [
        ("bash", |s| format!("disco,{s})")),
        ("zsh", |s| format!("\n'{s}:")),
        ("fish", |s| {
            format!("-n \"__fish_disco_needs_command\" -f -a \"{s}\"")
        }),
    ];
    for (shell, name) in named {
        let (code, out, err) = run(f.disco().args(["completions", shell]));
        assert_eq!(code, 0, "{err}");
        for s in subcommands {
            assert!(out.contains(&name(s)), "{shell} completion lacks {s}");
        }
        assert!(!out.contains(&name("nosuch")));
    }
    let (_, script, _) = run(f.disco().args(["completions", "bash"]));
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{script}\ncomplete -p disco"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains(" -F _disco disco"),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let (code, page, _) = run(f.disco().arg("man"));
    assert_eq!(code, 0);
    assert!(page.contains(".TH disco 1"), "{page}");
    let dir = f.dir.path().join("man");
    let (code, _, err) = run(f.disco().arg("man").arg("--dir").arg(&dir));
    assert_eq!(code, 0, "{err}");
    for s in subcommands {
        assert!(dir.join(format!("disco-{s}.1")).is_file(), "no disco-{s}.1");
    }
    let rendered = std::process::Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(dir.join("disco-dance.1"))
        .env("MANWIDTH", "80")
        .output()
        .expect("man (man-db; scripts/install-test-deps installs it)");
    assert!(rendered.status.success());
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("--detailed-exitcodes"), "{text}");
}
