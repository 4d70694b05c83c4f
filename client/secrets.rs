//! Secret parameters: every value under the `secrets/` key of a node or
//! group is stored in the server tree as an age-encrypted file, encrypted
//! to the SSH keys of the nodes that may read it and to the admins' keys;
//! only a node (with its own key) and an admin (with theirs) ever hold the
//! plaintext. The server and git hold ciphertext only.
//!
//! Owns: where the recipients are recorded (`recipients/admins`,
//! `parameters/NODE/node.pub`), who may read a layer's secrets (the nodes
//! whose layers include it, plus the admins), the file format (ASCII-armored
//! age) and its header's recipient tags, encryption and decryption, and the
//! node side: opening the merged parameters with the node's key. The
//! `disco secret` commands are in `commands/secret.rs`; `disco lint` uses
//! [`Fleet`] to refuse plaintext and undecryptable secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;

use crate::names::Name;
use crate::params::ParamTree;
use crate::tree::ServerTree;

/// The admins' recipients, relative to the tree's root: one key a line.
pub const ADMINS: &str = "recipients/admins";
/// A node's public key, in its own directory: `parameters/NODE/node.pub`.
pub const NODE_KEY: &str = "node.pub";
/// The top-level parameter key whose values are secrets.
pub const SECRETS: &str = "secrets";

const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &[u8] = b"-----END AGE ENCRYPTED FILE-----";
const BINARY_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// A secret is a value, not a payload (the same bound as any parameter).
const MAX_SECRET: u64 = 16 << 20;

/// True when `bytes` is an age file (armored or binary).
pub fn is_encrypted(bytes: &[u8]) -> bool {
    let t = bytes.trim_ascii_start();
    t.starts_with(ARMOR_BEGIN) || t.starts_with(BINARY_MAGIC)
}

/// One key a secret is encrypted to, with the name `disco secret list`
/// shows for it.
#[derive(Clone)]
pub struct Recipient {
    /// Who it is: a node's name, or an admin key's comment.
    pub name: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// An OpenSSH key (`ssh-ed25519`, `ssh-rsa`) and its age stanza tag.
    Ssh(age::ssh::Recipient, [u8; 4]),
    /// A native age key (`age1…`): its stanzas name no recipient.
    Age(age::x25519::Recipient),
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient")
            .field("name", &self.name)
            .field("tag", &self.ssh_tag().map(tag_hex))
            .finish()
    }
}

impl Recipient {
    /// Parses one line: `ssh-ed25519 AAAA… [comment]`, `ssh-rsa AAAA…
    /// [comment]` or `age1…`. `name` is used when the line has no comment;
    /// `shown` names the line in errors.
    pub fn parse(line: &str, name: &str, shown: &str) -> Result<Recipient> {
        let line = line.trim();
        if line.starts_with("age1") {
            let r: age::x25519::Recipient = line
                .parse()
                .map_err(|e| anyhow!("{shown}: not an age recipient: {e}"))?;
            return Ok(Recipient {
                name: name.to_string(),
                kind: Kind::Age(r),
            });
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(kind), Some(blob)) = (words.first(), words.get(1)) else {
            bail!(
                "{shown}: expected `ssh-ed25519 KEY [comment]`, `ssh-rsa KEY [comment]` or `age1…`"
            );
        };
        let r: age::ssh::Recipient = format!("{kind} {blob}").parse().map_err(|e| {
            anyhow!(
                "{shown}: not an SSH public key age can encrypt to ({}): use an ssh-ed25519 or ssh-rsa key",
                match e {
                    age::ssh::ParseRecipientKeyError::Unsupported(t) => format!("{t} is not supported"),
                    age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => "RSA key under 2048 bits".into(),
                    age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => "RSA key too large".into(),
                    _ => "unreadable".into(),
                }
            )
        })?;
        let wire = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|_| anyhow!("{shown}: the key is not base64"))?;
        let tag = ssh_tag(&wire);
        let comment = words[2..].join(" ");
        Ok(Recipient {
            name: if comment.is_empty() {
                name.to_string()
            } else {
                comment
            },
            kind: Kind::Ssh(r, tag),
        })
    }

    /// The tag age writes in an SSH stanza for this key (`None` for an
    /// age key, whose stanzas are anonymous).
    pub fn ssh_tag(&self) -> Option<[u8; 4]> {
        match &self.kind {
            Kind::Ssh(_, t) => Some(*t),
            Kind::Age(_) => None,
        }
    }

    fn as_age(&self) -> &dyn age::Recipient {
        match &self.kind {
            Kind::Ssh(r, _) => r,
            Kind::Age(r) => r,
        }
    }
}

