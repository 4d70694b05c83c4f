//! `disco serve`: the server side of the protocol, on stdin/stdout, meant
//! to be the forced command of a node's key in `authorized_keys`.
//!
//! Owns what a session may see: one snapshot, resolved once (`current`
//! if the tree is published, else the tree itself, held from the session's
//! start; after the hello, the node's pin `pinned/NODE` instead when it
//! has one, or the candidate when the hello asks for it; the welcome names
//! a candidate the node does not run) and held with a shared lock so
//! `disco publish` never prunes it mid-session; with
//! `--node`, only that node's view (its layers and the modules of its
//! plan). It is read-only, never follows a symlink inside a module or
//! parameter tree (they are listed as symlinks) nor a top-level
//! `parameters`/`modules`/`recipients` link, and refuses — and logs to
//! stderr — anything outside the view.
//!
//! Also owns the session's memory bound (docs/fleet.md states it): a
//! client's frames are at most [`MAX_REQUEST_JSON`] + [`super::wire::MAX_BLOB`], queued
//! requests count their whole frames up to [`MAX_QUEUED`], a `List` names
//! at most [`MAX_LIST_PATHS`] paths once each, an answer's size is counted
//! before it is written (a `Listings` over the frame limit is cut to the
//! directories that fit, a delta is dropped for the whole file once it
//! grows past the file), and a node key (`--node`) holds at most
//! [`MAX_SESSIONS`] sessions at once (flock'd slot files under
//! `ROOT/sessions/NODE/`, freed when a session ends however it ends).
//!
//! And the server's deadlines: `--io-timeout` of silence and
//! `--fetch-timeout` for a session, past which it logs one line and exits
//! (dropping its snapshot lock and its session slot); it never reads a
//! file over the node's `max_file_size` (sent in the hello).

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use serde::Serialize;

use super::candidate;
use super::deadline::{Deadline, Silent, Timed};
use super::wire::{
    Counter, Entry, Msg, ProtocolError, Wire, MAX_JSON, MAX_LIST_PATHS, MAX_PATH, MAX_REQUEST_JSON,
    VERSION,
};
use super::View;
use crate::names::Name;

/// Largest file sent as a delta; bigger ones go whole.
pub const MAX_DELTA_FILE: u64 = 64 << 20;
/// Bytes of requests (mostly signatures) a client may queue before a
/// Flush, each counted as its whole frame as received plus
/// [`QUEUED_OVERHEAD`]; the client flushes before it reaches half of it.
pub const MAX_QUEUED: usize = 32 << 20;
/// What a queued request costs besides its frame's bytes (its message
/// and its place in the queue).
pub const QUEUED_OVERHEAD: usize = 256;
/// Sessions one node key (the forced command's `--node`) may hold at once.
pub const MAX_SESSIONS: usize = 4;
/// Data frames carry at most this much.
const CHUNK: usize = 4 << 20;

/// The snapshot a session serves, held for the whole session.
pub struct Snapshot {
    pub path: PathBuf,
    pub id: String,
    /// The candidate's id, when the server has a candidate and this is
    /// the node's current (not the candidate itself): what the welcome
    /// offers.
    pub candidate: Option<String>,
    _lock: Option<fs::File>,
}

/// Resolves `root/current` (a symlink into `root/snapshots/`) once, and
/// takes a shared lock on it; without `current`, serves `root` as is.
/// Pins are not looked at: [`resolve_for`] is a node's.
pub fn resolve_snapshot(root: &Path) -> Result<Snapshot> {
    resolve_link(root, candidate::CURRENT)
}

/// The snapshot a session of `node` serves (DESIGN §4): with
/// `want_candidate`, the candidate ([`NoCandidate`] when there is none);
/// else the node's current — its pin `pinned/NODE` when it has one, else
/// `current` (else `root` as is) — with the candidate's id when it
/// differs. Held with a shared lock, as [`resolve_snapshot`].
pub fn resolve_for(root: &Path, node: &Name, want_candidate: bool) -> Result<Snapshot> {
    choose(root, node, want_candidate, resolve_snapshot(root)?)
}

