//! The command line (clap derive): global flags and one subcommand per
//! command that works today. Parsing only; [`crate::commands`] runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Pull-based configuration management over plain trees, bash and SSH.
///
/// A node pulls its parameters and modules from a server tree, orders the
/// modules by their `requires`, and converges itself. Settings come from
/// flags, then env (NOOP, DISCO_SERVER, DISCO_NODE), then
/// /etc/disco/disco.d/*.toml, then /etc/disco/disco.toml.
#[derive(Debug, Parser)]
#[command(
    name = "disco",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags that may stand before the subcommand (`disco --root R dance`),
/// for the subcommands that use them; each subcommand also takes the
/// ones it uses after its name, and says there what they mean for it.
#[derive(Debug, Args, Default)]
pub struct Global {
    /// Server to pull from (dance, plan, config; report --fleet)
    #[arg(long, value_name = "URI")]
    pub server: Option<String>,
    /// Node name (dance, plan, param, config; serve: the only node served)
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Root directory (dance, undo, shell, config: the target; serve, publish: the served directory)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// State directory (every node-side command)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Main config file (every node-side command)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Noop (dance, undo, actions forget, publish, config, trigger)
    #[arg(long)]
    pub noop: bool,
}

/// `--server`, as a node-side command means it.
#[derive(Debug, Args, Default)]
pub struct ServerArg {
    /// Server to pull from: ssh://[user@]host[:port]/path, or a local directory holding parameters/ and modules/
    #[arg(long, value_name = "URI")]
    pub server: Option<String>,
}