/// The first 4 bytes of SHA-256 of the key's wire form: age's stanza tag.
fn ssh_tag(wire: &[u8]) -> [u8; 4] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(wire);
    [d[0], d[1], d[2], d[3]]
}

fn tag_hex(t: [u8; 4]) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a recipients file: one key a line, `#` comments and blank lines
/// skipped. A missing file is no recipient.
pub fn read_recipients(path: &Path, shown: &str) -> Result<Vec<Recipient>> {
    let Some(bytes) = crate::fsutil::read_small(path, shown, 1 << 20)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{shown} is not UTF-8 text"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{shown}:{}", i + 1);
        out.push(Recipient::parse(line, &at, &at)?);
    }
    Ok(out)
}

/// Who an age file is encrypted to, read from its header without any key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The tags of its SSH stanzas.
    pub ssh_tags: BTreeSet<[u8; 4]>,
    /// How many stanzas name no recipient (age `X25519` keys).
    pub anonymous: usize,
}

impl Header {
    /// Reads the header of an armored or binary age file.
    pub fn read(bytes: &[u8]) -> Result<Header> {
        let binary = dearmor(bytes)?;
        let Some(body) = binary.strip_prefix(BINARY_MAGIC) else {
            bail!("not an age file (version line missing)");
        };
        let mut h = Header::default();
        for line in body.split(|&b| b == b'\n') {
            if line.starts_with(b"---") {
                return Ok(h);
            }
            let Some(stanza) = line.strip_prefix(b"-> ") else {
                continue;
            };
            let words: Vec<&[u8]> = stanza.split(|&b| b == b' ').collect();
            match words.as_slice() {
                [kind, tag, ..] if *kind == b"ssh-ed25519" || *kind == b"ssh-rsa" => {
                    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(tag)
                        .ok()
                        .filter(|t| t.len() == 4)
                        .ok_or_else(|| anyhow!("a bad SSH stanza tag in its header"))?;
                    h.ssh_tags.insert([raw[0], raw[1], raw[2], raw[3]]);
                }
                [kind, ..] if *kind == b"X25519" => h.anonymous += 1,
                // age adds a random "grease" stanza no key opens.
                _ => {}
            }
        }
        bail!("its age header has no end")
    }

    /// True when the file is encrypted exactly to `recipients` (as far as
    /// a header tells: SSH keys by tag, age keys by count).
    pub fn matches(&self, recipients: &[Recipient]) -> bool {
        let tags: BTreeSet<[u8; 4]> = recipients.iter().filter_map(Recipient::ssh_tag).collect();
        let anonymous = recipients.iter().filter(|r| r.ssh_tag().is_none()).count();
        tags == self.ssh_tags && anonymous == self.anonymous
    }

    /// True when `r` can open the file (for an age key: when there is any
    /// anonymous stanza at all).
    pub fn includes(&self, r: &Recipient) -> bool {
        match r.ssh_tag() {
            Some(t) => self.ssh_tags.contains(&t),
            None => self.anonymous > 0,
        }
    }
}

/// The binary age file inside an armored one (a binary one as it is).
fn dearmor(bytes: &[u8]) -> Result<Vec<u8>> {
    let t = bytes.trim_ascii();
    let Some(inner) = t.strip_prefix(ARMOR_BEGIN) else {
        return Ok(bytes.to_vec());
    };
    let Some(inner) = inner.strip_suffix(ARMOR_END) else {
        bail!("its armor has no END line");
    };
    let b64: Vec<u8> = inner
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| anyhow!("its armor is not base64"))
}

/// Encrypts `plaintext` to every recipient, ASCII-armored (text a git
/// diff can show).
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>> {
    use age::armor::{ArmoredWriter, Format};
    if recipients.is_empty() {
        bail!("no recipient to encrypt to");
    }
    let enc = age::Encryptor::with_recipients(recipients.iter().map(Recipient::as_age))
        .map_err(|e| anyhow!("cannot encrypt: {e}"))?;
    let mut out = Vec::with_capacity(plaintext.len() * 2 + 512);
    let armored = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)?;
    let mut w = enc.wrap_output(armored)?;
    w.write_all(plaintext)?;
    w.finish()?.finish()?;
    Ok(out)
}