/// [`resolve_for`] with `current` already resolved and held (`start`,
/// what a session holds from its start): kept unless the node is pinned
/// or asks for the candidate.
fn choose(root: &Path, node: &Name, want_candidate: bool, start: Snapshot) -> Result<Snapshot> {
    if want_candidate {
        return resolve_link(root, candidate::CANDIDATE);
    }
    let link = candidate::node_link(root, node)?;
    let mut snapshot = match link == candidate::CURRENT {
        true => start,
        false => resolve_link(root, &link)?,
    };
    snapshot.candidate = candidate::read_link(root, candidate::CANDIDATE)?
        .map(|c| c.id)
        .filter(|id| *id != snapshot.id);
    Ok(snapshot)
}

/// What a session asking for the candidate is told when there is none.
#[derive(Debug, thiserror::Error)]
#[error("no candidate is published on this server")]
pub struct NoCandidate;

/// Resolves the link `root/rel` and takes a shared lock on its snapshot;
/// `current` absent serves `root` as is, a pin gone (a full promotion
/// removed it) is `current`, and no candidate is [`NoCandidate`]. A
/// snapshot pruned between the link's reading and the lock is resolved
/// again (the link moved on).
fn resolve_link(root: &Path, rel: &str) -> Result<Snapshot> {
    for _ in 0..3 {
        let Some(linked) = candidate::read_link(root, rel)? else {
            if rel == candidate::CANDIDATE {
                return Err(NoCandidate.into());
            }
            if rel != candidate::CURRENT {
                return resolve_link(root, candidate::CURRENT);
            }
            return Ok(Snapshot {
                path: root.to_path_buf(),
                id: "-".into(),
                candidate: None,
                _lock: None,
            });
        };
        let dir = fs::File::open(&linked.path)
            .with_context(|| format!("cannot open the snapshot {}", linked.path.display()))?;
        // SAFETY: flock on a descriptor we own; held until the session ends.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_SH) } != 0 {
            bail!(
                "cannot lock the snapshot {}: {}",
                linked.path.display(),
                io::Error::last_os_error()
            );
        }
        // A prune removes a snapshot under its exclusive lock: one still
        // linked after ours is taken stays until the session ends.
        if linked.path.is_dir() {
            return Ok(Snapshot {
                path: linked.path,
                id: linked.id,
                candidate: None,
                _lock: Some(dir),
            });
        }
    }
    bail!(
        "{} keeps moving to pruned snapshots",
        root.join(rel).display()
    )
}

/// Who the session is for, as the logs name it: the forced node, else the
/// hello's, else `?` (the watchdog says it too).
static WHO: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn who() -> String {
    WHO.lock()
        .map(|w| if w.is_empty() { "?".into() } else { w.clone() })
        .unwrap_or_else(|_| "?".into())
}

/// The wire on stdin/stdout, every read and write within `deadline`.
type ServeWire = Wire<io::BufReader<Timed<fs::File>>, BufWriter<Timed<fs::File>>>;

/// Serves one session on stdin/stdout. `forced`: the node this key may
/// fetch. `deadline`: `--io-timeout` of silence (each read and write) and
/// `--fetch-timeout` for the whole session, hashing included (a watchdog
/// thread ends the process then). Past either, one line is logged and the
/// process exits 1; its snapshot lock goes with it, however it ends.
pub fn serve(root: &Path, forced: Option<&Name>, deadline: Deadline) -> Result<i32> {
    if let (Some(f), Ok(mut w)) = (forced, WHO.lock()) {
        *w = f.to_string();
    }
    watchdog(deadline);
    let stdio = |fd: std::os::fd::BorrowedFd<'_>| -> Result<fs::File> {
        Ok(fs::File::from(
            fd.try_clone_to_owned()
                .context("disco serve needs stdin and stdout")?,
        ))
    };
    let input = Timed::new(stdio(io::stdin().as_fd())?, deadline, false);
    let output = Timed::new(stdio(io::stdout().as_fd())?, deadline, true);
    let mut wire = Wire::new(
        io::BufReader::with_capacity(1 << 16, input),
        BufWriter::with_capacity(1 << 20, output),
    );
    wire.limit_json(MAX_REQUEST_JSON);
    match session(&mut wire, root, forced) {
        Err(e) => match deadline_hit(&e) {
            Some(what) => {
                log(&who(), &format!("{what}; session ended"));
                Ok(1)
            }
            None => Err(e),
        },
        r => r,
    }
}

