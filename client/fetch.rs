//! Stage 3, fetch: brings the node's parameters (with its groups) and the
//! modules of its plan into `STATE/cache/` (DESIGN §3.3).
//!
//! Owns the cache: its layout (the server tree's, restricted to one node,
//! each unit a symlink into the content-addressed `STATE/store`, plus
//! `fetch.json`), its 0700 mode, and its replacement — the new copy is
//! built in a directory beside the old one and swapped in with one
//! `renameat2(RENAME_EXCHANGE)`, so any failure leaves the last good cache.
//! Everything is validated (names, groups, plan, parameter trees) before
//! the first byte is written. Transports: a local directory path, and
//! `ssh://` through [`crate::transport::ssh`].

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::names::Name;
use crate::params;
use crate::plan::{self, Plan};
use crate::tree::{NodeSpec, ServerTree};

use crate::transport::ssh::{self, SshOptions};
pub use crate::transport::ServerUri;

/// What `fetch.json` in the cache records about the copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FetchInfo {
    pub node: String,
    pub server: String,
    /// Seconds since the epoch when the cache last changed (a fetch that
    /// finds the same tree keeps the cache, and this, as they are).
    pub fetched_at: u64,
    pub modules: Vec<String>,
}

impl FetchInfo {
    /// What a fetch of `plan` for `node` from `server` records, now.
    pub fn new(node: String, server: String, plan: &Plan) -> FetchInfo {
        FetchInfo {
            node,
            server,
            fetched_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            modules: plan.order.iter().map(Name::to_string).collect(),
        }
    }
}

/// The result of a fetch: the cache and the node/plan read from it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub cache: PathBuf,
    pub node: NodeSpec,
    pub plan: Plan,
    pub origin: Origin,
}

/// Where a fetch came from and what it cost on the wire.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub server: String,
    /// The published snapshot id (`-` for an unpublished tree).
    pub snapshot: String,
    /// Root hash of the node's view: equal hashes, equal inputs.
    pub root_hash: String,
    pub sent: u64,
    pub received: u64,
    /// A fetch of the node's current: the candidate snapshot the server
    /// offers beside it (published and not that current), for a preview.
    pub candidate: Option<String>,
}

/// Asks the server only for its snapshot id, the root hash of the
/// node's view and the candidate it offers (for `--if-changed`), without
/// fetching anything.
pub fn probe(server: &ServerUri, node: &Name, opts: &SshOptions) -> Result<ssh::Welcomed> {
    match server {
        ServerUri::Local(root) => {
            let snap = crate::transport::serve::resolve_for(root, node, false)?;
            let view = crate::transport::View::of(&snap.path, node)?;
            Ok(ssh::Welcomed {
                snapshot: snap.id.clone(),
                root: view.manifest.root_hash(),
                candidate: snap.candidate.clone(),
            })
        }
        ServerUri::Ssh { .. } => {
            let (session, welcome) = ssh::Session::open(server, node, opts, false)?;
            session.close()?;
            Ok(welcome)
        }
    }
}