/// The identities in an identity file: an OpenSSH private key (the
/// node's, or an admin's) or an age identity file. A key protected by a
/// passphrase asks for it on the terminal.
pub fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>> {
    identities(&read_key(path)?, path)
}

/// A key file's bytes (bounded, never followed).
fn read_key(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    crate::fsutil::read_small(path, &shown, 1 << 20)
        .with_context(|| format!("cannot read the key {shown}"))?
        .ok_or_else(|| anyhow!("no key at {shown}"))
}

/// The identities in a key file's bytes (`path` names it).
fn identities(bytes: &[u8], path: &Path) -> Result<Vec<Box<dyn age::Identity>>> {
    let shown = path.display().to_string();
    if bytes.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        || bytes.starts_with(b"-----BEGIN RSA PRIVATE KEY-----")
    {
        let id = age::ssh::Identity::from_buffer(bytes, Some(shown.clone()))
            .map_err(|e| anyhow!("{shown}: not an SSH private key age can use: {e}"))?;
        return match id {
            age::ssh::Identity::Unsupported(k) => {
                bail!(
                    "{shown}: {} keys cannot decrypt age files: use an ed25519 or RSA key",
                    key_kind(&k)
                )
            }
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(id)]),
            age::ssh::Identity::Encrypted(_) => Ok(vec![Box::new(id.with_callbacks(Terminal))]),
        };
    }
    let file = age::IdentityFile::from_buffer(io::BufReader::new(bytes))
        .map_err(|e| anyhow!("{shown} is not a key age can use (an OpenSSH ed25519 or RSA private key, or an age identity file): {e}"))?
        .with_callbacks(Terminal);
    let ids: Vec<Box<dyn age::Identity>> = file
        .into_identities()
        .map_err(|e| anyhow!("cannot use the key {shown}: {e}"))?
        .into_iter()
        .map(|i| i as Box<dyn age::Identity>)
        .collect();
    if ids.is_empty() {
        bail!("{shown} holds no key");
    }
    Ok(ids)
}

fn key_kind(k: &age::ssh::UnsupportedKey) -> String {
    match k {
        age::ssh::UnsupportedKey::Type(t) | age::ssh::UnsupportedKey::Hardware(t) => t.clone(),
        _ => "such".into(),
    }
}

/// Asks for a key's passphrase on the controlling terminal, if any.
#[derive(Clone, Copy)]
struct Terminal;

impl age::Callbacks for Terminal {
    fn display_message(&self, message: &str) {
        eprintln!("{message}");
    }
    fn confirm(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }
    fn request_public_string(&self, _: &str) -> Option<String> {
        None
    }
    fn request_passphrase(&self, description: &str) -> Option<age::secrecy::SecretString> {
        read_hidden(&format!("{description}: "))
            .ok()
            .map(|s| age::secrecy::SecretString::from(s.trim_end_matches('\n').to_string()))
    }
}

/// Reads one line from the terminal (`/dev/tty`) without echoing it.
pub fn read_hidden(prompt: &str) -> Result<String> {
    use nix::sys::termios::{self, LocalFlags, SetArg};
    let mut tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask on")?;
    let before = termios::tcgetattr(&tty).context("cannot read the terminal's settings")?;
    let mut quiet = before.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    // Echo goes off before the prompt shows: nothing typed after it echoes.
    termios::tcsetattr(&tty, SetArg::TCSANOW, &quiet).context("cannot turn echo off")?;
    if let Err(e) = tty.write_all(prompt.as_bytes()) {
        let _ = termios::tcsetattr(&tty, SetArg::TCSANOW, &before);
        return Err(e).context("cannot write to the terminal");
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = loop {
        match tty.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    let _ = termios::tcsetattr(&tty, SetArg::TCSANOW, &before);
    read.context("cannot read from the terminal")?;
    String::from_utf8(line).map_err(|_| anyhow!("the value is not UTF-8 text"))
}

/// Decrypts an age file with any of `ids`.
pub fn decrypt(ids: &[Box<dyn age::Identity>], bytes: &[u8]) -> Result<Vec<u8>> {
    use age::armor::ArmoredReader;
    let d = age::Decryptor::new_buffered(ArmoredReader::new(bytes))
        .map_err(|e| anyhow!("not a readable age file: {e}"))?;
    let mut r = d
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => anyhow!("not encrypted to this key"),
            e => anyhow!("{e}"),
        })?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| anyhow!("damaged ciphertext: {e}"))?;
    Ok(out)
}