/// The deadline of [`Timed`] that `e` is, said for the log: `sent nothing
/// for 60 s (io_timeout)` or `did not finish within 3600 s (fetch_timeout)`.
fn deadline_hit(e: &anyhow::Error) -> Option<String> {
    let io = e.chain().find_map(|c| {
        c.downcast_ref::<io::Error>()
            .filter(|io| io.kind() == io::ErrorKind::TimedOut)
    })?;
    Some(match io.get_ref().is_some_and(|i| i.is::<Silent>()) {
        true => format!("{io} (io_timeout)"),
        false => io.to_string(),
    })
}

/// Ends the process at the session's deadline (plus a second, so a read or
/// write waiting then says it first): a session hashing a huge tree, or
/// stuck anywhere, cannot outlive `--fetch-timeout`.
fn watchdog(deadline: Deadline) {
    std::thread::spawn(move || {
        loop {
            let left = deadline
                .end
                .saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        log(
            &who(),
            &format!(
                "did not finish within {} s (fetch_timeout); session ended",
                deadline.total_secs()
            ),
        );
        // SAFETY: ends the process at once; the kernel drops the lock.
        unsafe { libc::_exit(1) }
    });
}

/// The session after its wire is set up: snapshot, handshake, requests.
///
/// Long because it is the session's loop, one arm per message kind; the handshake and the answers are `handshake` and `answer`.
fn session(wire: &mut ServeWire, root: &Path, forced: Option<&Name>) -> Result<i32> {
    // Held until the process ends, however it ends.
    let _slot = match forced {
        Some(node) => match take_slot(root, node) {
            Ok(Some(slot)) => Some(slot),
            Ok(None) => {
                let why = format!("too many sessions of node {node} ({MAX_SESSIONS})");
                return refuse(wire, node.as_str(), why);
            }
            Err(e) => return refuse(wire, node.as_str(), format!("{e:#}")),
        },
        None => None,
    };
    // A server that cannot read its tree says so to the client (which
    // would otherwise see a dead connection and say "cannot reach").
    // Never a top-level link out of the served tree (a snapshot has none).
    // `current`, held from the start; the handshake moves to the node's
    // pin or the candidate.
    let start = match resolve_snapshot(root).and_then(checked) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("the server could not read {}: {e:#}", root.display());
            log(&who(), &message);
            let _ = wire.say(&Msg::Error { message }, &[]);
            return Ok(1);
        }
    };
    // Held until the session ends: the snapshot it serves.
    let (node, view, _snapshot) = match handshake(wire, root, start, forced)? {
        Ok(nvs) => nvs,
        Err(code) => return Ok(code),
    };

    let mut queued: Vec<(Msg, Vec<u8>)> = Vec::new();
    let mut queued_bytes = 0usize;
    loop {
        let before = wire.received;
        let (msg, blob) = match wire.recv() {
            Ok(m) => m,
            Err(e) if deadline_hit(&e).is_some() => return Err(e),
            Err(e) => match e.downcast_ref::<ProtocolError>() {
                Some(p) => return refuse(wire, node.as_str(), p.to_string()),
                None => return Ok(0), // the client went away
            },
        };
        let frame = (wire.received - before) as usize;
        match msg {
            Msg::List { paths } => {
                if let Err(why) = list(wire, &view, &paths, MAX_JSON)? {
                    return refuse(wire, node.as_str(), why);
                }
            }
            Msg::Get { ref path } | Msg::Delta { ref path } => {
                if path.len() > MAX_PATH {
                    let why = format!("a request names a path over {MAX_PATH} bytes");
                    return refuse(wire, node.as_str(), why);
                }
                queued_bytes += frame + QUEUED_OVERHEAD;
                if queued_bytes > MAX_QUEUED {
                    let why = format!(
                        "over {} of requests queued without a Flush",
                        crate::fsutil::human_bytes(MAX_QUEUED as u64)
                    );
                    return refuse(wire, node.as_str(), why);
                }
                queued.push((msg, blob));
            }
            Msg::Flush => {
                for (msg, blob) in queued.drain(..) {
                    if let Err(why) = answer(wire, &view, msg, blob)? {
                        return refuse(wire, node.as_str(), why);
                    }
                }
                queued_bytes = 0;
                wire.flush()?;
            }
            Msg::Report => {
                let Some(forced) = forced else {
                    return refuse(
                        wire,
                        node.as_str(),
                        "report upload needs a key whose forced command names its node (--node)"
                            .into(),
                    );
                };
                match store_report(root, forced, &blob) {
                    Ok(()) => wire.say(&Msg::Stored, &[])?,
                    Err(e) => return refuse(wire, node.as_str(), format!("{e:#}")),
                }
            }
            Msg::Bye => {
                wire.flush()?;
                return Ok(0);
            }
            other => {
                return refuse(
                    wire,
                    node.as_str(),
                    format!("unexpected message {}", super::wire::describe(&other)),
                )
            }
        }
    }
}

