//! Stage 5, sandbox (DESIGN §5): runs a piece of work for one layer inside
//! a private mount namespace whose root is an overlay stack over ROOT.
//!
//! For layer *i* a child process unshares its namespaces (mount, PID and
//! IPC always; UTS too in noop, and it enters the noop network
//! namespace made once per dance, see [`net`]), mounts one overlay
//! per real filesystem of ROOT with `lowerdir = uppers:squashes:[shims]:ROOT`
//! (the uppers of layer *i*'s requires closure; a deep one's first layers
//! folded into squashes, see [`squash`]),
//! adds fresh `/proc` (`/proc/sys` read-only), read-only `/sys`, a minimal
//! `/dev`, tmpfs `/tmp` and `/run`, binds disco's own files under
//! `/run/disco`, `pivot_root`s into the result and, in noop, drops the
//! capabilities that reach outside. The work then runs there and sends its
//! result back over a pipe as JSON. Nothing is ever mounted in the host's
//! namespace, so nothing needs unmounting: when the child exits, its
//! namespace and every mount in it are gone; in noop the PID namespace
//! takes every process the work left behind with it.

pub mod cgroup;
pub mod mounts;
pub mod net;
pub mod scratch;
pub mod security;
pub mod service_cmds;
pub mod shims;
pub mod squash;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::diff::Lowers;
use crate::run::{Layout, Mount, RunDir};
use mounts::{MountOp, RootPlan, SandboxError};

/// Where disco's own files appear inside the sandbox.
pub const DISCO_DIR: &str = "/run/disco";

/// Where a failed `disco param` inside the sandbox writes its error, so
/// the step fails even when bash swallowed the exit status (`$(…)`).
pub const PARAM_ERRORS: &str = "/run/disco/queue/param-errors";

/// Where `disco pending TEXT` inside the sandbox records a change the
/// sandbox could not make (a noop package install without a network).
pub const PENDING_IN_SANDBOX: &str = "/run/disco/queue/pending";

/// The name of [`PARAM_SHIM`] in the run directory.
const SHIM_FILE: &str = "disco.sh";

/// `/run/disco/bin/disco` inside the sandbox: `disco param get KEY`
/// answered by `/bin/sh` and `cat` (a root without disco's shared
/// libraries, an Alpine or busybox one, can still read parameters), a
/// missing key recorded in [`PARAM_ERRORS`]; `disco pending TEXT`
/// recorded in [`PENDING_IN_SANDBOX`]; anything else goes to the real
/// binary.
pub const PARAM_SHIM: &str = r#"#!/bin/sh
# disco in the sandbox: `disco param get KEY` is answered here; every other
# command goes to the real binary.
if [ "$1" = param ] && [ "$2" = get ] && [ "$#" -eq 3 ]; then
    key=$3
    bad=
    case "$key" in ''|/*|*/|*//*) bad=1 ;; esac
    oldifs=$IFS; IFS=/
    for part in $key; do
        case "$part" in .|..|*[!A-Za-z0-9._-]*) bad=1 ;; esac
    done
    IFS=$oldifs
    if [ -n "$bad" ]; then
        err="invalid parameter key '$key'"
    elif [ -f "$DISCO_PARAMS/$key" ]; then
        exec cat "$DISCO_PARAMS/$key"
    elif [ -d "$DISCO_PARAMS/$key" ]; then
        err="parameter '$key' is a directory: use \`disco param keys $key\`"
    else
        err="no parameter '$key'"
    fi
    echo "error: $err" >&2
    echo "$err" >> /run/disco/queue/param-errors
    exit 1
fi
if [ "$1" = pending ]; then
    shift
    if [ "$#" -eq 0 ] || [ -z "$*" ]; then
        echo "error: usage: disco pending TEXT (a change this run could not make)" >&2
        exit 2
    fi
    # One line per change, at most 500 bytes of it.
    printf '%s\n' "$*" | tr '\n' ' ' | cut -b 1-500 >> /run/disco/queue/pending
    exit 0
fi
exec /run/disco/bin/disco.real "$@"
"#;

/// Largest deferred-action queue read back from a sandbox.
const MAX_QUEUE: u64 = 4 << 20;
/// Largest result a sandbox's init may send.
const MAX_RESULT: usize = 64 << 20;
/// Kinds of leftover processes named in a module's warning.
const MAX_LEFTOVERS_SHOWN: usize = 20;
/// Script output kept for `--quiet` (the rest is counted, not kept).
const MAX_CAPTURE: usize = 1 << 20;
/// Bytes kept of the last line a sandbox wrote on stderr ([`Tail`]).
pub const MAX_TAIL: usize = 300;
/// Lower layers a module's overlay stacks as they are; a deeper requires
/// closure is squashed ([`Sandbox::stack`]) in chunks of these sizes,
/// largest first: each level folds 8 of the one below, so a stack holds
/// under 8 of each size (a chain of 2,000 mounts 3 squashes of 512, 7 of
/// 64, 2 of 8 and no upper: 12 lower layers).
pub const SQUASH_SIZES: [usize; 3] = [512, 64, 8];

/// Where the squashed chunks of a closure of `len` layers end, ascending:
/// as many chunks of each of [`SQUASH_SIZES`] as fit, in turn.
fn chunk_ends(len: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    for size in SQUASH_SIZES {
        while len - at >= size {
            at += size;
            ends.push(at);
        }
    }
    ends
}

/// The most layers one overlay mount takes here: the kernel's limit is
/// 500 lower layers, and the mount's options must fit one page.
const MAX_OVERLAY_STACK: usize = 450;

/// A file or directory of the host bound read-only into the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the sandbox (under [`DISCO_DIR`]).
    pub inside: PathBuf,
}

/// Where the output of what runs in the sandbox goes. Except with
/// [`Output::Terminal`] the sandbox never holds a descriptor of disco's
/// own stdout/stderr (a terminal would let it inject keystrokes): it
/// writes into pipes that disco reads on its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Copied to disco's stdout and stderr as it comes.
    Forward,
    /// Kept (up to 1 MiB, stdout and stderr apart) in
    /// [`Outcome::output`], for `--quiet` and modules run side by side.
    Capture,
    /// disco's own stdin/stdout/stderr, for the interactive `disco shell`.
    Terminal,
}

