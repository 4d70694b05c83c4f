//! `disco shell`: an interactive bash in a noop sandbox over ROOT — the
//! same sandbox a noop dance uses, with a single layer — and, when it
//! exits, the report of everything it changed. ROOT is never touched.

use std::io::IsTerminal;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::require_root;
use crate::config::Config;
use crate::diff::Owners;
use crate::exec::{wait4, SANDBOX_PATH};
use crate::names::Name;
use crate::output;
use crate::params::ParamTree;
use crate::report::{self, ModuleReport, RunReport};
use crate::run::RunDir;
use crate::sandbox::{Output, Sandbox};
use crate::tree::ServerTree;

/// `--module M`: what M's requirements and M itself are, from the cache
/// of the last fetch.
struct ModuleSetup {
    tree: ServerTree,
    params: ParamTree,
    /// The modules up to and including M, in plan order.
    order: Vec<Name>,
    /// Their requirements (M is the last).
    graph: crate::graph::Graph,
    module: Name,
}

fn module_setup(config: &Config, module: &str) -> Result<ModuleSetup> {
    let module = Name::parse(module, "--module")?;
    let fetched = crate::fetch::open_cache(&config.state_dir.value, &config.node.value)?;
    let tree = crate::fetch::cache_tree(&fetched.cache)?;
    let plan = crate::plan::only(&tree, &fetched.plan, std::slice::from_ref(&module))?;
    let params = crate::secrets::merged(&tree, &fetched.node, &plan, &config.node_key())?;
    // What the requirements print and the saved report: masked (crate::masks).
    crate::masks::set(crate::masks::Masks::from_params(&params));
    let pos = plan
        .order
        .iter()
        .position(|m| *m == module)
        .expect("only keeps it");
    let order = plan.order[..=pos].to_vec();
    let graph = crate::graph::Graph::of(&tree, &order)?;
    Ok(ModuleSetup {
        tree,
        params,
        order,
        graph,
        module,
    })
}

/// Runs the modules M requires, each in its layer, as a noop dance does.
fn run_requirements(
    config: &Config,
    sandbox: &Sandbox,
    setup: &ModuleSetup,
    exe: &std::path::Path,
) -> Result<()> {
    let last = setup.order.len() - 1;
    for (idx, m) in setup.order[..last].iter().enumerate() {
        if !setup.graph.requires(last, idx) {
            continue;
        }
        output::info(&format!("Processing {m} (required by {})", setup.module));
        let dir = setup
            .tree
            .module_dir(m)?
            .expect("planned modules are in the cache");
        let attrs = crate::pipeline::load_attributes(&dir, m)?;
        let timeout = crate::pipeline::load_timeout(&dir, m)?;
        let job = crate::pipeline::job(config, sandbox, m, attrs, timeout);
        let binds = sandbox.standard_binds(exe, Some((&dir, &sandbox.run.params())));
        let lowers = setup.graph.lowers(idx);
        let outcome =
            sandbox.run_layer(
                (idx + 1, &lowers),
                &binds,
                Output::Forward,
                || Ok(job.run()),
            )?;
        let failed = match outcome.value {
            Ok(r) => r.failed,
            Err(e) => Some(e),
        };
        if let Some(f) = failed {
            anyhow::bail!("{m}: {f} (required by {}; no shell)", setup.module);
        }
    }
    Ok(())
}