/// A `Listings` entry, borrowed from the view: written without a copy.
#[derive(Serialize)]
struct ListingRef<'a> {
    path: &'a str,
    entries: &'a [Entry],
}

/// The `Listings` message (`{"t":"Listings","dirs":[…]}`), borrowed.
#[derive(Serialize)]
struct ListingsRef<'a> {
    t: &'static str,
    dirs: Vec<ListingRef<'a>>,
}

/// Answers a `List`: at most [`MAX_LIST_PATHS`] paths, each once, each a
/// directory of the view. The answer is sized before it is written: it
/// holds the listed directories, in order, that fit in one frame (at
/// least the first; the client asks again for the rest) of at most
/// `budget` bytes ([`MAX_JSON`]). `Ok(Err(why))` is a request to refuse.
fn list<R: Read, W: Write>(
    wire: &mut Wire<R, W>,
    view: &View,
    paths: &[String],
    budget: usize,
) -> Result<Result<(), String>> {
    if paths.len() > MAX_LIST_PATHS {
        return Ok(Err(format!(
            "a List of {} paths is over the {MAX_LIST_PATHS}-path limit",
            paths.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(paths.len());
    let mut dirs = Vec::with_capacity(paths.len());
    // `{"t":"Listings","dirs":[]}` and a comma per listing.
    let mut size = 30usize;
    for p in paths {
        if p.len() > MAX_PATH {
            return Ok(Err(format!("a List names a path over {MAX_PATH} bytes")));
        }
        if !seen.insert(p.as_str()) {
            return Ok(Err(format!("a List names {p:?} twice")));
        }
        let Some(entries) = view.manifest.dirs.get(p) else {
            return Ok(Err(format!("{p:?} is not a directory of this node's view")));
        };
        let listing = ListingRef { path: p, entries };
        let mut c = Counter::default();
        serde_json::to_writer(&mut c, &listing)?;
        if size + c.0 + 1 > budget {
            if dirs.is_empty() {
                return Ok(Err(format!(
                    "the listing of {p:?} is over the {budget}-byte frame limit"
                )));
            }
            break;
        }
        size += c.0 + 1;
        dirs.push(listing);
    }
    wire.send_value(&ListingsRef {
        t: "Listings",
        dirs,
    })?;
    wire.flush()?;
    Ok(Ok(()))
}

/// Takes one of the [`MAX_SESSIONS`] session slots of `node`: an
/// exclusive flock on `ROOT/sessions/NODE/slot-K`, released when the
/// process ends, however it ends (a killed serve frees its slot). None
/// when all are held.
fn take_slot(root: &Path, node: &Name) -> Result<Option<fs::File>> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = root.join("sessions").join(node.as_str());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| {
            format!(
                "cannot count the sessions of node {node}: cannot create {}",
                dir.display()
            )
        })?;
    for k in 0..MAX_SESSIONS {
        let path = dir.join(format!("slot-{k}"));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot count the sessions of node {node}: cannot open {}",
                    path.display()
                )
            })?;
        // SAFETY: flock on a descriptor we own; held until the process ends.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(f));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            bail!(
                "cannot count the sessions of node {node}: cannot lock {}: {e}",
                path.display()
            );
        }
    }
    Ok(None)
}

