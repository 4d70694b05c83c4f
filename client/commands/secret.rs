//! `disco secret`: encrypts, shows, re-encrypts and lists the secret
//! parameters of a server tree (the admins' checkout). It reads no disco
//! configuration and needs no root: the keys are the nodes' recorded
//! public keys and the admin's own private key. The rules (who may read a
//! layer's secrets, the file format) are [`crate::secrets`]'.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::{SecretAction, SecretArgs, SecretOwner};
use crate::names::Name;
use crate::params::{Key, NewValue, ParamTree};
use crate::secrets::{self, Fleet, Header, Recipient};

/// Runs `disco secret`; the exit code.
pub fn run(args: &SecretArgs) -> Result<i32> {
    let fleet =
        Fleet::open(&args.tree).with_context(|| format!("server tree {}", args.tree.display()))?;
    match &args.action {
        SecretAction::Set { owner, key } => set(&fleet, owner, key),
        SecretAction::Show {
            owner,
            key,
            identity,
        } => show(&fleet, owner, key, identity.clone()),
        SecretAction::Rekey { identity, all } => rekey(&fleet, identity.clone(), *all),
        SecretAction::List => list(&fleet),
    }
}

/// A key under `secrets/`, checked.
fn secret_key(raw: &str) -> Result<Key> {
    let key = Key::parse(raw)?;
    if !ParamTree::is_secret(&key) || key.components().len() < 2 {
        bail!("'{raw}' is not a secret: secret keys are under secrets/ (e.g. secrets/{raw})");
    }
    Ok(key)
}

/// The layer's `parameters/` directory and where KEY's file is in it.
fn place(fleet: &Fleet, layer: &Name, key: &Key) -> Result<(PathBuf, String)> {
    let dir = fleet
        .tree
        .layer_dir(layer)?
        .ok_or_else(|| anyhow!("no parameters/{layer}"))?
        .join("parameters");
    Ok((dir, format!("parameters/{layer}/parameters/{key}")))
}

fn owner_layer(fleet: &Fleet, owner: &SecretOwner) -> Result<Name> {
    fleet.layer(owner.node.as_deref(), owner.group.as_deref())
}

