//! The SSH transport's client: runs the system `ssh` (BatchMode,
//! StrictHostKeyChecking, ConnectTimeout), speaks the serve protocol over
//! its stdin/stdout, and brings the cache up to the server's snapshot.
//!
//! Owns the sync: compare root hashes (one round trip when nothing
//! changed), descend only into directories whose hash differs, reuse
//! unchanged files from the old cache by hard link, fetch changed files as
//! fast_rsync deltas against the old copy (signature sized from the file),
//! new ones whole, verify every file's md5, and build the new cache beside
//! the old one so a broken transfer leaves the old cache untouched.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use super::deadline::{Deadline, Timed};
use super::manifest::{self, dir_hash, join, Manifest};
use super::serve::MAX_DELTA_FILE;
use super::wire::{Entry, Msg, Wire, VERSION};
use super::ServerUri;
use crate::names::Name;

/// ssh settings from the config.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub options: Vec<String>,
    pub connect_timeout: u64,
    /// Seconds of silence before giving up (0: the default, 60).
    pub io_timeout: u64,
    /// Seconds a whole session may take (0: the default, 3600).
    pub fetch_timeout: u64,
    /// Largest file accepted, in bytes (0: the default, 1 GiB).
    pub max_file_size: u64,
}

/// What a fetch moved.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub snapshot: String,
    pub unchanged: bool,
    pub whole: usize,
    pub deltas: usize,
    pub reused: usize,
    /// Parameter layers and modules taken unchanged from the store.
    pub reused_units: usize,
    pub sent: u64,
    pub received: u64,
}

/// The manifest of the cache, kept beside its content.
pub const CACHE_MANIFEST: &str = ".manifest.json";

/// The ssh command line for `uri`.
pub fn ssh_command(uri: &ServerUri, opts: &SshOptions, remote: &[&str]) -> Result<Command> {
    let ServerUri::Ssh {
        user, host, port, ..
    } = uri
    else {
        bail!("not an ssh:// server: {uri}");
    };
    let mut c = Command::new("ssh");
    c.args([
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ]);
    c.arg("-o")
        .arg(format!("ConnectTimeout={}", opts.connect_timeout.max(1)));
    if let Some(k) = &opts.known_hosts {
        c.arg("-o")
            .arg(format!("UserKnownHostsFile={}", k.display()));
    }
    if let Some(i) = &opts.identity {
        c.arg("-i").arg(i).args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(p) = port {
        c.arg("-p").arg(p.to_string());
    }
    if let Some(u) = user {
        c.arg("-l").arg(u);
    }
    for o in &opts.options {
        c.arg("-o").arg(o);
    }
    c.arg("--").arg(host).args(remote);
    Ok(c)
}

/// Collects ssh's stderr in a thread, keeping its last 64 KiB: a server
/// cannot fill memory through it.
fn collect_stderr(mut err_pipe: std::process::ChildStderr) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = err_pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&chunk[..n]));
                if s.len() > MAX_STDERR {
                    let cut = s.len() - MAX_STDERR / 2;
                    let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                    s.drain(..cut);
                }
            }
        }
    });
    stderr
}

/// The wire to ssh: both pipe ends with deadlines.
pub type SshWire = Wire<BufReader<Timed<ChildStdout>>, BufWriter<Timed<ChildStdin>>>;

/// A running `ssh` with the protocol on its pipes and its stderr collected.
/// Dropping it ends ssh (closed stdin, then killed after a short grace).
pub struct Session {
    child: Child,
    pub wire: SshWire,
    stderr: Arc<Mutex<String>>,
    uri: String,
    /// Largest file accepted from this server.
    pub max_file_size: u64,
}

/// How much of ssh's stderr is kept for the error message.
const MAX_STDERR: usize = 64 << 10;

/// What the server's welcome said of the session it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Welcomed {
    /// The snapshot served (`-` for a tree served as it is).
    pub snapshot: String,
    /// The root hash of the node's view of it.
    pub root: String,
    /// In a session of the node's current: the candidate snapshot's id
    /// when one is published and differs from it.
    pub candidate: Option<String>,
}

