//! `disco init`: turns a bare machine (or the root of an image, `--root`)
//! into a node that can dance. Writes `etc/disco/disco.toml`, makes the
//! node's ed25519 key, pins the server's host key in `etc/disco/known_hosts`
//! and prints the `authorized_keys` line the server needs. It runs before
//! any configuration exists, so it reads none; the key and the host key
//! are OpenSSH's own files, made with `ssh-keygen` and `ssh-keyscan`.

use std::fs;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cli::InitArgs;
use crate::fsutil::write_atomic;
use crate::names::Name;
use crate::transport::ServerUri;

/// Where the node's files go, relative to ROOT, and as the node sees them.
const ETC: &str = "etc/disco";

/// A host key: its type (`ssh-ed25519`) and base64 blob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostKey {
    kind: String,
    blob: String,
}

impl HostKey {
    /// Parses `TYPE BASE64 [comment]`, or a known_hosts line `HOST TYPE BASE64`.
    fn parse(line: &str) -> Option<HostKey> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_kind =
            |w: &str| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-");
        let i = words.iter().position(|w| is_kind(w))?;
        let blob = words.get(i + 1)?;
        let base64 = |c: char| c.is_ascii_alphanumeric() || "+/=".contains(c);
        if i > 1 || blob.len() < 16 || !blob.chars().all(base64) {
            return None;
        }
        Some(HostKey {
            kind: words[i].to_string(),
            blob: blob.to_string(),
        })
    }
}

impl std::fmt::Display for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.blob)
    }
}

/// `/etc/disco/disco.toml` as the package installs it.
const PACKAGED_CONFIG: &str = include_str!("../../packaging/disco.toml");

/// Runs `disco init`; exit code 0, or an error saying what to do.
pub fn run(args: &InitArgs) -> Result<i32> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    if args.root.is_none() {
        super::require_root("disco init", "it writes /etc/disco")?;
    }
    if !root.is_dir() {
        bail!("root {} is not a directory", root.display());
    }
    let uri = server_uri(&args.server)?;
    let node = node_name(args.node.node.as_deref(), args.root.as_deref())?;
    let etc = root.join(ETC);
    let config = etc.join("disco.toml");
    if !args.force && has_settings(&config)? {
        bail!(
            "{} already has settings; edit it, or give --force to replace it",
            config.display()
        );
    }
    // Everything that can be refused is, before anything is written.
    let pinned = match &uri {
        ServerUri::Ssh { host, port, .. } => Some(host_key(host, *port, args.host_key.as_deref())?),
        ServerUri::Local(_) => None,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&etc)
        .with_context(|| format!("cannot create {}", etc.display()))?;

    let (
        ServerUri::Ssh {
            user,
            host,
            port,
            path,
        },
        Some(pinned),
    ) = (&uri, pinned)
    else {
        write_atomic(&config, config_text(&uri, &node, false).as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", config.display()))?;
        println!("wrote {}", config.display());
        println!("the server is a local directory: no key is needed. Next: NOOP=true disco dance");
        return Ok(0);
    };

    let key = etc.join("id_ed25519");
    if args.new_key {
        retire_key(&key)?;
    }
    let public = node_key(&key, &node)?;
    let known = etc.join("known_hosts");
    pin(&known, &known_hosts_name(host, *port), &pinned)?;
    write_atomic(&config, config_text(&uri, &node, true).as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", config.display()))?;

    println!("wrote {}", config.display());
    println!("pinned {} in {}", fingerprint(&pinned)?, known.display());
    println!("node key {}", key.display());
    print_server_steps(user.as_deref(), host, path, &node, &public);
    println!("\nThen: NOOP=true disco dance");
    Ok(0)
}

/// The server URI `disco.toml` gets: a local path made absolute (cron's
/// working directory is not init's); an ssh path that cannot stand in the
/// server's forced command refused.
fn server_uri(server: &str) -> Result<ServerUri> {
    Ok(match ServerUri::parse(server)? {
        ServerUri::Local(p) => ServerUri::Local(
            std::path::absolute(&p).with_context(|| format!("server {}", p.display()))?,
        ),
        ServerUri::Ssh { path, .. }
            if path
                .chars()
                .any(|c| c.is_whitespace() || "\"'\\$`".contains(c)) =>
        {
            bail!("server path '{path}': a path with spaces, quotes, `\\`, `$` or backquotes cannot stand in the server's forced command; use a plain path")
        }
        uri => uri,
    })
}

/// Prints what the admin does on the server for this node: the
/// `authorized_keys` line (for `user`, root when none) and where its
/// public key goes in the server tree.
fn print_server_steps(user: Option<&str>, host: &str, path: &str, node: &Name, public: &str) {
    // Without a user in the URI, ssh logs in as the user disco runs as.
    let account = user.unwrap_or("root");
    println!("\nAdd this line to ~{account}/.ssh/authorized_keys on {host}:\n");
    println!(
        "command=\"disco serve --root {path} --node {node}\",restrict {}",
        public.trim()
    );
    println!(
        "\nRecord the node's key in the server tree as parameters/{node}/{} (its secrets are encrypted to it), then `disco secret rekey` there:\n",
        crate::secrets::NODE_KEY
    );
    println!("{}", public.trim());
}

/// `--node`, else the root's `/etc/hostname` under `--root`, else this
/// machine's hostname.
fn node_name(given: Option<&str>, root: Option<&Path>) -> Result<Name> {
    if let Some(n) = given {
        return Ok(Name::parse(n, "--node")?);
    }
    if let Some(root) = root {
        // Never this machine's name: an image built here would carry it
        // to every machine made from it.
        let file = root.join("etc/hostname");
        let text = fs::read_to_string(&file).unwrap_or_default();
        let name = text.trim();
        if name.is_empty() {
            bail!(
                "{} does not name the node: give --node NAME",
                file.display()
            );
        }
        return Ok(Name::parse(
            name,
            format!("{} (give --node NAME)", file.display()),
        )?);
    }
    crate::config::hostname_node()
}

/// Whether `config` exists with anything but comments and blank lines.
fn has_settings(config: &Path) -> Result<bool> {
    match fs::read_to_string(config) {
        // The package's own file (its settings are the packaged defaults,
        // which init writes too) is no admin's.
        Ok(text) if text == PACKAGED_CONFIG => Ok(false),
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#'))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", config.display())),
    }
}

/// Removes the node's key pair (`--new-key`), so a new one is made: the
/// old key is gone for good (a leaked key must not stay usable here).
fn retire_key(key: &Path) -> Result<()> {
    for p in [key.with_extension("pub"), key.to_path_buf()] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(())
}

/// The node's public key line, making the key pair when there is none.
fn node_key(key: &Path, node: &Name) -> Result<String> {
    let public = key.with_extension("pub");
    if !key.exists() {
        // Made beside its final name, then renamed: an interrupted init
        // leaves no half key where the next one would take it as made.
        let tmp = key.with_file_name(format!(".id_ed25519.tmp-{}", std::process::id()));
        let tmp_pub = PathBuf::from(format!("{}.pub", tmp.display()));
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&tmp_pub);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("disco@{node}"))
            .arg("-f")
            .arg(&tmp)
            .output()
            .context("cannot run ssh-keygen (is openssh-client installed?)")?;
        if !out.status.success() {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&tmp_pub);
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp_pub, &public)
            .and_then(|()| fs::rename(&tmp, key))
            .with_context(|| format!("cannot place the new key at {}", key.display()))?;
    } else if !public.exists() {
        bail!(
            "{} exists without {}; restore it (ssh-keygen -y -f {} > {})",
            key.display(),
            public.display(),
            key.display(),
            public.display()
        );
    }
    fs::read_to_string(&public).with_context(|| format!("cannot read {}", public.display()))
}