/// One secret file of a server tree.
#[derive(Debug, Clone)]
pub struct SecretFile {
    /// The node or group whose `parameters/` holds it.
    pub layer: Name,
    /// Its key, `secrets/…`.
    pub key: String,
    /// Where it is, relative to the tree (`parameters/L/parameters/secrets/…`).
    pub rel: String,
    pub path: PathBuf,
}

/// A server tree seen for its secrets: the admins' keys, every node with
/// its layers and recorded key.
pub struct Fleet {
    pub root: PathBuf,
    pub tree: ServerTree,
    pub admins: Vec<Recipient>,
    /// Each node: its layers (groups, then itself) and its key, when one
    /// is recorded.
    pub nodes: BTreeMap<Name, NodeKeys>,
}

/// A node's layers and recorded key.
pub struct NodeKeys {
    pub layers: Vec<Name>,
    /// `None`: `parameters/NODE/node.pub` is missing; `Some(Err)`: it is
    /// there but unusable (the message says why).
    pub key: Option<Result<Recipient, String>>,
}

impl NodeKeys {
    /// The key, or why there is none usable.
    pub fn usable(&self, n: &Name) -> Result<&Recipient, String> {
        match &self.key {
            Some(Ok(k)) => Ok(k),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!(
                "node {n} has no recorded key: add parameters/{n}/{NODE_KEY} (the line `disco init` printed on {n}, or its /etc/disco/id_ed25519.pub)"
            )),
        }
    }
}

impl Fleet {
    /// Reads the tree at `root`: the admins, the nodes (every
    /// `parameters/` entry that no entry lists as a group), their groups
    /// and keys. A node whose groups cannot be resolved is an error.
    pub fn open(root: &Path) -> Result<Fleet> {
        let tree = ServerTree::open(root)?;
        if !root.join("parameters").is_dir() {
            bail!(
                "{} is not a server tree: it has no parameters/ directory",
                root.display()
            );
        }
        let admins = read_recipients(&root.join(ADMINS), ADMINS)?;
        let layers: Vec<Name> = tree
            .names_in("parameters")?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let specs = tree
            .nodes(&layers)
            .iter()
            .map(|n| tree.node(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fleet::from_specs(root, tree, admins, &specs))
    }

    /// The fleet of nodes already resolved (`disco lint` has them).
    pub fn from_specs(
        root: &Path,
        tree: ServerTree,
        admins: Vec<Recipient>,
        specs: &[crate::tree::NodeSpec],
    ) -> Fleet {
        let nodes = specs
            .iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    NodeKeys {
                        layers: spec.layers.clone(),
                        key: node_key(&tree, &spec.name),
                    },
                )
            })
            .collect();
        Fleet {
            root: root.to_path_buf(),
            tree,
            admins,
            nodes,
        }
    }

    /// The nodes whose layers include `layer` (a node reads its own).
    pub fn readers(&self, layer: &Name) -> Vec<&Name> {
        self.nodes
            .iter()
            .filter(|(_, k)| k.layers.contains(layer))
            .map(|(n, _)| n)
            .collect()
    }

    /// Every key `layer`'s secrets are for: its readers' and the admins'.
    /// Refused when a reader has no usable key.
    pub fn recipients(&self, layer: &Name) -> Result<Vec<Recipient>> {
        let mut out = Vec::new();
        for n in self.readers(layer) {
            out.push(self.nodes[n].usable(n).map_err(|e| anyhow!(e))?.clone());
        }
        out.extend(self.admins.iter().cloned());
        Ok(out)
    }

    /// Every secret file of every node and group, in path order.
    pub fn secret_files(&self) -> Result<Vec<SecretFile>> {
        let mut out = Vec::new();
        for (layer, _) in self.tree.names_in("parameters")? {
            let Some(dir) = self.tree.layer_dir(&layer)? else {
                continue;
            };
            let base = dir.join("parameters").join(SECRETS);
            let rel = format!("parameters/{layer}/parameters/{SECRETS}");
            walk_secrets(&base, &rel, SECRETS, &layer, &mut out, 0)?;
        }
        Ok(out)
    }

    /// The layer a `--node N` or `--group G` names, checked.
    pub fn layer(&self, node: Option<&str>, group: Option<&str>) -> Result<Name> {
        match (node, group) {
            (Some(n), None) => {
                let n = Name::parse(n, "node")?;
                if !self.nodes.contains_key(&n) {
                    if self.tree.layer_dir(&n)?.is_some() {
                        bail!("{n} is a group (another entry of parameters/ lists it): use --group {n}");
                    }
                    bail!("no node {n}: {} has no parameters/{n}", self.root.display());
                }
                Ok(n)
            }
            (None, Some(g)) => {
                let g = Name::parse(g, "group")?;
                if self.tree.layer_dir(&g)?.is_none() {
                    bail!(
                        "no group {g}: {} has no parameters/{g}",
                        self.root.display()
                    );
                }
                if self.nodes.contains_key(&g) {
                    bail!("{g} is a node (no entry of parameters/ lists it as a group): use --node {g}");
                }
                Ok(g)
            }
            _ => bail!("give --node NODE or --group GROUP"),
        }
    }

    /// A name for each key a header names: nodes by name, admins by comment.
    pub fn name_of(&self, tag: [u8; 4]) -> String {
        for (n, k) in &self.nodes {
            if k.usable(n).ok().and_then(Recipient::ssh_tag) == Some(tag) {
                return n.to_string();
            }
        }
        for a in &self.admins {
            if a.ssh_tag() == Some(tag) {
                return format!("admin {}", a.name);
            }
        }
        format!("unknown key {}", tag_hex(tag))
    }
}