/// Everything fixed for the whole run: ROOT, its filesystems, the shim layer.
#[derive(Debug)]
pub struct Sandbox {
    pub run: RunDir,
    /// Canonical ROOT.
    pub root: PathBuf,
    pub mounts: Vec<Mount>,
    shims: Vec<bool>,
    /// The root's own tools the service shims run (name, file in ROOT),
    /// bound under [`service_cmds::REAL_DIR`] in every sandbox.
    real_tools: Vec<shims::RealTool>,
    pub noop: bool,
    /// The state dir relative to ROOT when it lies inside it: hidden from
    /// the sandbox, and no change may touch it.
    pub state_in_root: Option<PathBuf>,
    /// ROOT is the running system (`/`) and systemd is its init: the
    /// sandbox's `/run` gets `systemd/system`, the flag by which package
    /// scripts (debhelper's) take their systemd path — `deb-systemd-invoke
    /// start`, deferred — as they would outside the sandbox.
    pub systemd_booted: bool,
    /// `noop_network = "host"`: a noop sandbox's network namespace is
    /// routed outward through pasta (a package install can download);
    /// see [`net`].
    pub host_network: bool,
    /// `max_processes` and `max_memory` of every sandbox (none until set).
    pub limits: cgroup::Limits,
    /// Where the sandboxes' cgroups go, found at the first sandbox.
    cgroups: std::cell::OnceCell<Option<cgroup::Cgroups>>,
    /// The noop sandboxes' network namespace (loopback, and with
    /// [`Sandbox::host_network`] a route outward), made once per dance
    /// and entered by each module's sandbox: a namespace made and torn
    /// down per module cost about a millisecond each. Dropped (its helper
    /// killed) with the sandbox.
    net: std::cell::OnceCell<net::NoopNet>,
    /// The squashes made (`q/J-K`, J the index here), each named by the
    /// prefix of a closure whose last chunk it holds folded, ascending
    /// ([`squash`], [`Sandbox::stack`]).
    squashes: std::cell::RefCell<Vec<Vec<usize>>>,
    /// Set once a fold failed, or the squashes were dropped: stack.
    squash_off: std::cell::Cell<bool>,
}

/// The result of work done in a sandbox, and what it left behind.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome<T> {
    pub value: Result<T, String>,
    /// Processes still running when the work ended, killed with the
    /// sandbox, as `cmdline (comm)` (alike ones once, `×N`; at most
    /// [`MAX_LEFTOVERS_SHOWN`] kinds).
    pub leftovers: Vec<String>,
    /// How many processes that was.
    #[serde(default)]
    pub leftover_count: usize,
    /// Commands the shims caught, argv as called, in order.
    pub actions: Vec<Vec<String>>,
    /// Changes the work said it could not make (`disco pending TEXT`).
    #[serde(default)]
    pub pending: Vec<String>,
    /// With [`Output::Capture`]: what the work printed, stdout and
    /// stderr apart, in the order written (masked).
    #[serde(skip)]
    pub output: crate::output::Section,
    /// The last non-blank line the work wrote on stderr (masked, made
    /// printable, at most [`MAX_TAIL`] bytes): a failed step's reason.
    #[serde(skip)]
    pub stderr_tail: Option<String>,
}

impl Sandbox {
    /// Inspects ROOT (canonical path, filesystems below it) and builds the
    /// shim layer in the run directory. `keep`: the layers must outlive
    /// the run (`--keep`). `state_dir` is hidden from the
    /// sandbox when it lies inside ROOT.
    /// On failure the run directory is removed (nothing half-made stays).
    pub fn prepare(
        run: RunDir,
        root: &Path,
        (state_dir, limits): (&Path, scratch::Limits),
        (noop, keep): (bool, bool),
        layers: &[String],
    ) -> Result<Sandbox> {
        let path = run.path.clone();
        let prepared = Self::prepare_in(run, root, (state_dir, limits), (noop, keep), layers);
        if prepared.is_err() {
            crate::run::unmount_mem(&path);
            let _ = fs::remove_dir_all(&path);
        }
        prepared
    }

