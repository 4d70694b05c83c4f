//! `disco dance`: root check, its own mount namespace, splay, the locks
//! (state dir and root), `--if-changed`, the status file around one run
//! of [`crate::pipeline`], then the preview of a candidate the server
//! offered ([`crate::pipeline::preview`], `preview = true`).

use std::time::SystemTime;

use anyhow::Result;

use super::require_root;
use crate::config::Config;
use crate::fetch;
use crate::output;
use crate::pipeline;
use crate::report;

/// Options of `disco dance` beyond the global ones.
#[derive(Debug, Clone, Default)]
pub struct DanceOptions {
    /// Keep the scratch directory of a successful run.
    pub keep: bool,
    /// Only run again the actions and handlers that failed before.
    pub retry_actions: bool,
    /// Exit at once if another dance holds the lock.
    pub no_wait: bool,
    /// Sleep a random 0..splay seconds first (not on a terminal unless `splay_always`).
    pub splay: u64,
    pub splay_always: bool,
    /// Print only changes, warnings and errors.
    pub quiet: bool,
    /// Skip the dance when the server's view is what the last successful
    /// dance saw, and that dance is younger than `max_age` seconds.
    pub if_changed: bool,
    pub max_age: u64,
    /// Run deferred actions and handlers under a `--root` other than `/`.
    pub run_actions: bool,
    /// 0 no change, 2 changes, 1 failure, 4 failure after the merge.
    pub detailed_exitcodes: bool,
    /// `--only`: these modules and what they require.
    pub only: Vec<crate::names::Name>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs a dance; returns the exit code.
pub fn run(config: &Config, opts: &DanceOptions) -> Result<i32> {
    require_root("disco dance", "it mounts overlays and enters namespaces")?;
    // Before any thread exists: every mount of the dance lives and dies with disco.
    crate::sandbox::own_mount_namespace()?;
    output::set_quiet(opts.quiet);
    config.require_servers()?;
    crate::cron::splay(opts.splay, opts.splay_always);
    let state = &config.state_dir.value;
    // Out of disk space before the run's own report: one line saying so.
    let no_space =
        |e: anyhow::Error| match crate::sandbox::scratch::explain_no_space(&e, state, None) {
            Some(line) => anyhow::anyhow!(line),
            None => e,
        };
    crate::cron::private_state_dir(state).map_err(no_space)?;
    let _lock = crate::cron::take_lock(config, opts.no_wait).map_err(no_space)?;
    let _root_lock = crate::cron::take_root_lock(config, opts.no_wait)?;
    if opts.retry_actions {
        return retry_only(config, opts);
    }
    if opts.if_changed && unchanged_since_last(config, opts)? {
        return Ok(0);
    }
    crate::cron::set_status(
        state,
        &format!("running since {} (pid {})", now(), std::process::id()),
    );
    let popts = options(opts);
    let result = pipeline::run(config, &popts).map_err(no_space);
    match &result {
        Ok(ran) => crate::cron::set_status(state, &crate::cron::ended(&ran.report)),
        Err(e) => crate::cron::set_status(state, &format!("failed at {}: {e:#}", now())),
    }
    // The node's own run is over and recorded; a candidate the server
    // offered is previewed now (not for a partial dance).
    if let Ok(pipeline::Ran {
        code,
        offer: Some(offer),
        ..
    }) = &result
    {
        if previews(config) && opts.only.is_empty() {
            pipeline::preview(config, &popts, offer, *code);
        }
    }
    result.map(|ran| ran.code)
}

/// `--if-changed`: true (and says so) when the server's view of this node
/// hashes as it did for the last successful dance, which is recent enough.
fn unchanged_since_last(config: &Config, opts: &DanceOptions) -> Result<bool> {
    let Ok(last) = report::history(&config.state_dir.value).map(|h| {
        h.into_iter().rev().find(|r| {
            r.status != "failed" && r.noop == config.noop.value && !r.root_hash.is_empty()
        })
    }) else {
        return Ok(false);
    };
    let Some(last) = last else { return Ok(false) };
    let age = humantime::parse_rfc3339(&last.ended)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    if age >= opts.max_age {
        return Ok(false);
    }
    let server = fetch::ServerUri::parse(&config.require_servers()?[0])?;
    let welcome = fetch::probe(&server, &config.node.value, &config.ssh())?;
    if welcome.root == last.root_hash {
        output::info(&format!(
            "skipped: the server's snapshot {} is what run {} applied {age} s ago (--if-changed)",
            welcome.snapshot, last.id
        ));
        if let Some(candidate) = welcome.candidate {
            let offer = pipeline::Offer {
                server: server.to_string(),
                candidate,
            };
            preview_unless_done(config, opts, &offer);
        }
        return Ok(true);
    }
    Ok(false)
}

/// A skipped dance (`--if-changed`) still previews a candidate the
/// server offers, unless its last preview was of that candidate and is
/// younger than `--max-age`.
fn preview_unless_done(config: &Config, opts: &DanceOptions, offer: &pipeline::Offer) {
    if !previews(config) || !opts.only.is_empty() {
        return;
    }
    let dir = pipeline::preview_dir(&config.state_dir.value);
    let done = report::load(&dir, None).ok().is_some_and(|r| {
        r.candidate.as_ref() == Some(&offer.candidate)
            && humantime::parse_rfc3339(&r.ended)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age.as_secs() < opts.max_age)
    });
    if !done {
        pipeline::preview(config, &options(opts), offer, 0);
    }
}