/// `--node`, as a node-side command means it.
#[derive(Debug, Args, Default)]
pub struct NodeArg {
    /// Node name [default: this machine's hostname]
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

/// `--root`, the target a node-side command works on.
#[derive(Debug, Args, Default)]
pub struct RootArg {
    /// Target root directory to converge [default: /]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// `--state-dir` and `--config`: every node-side command has them.
#[derive(Debug, Args, Default)]
pub struct NodeSide {
    /// State directory: cache, runs, reports [default: /var/lib/disco]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Main config file; drop-ins are read from disco.d/ beside it [default: /etc/disco/disco.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--noop`.
#[derive(Debug, Args, Default)]
pub struct NoopArg {
    /// Change nothing: run in the sandbox and report what would change (same as NOOP=true)
    #[arg(long)]
    pub noop: bool,
}

/// What every subcommand says of the shared flags it takes.
#[derive(Debug, Default)]
pub struct Given {
    pub server: Option<String>,
    pub node: Option<String>,
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub noop: bool,
}

impl Given {
    /// The flags after the subcommand over those before it.
    pub fn over(self, before: &Global) -> Given {
        Given {
            server: self.server.or_else(|| before.server.clone()),
            node: self.node.or_else(|| before.node.clone()),
            root: self.root.or_else(|| before.root.clone()),
            state_dir: self.state_dir.or_else(|| before.state_dir.clone()),
            config: self.config.or_else(|| before.config.clone()),
            noop: self.noop || before.noop,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Converge this node: fetch, plan, run every module in the sandbox,
    /// report every change, then (not in noop) merge it onto the root
    ///
    /// Each module runs in its own overlay layer over ROOT (--root, default
    /// /): files/ are copied, templates/ rendered (bash; stdout becomes the
    /// file), scripts/ run with bash. Every created, modified, deleted or
    /// replaced path is reported with type, mode, owner, md5 and a unified
    /// diff. Service managers and power commands (systemctl, service,
    /// reboot…) are caught by shims and reported as "would execute".
    /// In noop the sandbox also has its own PID, network, UTS and IPC
    /// namespaces and no capability that reaches outside; ROOT is left
    /// byte-identical.
    ///
    /// Without noop, and only if every step succeeded (or, with on_failure
    /// = "independent" in the config, for the modules whose requirements
    /// all succeeded), the layers are merged onto ROOT (renames; the old files are kept for `disco undo`), then the
    /// commands the shims caught are run in the order called — only those
    /// of modules that changed something — and each changed module's
    /// handlers/. A crash during the merge is finished by the next dance.
    /// Needs root.
    ///
    /// Exit codes: 0 success; 1 failure (nothing merged, or an action or
    /// handler failed after the merge — the merged files stay). With
    /// --detailed-exitcodes: 0 no change, 2 changes applied (noop: pending),
    /// 1 failure before anything was merged (or a module failed and, with
    /// on_failure = "independent", the others were merged), 4 failure
    /// after the merge (an action or handler failed).
    ///
    /// Examples: NOOP=true disco dance --server /srv/disco;
    /// disco dance --detailed-exitcodes
    Dance(DanceArgs),
    /// Restore the root's files as they were before the last merged dance
    ///
    /// Files the dance replaced or deleted are put back from
    /// STATE/backup/RUN, files it created are removed, directory modes and
    /// owners are reset. Says what it restored. Run again, it undoes the
    /// dance before that one (as far as keep_backups reaches).
    ///
    /// Only files: the deferred actions and handlers that dance ran are not
    /// undone and none runs now (a service restarted with the new config
    /// keeps running as it is until you restart it); a package that dance
    /// installed loses its files and its dpkg database entries together, but
    /// what reached the running system (a daemon its deferred actions
    /// started) stays. The next dance applies the
    /// change again — with --if-changed only once --max-age has passed, since
    /// the server's tree is what the undone dance saw.
    Undo(UndoArgs),
    /// List failed or interrupted deferred actions and handlers; `forget` drops them
    ///
    /// A deferred action (`systemctl restart nginx`, caught in the sandbox)
    /// or a handler that fails after the merge is kept in
    /// STATE/failed-actions.json and run again at the end of every dance
    /// (or alone: `disco dance --retry-actions`) until it succeeds. One
    /// that was running when disco was killed (systemctl stop, a unit
    /// timeout, the OOM killer) runs again exactly once more at the next
    /// dance, and those it had not started yet run then too: disco
    /// journals each one before it starts and after it ends.
    ///
    /// Without a subcommand, lists them: per item its ID, module, what it
    /// is (the argv, secrets masked, or the handler), then how many times
    /// it failed, since when, and its last error. IDs are stable: the same
    /// action of the same module keeps its ID from dance to dance.
    ///
    /// `forget ID…` or `forget --all` drops them for good (they never run
    /// again unless a dance queues them anew). With --noop (or NOOP=true)
    /// it says what it would drop and drops nothing. A forget is saved in
    /// STATE/reports: `disco report --history` shows who dropped what, and
    /// when.
    ///
    /// Examples:
    ///   disco actions                      (what waits, with IDs)
    ///   disco actions forget 3fa2c1        (an nginx upgrade that must not run)
    ///   disco actions forget --all --noop  (what --all would drop)
    ///   disco actions forget --all
    #[command(verbatim_doc_comment)]
    Actions(ActionsArgs),
    /// Serve a server tree on stdin/stdout to `disco` clients over SSH
    ///
    /// Meant as the forced command of a node's key in authorized_keys:
    /// command="disco serve --root /srv/disco --node web1",restrict ssh-ed25519 AAAA…
    /// With --node, only that node's parameters (and groups) and the modules
    /// of its plan are served; anything else is refused and logged to
    /// stderr. Read-only; symlinks are sent as symlinks, never followed. A
    /// published tree (DIR/current, or the node's pin DIR/pinned/NODE
    /// after a canary `disco promote`) is resolved once per session; the
    /// node is told of a candidate (DIR/candidate) it does not run, and
    /// gets it when it asks (its preview). A
    /// session's memory is bounded (docs/fleet.md); with --node, at most 4
    /// sessions of the node at once (locks in DIR/sessions/NODE/), the
    /// others refused: "too many sessions of node web1 (4)". A session silent for
    /// --io-timeout, or longer than --fetch-timeout, is ended and logged; a
    /// file over the node's max_file_size is never read.
    Serve(ServeArgs),
    /// Publish a server tree atomically: copy SRC to DIR/snapshots/ID and
    /// point DIR/current at it (use with --root DIR)
    ///
    /// With --candidate, DIR/candidate points at the new snapshot instead
    /// and current is left alone: every node keeps running current, nodes
    /// with preview = true also dry-run the candidate and upload what it
    /// would do (`disco report --fleet --candidate`), and `disco promote`
    /// makes it current for some nodes or all. Snapshots that current,
    /// the candidate or a pin names are never pruned.
    ///
    /// Examples: disco publish /srv/disco-src --root /srv/disco (what the
    /// shipped git pre-receive hook runs);
    /// disco publish ./checkout --root /srv/disco --candidate;
    /// disco publish --drop-candidate --root /srv/disco
    Publish(PublishArgs),
    /// Make the candidate current: for every node, or (a canary) for the
    /// nodes of --group G or --nodes N… only (use with --root DIR)
    ///
    /// Without --group or --nodes, DIR/candidate is renamed over
    /// DIR/current (one rename: every session from then on gets it) and
    /// every pin is removed: all nodes run the candidate at their next
    /// dance. With --group G (repeatable: the nodes of the candidate whose
    /// groups include G, directly or through another group) or --nodes
    /// N…, each such node gets a pin DIR/pinned/NODE to the candidate, its
    /// own current; the others keep the old current until a full promote
    /// (`disco publish --drop-candidate` returns the pinned nodes to it).
    /// A canary promotion run again changes nothing more; a full promote
    /// uses the candidate up (run again, it finds none: exit 1). Before it
    /// acts it warns (one `warning:` line each, exit code unchanged) of
    /// the nodes it moves whose preview of the candidate fails, naming the
    /// failing module, and of those that have not reported a preview of
    /// it (--noop shows the same). Prints each node and the
    /// snapshot it now runs (`pinned` for a canary). Refused in one line:
    /// no candidate, a group with no node, a node the candidate does not
    /// have. On several servers, run it on each (docs/fleet.md).
    ///
    /// Examples: disco promote --root /srv/disco --group canary;
    /// disco promote --root /srv/disco --nodes web1 web2;
    /// disco promote --root /srv/disco
    Promote(PromoteArgs),
    /// Timings, memory and I/O of every step of the last dance
    ///
    /// Prints each step as `report: MODULE: STEP` with time_real/user/sys,
    /// mem_max (KiB), page faults, block I/O and exit status. --history
    /// lists past runs; --json and --prometheus print the last run for
    /// machines; --fleet --server DIR (on the server) lists every node that
    /// uploads its reports (report_upload = true).
    Report(ReportArgs),
    /// Print the changes of the last dance (or shell) again, from its saved
    /// report: rolled up as the dance printed them, `--full` for all, or
    /// the given PATHs
    Diff(DiffArgs),
    /// Open bash in a noop sandbox over ROOT; when it exits, print what it changed
    ///
    /// Nothing reaches ROOT: try `rm -f /etc/passwd`, then exit, and read
    /// the report. Reads commands from stdin when stdin is not a terminal.
    Shell(ShellArgs),
    /// Fetch the node's modules and parameters into the cache and print the
    /// order its modules run in, one per line
    ///
    /// The plan is the node's modules (from parameters/NODE/modules and its
    /// groups) plus every module named by a `requires` line, transitively:
    /// `after X` adds X and runs it first; `before X` adds X and runs this
    /// module first. Ties are broken by name. Diagnostics go to
    /// stderr, so stdout is only the plan.
    ///
    /// Example: disco plan --server /srv/disco --node web1
    Plan(PlanArgs),
    /// Check a server tree before any node fetches it: plans, bash -n, typos
    ///
    /// Reads the tree where it lies (no fetch, no cache, no root needed);
    /// --server must be a directory (an ssh:// server is refused: run
    /// lint on the server, or in a git hook there). For every node (every
    /// directory of parameters/ that no other lists in its groups/), or
    /// only those given with --node: its groups resolve, its plan resolves
    /// (no missing module, no cycle) and no two of its modules default one
    /// parameter. For every module, once however many nodes use it: only
    /// requires, parameters/, files/, templates/, scripts/, handlers/,
    /// attributes, timeout, README and README.md at its top (a typo gets
    /// a suggestion: `template/`, did you mean templates/?); every
    /// template, script and handler passes `bash -n`; no file in scripts/
    /// or handlers/ that would be skipped (a note, an editor's backup;
    /// a README* is fine); attributes, timeout and requires parse; no
    /// editor's leftover in files/ or templates/. Nothing of the tree runs.
    ///
    /// Prints one `error: FILE:LINE: message` line per problem (FILE
    /// relative to the tree, LINE when known), sorted, then a summary.
    /// Exit codes: 0 no problem, 1 a problem (or no tree to lint).
    ///
    /// Examples: disco lint --server /srv/disco;
    /// disco lint --server . --node web1 --node db1
    ///
    /// A git pre-receive hook on the server (hooks/pre-receive, executable)
    /// that refuses a push whose tree has a problem; git shows the pusher
    /// the lines:
    ///
    ///   #!/bin/bash
    ///   set -uo pipefail
    ///   while read -r old new ref; do
    ///     [ "$new" = 0000000000000000000000000000000000000000 ] && continue  # deleted
    ///     tree=$(mktemp -d)
    ///     git archive "$new" | tar -x -C "$tree"
    ///     disco lint --server "$tree"; status=$?
    ///     rm -rf "$tree"
    ///     [ "$status" = 0 ] || { echo "push of $ref refused: fix the lines above"; exit 1; }
    ///   done
    #[command(verbatim_doc_comment)]
    Lint(LintArgs),
    /// Read the node's merged parameters, or read and edit a plain parameter tree
    ///
    /// Without --tree, reads the parameters fetched by the last `disco plan`:
    /// module defaults < group values < node values. With --tree DIR, works on
    /// the plain tree in DIR (for example parameters/web1/parameters on the
    /// server) and can also set and delete keys.
    ///
    /// Keys look like `users/alice/shell`; each part matches [A-Za-z0-9._-]+.
    Param(ParamArgs),
    /// Encrypt, show, re-encrypt and list secret parameters in a server tree
    ///
    /// A secret is any parameter under `secrets/` of a node or a group. It
    /// is stored in the tree as an age-encrypted file whose recipients are
    /// the SSH keys of the nodes that may read it (parameters/NODE/node.pub,
    /// the line `disco init` prints) and the admins' keys in
    /// recipients/admins (one `ssh-ed25519 …`, `ssh-rsa …` or `age1…` key a
    /// line). The server, git and every copy of the tree hold ciphertext
    /// only: a node decrypts its secrets with its own key when it dances,
    /// an admin with theirs. Run these in the admins' checkout of the tree,
    /// then commit and push.
    ///
    /// Examples:
    ///   disco secret set --node db1 secrets/db_password      (asks, no echo)
    ///   printf %s "$PW" | disco secret set --group web secrets/api_token
    ///   disco secret show --node db1 secrets/db_password
    ///   disco secret rekey          (after a node's key or a group changed)
    ///   disco secret list
    #[command(verbatim_doc_comment)]
    Secret(SecretArgs),
    /// Print the effective configuration, one `key = value  # source` line per setting
    Config(ConfigArgs),
    /// Ask for a dance now: drop a request in the trigger spool
    /// STATE/trigger/, which the packaged disco.path (or `disco watch`)
    /// turns into a dance within seconds
    ///
    /// Prints the request's path, STATE/trigger/NAME.request. The dance
    /// that serves it (a noop one for a noop request, from --noop,
    /// NOOP=true or noop = true in the config; else a live one) renames
    /// it NAME.running, with its run id, when it starts, and replaces it
    /// with NAME.ok, NAME.changed or NAME.failed when it ends: `run=` the
    /// run id (`disco report --run ID`), `exit=` its exit code, `error=`
    /// why it failed. Requests made while a dance runs are served
    /// together by one more dance. At most 64 wait; one more is refused.
    /// The newest 64 ended ones are kept. Needs root.
    ///
    /// Exit codes: 0 the request is in the spool; 1 it could not be made.
    /// With --wait, as the dance: 0 success, 1 failure (2 for changes and
    /// 4 for a failure after the merge with --detailed-exitcodes).
    ///
    /// Examples: disco trigger; disco trigger --noop --wait
    Trigger(TriggerArgs),
    /// Run a dance whenever a request arrives in the trigger spool (for
    /// nodes without systemd: run it as a service)
    ///
    /// Watches STATE/trigger/ with inotify. When requests wait, runs one
    /// `disco dance` (a noop one for noop requests, a live one for live
    /// ones, the oldest first) that serves them all; requests arriving
    /// during it are served by one more dance after it. Never two dances
    /// at once; a failed dance is recorded in its requests' status and
    /// watching goes on. A request a dance could not take (it failed
    /// before it started: no server, a bad config) is ended as failed.
    /// SIGTERM, SIGINT or SIGHUP: the running dance is stopped (it ends
    /// with its report, as `systemctl stop` ends one) and watch exits 0.
    /// With --once: serve what waits (and what arrives meanwhile), then
    /// exit — what the packaged disco-trigger.service runs. Needs root.
    ///
    /// Example (runit): exec disco watch --quiet
    Watch(WatchArgs),
    /// Print this node's facts: hostname, fqdn, OS of the root, CPUs,
    /// memory, interfaces, default route, primary address, virtualization
    ///
    /// Facts are gathered on the host before any sandbox, so noop and live
    /// see the same; templates and scripts read them as parameters:
    /// `disco param get facts/primary_ipv4`. Read facts instead of probing
    /// the system (`ip addr` in a noop sandbox sees only loopback).
    Facts(FactsArgs),
    /// Set up this node: write /etc/disco/disco.toml, make the node's SSH
    /// key, pin the server's host key, print the server's authorized_keys line
    ///
    /// Writes under ROOT (--root, default /): etc/disco/disco.toml (server
    /// URI, node name, key and known_hosts paths), etc/disco/id_ed25519 (an
    /// ed25519 key without passphrase, 0600; an existing one is kept) and
    /// etc/disco/known_hosts (the server's host key). The host key is
    /// fetched with ssh-keyscan and its SHA256 fingerprint shown for you to
    /// confirm on a terminal; without a terminal give it with --host-key
    /// (the key itself, pinned without contacting the server, or its
    /// fingerprint, which the scanned key must match). A disco.toml with
    /// settings in it is never overwritten without --force. Run it on each
    /// machine (at first boot for one made from an image), not in the
    /// image: machines sharing a key would share a node.
    ///
    /// Then add the printed line to the serving user's ~/.ssh/authorized_keys
    /// on the server, and run `NOOP=true disco dance`.
    ///
    /// Example: disco init --server ssh://disco@cfg.example.org/srv/disco
    Init(InitArgs),
    /// Print the shell completion script for bash, zsh or fish (or elvish, powershell)
    ///
    /// Examples: disco completions bash > /etc/bash_completion.d/disco;
    /// disco completions fish > ~/.config/fish/completions/disco.fish
    Completions(CompletionsArgs),
    /// Inside the sandbox only: what a service-manager shim does with a call
    /// (answer a query, run the root's own tool, or queue a deferred action)
    #[command(hide = true)]
    Shim(ShimArgs),
    /// Print the manual page disco(1), or write disco.1 and one page per
    /// subcommand (disco-dance.1…) into DIR
    ///
    /// Example: disco man | man -l -
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub node_side: NodeSide,
    /// Ask for a noop dance: nothing merged, the report says what would change
    #[arg(long)]
    pub noop: bool,
    /// Wait for the request's dance to end; print its status file's path
    /// and exit as the dance did
    #[arg(long)]
    pub wait: bool,
    /// With --wait: exit 2 for changes, 4 for a failure after the merge
    #[arg(long, requires = "wait")]
    pub detailed_exitcodes: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[command(flatten)]
    pub node: NodeArg,
    #[command(flatten)]
    pub root: RootArg,
    #[command(flatten)]
    pub node_side: NodeSide,
    /// Serve the requests waiting (and those arriving meanwhile), then exit
    #[arg(long)]
    pub once: bool,
    /// Give each dance --quiet: only changes, warnings and errors
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Give each dance --run-actions (deferred actions and handlers run
    /// even when --root is not /)
    #[arg(long)]
    pub run_actions: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The server: ssh://[user@]host[:port]/path (or a local directory)
    #[arg(long, value_name = "URI")]
    pub server: String,
    #[command(flatten)]
    pub node: NodeArg,
    /// Write into this root instead of / (a container's, a mounted disk's);
    /// the node name is then --node or ROOT/etc/hostname, never this machine's
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The server's host key: `ssh-ed25519 AAAA…` (pinned as given, the
    /// server is not contacted) or its `SHA256:…` fingerprint (the scanned
    /// key must match)
    #[arg(long, value_name = "KEY")]
    pub host_key: Option<String>,
    /// Overwrite an existing disco.toml that has settings
    #[arg(long)]
    pub force: bool,
    /// Replace the node's key by a new one (rotation, or after a leak;
    /// without it an existing key is kept). The node is then locked out
    /// until the server has the new authorized_keys line, and its secrets
    /// until the new node.pub is recorded and `disco secret rekey` ran
    #[arg(long)]
    pub new_key: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ShimArgs {
    /// The shim's path as called, then its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
    pub argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write disco.1 and disco-SUBCOMMAND.1 into DIR instead of printing disco(1)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FactsArgs {
    /// Print them as one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub root: RootArg,
}

#[derive(Debug, Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub root: RootArg,
    #[command(flatten)]
    pub node_side: NodeSide,
    /// List what undo would restore and remove; change nothing
    #[arg(long)]
    pub noop: bool,
    /// Do not ask for confirmation on a terminal (it is never asked without one)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ActionsArgs {
    #[command(flatten)]
    pub node_side: NodeSide,
    #[command(subcommand)]
    pub action: Option<ActionsAction>,
}

#[derive(Debug, Subcommand)]
pub enum ActionsAction {
    /// Drop pending actions and handlers by ID (from `disco actions`), or all
    ///
    /// Examples: disco actions forget 3fa2c1 9b01de; disco actions forget --all --noop
    Forget {
        /// IDs as `disco actions` shows them
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Drop every one
        #[arg(long)]
        all: bool,
        /// Say what would be dropped; drop nothing (same as NOOP=true)
        #[arg(long)]
        noop: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The served directory: a server tree, or one `disco publish` made
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Serve only this node's view (the key's forced command names it)
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// End the session (logged) when the node sends or takes nothing for
    /// this many seconds
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub io_timeout: u64,
    /// End the session (logged) when it lasts longer than this many seconds
    /// in all, the hashing of an unpublished tree included
    #[arg(long, value_name = "S", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub fetch_timeout: u64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[command(flatten)]
    pub node: NodeArg,
    #[command(flatten)]
    pub node_side: NodeSide,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// The server tree to check: a directory holding parameters/ and
    /// modules/ (or one `disco publish` made) [default: the configured server]
    #[arg(long, value_name = "DIR")]
    pub server: Option<String>,
    /// Check only this node (repeat for more) and the modules it may plan
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Main config file, read for the default server [default: /etc/disco/disco.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Let a top-level parameters/, modules/ or recipients/ of the tree be
    /// a symlink to DIR (repeat for more); any other top-level link is
    /// refused: a pushed link never leads disco out of the tree
    #[arg(long = "allow-link-to", value_name = "DIR")]
    pub allow_link_to: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// The server tree: the checkout holding parameters/, modules/ and
    /// recipients/admins
    #[arg(long, value_name = "DIR", default_value = ".", global = true)]
    pub tree: PathBuf,
    #[command(subcommand)]
    pub action: SecretAction,
}

/// Which node or group a secret belongs to.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SecretOwner {
    /// The secret is this node's (parameters/NODE/parameters/secrets/…)
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// The secret is this group's: every node in the group may read it
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretAction {
    /// Encrypt a value to KEY of a node or group; the value comes from
    /// stdin, or from a prompt without echo on a terminal (asked twice)
    ///
    /// The value is stored exactly as read from stdin (`printf %s` for none
    /// of a trailing newline); a value typed at the prompt gets one, as
    /// `disco param set` gives. Refused when a node that may read it has no
    /// recorded key, or when recipients/admins lists no key (nobody could
    /// show or rekey it). Never give a value as an argument: argv is
    /// visible to every local account.
    Set {
        #[command(flatten)]
        owner: SecretOwner,
        /// The key, under secrets/ (e.g. secrets/db_password)
        key: String,
    },
    /// Decrypt KEY of a node or group with an admin's key and print it
    Show {
        #[command(flatten)]
        owner: SecretOwner,
        /// The key, under secrets/
        key: String,
        /// The admin's private key (an OpenSSH key or an age identity
        /// file) [default: ~/.ssh/id_ed25519]
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Re-encrypt every secret whose recipients changed: a node enrolled
    /// again with a new key, a node added to or removed from a group, an
    /// admin key added or removed
    ///
    /// A secret's recipients are read from its header (SSH keys by their
    /// tag; age keys only by their count: give --all after replacing one
    /// age key by another). Prints one line per secret re-encrypted.
    Rekey {
        /// The admin's private key [default: ~/.ssh/id_ed25519]
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Re-encrypt every secret, changed recipients or not
        #[arg(long)]
        all: bool,
    },
    /// List every secret with who can read it, never a value; a secret
    /// not encrypted, or not readable by a node that uses it, is marked
    ///
    /// Exit codes: 0 every secret is encrypted to exactly who should read
    /// it; 1 otherwise (run `disco secret rekey`, or `disco secret set`).
    List,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[command(flatten)]
    pub node: NodeArg,
    #[command(flatten)]
    pub root: RootArg,
    #[command(flatten)]
    pub node_side: NodeSide,
    #[command(flatten)]
    pub noop: NoopArg,
}

#[derive(Debug, Args)]
pub struct ParamArgs {
    /// Work on the plain parameter tree in DIR instead of the fetched node
    #[arg(long, value_name = "DIR")]
    pub tree: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArg,
    #[command(flatten)]
    pub node_side: NodeSide,
    #[command(subcommand)]
    pub action: ParamAction,
}

#[derive(Debug, Subcommand)]
pub enum ParamAction {
    /// Print the value of KEY exactly as stored
    Get { key: String },
    /// List the keys directly under KEY (or at the top), one per line
    Keys { key: Option<String> },
    /// Print every layer that holds KEY — module defaults, each group in
    /// order, the node — with its value, and which one wins; secrets
    /// print as `******** (secret)`
    Explain {
        key: String,
        /// Print secret values (decrypted with the node's key) instead
        /// of the mask
        #[arg(long)]
        show_secrets: bool,
    },
    /// Print `key = value` for everything under KEY (or everything), sorted;
    /// directories print as `key = {}`, newlines in values as \n; secrets
    /// print as `******** (secret)`
    Dump {
        key: Option<String>,
        /// Print secret values instead of the mask
        #[arg(long)]
        show_secrets: bool,
    },
    /// Set KEY (needs --tree): the value is read from stdin, or given as
    /// VALUE (written with a trailing newline); `{}` makes a directory
    ///
    /// Examples: echo 8080 | disco param --tree t set nginx/port;
    /// disco param --tree t set users {}
    Set { key: String, value: Option<String> },
    /// Delete KEY (needs --tree); a directory needs -r
    Delete {
        key: String,
        /// Delete a directory and everything under it
        #[arg(short = 'r', long)]
        recursive: bool,
    },
}

#[derive(Debug, Args)]
pub struct DanceArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[command(flatten)]
    pub node: NodeArg,
    #[command(flatten)]
    pub root: RootArg,
    #[command(flatten)]
    pub node_side: NodeSide,
    #[command(flatten)]
    pub noop: NoopArg,
    /// Keep the run directory STATE/run/RUN after the dance, failed or not:
    /// each module's layers in u/I-K (what it changed; a live merge takes
    /// what it applies out of them) and the parameters it saw. Layers that
    /// were in the scratch image are copied out of it. Without --keep the
    /// run directory goes with the run; the saved report stays (`disco diff`)
    #[arg(long)]
    pub keep: bool,
    /// Run deferred actions and handlers even when --root is not /
    /// (they run chrooted into the root)
    #[arg(long)]
    pub run_actions: bool,
    /// Exit 0 no change, 2 changes, 1 failure, 4 failure after the merge
    #[arg(long)]
    pub detailed_exitcodes: bool,
    /// If another dance is running, exit 1 at once instead of waiting
    #[arg(long)]
    pub no_wait: bool,
    /// Sleep a random 0..SECONDS first, so a fleet's cron runs spread out
    /// (skipped when stdout is a terminal)
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub splay: u64,
    /// Splay even on a terminal
    #[arg(long)]
    pub splay_always: bool,
    /// Print only changes, warnings and errors (scripts' output only when
    /// their module fails or changes something): a converged node sends no
    /// cron mail
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Ask the server only for the hash of this node's inputs; skip the dance
    /// when it equals the last successful dance's and that one is younger
    /// than --max-age
    #[arg(long)]
    pub if_changed: bool,
    /// In noop: `none` (loopback only; name lookups and connects fail at
    /// once) or `host` (a network of its own routed outward by pasta, from
    /// the package passt, so a package install in noop is exact; never the
    /// host's loopback, abstract sockets or traffic). Scripts see it as
    /// DISCO_NOOP_NETWORK [config: noop_network]
    #[arg(long, value_name = "none|host", value_parser = ["none", "host"])]
    pub noop_network: Option<String>,
    /// Run up to N modules at once: modules that do not require each other
    /// (no `after`/`before` line between them, directly or not) run side by
    /// side; 1 runs them one at a time in the plan's order. The report,
    /// the merged root and the exit code are the same for any N
    /// [config: jobs; default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Only run again the deferred actions and handlers that failed in
    /// earlier dances, or were cut by disco's death (they also run again at
    /// the end of every dance; `disco actions` lists them)
    #[arg(long)]
    pub retry_actions: bool,
    /// Run only these modules (comma-separated) and what they require;
    /// merge only their layers. The report says the dance was partial.
    #[arg(long, value_name = "MODULE[,MODULE…]", value_delimiter = ',')]
    pub only: Vec<String>,
    /// With --if-changed: dance anyway when the last one is older (e.g. 1h, 30m)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_age: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Every change in full, never rolled up
    #[arg(long)]
    pub full: bool,
    /// Only these paths, in full
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub node_side: NodeSide,
    /// Show run ID instead of the last one (see STATE/reports/)
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Open the shell where MODULE's scripts run: after the layers of what
    /// it requires (run first, as in a noop dance), with its environment
    /// (DISCO_MODULE, DISCO_MODULE_DIR, DISCO_PARAMS; `disco param get`
    /// works). Reads the cache of the last `disco plan` or dance.
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    #[command(flatten)]
    pub root: RootArg,
    #[command(flatten)]
    pub node_side: NodeSide,
    /// Keep the scratch directory after the shell exits
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The served directory: gets snapshots/ID and the `current` link
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Say which snapshot would be made and how many files differ from
    /// current; change nothing
    #[arg(long)]
    pub noop: bool,
    /// The server tree to publish (holds parameters/ and modules/)
    #[arg(required_unless_present = "drop_candidate")]
    pub src: Option<PathBuf>,
    /// Publish SRC as the candidate (DIR/candidate) instead of current:
    /// nodes with preview = true dry-run it and upload what it would do;
    /// none runs it until `disco promote`. Replaces an older candidate
    #[arg(long)]
    pub candidate: bool,
    /// Remove DIR/candidate (nodes stop previewing it) and the pins of a
    /// canary promotion to it (those nodes run current again); current is
    /// untouched
    #[arg(long, conflicts_with_all = ["src", "candidate"])]
    pub drop_candidate: bool,
    /// How many snapshots to keep (one still being served is never removed)
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    /// Let a top-level parameters/, modules/ or recipients/ of the tree be
    /// a symlink to DIR (repeat for more); any other top-level link is
    /// refused: a pushed link never leads disco out of the tree
    #[arg(long = "allow-link-to", value_name = "DIR")]
    pub allow_link_to: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The served directory: holds current, candidate and snapshots/
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Promote for the nodes of this group only (a canary); repeat for
    /// more groups
    #[arg(long = "group", value_name = "G", conflicts_with = "nodes")]
    pub groups: Vec<String>,
    /// Promote for these nodes only (a canary)
    #[arg(long, value_name = "NODE", num_args = 1..)]
    pub nodes: Vec<String>,
    /// Say which nodes would move to which snapshot; change nothing
    #[arg(long)]
    pub noop: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// With --fleet: the served directory on the server
    #[arg(long, value_name = "DIR")]
    pub server: Option<String>,
    #[command(flatten)]
    pub node_side: NodeSide,
    /// Show run ID instead of the last one
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// One line per saved run: time, status, changes, duration
    #[arg(long)]
    pub history: bool,
    /// The run's report as JSON; with --fleet, the fleet as one JSON
    /// document (nodes, last run, status, changes, duration, age, pending
    /// failed actions)
    #[arg(long)]
    pub json: bool,
    /// The run in node_exporter textfile format
    #[arg(long)]
    pub prometheus: bool,
    /// On the server: one line per node from DIR/reports (give --server
    /// DIR): the snapshot it runs, its last run, status, changes…, every
    /// field escaped; changes of a failed dance are 0 merged
    #[arg(long)]
    pub fleet: bool,
    /// With --fleet: the preview of the candidate (`disco publish
    /// --candidate`): the nodes grouped by what it would do on each (the
    /// same changes, or the same failing module and error), the changes
    /// once per group, then the nodes that have not reported it yet. Exit
    /// 0 every node reported and none fails, 1 one fails, 2 not all
    /// reported (a CI job waits on 2)
    #[arg(long, requires = "fleet")]
    pub candidate: bool,
    /// With --fleet: write the fleet as a static site into DIR instead of
    /// printing it — DIR/index.html (every node: failed and stale ones
    /// first), DIR/nodes/NODE.html (its kept runs, their changes as `disco
    /// diff` shows them, a duration plot), and while a candidate is
    /// published DIR/candidate.html (its preview, grouped as --candidate
    /// prints it). Plain HTML, no script: it opens from the file system or
    /// any web server. DIR is replaced as a whole, atomically, and must be
    /// new, empty or a site this wrote. Exit 0 once it is written
    #[arg(long, value_name = "DIR", requires = "fleet", conflicts_with_all = ["json", "candidate"])]
    pub html: Option<PathBuf>,
    /// With --fleet: flag nodes whose last report is older than this. The
    /// exit code makes --fleet a monitoring check: 0 every node fresh and
    /// ok, 1 any failed (or unreadable), 2 any stale
    #[arg(long, visible_alias = "max-age", value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub stale: std::time::Duration,
}

impl Command {
    /// The shared flags this subcommand was given after its name.
    ///
    /// Long because it is one arm per subcommand.
    pub fn given(&self) -> Given {
        let side = |n: &NodeSide| (n.state_dir.clone(), n.config.clone());
        let mut g = Given::default();
        match self {
            Command::Dance(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.server = a.server.server.clone();
                g.node = a.node.node.clone();
                g.root = a.root.root.clone();
                g.noop = a.noop.noop;
            }
            Command::Undo(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.root = a.root.root.clone();
                g.noop = a.noop;
            }
            Command::Actions(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                if let Some(ActionsAction::Forget { noop, .. }) = &a.action {
                    g.noop = *noop;
                }
            }
            Command::Serve(a) => {
                g.root = a.root.clone();
                g.node = a.node.clone();
            }
            Command::Publish(a) => {
                g.root = a.root.clone();
                g.noop = a.noop;
            }
            Command::Promote(a) => {
                g.root = a.root.clone();
                g.noop = a.noop;
            }
            Command::Report(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.server = a.server.clone();
            }
            Command::Diff(a) => (g.state_dir, g.config) = side(&a.node_side),
            Command::Shell(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.root = a.root.root.clone();
            }
            Command::Plan(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.server = a.server.server.clone();
                g.node = a.node.node.clone();
            }
            Command::Lint(a) => {
                g.server = a.server.clone();
                g.config = a.config.clone();
            }
            Command::Param(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.node = a.node.node.clone();
            }
            Command::Trigger(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.noop = a.noop;
            }
            Command::Watch(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.server = a.server.server.clone();
                g.node = a.node.node.clone();
                g.root = a.root.root.clone();
            }
            Command::Facts(a) => g.root = a.root.root.clone(),
            Command::Init(a) => {
                g.node = a.node.node.clone();
                g.root = a.root.clone();
            }
            Command::Completions(_) | Command::Man(_) | Command::Secret(_) | Command::Shim(_) => {}
            Command::Config(a) => {
                (g.state_dir, g.config) = side(&a.node_side);
                g.server = a.server.server.clone();
                g.node = a.node.node.clone();
                g.root = a.root.root.clone();
                g.noop = a.noop.noop;
            }
        }
        g
    }
}