impl Session {
    /// Starts ssh and does the handshake for `node`: of the candidate
    /// snapshot with `candidate` (a preview), else of the node's current.
    ///
    /// Long because the handshake's error cases (ssh itself, the protocol version, an unexpected answer) are each said here.
    pub fn open(
        uri: &ServerUri,
        node: &Name,
        opts: &SshOptions,
        candidate: bool,
    ) -> Result<(Session, Welcomed)> {
        let ServerUri::Ssh { path, .. } = uri else {
            bail!("not an ssh:// server: {uri}")
        };
        let mut cmd = ssh_command(uri, opts, &["disco", "serve", "--root", path])?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("cannot run ssh (is openssh-client installed?)")?;
        let stderr = collect_stderr(child.stderr.take().expect("piped"));
        let deadline = Deadline::new(
            if opts.io_timeout == 0 {
                60
            } else {
                opts.io_timeout
            },
            if opts.fetch_timeout == 0 {
                3600
            } else {
                opts.fetch_timeout
            },
        );
        let wire = Wire::new(
            BufReader::with_capacity(
                1 << 20,
                Timed::new(child.stdout.take().expect("piped"), deadline, false),
            ),
            BufWriter::with_capacity(
                1 << 16,
                Timed::new(child.stdin.take().expect("piped"), deadline, true),
            ),
        );
        let mut s = Session {
            child,
            wire,
            stderr,
            uri: uri.to_string(),
            max_file_size: if opts.max_file_size == 0 {
                1 << 30
            } else {
                opts.max_file_size
            },
        };
        let hello = s.wire.say(
            &Msg::Hello {
                version: VERSION,
                node: node.to_string(),
                max_file_size: s.max_file_size,
                candidate,
            },
            &[],
        );
        let answer = hello
            .map_err(anyhow::Error::from)
            .and_then(|_| s.wire.recv());
        match answer {
            Ok((
                Msg::Welcome {
                    version,
                    snapshot,
                    root,
                    candidate,
                    ..
                },
                _,
            )) if version == VERSION => {
                // Its id is printed and goes into a report: a snapshot
                // name, or the session is refused.
                if let Some(Err(e)) = candidate
                    .as_deref()
                    .map(|c| Name::parse(c, "the candidate's snapshot id in the welcome"))
                {
                    return Err(s.failure(e.into()));
                }
                Ok((
                    s,
                    Welcomed {
                        snapshot,
                        root,
                        candidate,
                    },
                ))
            }
            Ok((Msg::Welcome { version, .. }, _)) => {
                let e = anyhow!(
                    "protocol version mismatch: it speaks {version}, this client {VERSION}"
                );
                Err(s.failure(e))
            }
            Ok((other, _)) => {
                let e = anyhow!("unexpected answer {}", super::wire::describe(&other));
                Err(s.failure(e))
            }
            Err(e) => Err(s.failure(e)),
        }
    }

    /// Ends ssh: closes its stdin (so it and the server see EOF), waits a
    /// short grace, then kills it. Returns its exit status if it exited.
    fn end(&mut self) -> Option<std::process::ExitStatus> {
        self.wire.writer().get_mut().close();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }

    /// The error to show when the session failed — ssh's own words if it
    /// died, the server's or the protocol's otherwise — after ending ssh
    /// (never waiting on it with its stdin open).
    pub fn failure(&mut self, e: anyhow::Error) -> anyhow::Error {
        let status = self.end();
        if let Some(peer) = e.downcast_ref::<super::wire::PeerError>() {
            return anyhow!("server {}: {peer}", self.uri);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return anyhow!("server {} {io}", self.uri);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let said = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let last = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        match status {
            Some(st) if !st.success() && !last.is_empty() => {
                anyhow!("cannot reach server {}: {last}", self.uri)
            }
            _ => anyhow!("server {}: {e:#}", self.uri),
        }
    }

    /// Says goodbye and ends ssh.
    pub fn close(mut self) -> Result<()> {
        let _ = self.wire.say(&Msg::Bye, &[]);
        self.end();
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.end();
        }
    }
}