    /// The work of [`Sandbox::prepare`].
    ///
    /// Long because it is the checks and the layout of a run in the order
    /// they must happen (each step depends on the ones before).
    fn prepare_in(
        run: RunDir,
        root: &Path,
        (state_dir, limits): (&Path, scratch::Limits),
        (noop, keep): (bool, bool),
        layers: &[String],
    ) -> Result<Sandbox> {
        check_overlayfs()?;
        let root = fs::canonicalize(root).with_context(|| format!("root {}", root.display()))?;
        if !root.is_dir() {
            bail!("root {} is not a directory", root.display());
        }
        for p in [&root, &run.path] {
            mounts::check_option_safe(p).map_err(|e| anyhow!(e))?;
        }
        let state = fs::canonicalize(state_dir)
            .with_context(|| format!("state dir {}", state_dir.display()))?;
        let state_in_root = state
            .strip_prefix(&root)
            .ok()
            .map(Path::to_path_buf)
            .filter(|rel| {
                // Under /proc, /tmp, /run… the sandbox's own mounts hide it already.
                rel.components().next().is_some_and(|c| {
                    !mounts::SANDBOX_DIRS.contains(&c.as_os_str().to_string_lossy().as_ref())
                })
            });
        if state == root {
            bail!(
                "the state dir {} is the root itself; give a state dir inside or outside it",
                state.display()
            );
        }
        let info = fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let mounts = mounts::overlay_mounts(&root, &mounts::parse_mountinfo(&info));
        for m in &mounts {
            mounts::check_option_safe(&root.join(&m.rel)).map_err(|e| anyhow!(e))?;
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(run.merged())
            .context("cannot create the merged dir")?;
        let inside = inside_an_overlaid_filesystem(&run.path, &root, &mounts);
        // An interrupted merge may have its layers in the image, which a
        // run empties: a noop run then keeps off it, or, when it cannot,
        // says what to do first.
        let merge_pending = crate::run::merge_marker(&state).exists();
        if inside && merge_pending {
            bail!("a merge was interrupted and its layers are in the scratch image: run `disco dance` (live) to finish it, or `disco undo`, before this run");
        }
        if (noop && !keep && !merge_pending) || inside {
            // The layers cannot live below a lower layer's root on the same
            // filesystem (overlayfs: "overlapping lowerdir"): keep them in
            // the scratch filesystem (a loop-mounted image on disk, see
            // [`scratch`]); the merge then takes the copy path. A noop
            // dance, which merges nothing, does too unless its layers are
            // to be kept for inspection (`keep`, `--keep`): each module's
            // layer costs some ten directory operations (its dirs, the
            // overlay's work dirs, their removal), which the image, without
            // a journal, keeps in the page cache — a third of a converged
            // noop dance of 20 modules on a slow disk. It is mounted in
            // disco's own mount namespace, so it goes when disco does, even
            // killed — its content stays on disk.
            let mem = run.path.join(crate::run::MEM);
            fs::DirBuilder::new().mode(0o700).create(&mem)?;
            scratch::mount(&state, &mem, Some(limits))?;
        }
        let layers_dir = run.layers();
        for d in ["u", "w", "s", "q"] {
            fs::create_dir(layers_dir.join(d))
                .with_context(|| format!("cannot create {}", layers_dir.join(d).display()))?;
        }
        let (shims, real_tools) = shims::build(&run, &root, &mounts)?;
        let shim = run.path.join(SHIM_FILE);
        fs::write(&shim, PARAM_SHIM)
            .and_then(|()| fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("cannot write {}", shim.display()))?;
        run.save_layout(&Layout {
            root: root.clone(),
            layers: layers.to_vec(),
            mounts: mounts.clone(),
        })?;
        let systemd_booted = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
        Ok(Sandbox {
            systemd_booted,
            run,
            root,
            mounts,
            shims,
            real_tools,
            noop,
            state_in_root,
            host_network: false,
            limits: cgroup::Limits {
                processes: 0,
                memory: 0,
            },
            cgroups: std::cell::OnceCell::new(),
            squashes: Default::default(),
            squash_off: Default::default(),
            net: std::cell::OnceCell::new(),
        })
    }

    /// disco's own files bound read-only under `/run/disco`: `bin/disco`
    /// (the [`PARAM_SHIM`], which answers `disco param get` with nothing
    /// but `/bin/sh` and `cat` of the root), `bin/disco.real` (this
    /// binary, for everything else) and, for a module, its files and
    /// parameters.
    pub fn standard_binds(&self, exe: &Path, module: Option<(&Path, &Path)>) -> Vec<Bind> {
        let mut binds = vec![
            Bind {
                source: self.run.path.join(SHIM_FILE),
                inside: Path::new(DISCO_DIR).join("bin/disco"),
            },
            Bind {
                source: exe.to_path_buf(),
                inside: Path::new(DISCO_DIR).join("bin/disco.real"),
            },
        ];
        if let Some((module_dir, params)) = module {
            binds.push(Bind {
                source: module_dir.to_path_buf(),
                inside: Path::new(DISCO_DIR).join("module"),
            });
            binds.push(Bind {
                source: params.to_path_buf(),
                inside: Path::new(DISCO_DIR).join("params"),
            });
        }
        binds
    }

    /// Where the run's parameter tree is written, bound read-only into
    /// every sandbox: in a noop dance with the layers (the scratch image,
    /// a filesystem with a journal, gone with the run), as nothing
    /// outlives it; live, in the run dir, where deferred actions and a
    /// merge finished by the next dance read it.
    pub fn params_dir(&self) -> PathBuf {
        if self.noop {
            self.run.layers().join("params")
        } else {
            self.run.params()
        }
    }

    /// The differ of a layer over `lowers` (as [`Sandbox::mounted`]
    /// says), with ROOT's owner names; `prune`: see
    /// [`crate::diff::Differ::prune`].
    pub fn differ<'a>(
        &'a self,
        owners: &'a crate::diff::Owners,
        lowers: &'a Lowers,
        prune: bool,
    ) -> crate::diff::Differ<'a> {
        crate::diff::Differ {
            run: &self.run,
            root: &self.root,
            mounts: &self.mounts,
            owners,
            lowers,
            prune,
            hidden: None,
            from_root: None,
        }
    }

    /// How module `layer`'s lower layers (`lowers`, its requires closure,
    /// ascending) are mounted: squashes holding its first layers folded,
    /// and the layers stacked above them. A closure of fewer than 8
    /// layers is stacked as it is; of a deeper one, each whole chunk of
    /// [`SQUASH_SIZES`] layers (512, then 64, then 8) is a squash of that
    /// chunk alone over the squashes below it — made once, by the first
    /// module whose closure starts with the same layers, and shared by
    /// the others (the modules down a chain). Each upper entry is so
    /// folded at most three times in a run, however long the chain (a
    /// squash of the whole prefix, made anew every 32 layers, linked
    /// O(n²/32)), and a path is looked up in few layers (a lookup that
    /// misses, as most of a program's do, asks every one of them). A
    /// squash is never changed once made: a module running beside others
    /// may have it mounted. A failed fold turns squashing off for the run
    /// (stacked, up to the overlay's limit).
    fn stack(&self, lowers: &[usize]) -> Result<Lowers> {
        let ends = chunk_ends(lowers.len());
        if ends.is_empty() || self.squash_off.get() {
            return self.stacked(lowers);
        }
        let mut ids = Vec::new();
        let mut start = 0;
        for &end in &ends {
            match self.squash_of(&lowers[..end], start, &ids) {
                Ok(j) => ids.push(j),
                Err(e) => {
                    crate::output::warning(&format!(
                        "cannot squash the lower layers ({e:#}); stacking them instead"
                    ));
                    self.squash_off.set(true);
                    return self.stacked(lowers);
                }
            }
            start = end;
        }
        ids.reverse();
        Ok(Lowers {
            squashes: ids,
            stacked: lowers[start..].to_vec(),
        })
    }

    /// The squash of the layers `prefix[start..]` over the squashes
    /// `below` (ascending) of `prefix[..start]`: its id, made if it is
    /// not yet (a prefix's length says its chunk, so the prefix names it).
    fn squash_of(&self, prefix: &[usize], start: usize, below: &[usize]) -> Result<usize> {
        let mut squashes = self.squashes.borrow_mut();
        if let Some(j) = squashes.iter().position(|f| f == prefix) {
            return Ok(j);
        }
        let j = squashes.len();
        self.make_squash(j, &prefix[start..], below)?;
        squashes.push(prefix.to_vec());
        Ok(j)
    }

    /// How a module over `lowers` (its requires closure, ascending) whose
    /// sandbox was started had them mounted: the squashes
    /// [`Sandbox::stack`] made for it, while they are there, else the
    /// layers as they are. For the diff of its layer, which looks a path
    /// up in these rather than in every layer of a long closure.
    pub fn mounted(&self, lowers: &[usize]) -> Lowers {
        let ends = chunk_ends(lowers.len());
        let made = self.squashes.borrow();
        let ids: Option<Vec<usize>> = ends
            .iter()
            .map(|&end| made.iter().position(|f| *f == lowers[..end]))
            .collect();
        match ids.filter(|ids| !ids.is_empty() && !self.squash_off.get()) {
            Some(mut ids) => {
                ids.reverse();
                Lowers {
                    squashes: ids,
                    stacked: lowers[*ends.last().expect("a chunk")..].to_vec(),
                }
            }
            None => Lowers {
                squashes: Vec::new(),
                stacked: lowers.to_vec(),
            },
        }
    }

    /// `lowers` stacked as they are, within the overlay's limit.
    fn stacked(&self, lowers: &[usize]) -> Result<Lowers> {
        if lowers.len() > MAX_OVERLAY_STACK {
            bail!(
                "{} required modules are more than one overlay stack can hold ({MAX_OVERLAY_STACK}) and they could not be squashed",
                lowers.len()
            );
        }
        Ok(Lowers {
            squashes: Vec::new(),
            stacked: lowers.to_vec(),
        })
    }

    /// Makes squash `j` (`q/J-K`): the upper layers `layers` folded, over
    /// the squashes `below` (ascending), the shims and ROOT.
    fn make_squash(&self, j: usize, layers: &[usize], below: &[usize]) -> Result<()> {
        let dir = self.run.layers();
        for k in 0..self.mounts.len() {
            // What shows through below the squash: the squashes below
            // (topmost first), the shims, ROOT.
            let mut under: Vec<PathBuf> = below
                .iter()
                .rev()
                .map(|&b| dir.join(RunDir::squash_rel(b, k)))
                .collect();
            if self.shims.get(k).copied().unwrap_or(false) {
                under.push(dir.join(RunDir::shim_rel(k)));
            }
            under.push(self.root.join(&self.mounts[k].rel));
            let to = dir.join(RunDir::squash_rel(j, k));
            for &i in layers {
                squash::fold(&dir.join(RunDir::upper_rel(i, k)), &to, &under)?;
            }
        }
        Ok(())
    }

    /// Removes the squash (its names for the uppers' inodes would count
    /// as hard links in the merge). The layers run after this are stacked.
    pub fn drop_squash(&self) {
        self.squash_off.set(true);
        self.squashes.borrow_mut().clear();
        let q = self.run.layers().join("q");
        let _ = fs::remove_dir_all(&q);
    }

    /// Runs `body` inside the sandbox of `layer` (1-based) over the
    /// layers `lowers` (its requires closure, ascending), and waits for
    /// it: [`Sandbox::start_layer`] then [`Sandbox::wait_any`].
    pub fn run_layer<T, F>(
        &self,
        (layer, lowers): (usize, &[usize]),
        binds: &[Bind],
        output: Output,
        body: F,
    ) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T>,
    {
        let mut one = vec![self.start_layer((layer, lowers), binds, output, body)?];
        let i = Self::wait_any(&mut one)?;
        one[i].reap()
    }

    /// Starts `body` inside the sandbox of `layer` (1-based) over the
    /// layers `lowers` (its requires closure, ascending: each must have
    /// ended), in a child process that is the init of its own PID
    /// namespace: when it ends, every process the body started ends with
    /// it. Several may run at once (modules that do not require each
    /// other); [`Sandbox::wait_any`] collects them. Errors of the sandbox
    /// itself come back as `Err`; the body's own result is in the
    /// [`Outcome`].
    pub fn start_layer<T, F>(
        &self,
        (layer, lowers): (usize, &[usize]),
        binds: &[Bind],
        output: Output,
        body: F,
    ) -> Result<Running<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T>,
    {
        let Lowers { squashes, stacked } = self.stack(lowers)?;
        let mounting = Mounting {
            layer,
            squashes,
            stacked,
        };
        let mut cgroup = self.cgroup_of(layer)?;
        self.make_layer_dirs(layer)?;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (reader, writer) = nix::unistd::pipe2(cloexec).context("pipe")?;
        let pipes = match output {
            Output::Terminal => None,
            _ => Some((
                nix::unistd::pipe2(cloexec).context("pipe")?,
                nix::unistd::pipe2(cloexec).context("pipe")?,
            )),
        };
        // SAFETY: the child only runs Rust code of this process and ends
        // with _exit. disco's one other thread (the deadline's,
        // crate::watchdog) holds no lock while it waits; the sandboxes
        // running beside this one are processes, not threads.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(reader);
                let std = pipes.map(|((r1, w1), (r2, w2))| {
                    drop((r1, r2));
                    (w1, w2)
                });
                // This copy of the cgroup only joins it; the parent removes it.
                let limits = cgroup
                    .as_mut()
                    .map(|c| (std::mem::take(&mut c.events), c.limits));
                let code = match cgroup.as_ref().map(cgroup::Cgroup::join) {
                    Some(Err(e)) => send::<T>(
                        &writer,
                        Err(format!("cannot join the sandbox's cgroup: {e}")),
                        Vec::new(),
                        Vec::new(),
                    ),
                    _ => self.child(&mounting, binds, (writer, limits), std, body),
                };
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(writer);
                let std = pipes.map(|((r1, w1), (r2, w2))| {
                    drop((w1, w2));
                    (r1, r2)
                });
                // Past dance_timeout, the deadline kills the init: every
                // pipe read here closes, the wait ends.
                let waiting =
                    crate::watchdog::waiting_on(crate::watchdog::Victim::Sandbox(child.as_raw()));
                Ok(Running {
                    child: Some(child),
                    // The process's one mask (crate::masks): what the sandbox prints.
                    drain: Drain::new(reader, std, output, crate::masks::current()),
                    cgroup,
                    _waiting: waiting,
                    _value: std::marker::PhantomData,
                })
            }
        }
    }

    /// Layer `layer`'s cgroup (none where disco may not make cgroups),
    /// removed — what is left in it killed — when its run is dropped.
    /// The first sandbox also makes what every sandbox of the run
    /// shares: the noop network namespace, where the cgroups go.
    fn cgroup_of(&self, layer: usize) -> Result<Option<cgroup::Cgroup>> {
        if self.noop && self.net.get().is_none() {
            let made = if self.host_network {
                net::NoopNet::routed(&self.root, &self.run.path.join("pasta.log"))?
            } else {
                net::NoopNet::loopback()?
            };
            let _ = self.net.set(made);
        }
        if self.cgroups.get().is_none() {
            let _ = self.cgroups.set(cgroup::Cgroups::new(self.limits));
        }
        match self.cgroups.get().and_then(Option::as_ref) {
            Some(c) => Ok(Some(c.make(layer)?)),
            None => Ok(None),
        }
    }

    /// Layer `layer`'s upper and work directories on each filesystem;
    /// the upper, the overlay's root directory, with ROOT's attributes.
    fn make_layer_dirs(&self, layer: usize) -> Result<()> {
        for (k, m) in self.mounts.iter().enumerate() {
            let upper = self.run.upper(layer, k);
            fs::create_dir(&upper).with_context(|| format!("cannot create {}", upper.display()))?;
            let meta = fs::metadata(self.root.join(&m.rel))
                .with_context(|| format!("cannot read {}", self.root.join(&m.rel).display()))?;
            let attrs = || format!("cannot give {} ROOT's attributes", upper.display());
            fs::set_permissions(&upper, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .with_context(attrs)?;
            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))
                .with_context(attrs)?;
            let work = self.run.work(layer, k);
            fs::create_dir(&work).with_context(|| format!("cannot create {}", work.display()))?;
        }
        Ok(())
    }

    /// Removes layer `layer`'s upper and work directories (a noop's
    /// layer no module still needs): best effort, what is left goes with
    /// the run.
    pub fn remove_layer(&self, layer: usize) {
        for k in 0..self.mounts.len() {
            let _ = fs::remove_dir_all(self.run.upper(layer, k));
            let _ = fs::remove_dir_all(self.run.work(layer, k));
        }
    }

    /// Waits until one of `running` has said all it will (its result
    /// and output pipes closed: its body ended) and returns its index;
    /// [`Running::reap`] then collects it. The output of all of them is
    /// read meanwhile, copied or kept as each one's [`Output`] says.
    pub fn wait_any<T>(running: &mut [Running<T>]) -> Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            if let Some(i) = running
                .iter()
                .position(|r| r.child.is_some() && r.drain.open.is_empty())
            {
                return Ok(i);
            }
            // (run, descriptor) of each pipe still open.
            let which: Vec<(usize, usize)> = running
                .iter()
                .enumerate()
                .filter(|(_, r)| r.child.is_some())
                .flat_map(|(i, r)| (0..r.drain.open.len()).map(move |d| (i, d)))
                .collect();
            if which.is_empty() {
                bail!("no sandbox is running");
            }
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd> = which
                    .iter()
                    .map(|&(i, d)| {
                        PollFd::new(running[i].drain.open[d].0.as_fd(), PollFlags::POLLIN)
                    })
                    .collect();
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("poll"),
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect()
            };
            // Highest descriptor first, so a closed one's removal does not
            // shift those still to read.
            for (&(i, d), _) in which.iter().zip(&ready).rev().filter(|(_, r)| **r) {
                running[i]
                    .drain
                    .read(d, &mut chunk)
                    .context("reading the sandbox's result")?;
            }
        }
    }

    /// In the forked child: unshare, then fork the PID namespace's init,
    /// which builds the root and runs the body.
    fn child<T: Serialize, F: FnOnce() -> Result<T>>(
        &self,
        layer: &Mounting,
        binds: &[Bind],
        (out, limits): (OwnedFd, Option<(cgroup::Events, cgroup::Limits)>),
        std: Option<(OwnedFd, OwnedFd)>,
        body: F,
    ) -> i32 {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        // SysV IPC and POSIX message queues are the IPC namespace's: a
        // live script gets its own too (it has no business with the host's
        // daemons' segments; the services it restarts run on the host).
        // A cgroup namespace too: the sandbox sees its own cgroup as the
        // root of the tree, and cannot name (or move into) any other.
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP;
        if self.noop {
            flags |= CloneFlags::CLONE_NEWUTS;
        }
        if let Some(net) = self.net.get() {
            if let Err(e) = nix::sched::setns(net.ns(), CloneFlags::CLONE_NEWNET) {
                return send::<T>(
                    &out,
                    Err(format!(
                        "cannot enter the sandbox's network namespace: {}",
                        e.desc()
                    )),
                    Vec::new(),
                    Vec::new(),
                );
            }
        }
        if let Err(e) = unshare(flags) {
            return send::<T>(
                &out,
                Err(format!("cannot unshare namespaces: {}", e.desc())),
                Vec::new(),
                Vec::new(),
            );
        }
        // SAFETY: single-threaded, as above.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let code = self.init(layer, binds, (out, limits), std, body);
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(out);
                drop(std);
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => code,
                    _ => 1,
                }
            }
            Err(e) => send::<T>(
                &out,
                Err(format!("fork: {}", e.desc())),
                Vec::new(),
                Vec::new(),
            ),
        }
    }

    /// PID 1 of the sandbox: builds the root, shuts every way out, runs
    /// the body, reads back the queue the shims wrote, reports.
    fn init<T: Serialize, F: FnOnce() -> Result<T>>(
        &self,
        layer: &Mounting,
        binds: &[Bind],
        (out, limits): (OwnedFd, Option<(cgroup::Events, cgroup::Limits)>),
        std: Option<(OwnedFd, OwnedFd)>,
        body: F,
    ) -> i32 {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let terminal = std.is_none();
        let entered = self
            .enter(layer, binds)
            .and_then(|()| {
                if let Some((o, e)) = &std {
                    use std::os::fd::AsRawFd;
                    nix::unistd::dup2(o.as_raw_fd(), 1).context("dup2 stdout")?;
                    nix::unistd::dup2(e.as_raw_fd(), 2).context("dup2 stderr")?;
                }
                drop(std);
                Ok(())
            })
            .map_err(|e| format!("{e:#}"));
        let out = match entered {
            Ok(()) => match detach_and_restrict(out, limits, terminal, self.noop) {
                Ok(fd) => fd,
                Err((fd, e)) => return send::<T>(&fd, Err(format!("{e:#}")), vec![], vec![]),
            },
            Err(e) => return send::<T>(&out, Err(e), Vec::new(), Vec::new()),
        };
        {
            use std::os::fd::AsRawFd;
            RESULT_FD.store(out.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
        }
        let value = body().map_err(|e| format!("{e:#}"));
        let queues = read_queue_file(Path::new(shims::QUEUE_IN_SANDBOX))
            .and_then(|a| Ok((a, read_pending(Path::new(PENDING_IN_SANDBOX))?)));
        let (value, (actions, pending)) = match (value, queues) {
            (Ok(v), Ok(q)) => (Ok(v), q),
            (Err(e), Ok(q)) => (Err(e), q),
            (Ok(_), Err(e)) => (Err(format!("{e:#}")), Default::default()),
            (Err(e), Err(_)) => (Err(e), Default::default()),
        };
        let (leftover_count, leftovers) = leftover_processes();
        let outcome = Outcome {
            value,
            leftovers,
            leftover_count,
            actions,
            pending,
            output: Default::default(),
            stderr_tail: None,
        };
        send_outcome(&out, outcome)
    }

    /// Mounts the root of `layer` and pivots into it.
    fn enter(&self, layer: &Mounting, binds: &[Bind]) -> Result<()> {
        nix::unistd::chdir(&self.run.layers()).context("chdir to the run's layers")?;
        propagation(
            MsFlags::MS_PRIVATE,
            "cannot make the mount namespace private",
        )?;
        let merged = self.run.merged();
        let mut ops = mounts::root_ops(&RootPlan {
            root: &self.root,
            mounts: &self.mounts,
            layer: layer.layer,
            squashes: &layer.squashes,
            stacked: &layer.stacked,
            shims: &self.shims,
            merged: &merged,
            hidden: self.state_in_root.as_deref(),
        });
        for (name, file) in &self.real_tools {
            ops.push(MountOp::Bind {
                source: file.clone(),
                target: merged
                    .join(service_cmds::REAL_DIR.trim_start_matches('/'))
                    .join(name),
                readonly: true,
            });
        }
        for b in binds {
            ops.push(MountOp::Bind {
                source: b.source.clone(),
                target: merged.join(b.inside.strip_prefix("/").unwrap_or(&b.inside)),
                readonly: true,
            });
        }
        for op in &ops {
            mounts::apply(op)?;
        }
        nix::unistd::chdir(&merged).context("chdir to the merged root")?;
        nix::unistd::pivot_root(".", ".").map_err(|errno| SandboxError::Sys {
            what: "pivot_root".into(),
            errno,
        })?;
        umount2(".", MntFlags::MNT_DETACH).map_err(|errno| SandboxError::Sys {
            what: "detaching the old root".into(),
            errno,
        })?;
        nix::unistd::chdir("/").context("chdir /")?;
        // The shims' queue lives in the sandbox's own /run tmpfs: disco
        // reads it back from here, never from a host path.
        let queue = Path::new(shims::QUEUE_IN_SANDBOX);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(queue.parent().expect("has a parent"))
            .context("cannot create the action queue")?;
        fs::write(queue, b"").context("cannot create the action queue")?;
        if self.systemd_booted {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create("/run/systemd/system")
                .context("cannot create /run/systemd/system")?;
        }
        Ok(())
    }
}

