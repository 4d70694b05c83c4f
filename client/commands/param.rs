//! `disco param`: reads the node's merged parameters (or, with --tree,
//! reads and edits a plain parameter tree).

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};

use super::print_lines;
use crate::cli::{ParamAction, ParamArgs};
use crate::config::Config;
use crate::fetch;
use crate::params::{self, Key, NewValue, Param, ParamTree};

/// Runs `disco param`: loads the tree (plain, inside a dance, or the
/// fetched node's), then does the action.
///
/// Long because it is one arm per `disco param` action.
pub fn run(config: &Config, args: ParamArgs) -> Result<i32> {
    if let ParamAction::Explain { key, show_secrets } = &args.action {
        return explain(config, key, *show_secrets);
    }
    let tree = match &args.tree {
        Some(dir) => {
            if !dir.is_dir() {
                bail!("parameter tree {} is not a directory", dir.display());
            }
            ParamTree::load(dir, &dir.display().to_string())?
        }
        None if std::env::var_os("DISCO_PARAMS").is_some_and(|p| !p.is_empty()) => {
            // Inside a dance's sandbox: the node's merged parameters.
            if matches!(
                args.action,
                ParamAction::Set { .. } | ParamAction::Delete { .. }
            ) {
                bail!("parameters are read-only during a dance");
            }
            let dir = std::path::PathBuf::from(std::env::var_os("DISCO_PARAMS").expect("checked"));
            ParamTree::load(&dir, "DISCO_PARAMS")?
        }
        None => {
            if matches!(
                args.action,
                ParamAction::Set { .. } | ParamAction::Delete { .. }
            ) {
                bail!("set and delete change a plain tree: give --tree DIR (the fetched parameters are read-only)");
            }
            let fetched = fetch::open_cache(&config.state_dir.value, &config.node.value)?;
            let cache = crate::fetch::cache_tree(&fetched.cache)?;
            // `get` reads only the files on the way to its key in each
            // layer; the rest reads the whole tree.
            let mut tree = match &args.action {
                ParamAction::Get { key } => {
                    params::merged_at(&cache, &fetched.node, &fetched.plan, &Key::parse(key)?)?
                }
                _ => params::merged(&cache, &fetched.node, &fetched.plan)?,
            };
            let key = match &args.action {
                ParamAction::Get { key } => Some(key.as_str()),
                ParamAction::Keys { key } | ParamAction::Dump { key, .. } => key.as_deref(),
                _ => None,
            };
            // Secrets are opened only when their values are asked for.
            let wants_secrets = match &args.action {
                ParamAction::Get { key } => key == "secrets" || key.starts_with("secrets/"),
                ParamAction::Dump { show_secrets, .. } => *show_secrets,
                _ => false,
            };
            if wants_secrets {
                crate::secrets::open_params(
                    &mut tree,
                    &fetched.node.name,
                    &config.node_key(),
                    &|k| params::origin(&cache, &fetched.node, &fetched.plan, k),
                )?;
            }
            // Facts when asked for (`disco facts` lists them all).
            if key.is_some_and(|k| k == "facts" || k.starts_with("facts/")) {
                let facts = crate::facts::gather(&config.root.value)?;
                tree.overlay(crate::facts::as_params(&facts));
            }
            tree
        }
    };
    match args.action {
        ParamAction::Get { key } => {
            let key = Key::parse(&key)?;
            match tree.get(&key) {
                Some(Param::Value(v)) => {
                    let mut out = io::stdout().lock();
                    out.write_all(v)
                        .and_then(|_| out.flush())
                        .context("cannot write to stdout")?;
                }
                Some(Param::Dir(_)) => {
                    bail!("parameter '{key}' is a directory: use `disco param keys {key}`")
                }
                None => bail!("no parameter '{key}'"),
            }
        }
        ParamAction::Keys { key } => {
            let key = key.as_deref().map(Key::parse).transpose()?;
            print_lines(tree.children(key.as_ref())?.keys().map(|k| k.to_string()))?;
        }
        ParamAction::Dump { key, show_secrets } => {
            let key = key.as_deref().map(Key::parse).transpose()?;
            print_lines(
                tree.dump(key.as_ref(), !show_secrets)?
                    .iter()
                    .map(|l| crate::output::printable(l)),
            )?;
        }
        ParamAction::Set { key, value } => {
            let dir = args.tree.as_ref().expect("checked above");
            let key = Key::parse(&key)?;
            if ParamTree::is_secret(&key) {
                bail!("{key} is a secret: secrets are stored encrypted, with `disco secret set --node NODE {key}` (or --group GROUP) in the server tree");
            }
            let value = match value.as_deref() {
                Some("{}") => NewValue::Dir,
                Some(v) => NewValue::Value(format!("{v}\n").into_bytes()),
                None => {
                    let mut buf = Vec::new();
                    io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read the value from stdin")?;
                    NewValue::Value(buf)
                }
            };
            params::tree_set(dir, &key, &value)?;
        }
        ParamAction::Explain { .. } => unreachable!("answered above"),
        ParamAction::Delete { key, recursive } => {
            let dir = args.tree.as_ref().expect("checked above");
            params::tree_delete(dir, &Key::parse(&key)?, recursive)?;
        }
    }
    Ok(0)
}

/// `disco param explain KEY`: every layer holding KEY, and the winner.
/// A secret's values are masked, or with `show_secrets` decrypted with
/// the node's key (a layer's value this node cannot open says so).
fn explain(config: &Config, key: &str, show_secrets: bool) -> Result<i32> {
    let key = Key::parse(key)?;
    let fetched = fetch::open_cache(&config.state_dir.value, &config.node.value)?;
    let cache = fetch::cache_tree(&fetched.cache)?;
    let layers = params::explain(&cache, &fetched.node, &fetched.plan, &key)?;
    if layers.is_empty() {
        bail!("no parameter '{key}' in any module, group or the node");
    }
    let secret = ParamTree::is_secret(&key);
    let ids = if secret && show_secrets {
        Some(crate::secrets::load_identities(&config.node_key())?)
    } else {
        None
    };
    let last = layers.len() - 1;
    let mut lines = Vec::new();
    for (i, (at, v)) in layers.iter().enumerate() {
        let mark = if i == last { "   <- wins" } else { "" };
        let shown = match (v, &ids) {
            (None, _) => "{}".to_string(),
            (Some(v), _) if secret && !show_secrets => params::SECRET_SHOWN.to_string(),
            (Some(v), Some(ids)) if crate::secrets::is_encrypted(v) => {
                match crate::secrets::decrypt(ids, v) {
                    Ok(plain) => params::show_value(&plain),
                    Err(e) => format!("(encrypted; {e})"),
                }
            }
            (Some(v), _) => params::show_value(v),
        };
        lines.push(crate::output::printable(&format!("{at} = {shown}{mark}")));
    }
    print_lines(lines)?;
    Ok(0)
}