/// Fetches from the configured servers, in order, until one answers.
pub fn fetch_configured(config: &crate::config::Config) -> Result<Fetched> {
    let servers = config.require_servers()?;
    let mut last = None;
    for (i, raw) in servers.iter().enumerate() {
        let uri = ServerUri::parse(raw)?;
        match fetch(
            &uri,
            &config.node.value,
            &config.state_dir.value,
            &config.ssh(),
            false,
        ) {
            Ok(f) => {
                for (by, m) in &f.plan.discovered {
                    crate::output::info(&format!("Discovered dependency: {by} -> {m}"));
                }
                return Ok(f);
            }
            Err(e)
                if i + 1 < servers.len() && format!("{e:#}").starts_with("cannot reach server") =>
            {
                crate::output::warning(&format!("{e:#}; trying the next server"));
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no server answered")))
}

/// Fetches the candidate snapshot `server` offered (a preview) into the
/// cache and store of `dir` — never the node's own (`STATE/cache`,
/// `STATE/store`) — and checks it is the candidate `expected`: a newer
/// one published meanwhile is previewed at the next dance.
pub fn fetch_candidate(
    config: &crate::config::Config,
    server: &str,
    expected: &str,
    dir: &Path,
) -> Result<Fetched> {
    let uri = ServerUri::parse(server)?;
    let f = fetch(&uri, &config.node.value, dir, &config.ssh(), true)?;
    if f.origin.snapshot != expected {
        bail!(
            "server {server} served snapshot {} as the candidate, not {expected} (a new candidate was published during the dance; the next dance previews it)",
            f.origin.snapshot
        );
    }
    Ok(f)
}

/// The content-addressed store of fetched units beside the cache.
pub fn store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("store")
}

/// Opens a cache (or a cache being built) as a server tree whose units
/// may be symlinks into the store.
pub fn cache_tree(cache: &Path) -> Result<ServerTree> {
    let store = cache.parent().map(|p| p.join("store")).unwrap_or_default();
    Ok(ServerTree::open(cache)?.allow(&store))
}

/// The cache directory inside a state dir.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache")
}

/// Fetches `node` from `server` into `state_dir/cache`: the node's
/// current, or with `candidate` the candidate snapshot (a preview).
pub fn fetch(
    server: &ServerUri,
    node: &Name,
    state_dir: &Path,
    ssh_opts: &SshOptions,
    candidate: bool,
) -> Result<Fetched> {
    let served = match server {
        ServerUri::Local(root) => root,
        ServerUri::Ssh { .. } => return fetch_ssh(server, node, state_dir, ssh_opts, candidate),
    };
    // A published tree is read through the node's current (its pin or
    // `current`) or the candidate, resolved once and held.
    let snapshot = crate::transport::serve::resolve_for(served, node, candidate)
        .with_context(|| format!("server {}", served.display()))?;
    let root = &snapshot.path;
    let tree = ServerTree::open(root).with_context(|| format!("server {}", root.display()))?;
    let spec = tree.node(node)?;
    let plan = plan::plan(&tree, &spec)?;
    // Parse every parameter tree now: a bad key fails the fetch, not a later step.
    params::merged(&tree, &spec, &plan)?;

    let cache = cache_dir(state_dir);
    fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    remove_leftovers(state_dir)?;
    let new = state_dir.join(format!(".cache.new-{}", std::process::id()));
    let max_file = if ssh_opts.max_file_size == 0 {
        1 << 30
    } else {
        ssh_opts.max_file_size
    };
    // The node's view, hashed (file hashes kept while files are unchanged).
    let hash_file = state_dir.join("hashes.json");
    let mut hashes = crate::transport::manifest::HashCache::load(&hash_file);
    hashes.refuse_over(max_file); // refused by `build` unread
    let view = crate::transport::View::of_cached(root, node, &mut hashes)
        .with_context(|| format!("server {}", root.display()))?;
    hashes.save(&hash_file)?;
    let info = FetchInfo::new(spec.name.to_string(), root.display().to_string(), &plan);
    // Unchanged since the last fetch: the cache stands as it is, and
    // nothing is written (each fsync is a journal commit).
    if !up_to_date(&cache, &view, &info) {
        let built = build(&view, &info, &new, &cache, &store_dir(state_dir), max_file)
            .with_context(|| format!("server {}", root.display()));
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&new);
            return Err(e);
        }
        swap_in(&new, &cache, false)?;
    }
    // The cache is a copy of what was just planned: the plan stands.
    Ok(Fetched {
        cache,
        node: spec,
        plan,
        origin: Origin {
            server: served.display().to_string(),
            snapshot: snapshot.id.clone(),
            root_hash: view.manifest.root_hash(),
            sent: 0,
            received: 0,
            candidate: snapshot.candidate.clone(),
        },
    })
}