/// The init's last steps before running anything: [`security::detach`]
/// then [`security::restrict`]. Returns the result pipe (now fd 3), or it
/// with the error; the cgroup's counters, kept open across the detach,
/// become what the steps' watchdogs read ([`cgroup::current`]).
fn detach_and_restrict(
    out: OwnedFd,
    limits: Option<(cgroup::Events, cgroup::Limits)>,
    terminal: bool,
    noop: bool,
) -> Result<OwnedFd, (OwnedFd, anyhow::Error)> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // detach closes every other descriptor: hand it the raw ones, take
    // back the ones it kept.
    let raw = out.into_raw_fd();
    let (events, limits) = match limits {
        Some((e, l)) => (Some(e), Some(l)),
        None => (None, None),
    };
    let (extra, has_pids) = events.map(cgroup::Events::into_raw).unwrap_or_default();
    let has_memory = extra.len() > usize::from(has_pids);
    // SAFETY: `raw` and `extra` are ours, released above; on success
    // detach returns the descriptors that now hold them, in order.
    match security::detach(raw, &extra, terminal) {
        Ok((kept, extra)) => {
            let out = unsafe { OwnedFd::from_raw_fd(kept) };
            if let Some(limits) = limits {
                // SAFETY: the descriptors detach kept, in into_raw's order.
                let events = unsafe { cgroup::Events::from_raw(&extra, has_pids, has_memory) };
                cgroup::set_current(events, limits);
            }
            match security::restrict(noop) {
                Ok(()) => Ok(out),
                Err(e) => Err((out, e)),
            }
        }
        Err(e) => Err((unsafe { OwnedFd::from_raw_fd(raw) }, e)),
    }
}