/// Whether a dance previews the candidate it is offered: `preview`, and
/// `report_upload` to send what it found (without it no one would read
/// the preview: the noop would cost a dance for nothing).
fn previews(config: &Config) -> bool {
    config.preview.value && config.report_upload.value
}

/// The pipeline's options from the dance's.
fn options(opts: &DanceOptions) -> pipeline::Options {
    pipeline::Options {
        keep: opts.keep,
        quiet: opts.quiet,
        run_actions: opts.run_actions,
        detailed_exitcodes: opts.detailed_exitcodes,
        only: opts.only.clone(),
        preview: None,
    }
}

/// `--retry-actions`: runs again only what failed before, with the
/// modules and parameters of the last fetch.
fn retry_only(config: &Config, opts: &DanceOptions) -> Result<i32> {
    use crate::actions;
    let state = &config.state_dir.value;
    actions::recover_journal(state)?;
    if actions::list(state)?.is_empty() {
        output::info("nothing failed before: nothing to run again");
        return Ok(0);
    }
    let fetched = fetch::open_cache(state, &config.node.value)?;
    let tree = fetch::cache_tree(&fetched.cache)?;
    let mut params =
        crate::secrets::merged(&tree, &fetched.node, &fetched.plan, &config.node_key())?;
    params.overlay(crate::facts::as_params(&crate::facts::gather(
        &config.root.value,
    )?));
    crate::masks::set(crate::masks::Masks::from_params(&params));
    // Unsealed with the secrets of now.
    let before = actions::load_failed(state)?.unwrap_or_default();
    let scratch = tempfile::tempdir_in(state)?;
    let params_dir = scratch.path().join("params");
    params.write_to(&params_dir)?;
    crate::fsutil::private_tree(&params_dir.join("secrets"))?;
    let dir_of = |m: &str| {
        crate::names::Name::parse(m, "module")
            .ok()
            .and_then(|n| tree.module_dir(&n).ok().flatten())
    };
    let replaces = before.ids();
    let (ready, _) = actions::prepare_retry(before, &dir_of, &params_dir, false);
    let (_, still) = actions::run_keeping_failures(state, &ready, &replaces)?;
    actions::save_failed(state, &still)?;
    actions::end_journal(state)?;
    let n = actions::count(&still);
    if n == 0 {
        output::info("everything that failed before succeeded");
        return Ok(0);
    }
    output::error(&format!("{n} deferred action(s) or handler(s) still fail"));
    Ok(if opts.detailed_exitcodes { 4 } else { 1 })
}