/// Says `what` about node `node` on stderr and to syslog (facility auth,
/// as sshd does), so refused requests are in the server's logs.
fn log(node: &str, what: &str) {
    let line = crate::output::printable(&format!("node {node}: {what}"));
    eprintln!("disco serve: {line}");
    if let Ok(c) = std::ffi::CString::new(line) {
        // SAFETY: openlog/syslog with static ident and a "%s" format.
        unsafe {
            libc::openlog(c"disco-serve".as_ptr(), libc::LOG_PID, libc::LOG_AUTH);
            libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), c.as_ptr());
        }
    }
}

/// Refuses the session: says why on stderr (the server's log) and to the
/// client, once. The exit code is 1.
fn refuse<R: Read, W: Write>(wire: &mut Wire<R, W>, node: &str, what: String) -> Result<i32> {
    log(node, &format!("refused: {what}"));
    let _ = wire.say(
        &Msg::Error {
            message: format!("server refused: {what}"),
        },
        &[],
    );
    Ok(1)
}

/// The hello/welcome exchange: the client's version and node (the key's
/// forced `--node` wins), the snapshot that node's session serves
/// (`start`, the `current` held since the session began, unless the node
/// is pinned or asks for the candidate: [`choose`]) and its view of it. `Ok(Err(code))` when the session ends there (refused, said why).
fn handshake<R: Read, W: Write>(
    wire: &mut Wire<R, W>,
    root: &Path,
    start: Snapshot,
    forced: Option<&Name>,
) -> Result<Result<(Name, View, Snapshot), i32>> {
    let (node, max_file_size, want_candidate) = match hello(wire, forced)? {
        Ok(h) => h,
        Err(code) => return Ok(Err(code)),
    };
    let snapshot = match choose(root, &node, want_candidate, start).and_then(checked) {
        Ok(s) => s,
        Err(e) if e.is::<NoCandidate>() => {
            return refuse(wire, node.as_str(), e.to_string()).map(Err)
        }
        Err(e) => {
            let message = format!("the server could not read {}: {e:#}", root.display());
            log(node.as_str(), &message);
            let _ = wire.say(&Msg::Error { message }, &[]);
            return Ok(Err(1));
        }
    };
    let view = match node_view(&snapshot, &node, max_file_size) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("disco serve: {message}");
            let _ = wire.say(&Msg::Error { message }, &[]);
            return Ok(Err(1));
        }
    };
    wire.say(
        &Msg::Welcome {
            version: VERSION,
            node: node.to_string(),
            snapshot: snapshot.id.clone(),
            root: view.manifest.root_hash(),
            candidate: snapshot.candidate.clone(),
        },
        &[],
    )?;
    Ok(Ok((node, view, snapshot)))
}

/// `s`, refused when its top-level `parameters`, `modules` or
/// `recipients` is a symlink.
fn checked(s: Snapshot) -> Result<Snapshot> {
    crate::tree::check_top_links(&s.path, &[])?;
    Ok(s)
}

/// Reads the client's hello: its node (the key's forced `--node` wins),
/// `max_file_size` and whether it asks for the candidate. `Ok(Err(code))`
/// when refused (said why).
fn hello<R: Read, W: Write>(
    wire: &mut Wire<R, W>,
    forced: Option<&Name>,
) -> Result<Result<(Name, u64, bool), i32>> {
    let (hello, _) = wire.recv().context("reading the client's hello")?;
    let Msg::Hello {
        version,
        node,
        max_file_size,
        candidate,
    } = hello
    else {
        return refuse(wire, "?", "the first message must be a hello".into()).map(Err);
    };
    if version != VERSION {
        let msg = format!("protocol version mismatch: the client speaks {version}, this server {VERSION}; install the same disco on both");
        eprintln!("disco serve: {msg}");
        let _ = wire.say(&Msg::Error { message: msg }, &[]);
        return Ok(Err(1));
    }
    let node = match forced {
        Some(f) if f.as_str() != node => {
            let why = format!("this key may fetch only node '{f}'");
            return refuse(wire, &node, why).map(Err);
        }
        Some(f) => f.clone(),
        None => match Name::parse(&node, "the client's node") {
            Ok(n) => n,
            Err(e) => return refuse(wire, &node, e.to_string()).map(Err),
        },
    };
    if let Ok(mut w) = WHO.lock() {
        *w = node.to_string();
    }
    Ok(Ok((node, max_file_size, candidate)))
}