/// `parameters/NODE/node.pub`, read and parsed (`None`: not there).
fn node_key(tree: &ServerTree, n: &Name) -> Option<Result<Recipient, String>> {
    let rel = format!("parameters/{n}/{NODE_KEY}");
    let dir = match tree.layer_dir(n) {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => return Some(Err(e.to_string())),
    };
    let path = dir.join(NODE_KEY);
    if fs::symlink_metadata(&path).is_err() {
        return None;
    }
    Some(
        match read_recipients(&path, &rel).map_err(|e| format!("{e:#}")) {
            Err(e) => Err(e),
            Ok(list) => match list.as_slice() {
                [one] => Ok(Recipient {
                    name: n.to_string(),
                    kind: one.kind.clone(),
                }),
                _ => Err(format!("{rel}: one key a node, not {}", list.len())),
            },
        },
    )
}

fn walk_secrets(
    dir: &Path,
    rel: &str,
    key: &str,
    layer: &Name,
    out: &mut Vec<SecretFile>,
    depth: usize,
) -> Result<()> {
    if depth > crate::fsutil::MAX_DEPTH {
        bail!("{rel}: too deep");
    }
    // `secrets` itself a file (or a symlink) is a value the node takes
    // for a secret: said as such, not as "Not a directory (os error 20)".
    if depth == 0 {
        match fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => bail!(
                "{rel}: a secret is a file under {SECRETS}/, not {SECRETS} itself: move its value to {SECRETS}/NAME with `disco secret set`"
            ),
            _ => {}
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| rel.to_string()),
    };
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| rel.to_string())?;
    names.sort();
    for raw in names {
        let shown = format!("{rel}/{}", raw.to_string_lossy());
        let name = Name::parse_os(&raw, &shown)?;
        let path = dir.join(&raw);
        let meta = fs::symlink_metadata(&path).with_context(|| shown.clone())?;
        let k = format!("{key}/{name}");
        if meta.is_dir() {
            walk_secrets(&path, &shown, &k, layer, out, depth + 1)?;
        } else if meta.is_file() {
            out.push(SecretFile {
                layer: layer.clone(),
                key: k,
                rel: shown,
                path,
            });
        } else {
            bail!("{shown}: a secret must be a plain file (not a symlink or special file)");
        }
    }
    Ok(())
}

/// Reads a secret file (bounded, never followed).
pub fn read_secret(f: &SecretFile) -> Result<Vec<u8>> {
    crate::fsutil::read_small(&f.path, &f.rel, MAX_SECRET)?
        .ok_or_else(|| anyhow!("{} went away while it was read", f.rel))
}

