//! The Debian package as a sysadmin installs it: `scripts/build-deb` makes
//! the .deb from the built binary; it holds the binary, the systemd service
//! and timer, the trigger's path unit and its service (which systemd
//! accepts; the path unit enabled by the package, the timer not), the commented config (whose defaults
//! are disco's), man pages and completions; `dpkg --root` installs it into
//! a real Debian 12 root, where `disco --version` runs.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn build_deb(out: &Path) -> PathBuf {
    let deb = common::deb::build(out);
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("disco_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );
    deb
}

fn stdout(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_deb_installs_into_a_debian_root_and_runs_there() {
    let f = common::Fixture::new();
    let deb = build_deb(&f.dir.path().join("out"));
    let contents = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/disco",
        "./lib/systemd/system/disco.service",
        "./lib/systemd/system/disco.timer",
        "./lib/systemd/system/disco.path",
        "./lib/systemd/system/disco-trigger.service",
        "./usr/share/disco/disco.toml",
        "./usr/share/disco/hooks/pre-receive",
        "./usr/share/man/man1/disco.1.gz",
        "./usr/share/man/man1/disco-dance.1.gz",
        "./usr/share/man/man1/disco-init.1.gz",
        "./usr/share/bash-completion/completions/disco",
        "./usr/share/zsh/vendor-completions/_disco",
        "./usr/share/fish/vendor_completions.d/disco.fish",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} missing from the package:\n{contents}"
        );
    }
    let control = stdout(Command::new("dpkg-deb").args(["--field"]).arg(&deb));
    assert!(control.contains("Depends: libc6 (>= 2.34), bash, mount, e2fsprogs, openssh-client"));
    // No conffile: `disco init` rewrites /etc/disco/disco.toml, and a
    // rewritten conffile stops every later upgrade at dpkg's prompt.
    let info = stdout(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(!info.contains("conffiles"), "{info}");

    let Some(root) = common::debian::root(f.dir.path()) else {
        return; // said why on stderr
    };
    // openssh-client is not in minbase, and this root has no network to
    // fetch it: dpkg is told to go on, and says so.
    let o = Command::new("dpkg")
        .arg("--root")
        .arg(&root)
        .args(["--force-depends", "-i"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let version = stdout(
        Command::new("chroot")
            .arg(&root)
            .args(["disco", "--version"]),
    );
    assert_eq!(version, format!("disco {}\n", env!("CARGO_PKG_VERSION")));
    // postinst put the commented configuration in place…
    let shipped =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/disco.toml")).unwrap();
    assert_eq!(
        fs::read_to_string(root.join("etc/disco/disco.toml")).unwrap(),
        shipped
    );
    // …and an upgrade (here: the same package again, unattended) keeps
    // what `disco init` wrote there, without asking.
    let set_up = "server = \"ssh://disco@cfg/srv/disco\"\nnode = \"web1\"\n";
    fs::write(root.join("etc/disco/disco.toml"), set_up).unwrap();
    let o = Command::new("dpkg")
        .arg("--root")
        .arg(&root)
        .args(["--force-depends", "-i"])
        .arg(&deb)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::read_to_string(root.join("etc/disco/disco.toml")).unwrap(),
        set_up
    );
    let status = stdout(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Status}", "disco"]),
    );
    assert_eq!(status, "install ok installed");
    // The timer is left for the admin to enable after `disco init`; the
    // path unit is enabled (it starts a dance only when one is asked for).
    assert!(!root
        .join("etc/systemd/system/timers.target.wants/disco.timer")
        .exists());
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/paths.target.wants/disco.path")).unwrap(),
        Path::new("/lib/systemd/system/disco.path")
    );

    // systemd accepts both units as installed (the service pointed at this
    // build's binary, since /usr/bin/disco is not on the host).
    let units = f.dir.path().join("units");
    fs::create_dir_all(&units).unwrap();
    let service = fs::read_to_string(root.join("lib/systemd/system/disco.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/bin/disco dance --quiet --detailed-exitcodes\n"));
    assert!(service.contains("SuccessExitStatus=2\n"));
    fs::write(
        units.join("disco.service"),
        service.replace("/usr/bin/disco", env!("CARGO_BIN_EXE_disco")),
    )
    .unwrap();
    let timer = fs::read_to_string(root.join("lib/systemd/system/disco.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*:00/30\n") && timer.contains("RandomizedDelaySec="));
    fs::write(units.join("disco.timer"), &timer).unwrap();
    // The trigger's path unit starts a service that serves noop and live
    // requests alike: `disco watch --once`.
    let path = fs::read_to_string(root.join("lib/systemd/system/disco.path")).unwrap();
    assert!(path.contains("PathExistsGlob=/var/lib/disco/trigger/*.request\n"));
    assert!(path.contains("Unit=disco-trigger.service\n"));
    fs::write(units.join("disco.path"), &path).unwrap();
    let triggered =
        fs::read_to_string(root.join("lib/systemd/system/disco-trigger.service")).unwrap();
    assert!(triggered.contains("ExecStart=/usr/bin/disco watch --once --quiet\n"));
    fs::write(
        units.join("disco-trigger.service"),
        triggered.replace("/usr/bin/disco", env!("CARGO_BIN_EXE_disco")),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(units.join("disco.timer"))
        .arg(units.join("disco.service"))
        .arg(units.join("disco.path"))
        .arg(units.join("disco-trigger.service"))
        .output()
        .expect("systemd-analyze (systemd; scripts/install-test-deps installs it)");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every `# key = value` the commented config shows as a default is the
/// value `disco config` reports as the default.
#[test]
fn the_packaged_config_shows_the_real_defaults() {
    let f = common::Fixture::new();
    let shown =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/disco.toml")).unwrap();
    let defaults = shown
        .split("# Every other key, with its default:\n")
        .nth(1)
        .expect("the defaults section");
    // No flag but --config and --node: every other value is a default.
    let config_of = |file: &Path| {
        let mut c = assert_cmd::Command::cargo_bin("disco").unwrap();
        c.env_remove("NOOP")
            .env_remove("DISCO_SERVER")
            .env_remove("DISCO_NODE")
            .arg("--config")
            .arg(file)
            .args(["--node", "n", "config"]);
        common::run(&mut c)
    };
    let (code, config, err) = config_of(&f.config());
    assert_eq!(code, 0, "{err}");
    for line in defaults.lines().take_while(|l| *l != "#") {
        let setting = line.strip_prefix("# ").unwrap();
        assert!(
            config.lines().any(|l| l == format!("{setting}  # default")),
            "`{setting}` is not disco's default:\n{config}"
        );
    }
    // Every key disco knows is shown in the file (or set there).
    for line in config.lines() {
        let key = line
            .trim_start_matches("# ")
            .split([' ', '='])
            .next()
            .unwrap();
        assert!(
            shown.contains(&format!("\n# {key} = ")) || shown.contains(&format!("\n{key} = ")),
            "the packaged disco.toml does not show `{key}`"
        );
    }
    // And the file as shipped sets nothing but `report_upload` and
    // `preview`.
    fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/disco.toml"),
        f.config(),
    )
    .unwrap();
    let (code, shipped, err) = config_of(&f.config());
    let mut expected = config.clone();
    for key in ["report_upload", "preview"] {
        expected = expected.replace(
            &format!("{key} = false  # default\n"),
            &format!("{key} = true  # {}\n", f.config().display()),
        );
    }
    assert_eq!((code, shipped), (0, expected), "{err}");
}