/// How one module's sandbox is mounted: its layer, and its lower layers
/// ([`Sandbox::stack`]).
#[derive(Debug)]
struct Mounting {
    layer: usize,
    squashes: Vec<usize>,
    stacked: Vec<usize>,
}

/// A sandbox started by [`Sandbox::start_layer`], until
/// [`Sandbox::wait_any`] returns its outcome. Dropped before that (the
/// dance failed elsewhere, or passed its deadline), it is killed and
/// reaped, and its cgroup removed.
pub struct Running<T> {
    /// The forked child, until reaped.
    child: Option<nix::unistd::Pid>,
    drain: Drain,
    cgroup: Option<cgroup::Cgroup>,
    _waiting: crate::watchdog::Waiting,
    _value: std::marker::PhantomData<T>,
}

impl<T> Running<T> {
    /// From now on forwards what the sandbox prints, as it comes, after
    /// printing what it kept so far (a captured sandbox whose output may
    /// now be shown live: the executor's head module).
    pub fn stream(&mut self) {
        if self.drain.output == Output::Capture {
            std::mem::take(&mut self.drain.captured).print();
            self.drain.output = Output::Forward;
        }
    }
}

impl<T: DeserializeOwned> Running<T> {
    /// The outcome of a sandbox [`Sandbox::wait_any`] found ended: its
    /// process reaped (its namespaces gone with it), its cgroup removed,
    /// its result read; or the error of the sandbox itself.
    pub fn reap(&mut self) -> Result<Outcome<T>> {
        let child = self.child.take().expect("reaped once");
        let status = waitpid(child, None).context("waitpid")?;
        let drain = std::mem::replace(&mut self.drain, Drain::ended());
        let (buf, captured, tail) = drain.into_result();
        if buf.is_empty() {
            // Its init killed at the memory limit says so.
            if let Some(cg) = &self.cgroup {
                if cg.events.read().oom_kills > 0 {
                    bail!("the sandbox was {}", cg.limits.memory_hit());
                }
            }
            bail!("the sandbox ended without a result ({})", describe(status));
        }
        let mut outcome: Outcome<T> =
            serde_json::from_slice(&buf).context("the sandbox's result is damaged")?;
        outcome.output = captured;
        outcome.stderr_tail = tail;
        // Removed now, what is left in it killed: before the next module
        // (one that requires this one) starts.
        self.cgroup = None;
        Ok(outcome)
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::watchdog::kill_sandbox(child.as_raw());
            let _ = waitpid(child, None);
        }
    }
}