fn names(rs: &[Recipient]) -> String {
    rs.iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn set(fleet: &Fleet, owner: &SecretOwner, raw: &str) -> Result<i32> {
    let layer = owner_layer(fleet, owner)?;
    let key = secret_key(raw)?;
    let recipients = fleet.recipients(&layer)?;
    if fleet.admins.is_empty() {
        bail!(
            "{} lists no key: add your SSH public key there (one key a line), or nobody could show or rekey this secret",
            secrets::ADMINS
        );
    }
    let (dir, rel) = place(fleet, &layer, &key)?;
    let value = read_value(&key)?;
    let sealed = secrets::encrypt(&recipients, &value)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::params::tree_set(&dir, &key, &NewValue::Value(sealed))?;
    println!("encrypted {rel} to {}", names(&recipients));
    if fleet.readers(&layer).is_empty() {
        crate::output::warning(&format!(
            "no node is in group {layer} yet: only the admins can read it; run `disco secret rekey` after adding one"
        ));
    }
    Ok(0)
}

/// The value: all of stdin, or typed twice at a prompt without echo.
fn read_value(key: &Key) -> Result<Vec<u8>> {
    let value = if io::stdin().is_terminal() {
        let first = secrets::read_hidden(&format!("value of {key} (not shown): "))?;
        let again = secrets::read_hidden("again: ")?;
        if first != again {
            bail!("the two values differ: nothing was written");
        }
        format!("{first}\n").into_bytes()
    } else {
        let mut buf = Vec::new();
        io::stdin()
            .take(16 << 20)
            .read_to_end(&mut buf)
            .context("cannot read the value from stdin")?;
        buf
    };
    if value.trim_ascii().is_empty() {
        bail!("the value is empty: nothing was written");
    }
    Ok(value)
}

/// `--identity`, else `~/.ssh/id_ed25519`.
fn identity_path(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set: give --identity FILE"))?;
    let p = Path::new(&home).join(".ssh/id_ed25519");
    if !p.exists() {
        bail!(
            "no key at {} (the default): give --identity FILE, a private key listed in {}",
            p.display(),
            secrets::ADMINS
        );
    }
    Ok(p)
}

fn show(fleet: &Fleet, owner: &SecretOwner, raw: &str, identity: Option<PathBuf>) -> Result<i32> {
    let layer = owner_layer(fleet, owner)?;
    let key = secret_key(raw)?;
    let (dir, rel) = place(fleet, &layer, &key)?;
    let path = dir.join(key.to_path());
    let bytes = crate::fsutil::read_small(&path, &rel, 16 << 20)?
        .ok_or_else(|| anyhow!("no secret {rel}"))?;
    let value = if secrets::is_encrypted(&bytes) {
        let id = identity_path(identity)?;
        let ids = secrets::load_identities(&id)?;
        secrets::decrypt(&ids, &bytes)
            .map_err(|e| anyhow!("{rel}: cannot decrypt with {}: {e}", id.display()))?
    } else {
        crate::output::warning(&format!(
            "{rel} is not encrypted: disco secret set {} {key}",
            owner_flag(fleet, &layer)
        ));
        bytes
    };
    let mut out = io::stdout().lock();
    out.write_all(&value)
        .and_then(|_| out.flush())
        .context("cannot write to stdout")?;
    Ok(0)
}

/// `--node N` or `--group G`, as the layer is.
pub fn owner_flag(fleet: &Fleet, layer: &Name) -> String {
    if fleet.nodes.contains_key(layer) {
        format!("--node {layer}")
    } else {
        format!("--group {layer}")
    }
}

fn rekey(fleet: &Fleet, identity: Option<PathBuf>, all: bool) -> Result<i32> {
    let files = fleet.secret_files()?;
    let mut ids = None;
    let (mut done, mut current, mut failed) = (0, 0, 0);
    for f in &files {
        let result = (|| -> Result<Option<String>> {
            let recipients = fleet.recipients(&f.layer)?;
            if fleet.admins.is_empty() {
                bail!("{} lists no key", secrets::ADMINS);
            }
            let bytes = secrets::read_secret(f)?;
            let (plain, note) = if secrets::is_encrypted(&bytes) {
                let h =
                    Header::read(&bytes).map_err(|e| anyhow!("not a readable age file: {e}"))?;
                if !all && h.matches(&recipients) {
                    return Ok(None);
                }
                if ids.is_none() {
                    let id = identity_path(identity.clone())?;
                    ids = Some((secrets::load_identities(&id)?, id));
                }
                let (ids, id) = ids.as_ref().expect("loaded above");
                let plain = secrets::decrypt(ids, &bytes)
                    .map_err(|e| anyhow!("cannot decrypt with {}: {e}", id.display()))?;
                (plain, String::new())
            } else {
                (
                    bytes,
                    " (it was plaintext: git's history still holds it; change the value)".into(),
                )
            };
            let sealed = secrets::encrypt(&recipients, &plain)?;
            crate::fsutil::write_atomic(&f.path, &sealed, 0o644)
                .with_context(|| format!("cannot write {}", f.rel))?;
            Ok(Some(format!(
                "re-encrypted {} to {}{note}",
                f.rel,
                names(&recipients)
            )))
        })();
        match result {
            Ok(Some(line)) => {
                println!("{line}");
                done += 1;
            }
            Ok(None) => current += 1,
            Err(e) => {
                crate::output::error(&format!("{}: {e:#}", f.rel));
                failed += 1;
            }
        }
    }
    println!("rekey: {done} re-encrypted, {current} up to date, {failed} failed");
    Ok(if failed > 0 { 1 } else { 0 })
}

fn list(fleet: &Fleet) -> Result<i32> {
    let mut bad = 0;
    let mut lines = Vec::new();
    for f in fleet.secret_files()? {
        let bytes = secrets::read_secret(&f)?;
        let mut notes = Vec::new();
        let who = if !secrets::is_encrypted(&bytes) {
            notes.push(format!(
                "NOT ENCRYPTED: disco secret set {} {}",
                owner_flag(fleet, &f.layer),
                f.key
            ));
            String::new()
        } else {
            match Header::read(&bytes) {
                Err(e) => {
                    notes.push(format!("unreadable: {e}"));
                    String::new()
                }
                Ok(h) => {
                    let mut who: Vec<String> =
                        h.ssh_tags.iter().map(|t| fleet.name_of(*t)).collect();
                    // Nodes, then admins, then keys nobody has recorded.
                    who.sort_by_key(|w| {
                        let rank = if w.starts_with("unknown key ") {
                            2
                        } else if w.starts_with("admin ") {
                            1
                        } else {
                            0
                        };
                        (rank, w.clone())
                    });
                    if h.anonymous > 0 {
                        who.push(format!("{} age key(s)", h.anonymous));
                    }
                    match fleet.recipients(&f.layer) {
                        Err(e) => notes.push(e.to_string()),
                        Ok(r) if !h.matches(&r) => {
                            let missing: Vec<&str> = r
                                .iter()
                                .filter(|r| !h.includes(r))
                                .map(|r| r.name.as_str())
                                .collect();
                            if missing.is_empty() {
                                notes.push(
                                    "encrypted to keys that should not read it: disco secret rekey"
                                        .into(),
                                );
                            } else {
                                notes.push(format!(
                                    "not readable by {}: disco secret rekey",
                                    missing.join(", ")
                                ));
                            }
                        }
                        Ok(_) => {}
                    }
                    who.join(", ")
                }
            }
        };
        if !notes.is_empty() {
            bad += 1;
        }
        let mut line = format!("{}: {who}", f.rel);
        for n in notes {
            line.push_str(&format!(" [{n}]"));
        }
        lines.push(line);
    }
    super::print_lines(lines)?;
    Ok(if bad > 0 { 1 } else { 0 })
}