/// `node`'s view of `snapshot`, its hashes from the cache of a tree
/// served as it is; a file over `max_file_size` (0: the default) is
/// never read.
fn node_view(snapshot: &Snapshot, node: &Name, max_file_size: u64) -> Result<View> {
    // A published snapshot carries its manifest and is never hashed.
    let published = snapshot.path.join(super::PUBLISHED_MANIFEST).is_file();
    let cache = match published {
        true => None,
        false => hash_cache_file(&snapshot.path),
    };
    let mut hashes = cache
        .as_deref()
        .map(super::manifest::HashCache::load)
        .unwrap_or_default();
    // A file the node would refuse is never read: it refuses it by its
    // size at the listing.
    hashes.refuse_over(match max_file_size {
        0 => super::manifest::MAX_FILE,
        n => n,
    });
    let view = View::of_cached(&snapshot.path, node, &mut hashes);
    if let (Some(path), Ok(_)) = (&cache, &view) {
        // Only a cache: a session that cannot save it still serves.
        let _ = hashes.save_shared(path);
    }
    view
}

/// Where the md5s of a tree served as it is (not made by `disco publish`,
/// whose snapshots carry their manifest) are kept between sessions:
/// `$XDG_CACHE_HOME/disco` (else `~/.cache/disco`) of the serving user,
/// one file per served path, 0600 in a 0700 directory. Entries are valid
/// while a file's inode, size, mtime and ctime are unchanged, so a session
/// reads the tree's metadata instead of every byte. None when there is no
/// such directory and it cannot be made.
fn hash_cache_file(served: &Path) -> Option<PathBuf> {
    use md5::{Digest, Md5};
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    let dir = base.join("disco");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    let canonical = fs::canonicalize(served).ok()?;
    let key = format!(
        "{:x}",
        Md5::digest(std::os::unix::ffi::OsStrExt::as_bytes(
            canonical.as_os_str()
        ))
    );
    Some(dir.join(format!("serve-hashes-{}.json", &key[..16])))
}

/// Answers one queued `Get` or `Delta`: a delta (files up to
/// [`MAX_DELTA_FILE`], built in memory) or the whole file, streamed in
/// [`CHUNK`]s. `Ok(Err(why))` is a request to refuse.
fn answer<R: Read, W: Write>(
    wire: &mut Wire<R, W>,
    view: &View,
    msg: Msg,
    blob: Vec<u8>,
) -> Result<Result<(), String>> {
    let path = match &msg {
        Msg::Get { path } | Msg::Delta { path } => path.clone(),
        _ => unreachable!("only requests are queued"),
    };
    let (Some((dir, rel)), Some(entry)) = (view.file(&path), view.manifest.entry(&path)) else {
        return Ok(Err(format!("{path:?} is not a file of this node's view")));
    };
    let md5 = entry.hash.clone();
    // Through no symlink, whatever the listing said.
    let mut f =
        crate::fsutil::open_beneath(dir, rel).with_context(|| format!("cannot read {path}"))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Ok(Err(format!("{path:?} is not a regular file")));
    }
    let size = meta.len();
    if matches!(msg, Msg::Delta { .. }) && size <= MAX_DELTA_FILE {
        if !sane_signature(&blob) {
            return Ok(Err(format!("a bad signature for {path}")));
        }
        let Ok(sig) = fast_rsync::Signature::deserialize(blob) else {
            return Ok(Err(format!("a bad signature for {path}")));
        };
        let mut data = Vec::with_capacity(size as usize);
        (&mut f).take(MAX_DELTA_FILE).read_to_end(&mut data)?;
        // A delta is kept only while it is smaller than the file (or 64
        // KiB): past
        // that the file goes whole, and memory holds at most both.
        let mut delta = Capped(Vec::new(), (size as usize).max(64 << 10));
        if fast_rsync::diff(&sig.index(), &data, &mut delta).is_ok() {
            let delta = delta.0;
            let head = Msg::DeltaData {
                path,
                size: delta.len() as u64,
                md5,
            };
            wire.send(&head, &[])?;
            for chunk in delta.chunks(CHUNK) {
                wire.send(&Msg::Data, chunk)?;
            }
            return Ok(Ok(()));
        }
    }
    // Whole files are streamed: never all in memory.
    use std::io::Seek;
    f.rewind()?;
    let head = Msg::File {
        path: path.clone(),
        size,
        md5,
    };
    wire.send(&head, &[])?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = (left as usize).min(CHUNK);
        f.read_exact(&mut buf[..want])
            .with_context(|| format!("{path} changed while it was sent"))?;
        wire.send(&Msg::Data, &buf[..want])?;
        left -= want as u64;
    }
    Ok(Ok(()))
}