/// Reads a sandbox's result pipe to its end while copying or capturing
/// its stdout and stderr pipes, without threads: one poll over every
/// running sandbox's pipes ([`Sandbox::wait_any`]).
struct Drain {
    /// The pipes still open: 0 the result, 1 stdout, 2 stderr.
    open: Vec<(OwnedFd, u8)>,
    output: Output,
    masks: std::sync::Arc<crate::masks::Masks>,
    /// With secrets to mask, output goes out line by line (a secret is
    /// replaced within a line); a partial line waits for its end.
    pending: [Vec<u8>; 3],
    result: Vec<u8>,
    captured: crate::output::Section,
    /// Bytes captured, and bytes past [`MAX_CAPTURE`] not kept.
    kept: usize,
    dropped: usize,
    /// The last line of stderr, as masked.
    tail: Tail,
}

/// The last non-blank line of a stream, fed as it is masked: at most
/// [`MAX_TAIL`] bytes of each line kept.
#[derive(Debug, Default)]
struct Tail {
    /// The line being written.
    line: Vec<u8>,
    /// Whether it was longer than what is kept.
    cut: bool,
    /// The last complete non-blank line.
    last: Option<String>,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let mut parts = bytes.split(|b| *b == b'\n').peekable();
        while let Some(part) = parts.next() {
            let room = MAX_TAIL.saturating_sub(self.line.len()).min(part.len());
            self.line.extend_from_slice(&part[..room]);
            self.cut |= room < part.len();
            if parts.peek().is_some() {
                self.end_line();
            }
        }
    }

    /// Keeps the line being written as the last one, unless it is blank.
    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim();
        if !text.is_empty() {
            let more = if self.cut { "…" } else { "" };
            let text = crate::masks::current().text(text);
            self.last = Some(format!("{}{more}", crate::output::printable(&text)));
        }
        self.line.clear();
        self.cut = false;
    }

    fn last(mut self) -> Option<String> {
        self.end_line();
        self.last
    }
}

impl Drain {
    fn new(
        result: OwnedFd,
        std: Option<(OwnedFd, OwnedFd)>,
        output: Output,
        masks: std::sync::Arc<crate::masks::Masks>,
    ) -> Drain {
        let mut open: Vec<(OwnedFd, u8)> = vec![(result, 0)];
        if let Some((o, e)) = std {
            open.push((o, 1));
            open.push((e, 2));
        }
        Drain {
            open,
            output,
            masks,
            pending: Default::default(),
            result: Vec::new(),
            captured: Default::default(),
            kept: 0,
            dropped: 0,
            tail: Tail::default(),
        }
    }

    fn ended() -> Drain {
        Drain {
            open: Vec::new(),
            output: Output::Capture,
            masks: Default::default(),
            pending: Default::default(),
            result: Vec::new(),
            captured: Default::default(),
            kept: 0,
            dropped: 0,
            tail: Tail::default(),
        }
    }