/// Brings `new` (a fresh directory) to the server's snapshot for `node`,
/// reusing `old` (the current cache, if any). Returns the new manifest.
///
/// The stages are [`descend`], [`lay_out_units`], [`fill_units`],
/// [`fetch_files`] and [`seal_units`], in the order the cache is built.
pub fn sync(
    s: &mut Session,
    root_hash: &str,
    old_dir: &Path,
    old: &Manifest,
    new_dir: &Path,
    store: &Path,
    stats: &mut Stats,
) -> Result<Manifest> {
    let m = descend(s, root_hash, old)?;
    let building = lay_out_units(&m, new_dir, store, stats)?;
    let dst_of = |path: &str| -> Option<PathBuf> {
        let mut parts = path.splitn(3, '/');
        let unit = format!("{}/{}", parts.next()?, parts.next()?);
        let (tmp, _) = building.get(&unit)?;
        Some(match parts.next() {
            Some(rest) => tmp.join(rest),
            None => tmp.clone(),
        })
    };
    let filled = fill_units(&m, old_dir, old, &dst_of, stats)?;
    fetch_files(s, old_dir, &dst_of, filled.requests, stats)?;
    seal_units(&m, &building, &filled.dirs, store)?;
    Ok(m)
}

/// What [`fill_units`] left to do: the files to fetch (path, entry, as a
/// delta) and the directories made, with the mode each gets at the end.
struct Filled {
    requests: Vec<(String, Entry, bool)>,
    dirs: Vec<(PathBuf, u32)>,
}

/// Makes the directories and symlinks of the units being built and
/// hard-links each file unchanged since `old`; the rest is to fetch.
fn fill_units(
    m: &Manifest,
    old_dir: &Path,
    old: &Manifest,
    dst_of: &dyn Fn(&str) -> Option<PathBuf>,
    stats: &mut Stats,
) -> Result<Filled> {
    let mut requests: Vec<(String, Entry, bool)> = Vec::new();
    let mut dirs_built: Vec<(PathBuf, u32)> = Vec::new();
    for (dir, entries) in &m.dirs {
        let Some(d) = dst_of(dir) else { continue };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("cannot create {}", d.display()))?;
        for e in entries {
            let path = join(dir, &e.name);
            let dst = d.join(&e.name);
            match e.kind {
                'd' => {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dst)
                        .with_context(|| format!("cannot create {}", dst.display()))?;
                    dirs_built.push((dst, e.mode));
                }
                'l' => std::os::unix::fs::symlink(&e.hash, &dst)
                    .with_context(|| format!("cannot create {}", dst.display()))?,
                _ => {
                    let prev = old.entry(&path).filter(|o| o.kind == 'f');
                    let src = old_dir.join(&path);
                    if prev.is_some_and(|o| o.hash == e.hash && o.mode == e.mode)
                        && fs::hard_link(&src, &dst).is_ok()
                    {
                        stats.reused += 1;
                        continue;
                    }
                    let delta =
                        prev.is_some() && src.is_file() && e.size <= MAX_DELTA_FILE && e.size > 0;
                    requests.push((path, e.clone(), delta));
                }
            }
        }
    }
    Ok(Filled {
        requests,
        dirs: dirs_built,
    })
}

/// Fetches the requested files; those whose delta did not match their
/// hash once more, whole.
fn fetch_files(
    s: &mut Session,
    old_dir: &Path,
    dst_of: &dyn Fn(&str) -> Option<PathBuf>,
    requests: Vec<(String, Entry, bool)>,
    stats: &mut Stats,
) -> Result<()> {
    let refetch = transfer(s, old_dir, dst_of, &requests, stats)?;
    if refetch.is_empty() {
        return Ok(());
    }
    let again: Vec<_> = requests
        .into_iter()
        .filter(|r| refetch.contains(&r.0))
        .map(|(p, e, _)| (p, e, false))
        .collect();
    let still = transfer(s, old_dir, dst_of, &again, stats)?;
    if let Some(p) = still.first() {
        bail!(
            "{p} does not match its hash even when sent whole; the server's tree changed under it"
        );
    }
    Ok(())
}

/// Directory modes last (a read-only directory could not be filled),
/// then each finished unit goes into the store. Each received file was
/// fsynced; each directory made is synced here, so the new units are
/// durable without a syncfs of the filesystem.
fn seal_units(
    m: &Manifest,
    building: &BTreeMap<String, (PathBuf, PathBuf)>,
    dirs_built: &[(PathBuf, u32)],
    store: &Path,
) -> Result<()> {
    for (d, mode) in dirs_built.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(*mode))?;
        crate::fsutil::fsync_dir(d)?;
    }
    for (unit, (tmp, done)) in building {
        let mode = m.entry(unit).map(|e| e.mode).unwrap_or(0o755);
        fs::set_permissions(tmp, fs::Permissions::from_mode(mode))?;
        crate::fsutil::fsync_dir(tmp)?;
        fs::rename(tmp, done)
            .with_context(|| format!("cannot move {unit} into {}", done.display()))?;
    }
    if !building.is_empty() {
        crate::fsutil::fsync_dir(store)?;
    }
    Ok(())
}