/// The server's host key: as given, or scanned and confirmed (against the
/// given fingerprint, or by the user on a terminal).
fn host_key(host: &str, port: Option<u16>, given: Option<&str>) -> Result<HostKey> {
    if let Some(g) = given.filter(|g| !g.starts_with("SHA256:")) {
        let key = HostKey::parse(g).with_context(|| {
            format!("--host-key '{g}' is neither `TYPE BASE64` (ssh-ed25519 AAAA…) nor a SHA256: fingerprint")
        })?;
        // Read by ssh-keygen before anything is written: a key ssh cannot
        // use would be pinned for good.
        fingerprint(&key).map_err(|_| {
            anyhow::anyhow!(
                "--host-key: '{key}' is not a {} public key ssh can read",
                key.kind
            )
        })?;
        return Ok(key);
    }
    let scanned = scan(host, port)?;
    let print = fingerprint(&scanned)?;
    if let Some(want) = given {
        if print != want {
            bail!("the host key of {host} is {print}, not {want}: not pinned (is this the right server?)");
        }
        return Ok(scanned);
    }
    let mut stdin = std::io::stdin().lock();
    if !stdin.is_terminal() {
        bail!("the host key of {host} is {print}; confirm it with --host-key {print} (no terminal to ask on)");
    }
    eprint!(
        "The server {host} has the host key {print} ({}).\nPin it? [y/N] ",
        scanned.kind
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("host key not confirmed: nothing pinned");
    }
    Ok(scanned)
}

/// The server's ed25519 host key, by `ssh-keyscan`.
fn scan(host: &str, port: Option<u16>) -> Result<HostKey> {
    let mut c = Command::new("ssh-keyscan");
    c.args(["-T", "10", "-t", "ed25519"]);
    if let Some(p) = port {
        c.arg("-p").arg(p.to_string());
    }
    let out = c
        .arg("--")
        .arg(host)
        .output()
        .context("cannot run ssh-keyscan (is openssh-client installed?)")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(HostKey::parse)
        .with_context(|| {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why
                .lines()
                .rfind(|l| !l.starts_with('#'))
                .unwrap_or("no answer");
            format!("cannot get the ed25519 host key of {host}: {why}; give it with --host-key")
        })
}