    /// Reads what is ready on open pipe `d`, closing it at its end.
    fn read(&mut self, d: usize, chunk: &mut [u8]) -> Result<()> {
        let which = self.open[d].1;
        let n = match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.open[d].0), chunk) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(e) => return Err(e).context("read"),
        };
        if n == 0 {
            if which != 0 {
                let rest = self
                    .masks
                    .lines(&mut self.pending[which as usize], &[], true);
                if which == 2 {
                    self.tail.push(&rest);
                }
                match self.output {
                    Output::Capture => self.captured.push(which == 1, &rest),
                    _ => emit(which, &rest),
                }
            }
            self.open.remove(d);
            return Ok(());
        }
        let bytes = &chunk[..n];
        match (which, self.output) {
            (0, _) => {
                if self.result.len() + n > MAX_RESULT {
                    bail!("the sandbox's result is larger than {MAX_RESULT} bytes");
                }
                self.result.extend_from_slice(bytes);
            }
            (w, Output::Capture) => {
                let room = MAX_CAPTURE.saturating_sub(self.kept).min(n);
                let out = self
                    .masks
                    .lines(&mut self.pending[w as usize], &bytes[..room], false);
                if w == 2 {
                    self.tail.push(&out);
                }
                self.captured.push(w == 1, &out);
                self.kept += room;
                self.dropped += n - room;
            }
            (w, _) => {
                let out = self
                    .masks
                    .lines(&mut self.pending[w as usize], bytes, false);
                if w == 2 {
                    self.tail.push(&out);
                }
                emit(w, &out);
            }
        }
        Ok(())
    }

    /// The result's bytes, the captured output (masked) and the last
    /// line of stderr.
    fn into_result(mut self) -> (Vec<u8>, crate::output::Section, Option<String>) {
        if self.dropped > 0 {
            self.captured.push(
                false,
                format!("\n[… {} more bytes of output not kept]\n", self.dropped).as_bytes(),
            );
        }
        (self.result, self.captured, self.tail.last())
    }
}

/// Writes forwarded output to disco's stdout (1) or stderr (2).
fn emit(which: u8, bytes: &[u8]) {
    crate::output::put(which == 1, bytes);
}

/// Reads the shims' queue from inside the sandbox, as untrusted data: not
/// through a symlink, only a regular file, at most [`MAX_QUEUE`] bytes.
/// The bytes of a queue the sandbox wrote (`what`: "action queue"), at
/// most [`MAX_QUEUE`]; none when it was not made. A queue replaced by a
/// link, fifo or anything but a file is refused (it is the module's to
/// write, so it is read as untrusted).
fn read_queue_bytes(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!(
                "the {what} {} was replaced by a symbolic link; it is refused",
                path.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open the {what} {}", path.display()))
        }
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        let ft = meta.file_type();
        let kind = if ft.is_fifo() {
            "a fifo"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        bail!(
            "the {what} {} was replaced by {kind}; it is refused",
            path.display()
        );
    }
    if meta.len() > MAX_QUEUE {
        bail!(
            "the {what} {} holds {} bytes, more than {MAX_QUEUE}; it is refused",
            path.display(),
            meta.len()
        );
    }
    let mut bytes = Vec::new();
    f.take(MAX_QUEUE + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The deferred actions the shims queued.
fn read_queue_file(path: &Path) -> Result<Vec<Vec<String>>> {
    Ok(parse_queue(&read_queue_bytes(path, "action queue")?))
}

/// The changes the work left pending (`disco pending`), one per line:
/// at most [`MAX_PENDING`] of them, each cut at 500 characters (the list
/// is the module's to write; it goes into every report).
fn read_pending(path: &Path) -> Result<Vec<String>> {
    let bytes = read_queue_bytes(path, "pending-change list")?;
    Ok(bounded_pending(&String::from_utf8_lossy(&bytes)))
}

/// Most pending changes a module reports one by one.
const MAX_PENDING: usize = 100;

/// The non-empty lines of `text`, bounded as [`read_pending`] says.
fn bounded_pending(text: &str) -> Vec<String> {
    let all: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out: Vec<String> = all
        .iter()
        .take(MAX_PENDING)
        .map(|l| match l.char_indices().nth(500) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        })
        .collect();
    if all.len() > MAX_PENDING {
        out.push(format!("… and {} more", all.len() - MAX_PENDING));
    }
    out
}

/// Parses the shim queue: records of `argc\0argv0\0arg1\0…`; stops at the
/// first malformed record.
pub fn parse_queue(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut fields = bytes
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let mut out = Vec::new();
    while let Some(count) = fields.next() {
        let Some(n) = count.parse::<usize>().ok().filter(|n| *n < 65_536) else {
            break;
        };
        let record: Vec<String> = fields.by_ref().take(n + 1).collect();
        if record.len() != n + 1 || record[0].is_empty() {
            break;
        }
        out.push(record);
    }
    out
}

/// Sets the propagation of every mount of this namespace (`MS_PRIVATE`,
/// `MS_SLAVE`); `what` says what failed.
fn propagation(kind: MsFlags, what: &str) -> Result<(), SandboxError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | kind,
        None::<&str>,
    )
    .map_err(|errno| SandboxError::Sys {
        what: what.into(),
        errno,
    })
}

/// The host's mount namespace and disco's `/` in it, kept open once disco
/// has left it.
static HOST_MOUNT_NS: std::sync::OnceLock<(OwnedFd, OwnedFd)> = std::sync::OnceLock::new();

/// Moves disco into a mount namespace of its own (a slave of the host's:
/// mounts made on the host still show, none made here leak out). Every
/// mount of a run, the in-memory scratch included, is then gone the
/// moment disco ends, however it ends. Call once, before any thread is
/// started (`unshare` refuses a multi-threaded process).
pub fn own_mount_namespace() -> Result<()> {
    if HOST_MOUNT_NS.get().is_some() {
        return Ok(());
    }
    // Read while the binary's mount is still in this namespace: after the
    // unshare, a disco started in a chroot reads its own path as the host
    // sees it (outside the chroot).
    let _ = exe();
    let host = fs::File::open("/proc/self/ns/mnt")
        .context("cannot open /proc/self/ns/mnt (disco needs /proc)")?;
    // disco's own `/` in the host's namespace: entering that namespace
    // again moves a process to its root, which, when disco runs in a
    // chroot, is outside it — actions go back here.
    let slash = fs::File::open("/").context("cannot open /")?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|errno| SandboxError::Sys {
        what: "cannot enter a private mount namespace".into(),
        errno,
    })?;
    match propagation(
        MsFlags::MS_SLAVE,
        "cannot make disco's mount namespace a slave of the host's",
    ) {
        // `/` must be a mount point to carry propagation: in a chroot of a
        // plain directory it is not.
        Err(SandboxError::Sys {
            errno: nix::errno::Errno::EINVAL,
            ..
        }) => bail!("disco's / is not a mount point (a chroot of a plain directory?): bind-mount that directory onto itself first (mount --bind DIR DIR), then chroot into it"),
        r => r?,
    }
    let _ = HOST_MOUNT_NS.set((OwnedFd::from(host), OwnedFd::from(slash)));
    Ok(())
}