/// Lays out the new cache: `parameters/L` and `modules/M` are symlinks
/// into the content-addressed store beside the cache; a unit whose hash
/// is already there costs one symlink. Returns the units to build, by
/// manifest path: `store/.tmp-KEY-PID` (filled by the caller, unchanged
/// files hard-linked from the old cache) and where it goes once complete.
fn lay_out_units(
    m: &Manifest,
    new_dir: &Path,
    store: &Path,
    stats: &mut Stats,
) -> Result<BTreeMap<String, (PathBuf, PathBuf)>> {
    let mut building: BTreeMap<String, (PathBuf, PathBuf)> = BTreeMap::new();
    for top in ["parameters", "modules"] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(new_dir.join(top))?;
        for e in m.dirs.get(top).map(Vec::as_slice).unwrap_or(&[]) {
            if e.kind != 'd' {
                bail!("protocol error: {top}/{} is not a directory", e.name);
            }
            let key = format!("{}-{:o}", e.hash, e.mode);
            std::os::unix::fs::symlink(
                Path::new("../../store").join(&key),
                new_dir.join(top).join(&e.name),
            )?;
            let done = store.join(&key);
            if done.is_dir() || building.values().any(|(_, d)| *d == done) {
                stats.reused_units += 1;
                continue;
            }
            let tmp = store.join(format!(".tmp-{key}-{}", std::process::id()));
            if tmp.exists() {
                fs::remove_dir_all(&tmp)?;
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&tmp)?;
            building.insert(join(top, &e.name), (tmp, done));
        }
    }
    Ok(building)
}

/// Walks the server's listings down from the root, one round trip per
/// level and only into directories whose hash differs from `old`'s,
/// checking every listing against its hash and every entry's name,
/// kind and size. Returns the new manifest.
fn descend(s: &mut Session, root_hash: &str, old: &Manifest) -> Result<Manifest> {
    // Descend, one round trip per level, only where hashes differ.
    let mut m = Manifest::default();
    let mut level = vec![String::new()];
    let mut expect: BTreeMap<String, String> =
        BTreeMap::from([(String::new(), root_hash.to_string())]);
    while !level.is_empty() {
        let mut next = Vec::new();
        let mut at = 0;
        while at < level.len() {
            at += list_some(s, &level[at..], &mut expect, old, &mut m, &mut next)?;
        }
        level = next;
    }

    Ok(m)
}

/// Asks for the listings of the first of `level` that fit in one `List`
/// (at most MAX_LIST_PATHS, under MAX_REQUEST_JSON) and takes the answer:
/// the server may answer only the first ones (as many as fit in its
/// frame), never none. Checks them, adds them to `m` and the directories
/// to descend into to `next`. Returns how many were listed.
fn list_some(
    s: &mut Session,
    level: &[String],
    expect: &mut BTreeMap<String, String>,
    old: &Manifest,
    m: &mut Manifest,
    next: &mut Vec<String>,
) -> Result<usize> {
    let mut bytes = 64;
    let mut ask = 0;
    for p in level.iter().take(super::wire::MAX_LIST_PATHS) {
        let mut c = super::wire::Counter::default();
        serde_json::to_writer(&mut c, p)?;
        if ask > 0 && bytes + c.0 + 1 > super::wire::MAX_REQUEST_JSON {
            break;
        }
        bytes += c.0 + 1;
        ask += 1;
    }
    let asked = &level[..ask];
    s.wire.say(
        &Msg::List {
            paths: asked.to_vec(),
        },
        &[],
    )?;
    let (msg, _) = s.wire.recv()?;
    let Msg::Listings { dirs } = msg else {
        bail!(
            "protocol error: expected a listing, got {}",
            super::wire::describe(&msg)
        )
    };
    let got = dirs.len();
    if got == 0 || got > ask {
        bail!("protocol error: asked for {ask} listings, got {got}");
    }
    for (want, l) in asked.iter().zip(dirs) {
        if &l.path != want {
            bail!("protocol error: asked for {want:?}, got {:?}", l.path);
        }
        for e in &l.entries {
            manifest::validate(&l.path, e)?;
            if e.kind == 'f' && e.size > s.max_file_size {
                bail!(
                    "{} is {}, over max_file_size ({}); refused",
                    crate::fsutil::shown(Path::new(&join(&l.path, &e.name))),
                    crate::fsutil::human_bytes(e.size),
                    crate::fsutil::human_bytes(s.max_file_size)
                );
            }
        }
        // Strictly ascending names: no entry can appear twice (say, a
        // symlink and then a directory of the same name).
        if l.entries.windows(2).any(|w| w[0].name >= w[1].name) {
            bail!("the server's listing of {want:?} is not sorted or names an entry twice");
        }
        if dir_hash(&l.entries) != expect[want] {
            bail!("the server's listing of {want:?} does not match its hash");
        }
        for e in l.entries.iter().filter(|e| e.kind == 'd') {
            let child = join(&l.path, &e.name);
            let same = old
                .entry(&child)
                .is_some_and(|o| o.kind == 'd' && o.hash == e.hash)
                && old.dirs.contains_key(&child);
            if same {
                m.graft(old, &child);
            } else {
                expect.insert(child.clone(), e.hash.clone());
                next.push(child);
            }
        }
        m.dirs.insert(l.path, l.entries);
    }
    Ok(got)
}

