//! `disco serve`: the server side of the protocol, on stdin/stdout, meant
//! to be the forced command of a node's key in `authorized_keys`.
//!
//! Owns what a session may see: one snapshot, resolved once at the start
//! (`current` if the tree is published, else the tree itself) and held with
//! a shared lock so `disco publish` never prunes it mid-session; with
//! `--node`, only that node's view (its layers and the modules of its
//! plan). It is read-only, never follows a symlink inside a module or
//! parameter tree (they are listed as symlinks), and refuses — and logs to
//! stderr — anything outside the view. Owns the server's deadlines too:
//! `--io-timeout` of silence and `--fetch-timeout` for a session, past
//! which it logs one line and exits (dropping its snapshot lock), and it
//! never reads a file over the node's `max_file_size` (sent in the hello).

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::deadline::{Deadline, Silent, Timed};
use super::wire::{Listing, Msg, Wire, VERSION};
use super::View;
use crate::names::Name;

/// Largest file sent as a delta; bigger ones go whole.
pub const MAX_DELTA_FILE: u64 = 64 << 20;
/// Bytes of requests (mostly signatures) a client may queue before a Flush.
const MAX_QUEUED: usize = 256 << 20;
/// Data frames carry at most this much.
const CHUNK: usize = 4 << 20;

/// The snapshot a session serves, held for the whole session.
pub struct Snapshot {
    pub path: PathBuf,
    pub id: String,
    _lock: Option<fs::File>,
}

/// Resolves `root/current` (a symlink into `root/snapshots/`) once, and
/// takes a shared lock on it; without `current`, serves `root` as is.
pub fn resolve_snapshot(root: &Path) -> Result<Snapshot> {
    let current = root.join("current");
    match fs::read_link(&current) {
        Ok(target) => {
            let path = fs::canonicalize(root.join(&target))
                .with_context(|| format!("{} points nowhere", current.display()))?;
            let snapshots =
                fs::canonicalize(root.join("snapshots")).context("no snapshots/ beside current")?;
            if !path.starts_with(&snapshots) {
                bail!(
                    "{} points outside {}",
                    current.display(),
                    snapshots.display()
                );
            }
            let dir = fs::File::open(&path)?;
            // SAFETY: flock on a descriptor we own; held until the session ends.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_SH) } != 0 {
                bail!(
                    "cannot lock the snapshot {}: {}",
                    path.display(),
                    io::Error::last_os_error()
                );
            }
            let id = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Snapshot {
                path,
                id,
                _lock: Some(dir),
            })
        }
        Err(_) => Ok(Snapshot {
            path: root.to_path_buf(),
            id: "-".into(),
            _lock: None,
        }),
    }
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
    // A server that cannot read its tree says so to the client (which
    // would otherwise see a dead connection and say "cannot reach").
    let snapshot = match resolve_snapshot(root) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("the server could not read {}: {e:#}", root.display());
            log(&who(), &message);
            let _ = wire.say(&Msg::Error { message }, &[]);
            return Ok(1);
        }
    };
    let (node, view) = match handshake(wire, &snapshot, forced)? {
        Ok(nv) => nv,
        Err(code) => return Ok(code),
    };

    let mut queued: Vec<(Msg, Vec<u8>)> = Vec::new();
    let mut queued_bytes = 0usize;
    loop {
        let (msg, blob) = match wire.recv() {
            Ok(m) => m,
            Err(e) if deadline_hit(&e).is_some() => return Err(e),
            Err(_) => return Ok(0), // the client went away
        };
        match msg {
            Msg::List { paths } => {
                let mut dirs = Vec::new();
                for p in paths {
                    match view.manifest.dirs.get(&p) {
                        Some(entries) => dirs.push(Listing {
                            path: p,
                            entries: entries.clone(),
                        }),
                        None => {
                            return refuse(
                                wire,
                                node.as_str(),
                                format!("{p:?} is not a directory of this node's view"),
                            )
                        }
                    }
                }
                wire.say(&Msg::Listings { dirs }, &[])?;
            }
            Msg::Get { .. } | Msg::Delta { .. } => {
                queued_bytes += blob.len() + 256;
                if queued_bytes > MAX_QUEUED {
                    return refuse(wire, node.as_str(), "too many queued requests".into());
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
/// forced `--node` wins), the node's view of `snapshot`. `Ok(Err(code))`
/// when the session ends there (refused, said why).
fn handshake<R: Read, W: Write>(
    wire: &mut Wire<R, W>,
    snapshot: &Snapshot,
    forced: Option<&Name>,
) -> Result<Result<(Name, View), i32>> {
    let (hello, _) = wire.recv().context("reading the client's hello")?;
    let Msg::Hello {
        version,
        node,
        max_file_size,
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
    let cache = hash_cache_file(&snapshot.path);
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
    let view = View::of_cached(&snapshot.path, &node, &mut hashes);
    if let (Some(path), Ok(_)) = (&cache, &view) {
        // Only a cache: a session that cannot save it still serves.
        let _ = hashes.save_shared(path);
    }
    let view = match view {
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
        },
        &[],
    )?;
    Ok(Ok((node, view)))
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
    let (Some(file), Some(entry)) = (view.file(&path), view.manifest.entry(&path)) else {
        return Ok(Err(format!("{path:?} is not a file of this node's view")));
    };
    let md5 = entry.hash.clone();
    let mut f = open_nofollow(&file).with_context(|| format!("cannot read {path}"))?;
    let size = f.metadata()?.len();
    if matches!(msg, Msg::Delta { .. }) && size <= MAX_DELTA_FILE {
        if !sane_signature(&blob) {
            return Ok(Err(format!("a bad signature for {path}")));
        }
        let Ok(sig) = fast_rsync::Signature::deserialize(blob) else {
            return Ok(Err(format!("a bad signature for {path}")));
        };
        let mut data = Vec::with_capacity(size as usize);
        (&mut f).take(MAX_DELTA_FILE).read_to_end(&mut data)?;
        let mut delta = Vec::new();
        if fast_rsync::diff(&sig.index(), &data, &mut delta).is_ok() {
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

/// Opens a file without following a symlink in its last component.
fn open_nofollow(p: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
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
    let dir = root.join("reports").join(node.as_str());
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
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