/// The key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
fn fingerprint(key: &HostKey) -> Result<String> {
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let file = dir.path().join("key.pub");
    fs::write(&file, format!("{key}\n"))?;
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(&file)
        .output()
        .context("cannot run ssh-keygen (is openssh-client installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `256 SHA256:… comment (ED25519)`: the type inside the key must be
    // the one its label says.
    let inside = text
        .trim()
        .rsplit_once('(')
        .map(|(_, t)| t.trim_end_matches(')').to_ascii_lowercase());
    let label = key
        .kind
        .trim_start_matches("ssh-")
        .trim_start_matches("sk-ssh-")
        .replace("sk-ecdsa", "ecdsa")
        .replace("@openssh.com", "");
    let fits = inside.is_some_and(|t| label.starts_with(t.trim_end_matches("-sk")));
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .filter(|_| out.status.success() && fits)
        .map(str::to_string)
        .with_context(|| format!("ssh-keygen cannot read the host key {}", key.kind))
}

/// How known_hosts names the server.
fn known_hosts_name(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if p != 22 => format!("[{host}]:{p}"),
        _ => host.to_string(),
    }
}

/// Writes `name key` into `file`, replacing the lines that named the
/// server and keeping the others.
fn pin(file: &Path, name: &str, key: &HostKey) -> Result<()> {
    let old = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let mut text: String = old
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{name} {key}\n"));
    write_atomic(file, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", file.display()))
}

/// The config file `init` writes: the settings it knows, the rest as
/// comments with their defaults.
fn config_text(uri: &ServerUri, node: &Name, ssh: bool) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut t = String::from(
        "# disco's configuration, written by `disco init`. Every key and its\n\
         # default: `disco config`. Drop-ins in /etc/disco/disco.d/*.toml win.\n\n",
    );
    t.push_str(&format!("server = {}\n", quote(&uri.to_string())));
    t.push_str(&format!("node = {}\n", quote(node.as_str())));
    if ssh {
        t.push_str(&format!(
            "ssh_identity = {}\nssh_known_hosts = {}\n",
            quote(&format!("/{ETC}/id_ed25519")),
            quote(&format!("/{ETC}/known_hosts"))
        ));
    }
    // The packaged defaults: reports go to the server, and each dance
    // also previews a candidate.
    t.push_str(
        "# Send each dance's report to the server, and after each dance noop\n\
         # the candidate the server offers on this root and upload that report.\n\
         report_upload = true\n\
         preview = true\n",
    );
    t.push_str(
        "\n# Every other key with its default, explained:\n\
         # /usr/share/disco/disco.toml (the .deb installs it).\n",
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packaged file sets `report_upload` and `preview`: init on a
    /// freshly installed node must still write its config (it failed in
    /// the booted test once the package set them).
    #[test]
    fn the_packaged_config_is_not_an_admins_settings() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disco.toml");
        fs::write(&p, PACKAGED_CONFIG).unwrap();
        assert!(!has_settings(&p).unwrap());
        fs::write(&p, format!("{PACKAGED_CONFIG}jobs = 2\n")).unwrap();
        assert!(has_settings(&p).unwrap());
        fs::write(&p, "# only comments\n\n").unwrap();
        assert!(!has_settings(&p).unwrap());
    }

    #[test]
    fn host_keys_parse_from_keys_and_known_hosts_lines_only() {
        let blob = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let k = HostKey::parse(&format!("ssh-ed25519 {blob} root@srv")).unwrap();
        assert_eq!(k.to_string(), format!("ssh-ed25519 {blob}"));
        assert_eq!(
            HostKey::parse(&format!("[h]:2222 ssh-ed25519 {blob}")),
            Some(k)
        );
        assert_eq!(HostKey::parse("ssh-ed25519"), None);
        assert_eq!(HostKey::parse("ssh-ed25519 not*base64!!!!!!!!!!"), None);
        assert_eq!(HostKey::parse(&format!("a b ssh-ed25519 {blob}")), None);
        assert_eq!(HostKey::parse("SHA256:abc"), None);
    }

    #[test]
    fn known_hosts_names_a_non_default_port_in_brackets() {
        assert_eq!(known_hosts_name("srv", None), "srv");
        assert_eq!(known_hosts_name("srv", Some(22)), "srv");
        assert_eq!(known_hosts_name("10.0.0.1", Some(2222)), "[10.0.0.1]:2222");
    }

    #[test]
    fn the_written_config_loads_with_the_given_settings() {
        let uri = ServerUri::parse("ssh://disco@cfg:2222/srv/disco").unwrap();
        let node = Name::parse("web1", "test").unwrap();
        let text = config_text(&uri, &node, true);
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(v["server"].as_str(), Some("ssh://disco@cfg:2222/srv/disco"));
        assert_eq!(v["node"].as_str(), Some("web1"));
        assert_eq!(v["ssh_identity"].as_str(), Some("/etc/disco/id_ed25519"));
        assert_eq!(v["preview"].as_bool(), Some(true));
    }
}