/// Sends the requests, receives the files; returns the paths whose delta
/// gave the wrong content (to fetch whole).
fn transfer(
    s: &mut Session,
    old_dir: &Path,
    dst_of: &dyn Fn(&str) -> Option<PathBuf>,
    requests: &[(String, Entry, bool)],
    stats: &mut Stats,
) -> Result<Vec<String>> {
    let mut refetch = Vec::new();
    let mut at = 0;
    while at < requests.len() {
        // One batch: the requests whose frames fit in half of what the
        // server queues (so a server never refuses a batch), then a Flush.
        let start = at;
        let mut queued = 0usize;
        while at < requests.len() {
            let (path, _, delta) = &requests[at];
            let (msg, sig) = if *delta {
                let base = fs::read(old_dir.join(path))?;
                let sig =
                    fast_rsync::Signature::calculate(&base, signature_options(base.len() as u64));
                (Msg::Delta { path: path.clone() }, sig.serialized().to_vec())
            } else {
                (Msg::Get { path: path.clone() }, Vec::new())
            };
            let before = s.wire.sent;
            s.wire.send(&msg, &sig)?;
            queued += (s.wire.sent - before) as usize + super::serve::QUEUED_OVERHEAD;
            at += 1;
            if queued >= super::serve::MAX_QUEUED / 2 - REQUEST_ROOM {
                break;
            }
        }
        s.wire.say(&Msg::Flush, &[])?;
        receive(
            s,
            old_dir,
            dst_of,
            &requests[start..at],
            stats,
            &mut refetch,
        )?;
    }
    Ok(refetch)
}

/// Room kept in a batch for its largest request (a signature within
/// MAX_BLOB, a path within MAX_PATH).
const REQUEST_ROOM: usize = super::wire::MAX_BLOB + (64 << 10);

/// Receives the answers to one batch of requests; the paths whose delta
/// gave the wrong content go to `refetch`.
fn receive(
    s: &mut Session,
    old_dir: &Path,
    dst_of: &dyn Fn(&str) -> Option<PathBuf>,
    requests: &[(String, Entry, bool)],
    stats: &mut Stats,
    refetch: &mut Vec<String>,
) -> Result<()> {
    for (path, e, asked_delta) in requests {
        let (head, _) = s.wire.recv()?;
        let asked_delta = *asked_delta;
        let (got, size, md5, is_delta) = match head {
            Msg::File { path, size, md5 } => (path, size, md5, false),
            Msg::DeltaData { path, size, md5 } if asked_delta => (path, size, md5, true),
            other => bail!(
                "protocol error: expected {path}, got {}",
                super::wire::describe(&other)
            ),
        };
        if &got != path || md5 != e.hash {
            bail!("protocol error: expected {path}, got {got}");
        }
        let limit = if is_delta {
            e.size.saturating_mul(2) + (1 << 20)
        } else {
            e.size
        };
        if size > limit {
            bail!(
                "the server sent {size} bytes for {path}, more than its {} bytes allow",
                e.size
            );
        }
        let dst = dst_of(path)
            .with_context(|| format!("protocol error: {path} is outside the units being built"))?;
        let _ = fs::remove_file(&dst);
        if is_delta {
            if !receive_delta(s, path, e, size, old_dir, &dst)? {
                refetch.push(path.clone());
            }
            stats.deltas += 1;
        } else {
            receive_whole(s, path, e, size, &dst)?;
            stats.whole += 1;
        }
    }
    Ok(())
}