/// The node's merged parameters ([`crate::params::merged`]) with its
/// secrets opened with its key `key_path`: what a dance, `disco shell`
/// and a retry of failed actions hand to the sandbox.
pub fn merged(
    tree: &ServerTree,
    node: &crate::tree::NodeSpec,
    plan: &crate::plan::Plan,
    key_path: &Path,
) -> Result<ParamTree> {
    let mut params = crate::params::merged(tree, node, plan)?;
    open_params(&mut params, &node.name, key_path, &|key| {
        crate::params::origin(tree, node, plan, key)
    })?;
    Ok(params)
}

/// The node side: decrypts, in place, every encrypted value under
/// `secrets/` of the merged parameters with the node's key `key_path`.
/// `origin(KEY)` says which file of the tree gave a value (for errors).
/// A plaintext value is kept, with a warning (a tree from before
/// encryption). Returns how many values were decrypted.
pub fn open_params(
    params: &mut ParamTree,
    node: &Name,
    key_path: &Path,
    origin: &dyn Fn(&str) -> String,
) -> Result<usize> {
    let sealed = take_sealed(params, origin)?;
    if sealed.is_empty() {
        return Ok(0);
    }
    if !key_path.exists() {
        bail!(
            "{} is encrypted, but this node has no key at {}: run `disco init`, or set ssh_identity to the node's key",
            sealed[0].0,
            key_path.display()
        );
    }
    let key_bytes = read_key(key_path)?;
    // Checked once here (and a passphrase asked for, if any), then read
    // again by each worker: an identity cannot cross threads.
    let first = identities(&key_bytes, key_path).context("the node's key, for its secrets")?;
    let opened = decrypt_all(&sealed, &key_bytes, key_path, &first);
    let mut plain: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for ((key, _), result) in sealed.iter().zip(opened) {
        let value = result.map_err(|e| {
            anyhow!(
                "{key} ({}) cannot be decrypted with this node's key {}: {e}; record this node's public key as parameters/{node}/{NODE_KEY} in the server tree and run `disco secret rekey` there",
                origin(key),
                key_path.display()
            )
        })?;
        plain.insert(key.clone(), value);
    }
    let count = plain.len();
    params.for_each_secret_mut(&mut |key, value| {
        if let Some(v) = plain.remove(key) {
            *value = v;
        }
        Ok(())
    })?;
    Ok(count)
}

/// Takes the encrypted values out of `params` (KEY and ciphertext, left
/// empty in place); a plaintext value is said and kept.
fn take_sealed(
    params: &mut ParamTree,
    origin: &dyn Fn(&str) -> String,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut sealed: Vec<(String, Vec<u8>)> = Vec::new();
    params.for_each_secret_mut(&mut |key, value| {
        if is_encrypted(value) {
            sealed.push((key.to_string(), std::mem::take(value)));
        } else {
            crate::output::warning(&format!(
                "{key} is not encrypted in the server tree ({}): any account that can read the tree can read it; encrypt it with `disco secret set`",
                origin(key)
            ));
        }
        Ok(())
    })?;
    Ok(sealed)
}