/// True when `cache` is exactly what [`build`] would make of `view` and
/// `info`: the same node, server and plan in `fetch.json`, and `parameters/L`, `modules/M` the same
/// units, each a link to its store entry, which exists.
fn up_to_date(cache: &Path, view: &crate::transport::View, info: &FetchInfo) -> bool {
    let same_info = fs::read(cache.join("fetch.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<FetchInfo>(&b).ok())
        .is_some_and(|have| {
            (have.node.as_str(), have.server.as_str(), &have.modules)
                == (info.node.as_str(), info.server.as_str(), &info.modules)
        });
    let names = |dir: &Path| -> Option<Vec<String>> {
        let mut v = fs::read_dir(dir)
            .ok()?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<_>>>()
            .ok()?;
        v.sort();
        Some(v)
    };
    let layout = ["fetch.json", "modules", "parameters"].map(String::from);
    if !same_info || names(cache).as_deref() != Some(&layout[..]) {
        return false;
    }
    ["parameters", "modules"].iter().all(|top| {
        let want = view
            .manifest
            .dirs
            .get(*top)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut want_names: Vec<String> = want.iter().map(|e| e.name.clone()).collect();
        want_names.sort();
        names(&cache.join(top)) == Some(want_names)
            && want.iter().all(|e| {
                let link = Path::new("../../store").join(format!("{}-{:o}", e.hash, e.mode));
                let at = cache.join(top).join(&e.name);
                fs::read_link(&at).is_ok_and(|t| t == link) && at.is_dir()
            })
    })
}

/// Removes `.cache.new-*` directories left by an interrupted fetch and
/// `.cache.old-*` ones set aside by the last one.
fn remove_leftovers(state_dir: &Path) -> Result<()> {
    for entry in
        fs::read_dir(state_dir).with_context(|| format!("cannot read {}", state_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".cache.new-") || name.starts_with(".cache.old-") {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove stale {}", entry.path().display()))?;
        }
    }
    // Store units the current cache does not use (and half-built ones).
    let store = store_dir(state_dir);
    let Ok(units) = fs::read_dir(&store) else {
        return Ok(());
    };
    let mut used = std::collections::BTreeSet::new();
    for top in ["parameters", "modules"] {
        for e in fs::read_dir(cache_dir(state_dir).join(top))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = fs::read_link(e.path()) {
                if let Some(key) = target.file_name() {
                    used.insert(key.to_os_string());
                }
            }
        }
    }
    for unit in units.flatten() {
        if !used.contains(&unit.file_name()) {
            fs::remove_dir_all(unit.path())
                .with_context(|| format!("cannot remove unused {}", unit.path().display()))?;
        }
    }
    Ok(())
}

/// Builds the new cache at `new` from the server tree at `server` whose
/// node view (hashed) is `view`: `parameters/L` and `modules/M` are
/// symlinks into the content-addressed store beside the cache, as the SSH
/// transport lays them out, so an unchanged unit costs one symlink. A unit
/// not in the store yet is copied (files unchanged since the last cache
/// linked from it), checked against its hash — the server tree may change
/// while it is read — and moved into the store.
fn build(
    view: &crate::transport::View,
    info: &FetchInfo,
    new: &Path,
    old: &Path,
    store: &Path,
    max_file: u64,
) -> Result<()> {
    use crate::transport::manifest::Manifest;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(new)
        .with_context(|| format!("cannot create {}", new.display()))?;
    fs::set_permissions(new, fs::Permissions::from_mode(0o700))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    let mut copied = 0;
    for top in ["parameters", "modules"] {
        fs::create_dir(new.join(top))?;
        for e in view
            .manifest
            .dirs
            .get(top)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let unit = format!("{top}/{}", e.name);
            let key = format!("{}-{:o}", e.hash, e.mode);
            std::os::unix::fs::symlink(
                Path::new("../../store").join(&key),
                new.join(top).join(&e.name),
            )?;
            let done = store.join(&key);
            if done.is_dir() {
                continue;
            }
            let src = view
                .dirs
                .get(&unit)
                .with_context(|| format!("{unit} is not in the node's view"))?;
            let tmp = store.join(format!(".tmp-{key}-{}", std::process::id()));
            if tmp.exists() {
                fs::remove_dir_all(&tmp)?;
            }
            let prev = Some(old.join(&unit)).filter(|p| p.is_dir());
            crate::transport::copy_tree(src, &tmp, &unit, max_file, prev.as_deref())?;
            let got = Manifest::default().add_tree(&tmp, &unit, &e.name)?;
            if got.hash != e.hash || got.mode != e.mode {
                let _ = fs::remove_dir_all(&tmp);
                bail!("{unit} changed while it was copied; fetch again");
            }
            fs::rename(&tmp, &done)
                .with_context(|| format!("cannot move {unit} into {}", done.display()))?;
            copied += 1;
        }
    }
    if copied > 0 {
        crate::fsutil::fsync_dir(store)?;
    }
    let json = new.join("fetch.json");
    fs::File::create(&json)
        .and_then(|mut f| {
            io::Write::write_all(&mut f, &serde_json::to_vec_pretty(info)?)?;
            f.sync_all()
        })
        .with_context(|| format!("cannot write {}", json.display()))?;
    // copy_tree synced what it wrote; these make the new cache's own
    // entries durable before it is swapped in.
    for dir in [
        new.join("parameters"),
        new.join("modules"),
        new.to_path_buf(),
    ] {
        crate::fsutil::fsync_dir(&dir)?;
    }
    Ok(())
}