/// Receives a whole file of `size` bytes into `dst`: streamed to disk as
/// it comes (no whole-file buffer), md5 computed on the way, zero blocks
/// left as holes; removed again if it does not match `e`'s hash.
fn receive_whole(s: &mut Session, path: &str, e: &Entry, size: u64, dst: &Path) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    let mut hash = <md5::Md5 as md5::Digest>::new();
    let mut at = 0u64;
    while at < size {
        let (msg, blob) = s.wire.recv()?;
        if msg != Msg::Data || at + blob.len() as u64 > size {
            bail!("protocol error in the data of {path}");
        }
        md5::Digest::update(&mut hash, &blob);
        crate::fsutil::write_sparse(&f, &blob, at)
            .with_context(|| format!("cannot write {}", dst.display()))?;
        at += blob.len() as u64;
    }
    f.set_len(size)?;
    if format!("{:x}", md5::Digest::finalize(hash)) != e.hash {
        let _ = fs::remove_file(dst);
        bail!("{path} does not match its hash after the transfer");
    }
    f.set_permissions(fs::Permissions::from_mode(e.mode))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", dst.display()))?;
    Ok(())
}

/// Receives a delta of `size` bytes and applies it to the old cache's
/// copy (files up to MAX_DELTA_FILE: base and result in memory); false
/// when the result does not match `e`'s hash (fetch it whole then).
fn receive_delta(
    s: &mut Session,
    path: &str,
    e: &Entry,
    size: u64,
    old_dir: &Path,
    dst: &Path,
) -> Result<bool> {
    let mut body = Vec::with_capacity(size.min(super::wire::MAX_BLOB as u64) as usize);
    while (body.len() as u64) < size {
        let (msg, blob) = s.wire.recv()?;
        if msg != Msg::Data || body.len() as u64 + blob.len() as u64 > size {
            bail!("protocol error in the data of {path}");
        }
        body.extend_from_slice(&blob);
    }
    let base = fs::read(old_dir.join(path))?;
    let mut content = Vec::with_capacity(e.size.min(super::wire::MAX_BLOB as u64) as usize);
    fast_rsync::apply_limited(&base, &body, &mut content, e.size as usize)
        .map_err(|err| anyhow!("the delta for {path} does not apply: {err}"))?;
    if format!("{:x}", <md5::Md5 as md5::Digest>::digest(&content)) != e.hash {
        return Ok(false);
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    f.write_all(&content)?;
    f.set_permissions(fs::Permissions::from_mode(e.mode))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", dst.display()))?;
    Ok(true)
}

/// Block size ~ sqrt(size) (at least 256, at most 64 KiB, a multiple of
/// 64) and an 8-byte strong hash: the signature stays ~1% of the file.
pub fn signature_options(size: u64) -> fast_rsync::SignatureOptions {
    let root = (size as f64).sqrt() as u32;
    let block_size = (root.div_ceil(64) * 64).clamp(256, 64 * 1024);
    fast_rsync::SignatureOptions {
        block_size,
        crypto_hash_size: 8,
    }
}

/// Sends a dance report to the server, which stores it under
/// `reports/NODE/` (only for the node its forced command names).
pub fn upload(uri: &ServerUri, node: &Name, opts: &SshOptions, report: &[u8]) -> Result<()> {
    if report.len() > super::wire::MAX_BLOB {
        bail!(
            "the report is {} bytes, over the {}-byte upload limit",
            report.len(),
            super::wire::MAX_BLOB
        );
    }
    let (mut s, _) = Session::open(uri, node, opts, false)?;
    s.wire.say(&Msg::Report, report)?;
    match s.wire.recv() {
        Ok((Msg::Stored, _)) => s.close(),
        Ok((other, _)) => {
            let e = anyhow!(
                "protocol error: expected Stored, got {}",
                super::wire::describe(&other)
            );
            Err(s.failure(e))
        }
        Err(e) => Err(s.failure(e)),
    }
}