/// Opens each ciphertext of `sealed` (in its order) with the node's key:
/// `first` (already read) on one thread, or a few threads each reading
/// the key again from `key_bytes` (an identity cannot cross threads).
fn decrypt_all(
    sealed: &[(String, Vec<u8>)],
    key_bytes: &[u8],
    key_path: &Path,
    first: &[Box<dyn age::Identity>],
) -> Vec<Result<Vec<u8>>> {
    // Each opening is two X25519 operations (~0.1–0.2 ms): many secrets
    // are opened on every core.
    let asks = matches!(
        age::ssh::Identity::from_buffer(key_bytes, None),
        Ok(age::ssh::Identity::Encrypted(_))
    );
    let workers = if asks {
        1 // a passphrase is asked for once, by the one identity
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(sealed.len().div_ceil(16))
    };
    if workers <= 1 {
        sealed.iter().map(|(_, ct)| decrypt(first, ct)).collect()
    } else {
        let chunk = sealed.len().div_ceil(workers);
        std::thread::scope(|s| {
            let running: Vec<_> = sealed
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || -> Vec<Result<Vec<u8>>> {
                        match identities(key_bytes, key_path) {
                            Ok(ids) => part.iter().map(|(_, ct)| decrypt(&ids, ct)).collect(),
                            Err(e) => part.iter().map(|_| Err(anyhow!("{e:#}"))).collect(),
                        }
                    })
                })
                .collect();
            running
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err(anyhow!("a decryption thread panicked"))])
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
        let key = dir.join(name);
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let public = fs::read_to_string(key.with_extension("pub")).unwrap();
        (key, public)
    }

    #[test]
    fn encrypts_to_ssh_keys_and_reads_the_tags_back() {
        let d = tempfile::tempdir().unwrap();
        let (k1, p1) = keypair(d.path(), "node1");
        let (k2, p2) = keypair(d.path(), "admin");
        let (k3, _) = keypair(d.path(), "other");
        let r1 = Recipient::parse(&p1, "x", "p1").unwrap();
        let r2 = Recipient::parse(&p2, "x", "p2").unwrap();
        assert_eq!(r2.name, "admin");
        let ct = encrypt(&[r1.clone(), r2.clone()], b"Pa$$w'rd\n").unwrap();
        assert!(is_encrypted(&ct));
        assert!(ct.starts_with(ARMOR_BEGIN));
        let h = Header::read(&ct).unwrap();
        assert!(h.matches(&[r2.clone(), r1.clone()]));
        assert!(!h.matches(std::slice::from_ref(&r1)));
        assert!(h.includes(&r1));
        assert_eq!(
            decrypt(&load_identities(&k1).unwrap(), &ct).unwrap(),
            b"Pa$$w'rd\n"
        );
        assert_eq!(
            decrypt(&load_identities(&k2).unwrap(), &ct).unwrap(),
            b"Pa$$w'rd\n"
        );
        let e = decrypt(&load_identities(&k3).unwrap(), &ct).unwrap_err();
        assert_eq!(e.to_string(), "not encrypted to this key");
        assert!(!is_encrypted(b"hunter2\n"));
    }

    #[test]
    fn secrets_as_a_plain_value_is_named() {
        let d = tempfile::tempdir().unwrap();
        let params = d.path().join("parameters/n1/parameters");
        fs::create_dir_all(&params).unwrap();
        fs::create_dir_all(d.path().join("modules")).unwrap();
        fs::write(params.join(SECRETS), "hunter2\n").unwrap();
        let e = Fleet::open(d.path())
            .unwrap()
            .secret_files()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "parameters/n1/parameters/secrets: a secret is a file under secrets/, not secrets itself: move its value to secrets/NAME with `disco secret set`");
    }

    #[test]
    fn many_secrets_open_on_every_core_and_the_first_failure_is_named() {
        let d = tempfile::tempdir().unwrap();
        let (node_key, node_pub) = keypair(d.path(), "node");
        let (_, other_pub) = keypair(d.path(), "other");
        let to_node = [Recipient::parse(&node_pub, "n", "n").unwrap()];
        let to_other = [Recipient::parse(&other_pub, "o", "o").unwrap()];
        let node = Name::parse("n", "t").unwrap();
        let key = |i: usize| crate::params::Key::parse(&format!("secrets/s{i:02}")).unwrap();
        let mut params = ParamTree::default();
        for i in 0..40 {
            params.insert(
                &key(i),
                encrypt(&to_node, format!("v{i}").as_bytes()).unwrap(),
            );
        }
        params.insert(
            &crate::params::Key::parse("secrets/plain").unwrap(),
            b"in clear".to_vec(),
        );
        let mut opened = params.clone();
        assert_eq!(
            open_params(&mut opened, &node, &node_key, &|k| k.to_string()).unwrap(),
            40
        );
        for i in 0..40 {
            assert_eq!(
                opened.get(&key(i)),
                Some(&crate::params::Param::Value(format!("v{i}").into_bytes()))
            );
        }
        // Two that will not open: the first in key order is said.
        params.insert(&key(17), encrypt(&to_other, b"x").unwrap());
        params.insert(&key(33), encrypt(&to_other, b"y").unwrap());
        let e = open_params(&mut params, &node, &node_key, &|k| format!("from {k}")).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "secrets/s17 (from secrets/s17) cannot be decrypted with this node's key"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_recipients_say_where() {
        let e = Recipient::parse("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "x", "recipients/admins:3")
            .unwrap_err();
        assert!(e.to_string().starts_with("recipients/admins:3: "), "{e}");
        let e = Recipient::parse("hello", "x", "parameters/n/node.pub").unwrap_err();
        assert!(e.to_string().contains("expected `ssh-ed25519 KEY"), "{e}");
    }
}