/// This binary's path, read once from `/proc/self/exe` (see
/// [`own_mount_namespace`]).
pub fn exe() -> Result<PathBuf> {
    static EXE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        fs::read_link("/proc/self/exe")
            .map_err(|e| format!("cannot find the disco binary (/proc/self/exe): {e}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The host's mount namespace and disco's `/` there, when disco has left
/// it: what deferred actions and handlers rejoin, so a daemon they start
/// lives on the host — `setns` then `fchdir` + `chroot(".")` to the `/`
/// (setns alone would leave a chroot disco runs in).
pub fn host_mount_namespace() -> Option<(std::os::fd::RawFd, std::os::fd::RawFd)> {
    use std::os::fd::AsRawFd;
    HOST_MOUNT_NS
        .get()
        .map(|(ns, slash)| (ns.as_raw_fd(), slash.as_raw_fd()))
}

/// True when `dir` is inside one of the filesystems the sandbox overlays,
/// below that overlay's lower layer.
fn inside_an_overlaid_filesystem(dir: &Path, root: &Path, mounts: &[Mount]) -> bool {
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    let Ok(dir) = fs::canonicalize(dir) else {
        return false;
    };
    mounts.iter().any(|m| {
        let lower = root.join(&m.rel);
        dir.starts_with(&lower) && dev(&dir) == dev(&lower) && dev(&dir).is_some()
    })
}

fn send<T: Serialize>(
    out: &OwnedFd,
    value: Result<T, String>,
    leftovers: Vec<String>,
    actions: Vec<Vec<String>>,
) -> i32 {
    let outcome = Outcome {
        value,
        leftover_count: leftovers.len(),
        leftovers,
        actions,
        pending: Vec::new(),
        output: Default::default(),
        stderr_tail: None,
    };
    send_outcome(out, outcome)
}

/// In a sandbox's init: the result pipe, and whether its one outcome
/// went out (by [`send_outcome`] or [`give_up`], whichever came first).
static RESULT_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static RESULT_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In a sandbox's init stuck past a step's limit where no kill reaches
/// it (a read of a FIFO the step left; the step's processes are already
/// killed): sends `error` as the module's result and ends the init, and
/// with it the module's PID namespace. Does nothing outside an init, or
/// once the init's own result went out.
pub fn give_up(error: String) {
    use std::sync::atomic::Ordering::SeqCst;
    let fd = RESULT_FD.load(SeqCst);
    if fd < 0 || RESULT_SENT.swap(true, SeqCst) {
        return;
    }
    let outcome = Outcome::<()> {
        value: Err(error),
        leftovers: Vec::new(),
        leftover_count: 0,
        actions: Vec::new(),
        pending: Vec::new(),
        output: Default::default(),
        stderr_tail: None,
    };
    let bytes = serde_json::to_vec(&outcome).unwrap_or_default();
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: a write to the init's own result pipe.
        let n = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    // SAFETY: leaving the init at once; its main thread is stuck.
    unsafe { libc::_exit(1) }
}

/// Writes `outcome` to the result pipe; the init's exit code.
fn send_outcome<T: Serialize>(out: &OwnedFd, outcome: Outcome<T>) -> i32 {
    if RESULT_SENT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // give_up is sending the step's error and ends the process.
        loop {
            std::thread::park();
        }
    }
    let ok = outcome.value.is_ok();
    let bytes = serde_json::to_vec(&outcome).unwrap_or_default();
    let mut file = fs::File::from(out.try_clone().expect("dup of the result pipe"));
    let written = file.write_all(&bytes).is_ok();
    if ok && written {
        0
    } else {
        1
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// One clear line when the kernel cannot do overlayfs.
fn check_overlayfs() -> Result<()> {
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Ok(());
    }
    // It may be a module that is not loaded yet; the first mount loads it.
    let _ = std::process::Command::new("modprobe")
        .arg("overlay")
        .status();
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Ok(())
    } else {
        bail!("this kernel has no overlayfs (not in /proc/filesystems, and `modprobe overlay` did not add it); disco's sandbox needs it")
    }
}

fn describe_process(proc_dir: &Path) -> String {
    let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmd: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    format!("{} ({})", cmd.join(" "), comm.trim())
}

/// Other processes still alive in this PID namespace (we are its init).
fn leftover_processes() -> (usize, Vec<String>) {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return (0, Vec::new());
    };
    // Alike ones counted once (a fork bomb's thousands of bashes).
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut count = 0;
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        count += 1;
        *seen.entry(describe_process(&e.path())).or_default() += 1;
    }
    let mut out: Vec<String> = seen
        .into_iter()
        .map(|(what, n)| match n {
            1 => what,
            n => format!("{what} ×{n}"),
        })
        .collect();
    if out.len() > MAX_LEFTOVERS_SHOWN {
        let more = out.len() - MAX_LEFTOVERS_SHOWN;
        out.truncate(MAX_LEFTOVERS_SHOWN);
        out.push(format!("{more} other kind(s)"));
    }
    (count, out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn deep_closures_are_squashed_in_chunks_of_512_64_and_8() {
        assert!(super::chunk_ends(7).is_empty());
        assert_eq!(super::chunk_ends(8), [8]);
        assert_eq!(super::chunk_ends(100), [64, 72, 80, 88, 96]);
        assert_eq!(
            super::chunk_ends(2000),
            [512, 1024, 1536, 1600, 1664, 1728, 1792, 1856, 1920, 1984, 1992, 2000]
        );
    }

    #[test]
    fn the_tail_is_the_last_non_blank_line_bounded_and_printable() {
        let mut t = super::Tail::default();
        t.push(b"first\nerror: x: 'ma");
        t.push(b"ybe' is not a boolean\n  \n");
        assert_eq!(t.last(), Some("error: x: 'maybe' is not a boolean".into()));
        let mut t = super::Tail::default();
        t.push(b"a\x1b[31mred\r\n");
        t.push(&[b'y'; 1000]);
        t.push(b"y");
        assert_eq!(t.last(), Some(format!("{}…", "y".repeat(super::MAX_TAIL))));
        let mut t = super::Tail::default();
        t.push(b"\x1b]0;title\x07 end\n");
        assert_eq!(t.last(), Some("\\x1b]0;title\\x07 end".into()));
        assert_eq!(super::Tail::default().last(), None);
    }

    #[test]
    fn pending_changes_are_bounded_in_number_and_length() {
        let long = "x".repeat(600);
        let text = format!("a\n\n  b  \n{long}\n") + &"c\n".repeat(150);
        let p = super::bounded_pending(&text);
        assert_eq!(p.len(), 101);
        assert_eq!(&p[..2], ["a", "b"]);
        assert_eq!(p[2], format!("{}…", "x".repeat(500)));
        assert_eq!(p[100], "… and 53 more");
    }
}