/// Atomically replaces `cache` by `new` (or moves it there if there is no cache yet).
/// With `defer_cleanup` the previous cache is only renamed to
/// `.cache.old-*`, and removed by the next fetch (while it waits for ssh).
fn swap_in(new: &Path, cache: &Path, defer_cleanup: bool) -> Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, new, None, cache, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) if defer_cleanup => {
            let old = new.with_file_name(format!(".cache.old-{}", crate::run::new_run_id()));
            fs::rename(new, &old).with_context(|| {
                format!("cannot set the previous cache aside as {}", old.display())
            })
        }
        Ok(()) => fs::remove_dir_all(new)
            .with_context(|| format!("cannot remove the previous cache (now {})", new.display())),
        Err(nix::errno::Errno::ENOENT) => fs::rename(new, cache)
            .with_context(|| format!("cannot move the new cache to {}", cache.display())),
        Err(e) => {
            let _ = fs::remove_dir_all(new);
            Err(io::Error::from(e))
                .with_context(|| format!("cannot swap in the new cache at {}", cache.display()))
        }
    }
}

/// Fetches over SSH: the same cache, built beside the old one and swapped
/// in, with the content synced by [`crate::transport::ssh`].
///
/// Long because it is one transaction: set the old cache aside, open, sync, write the manifest, swap in — every early return must leave the old cache as it was, which is easiest to check when the steps are in one body.
fn fetch_ssh(
    server: &ServerUri,
    node: &Name,
    state_dir: &Path,
    opts: &SshOptions,
    candidate: bool,
) -> Result<Fetched> {
    let cache = cache_dir(state_dir);
    fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    // The last fetch's leftovers go while ssh connects.
    let cleanup = {
        let dir = state_dir.to_path_buf();
        std::thread::spawn(move || remove_leftovers(&dir))
    };
    let old_info: Option<FetchInfo> = fs::read(cache.join("fetch.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let old: crate::transport::manifest::Manifest = match &old_info {
        Some(i) if i.node == node.as_str() => fs::read(cache.join(ssh::CACHE_MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default(),
        _ => Default::default(),
    };
    let opened = ssh::Session::open(server, node, opts, candidate);
    cleanup
        .join()
        .map_err(|_| anyhow::anyhow!("the cleanup of the previous cache panicked"))??;
    let (mut session, welcome) = opened?;
    let (snapshot, root_hash) = (welcome.snapshot.clone(), welcome.root.clone());
    let mut stats = ssh::Stats {
        snapshot: snapshot.clone(),
        ..Default::default()
    };
    if !old.dirs.is_empty() && old.root_hash() == root_hash {
        stats.unchanged = true;
        stats.sent = session.wire.sent;
        stats.received = session.wire.received;
        session.close()?;
        crate::output::info(&format!(
            "fetch from {server}: snapshot {snapshot} unchanged (sent {} B, received {} B)",
            stats.sent, stats.received
        ));
        return open_cache_from(state_dir, node, server, &welcome, &stats);
    }
    let new = state_dir.join(format!(".cache.new-{}", std::process::id()));
    let built = (|| -> Result<()> {
        fs::DirBuilder::new().mode(0o700).create(&new)?;
        let store = store_dir(state_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&store)?;
        let manifest = match ssh::sync(
            &mut session,
            &root_hash,
            &cache,
            &old,
            &new,
            &store,
            &mut stats,
        ) {
            Ok(m) => m,
            Err(e) => return Err(session.failure(e)),
        };
        stats.sent = session.wire.sent;
        stats.received = session.wire.received;
        fs::write(
            new.join(ssh::CACHE_MANIFEST),
            serde_json::to_vec(&manifest)?,
        )?;
        fs::create_dir_all(new.join("modules"))?;
        fs::create_dir_all(new.join("parameters"))?;
        let tree = cache_tree(&new)?;
        let spec = tree.node(node)?;
        let plan = plan::plan(&tree, &spec)?;
        let info = FetchInfo::new(node.to_string(), server.to_string(), &plan);
        fs::write(new.join("fetch.json"), serde_json::to_vec_pretty(&info)?)?;
        fs::set_permissions(&new, fs::Permissions::from_mode(0o700))?;
        // The units were synced as they were made; these make the new
        // cache's own entries durable before it is swapped in.
        for f in [ssh::CACHE_MANIFEST, "fetch.json"] {
            fs::File::open(new.join(f))
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", new.join(f).display()))?;
        }
        for dir in [new.join("parameters"), new.join("modules"), new.clone()] {
            crate::fsutil::fsync_dir(&dir)?;
        }
        Ok(())
    })();
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&new);
        return Err(e);
    }
    session.close()?;
    swap_in(&new, &cache, true)?;
    crate::output::info(&format!(
        "fetch from {server}: snapshot {snapshot}: {} file(s) whole, {} by delta, {} reused (sent {} B, received {} B)",
                stats.whole, stats.deltas, stats.reused, stats.sent, stats.received
    ));
    open_cache_from(state_dir, node, server, &welcome, &stats)
}

/// The cache after an ssh fetch, with where it came from.
fn open_cache_from(
    state_dir: &Path,
    node: &Name,
    server: &ServerUri,
    welcome: &ssh::Welcomed,
    stats: &ssh::Stats,
) -> Result<Fetched> {
    let mut f = open_cache(state_dir, node)?;
    f.origin = Origin {
        server: server.to_string(),
        snapshot: welcome.snapshot.clone(),
        root_hash: welcome.root.clone(),
        sent: stats.sent,
        received: stats.received,
        candidate: welcome.candidate.clone(),
    };
    Ok(f)
}

/// Opens the cache of `state_dir` for `node`, checking it was fetched for that node.
pub fn open_cache(state_dir: &Path, node: &Name) -> Result<Fetched> {
    let cache = cache_dir(state_dir);
    let info_path = cache.join("fetch.json");
    let info: FetchInfo = match fs::read(&info_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; run `disco plan` to fetch again",
                info_path.display()
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!(
                "nothing fetched yet in {}: run `disco plan` first",
                cache.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", info_path.display())),
    };
    if info.node != node.as_str() {
        bail!(
            "the cache in {} holds node '{}', not '{node}': run `disco plan --node {node}` first",
            cache.display(),
            info.node
        );
    }
    let tree = cache_tree(&cache)?;
    let spec = tree.node(node)?;
    let plan = plan::plan(&tree, &spec)?;
    Ok(Fetched {
        cache,
        node: spec,
        plan,
        origin: Origin::default(),
    })
}