/// A buffer that refuses to grow past its second field.
struct Capped(Vec<u8>, usize);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(io::Error::other("the delta is bigger than the file"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How many dated reports a node keeps on the server.
const KEPT_REPORTS: usize = 20;

/// Stores an uploaded report as `root/reports/NODE/last.json` and a dated copy.
fn store_report(root: &Path, node: &Name, blob: &[u8]) -> Result<()> {
    let report: crate::report::RunReport =
        serde_json::from_slice(blob).context("the report does not parse")?;
    if report.node != node.as_str() {
        bail!(
            "a report for node '{}' cannot be stored by node '{node}'",
            report.node
        );
    }
    Name::parse(&report.id, "the report's run id")?;
    if let Some((field, value)) = report.control_field() {
        bail!(
            "the report's {field} holds a control character ({}); not stored",
            crate::output::printable(&value.chars().take(80).collect::<String>())
        );
    }
    let dir = root.join("reports").join(node.as_str());
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    if report.candidate.is_some() {
        // A preview of the candidate: kept apart from the node's own
        // runs (never `last.json`, never pruned with them).
        let path = dir.join(crate::preview::CANDIDATE_REPORT);
        return crate::fsutil::write_private(&path, blob)
            .with_context(|| format!("cannot write {}", path.display()));
    }
    for name in [format!("{}.json", report.id), "last.json".to_string()] {
        // Readable by the serving user only.
        crate::fsutil::write_private(&dir.join(&name), blob)?;
    }
    crate::report::prune_runs(&dir, KEPT_REPORTS);
    Ok(())
}

/// The librsync signature header (magic, block length, strong sum length)
/// within the bounds fast_rsync handles: block 16..=1 MiB, sum 1..=16 bytes.
fn sane_signature(sig: &[u8]) -> bool {
    let word = |i: usize| {
        sig.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    matches!((word(4), word(8)), (Some(block), Some(sum)) if (16..=1 << 20).contains(&block) && (1..=16).contains(&sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        let mut manifest = super::super::manifest::Manifest::default();
        for d in ["a", "b", "c"] {
            let entries = (0..3)
                .map(|i| Entry {
                    name: format!("f{i}"),
                    kind: 'f',
                    mode: 0o644,
                    size: 1,
                    hash: "0".repeat(32),
                })
                .collect();
            manifest.dirs.insert(d.to_string(), entries);
        }
        View {
            manifest,
            dirs: Default::default(),
        }
    }

    /// The `Listings` answered to `paths` within `budget`, or why refused.
    fn answer(paths: &[&str], budget: usize) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut wire = Wire::new(io::empty(), &mut out);
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        list(&mut wire, &view(), &paths, budget).unwrap()?;
        let sent = wire.sent;
        let mut r = Wire::new(&out[..], io::sink());
        let (msg, _) = r.recv().unwrap();
        assert_eq!(r.received, sent, "the frame's header holds its size");
        let Msg::Listings { dirs } = msg else {
            panic!("{msg:?}")
        };
        Ok(dirs.into_iter().map(|l| l.path).collect())
    }

    /// A served directory: snapshot A as current, B (x changed) as the
    /// candidate, for nodes `n` and `p` running module `m`.
    fn served() -> (tempfile::TempDir, PathBuf, String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        for n in ["n", "p"] {
            fs::create_dir_all(src.join(format!("parameters/{n}/modules"))).unwrap();
            fs::write(src.join(format!("parameters/{n}/modules/m")), "").unwrap();
        }
        fs::create_dir_all(src.join("modules/m/files/etc")).unwrap();
        fs::write(src.join("modules/m/files/etc/x"), "a\n").unwrap();
        let root = tmp.path().join("srv");
        let a = super::super::publish::publish(&src, &root, 5, &[], false).unwrap();
        fs::write(src.join("modules/m/files/etc/x"), "b\n").unwrap();
        let b = super::super::publish::publish(&src, &root, 5, &[], true).unwrap();
        (tmp, root, a, b)
    }

    /// What serve answers `hello` (a JSON message) on `root`, as JSON.
    fn welcome(root: &Path, hello: serde_json::Value) -> serde_json::Value {
        let mut input = Vec::new();
        Wire::new(io::empty(), &mut input)
            .send_value(&hello)
            .unwrap();
        let mut out = Vec::new();
        let mut wire = Wire::new(&input[..], &mut out);
        let start = resolve_snapshot(root).unwrap();
        let _ = handshake(&mut wire, root, start, None).unwrap();
        let json_len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        serde_json::from_slice(&out[4..4 + json_len]).unwrap()
    }

    fn hello(node: &str, candidate: bool) -> serde_json::Value {
        serde_json::json!({"t": "Hello", "version": VERSION, "node": node,
            "max_file_size": 1 << 20, "candidate": candidate})
    }

    #[test]
    fn the_welcome_offers_the_candidate_and_the_hello_can_ask_for_it() {
        let (_tmp, root, a, b) = served();
        let w = welcome(&root, hello("n", false));
        assert_eq!(
            (w["snapshot"].as_str(), w["candidate"].as_str()),
            (Some(a.as_str()), Some(b.as_str())),
            "{w}"
        );
        let w = welcome(&root, hello("n", true));
        assert_eq!(w["snapshot"], b.as_str(), "{w}");
        assert!(
            w.get("candidate").is_none(),
            "the candidate session offers nothing more: {w}"
        );
        // An older client (no `candidate` in its hello) gets current.
        let old = serde_json::json!({"t": "Hello", "version": VERSION, "node": "n", "max_file_size": 1 << 20});
        assert_eq!(welcome(&root, old)["snapshot"], a.as_str());
    }

    #[test]
    fn a_pinned_node_runs_its_pin_and_is_offered_nothing() {
        let (_tmp, root, a, b) = served();
        let p = Name::parse("p", "test").unwrap();
        candidate::promote(&root, &candidate::Promote::Nodes(vec![p]), false).unwrap();
        let w = welcome(&root, hello("p", false));
        assert_eq!(w["snapshot"], b.as_str(), "{w}");
        assert!(w.get("candidate").is_none(), "{w}");
        let w = welcome(&root, hello("n", false));
        assert_eq!(
            (w["snapshot"].as_str(), w["candidate"].as_str()),
            (Some(a.as_str()), Some(b.as_str())),
            "{w}"
        );
    }

    #[test]
    fn without_a_candidate_none_is_offered_and_asking_is_refused() {
        let (_tmp, root, a, _) = served();
        candidate::drop_candidate(&root).unwrap();
        let w = welcome(&root, hello("n", false));
        assert_eq!(w["snapshot"], a.as_str(), "{w}");
        assert!(w.get("candidate").is_none(), "{w}");
        let w = welcome(&root, hello("n", true));
        assert_eq!(w["t"], "Error", "{w}");
        assert_eq!(
            w["message"],
            "server refused: no candidate is published on this server"
        );
    }

    #[test]
    fn listings_are_sized_before_they_are_written() {
        assert_eq!(answer(&["a", "b", "c"], MAX_JSON).unwrap(), ["a", "b", "c"]);
        // One listing is ~300 bytes: a 700-byte budget holds the first two.
        assert_eq!(answer(&["a", "b", "c"], 700).unwrap(), ["a", "b"]);
        let why = answer(&["a"], 100).unwrap_err();
        assert!(why.contains("over the 100-byte frame limit"), "{why}");
        let why = answer(&["a", "b", "a"], MAX_JSON).unwrap_err();
        assert_eq!(why, r#"a List names "a" twice"#);
        let why = answer(&["a", "zz"], MAX_JSON).unwrap_err();
        assert!(why.contains("not a directory"), "{why}");
        let many = vec!["a"; MAX_LIST_PATHS + 1];
        let why = answer(&many, MAX_JSON).unwrap_err();
        assert!(why.contains("over the 1024-path limit"), "{why}");
    }
}