/// The interactive bash of the shell, with `env` (a module's, with
/// `--module`) and the signals a terminal user expects.
fn bash_command(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new("bash");
    if std::io::stdin().is_terminal() {
        cmd.arg("-i");
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", SANDBOX_PATH)
        .env("NOOP", "true")
        .env("PS1", "(disco noop) \\w# ")
        .current_dir("/");
    // SAFETY: only resets signal dispositions between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// Runs the shell; the exit code is the shell's. With `module`, the shell
/// stands where that module's scripts run: after the layers of what it
/// requires, with its environment. Its run directory goes when it ends,
/// whatever happened, unless `keep`.
pub fn run(config: &Config, keep: bool, module: Option<&str>) -> Result<i32> {
    require_root("disco shell", "it mounts overlays and enters namespaces")?;
    crate::sandbox::own_mount_namespace()?;
    let state = &config.state_dir.value;
    crate::cron::private_state_dir(state)?;
    let setup = module.map(|m| module_setup(config, m)).transpose()?;
    let run = RunDir::create(state, &crate::run::new_run_id())?;
    let result = session(config, run.clone(), setup.as_ref());
    let cleaned = if !run.path.exists() {
        Ok(())
    } else if keep {
        crate::pipeline::keep_scratch(&run)
            .map(|()| output::info(&format!("scratch kept in {}", run.path.display())))
    } else {
        run.remove()
    };
    if let Err(e) = cleaned {
        output::warning(&format!("{e:#}"));
    }
    result
}

/// The shell in run directory `run`: sandbox, terminal signals, the
/// shell, the changes, the report.
///
/// Long because it is the whole session, in the order a user sees it.
fn session(config: &Config, run: RunDir, setup: Option<&ModuleSetup>) -> Result<i32> {
    let state = &config.state_dir.value;
    let layers: Vec<String> = match setup {
        Some(s) => {
            s.params
                .write_to(&run.params())
                .context("cannot write the parameter tree")?;
            crate::fsutil::private_tree(&run.params().join("secrets"))?;
            s.order.iter().map(|m| m.to_string()).collect()
        }
        None => vec!["shell".to_string()],
    };
    let mut sandbox = Sandbox::prepare(
        run,
        &config.root.value,
        (state, config.scratch_limits()),
        // As if kept: the shell takes no dance lock, so it uses the shared
        // scratch image only where it must (state dir inside ROOT).
        (true, true),
        &layers,
    )?;
    sandbox.limits = config.limits();
    let exe = crate::sandbox::exe()?;
    let layer = layers.len();
    let lowers = setup.map_or_else(Vec::new, |s| s.graph.lowers(layer - 1));
    let (binds, env) = match setup {
        Some(s) => {
            run_requirements(config, &sandbox, s, &exe)?;
            let dir = s.tree.module_dir(&s.module)?.expect("planned");
            let job = crate::pipeline::job(config, &sandbox, &s.module, Default::default(), None);
            let env: Vec<(String, String)> = job
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            (
                sandbox.standard_binds(&exe, Some((&dir, &sandbox.run.params()))),
                env,
            )
        }
        None => (sandbox.standard_binds(&exe, None), Vec::new()),
    };
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    output::info(&format!(
        "shell in a noop sandbox over {}; nothing you do reaches it. Exit to see the changes.",
        sandbox.root.display()
    ));

    // Ctrl-C belongs to the shell, not to disco.
    // SAFETY: changing signal dispositions of this single-threaded process.
    let (old_int, old_quit) = unsafe {
        (
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGQUIT, libc::SIG_IGN),
        )
    };
    let outcome = sandbox.run_layer((layer, &lowers), &binds, Output::Terminal, || {
        let mut cmd = bash_command(&env);
        let child = cmd.spawn().context("cannot start bash in the sandbox")?;
        Ok(wait4(child.id())?.0)
    });
    // SAFETY: restoring the dispositions saved above.
    unsafe {
        libc::signal(libc::SIGINT, old_int);
        libc::signal(libc::SIGQUIT, old_quit);
    }
    let outcome = outcome?;
    let owners = Owners::load(&sandbox.root);
    let mounted = sandbox.mounted(&lowers);
    let differ = sandbox.differ(&owners, &mounted, false);
    let changes = differ.layer(layer)?;
    for c in &changes {
        output::change(c, false);
    }
    let code = match &outcome.value {
        Ok(code) => *code,
        Err(e) => {
            output::error(e);
            1
        }
    };
    let report = RunReport {
        id: sandbox.run.id.clone(),
        node: "shell".into(),
        noop: true,
        root: sandbox.root.clone(),
        started,
        ended: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        plan: vec!["shell".into()],
        modules: vec![ModuleReport {
            name: "shell".into(),
            changes,
            killed: outcome.leftovers,
            actions: outcome.actions,
            ..ModuleReport::default()
        }],
        actions: Vec::new(),
        error: outcome.value.err(),
        ..RunReport::default()
    };
    report::save(state, &report)?;
    output::info(&format!(
        "{} change(s); nothing was merged",
        report.change_count()
    ));
    Ok(code)
}
