//! The shim layer: a read-only overlay layer, between ROOT and the first
//! module, that puts a small `/bin/sh` script over the live binary of every
//! command that reaches outside the machine's files (service managers,
//! power commands). A shim appends its argv to the run's deferred-action
//! queue and says what it would do; the live replay happens after the merge.
//!
//! The layer also holds the mount points the sandbox needs (`/proc`, `/sys`,
//! `/dev`, `/tmp`, `/run`) when ROOT lacks them, so they never appear in a
//! module's changes. Directories in the layer copy the mode and owner of
//! their counterparts in ROOT, so a copy-up through them changes nothing.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::rootpath;
use crate::run::{Mount, RunDir};

/// Commands shimmed by default.
pub const DEFAULT_SHIMS: &[&str] = &[
    "systemctl",
    "service",
    "invoke-rc.d",
    "update-rc.d",
    "deb-systemd-invoke",
    "reboot",
    "shutdown",
    "halt",
    "poweroff",
    "telinit",
    "init",
];

/// Where bare command names are looked for, in ROOT.
const SEARCH: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
];

/// The queue file, as seen inside the sandbox.
pub const QUEUE_IN_SANDBOX: &str = "/run/disco/queue/actions";

/// The script every shim is. A service manager's call
/// ([`super::service_cmds::SERVICE_COMMANDS`]) goes to disco's own binary,
/// which answers a query, runs the root's own tool for an enablement
/// change or queues a state change; any other shimmed command (reboot,
/// a site's own) is queued as it is. The shim prints nothing: disco says
/// what was queued after the module (`would execute: …` in noop), from
/// the queue, whatever the step did with its output.
pub fn shim_script() -> String {
    let names = super::service_cmds::SERVICE_COMMANDS.join("|");
    format!(
        r#"#!/bin/sh
# disco shim: this command acts outside the machine's files, so disco records
# it and runs it on the live system after the merge (never in noop).
case "${{0##*/}}" in
  {names})
    exec /run/disco/bin/disco.real shim "$0" "$@" ;;
esac
printf '%s\0' "$#" "$0" "$@" >> {QUEUE_IN_SANDBOX}
exit 0
"#
    )
}

/// Where Debian's `/lib/lsb/init-functions` sources its hooks from.
const INIT_HOOKS: &str = "lib/lsb/init-functions.d";
/// The hook of the shim layer, sourced before every other (`40-systemd`).
const INIT_HOOK_NAME: &str = "00-disco";

/// The hook an init script (`/etc/init.d/X ACTION`) sources with
/// `/lib/lsb/init-functions` in the sandbox: `status` answers "not
/// running" (3), a state change is queued as the deferred action
/// `/etc/init.d/X ACTION` and ends the script, anything else runs as the
/// script says. (Debian's own `40-systemd` hook turns the same calls into
/// `systemctl` calls when systemd runs; no init runs in a sandbox.)
pub fn init_hook() -> String {
    format!(
        r#"# disco: an init script run in the sandbox acts on no running system.
case "${{__init_d_script_name:-$0}}" in
/etc/init.d/*)
    case "${{1:-}}" in
    status) exit 3 ;;
    start|stop|restart|reload|force-reload|try-restart|condrestart|upgrade|force-stop|rotate)
        printf '%s\0' "$#" "${{__init_d_script_name:-$0}}" "$@" >> {QUEUE_IN_SANDBOX}
        exit 0 ;;
    esac ;;
esac
"#
    )
}

/// A tool of ROOT a shim runs: its name and its file on the host.
pub type RealTool = (String, PathBuf);

/// The root's own file of each of [`super::service_cmds::REAL_TOOLS`]
/// that a shim hides (among `paths`, ROOT-relative), as (name, path on
/// the host): bound read-only under
/// [`super::service_cmds::REAL_DIR`] so the shim can run it. Symlinks
/// are resolved inside ROOT; only regular files count.
pub fn real_tools(root: &Path, paths: &[PathBuf]) -> Vec<RealTool> {
    let mut out: Vec<RealTool> = Vec::new();
    for rel in paths {
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !super::service_cmds::REAL_TOOLS.contains(&name.as_str())
            || out.iter().any(|(n, _)| *n == name)
        {
            continue;
        }
        let Ok(real) = rootpath::resolve(root, rel, true) else {
            continue;
        };
        let file = root.join(real);
        if fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
            out.push((name, file));
        }
    }
    out
}

/// Reads the extra shim paths from `ROOT/etc/disco/shims` (one per line,
/// `#` comments), added to [`DEFAULT_SHIMS`].
pub fn shim_list(root: &Path) -> Result<Vec<String>> {
    let mut list: Vec<String> = DEFAULT_SHIMS.iter().map(|s| s.to_string()).collect();
    let file = root.join("etc/disco/shims");
    // ROOT's own file: untrusted, read inside ROOT, capped.
    let shown = file.display().to_string();
    let read = crate::fsutil::read_in_root(root, Path::new("etc/disco/shims"), &shown, 1 << 20)?;
    if let Some(bytes) = read {
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let bare_but_pathlike = !line.starts_with('/') && line.contains('/');
            if line.split('/').any(|c| c == "..") || bare_but_pathlike {
                bail!(
                    "{}: {line:?}: give an absolute path without '..' or a bare command name",
                    file.display()
                );
            }
            if !line.is_empty() && !list.iter().any(|l| l == line) {
                list.push(line.to_string());
            }
        }
    }
    Ok(list)
}

/// The ROOT-relative paths to put shims at, symlinks in ROOT resolved.
pub fn shim_paths(root: &Path, list: &[String]) -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    for entry in list {
        if entry.starts_with('/') {
            let rel = Path::new(entry.trim_start_matches('/'));
            if let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) {
                if let Ok(dir) = rootpath::resolve(root, parent, true) {
                    out.insert(dir.join(name));
                }
            }
            continue;
        }
        let mut found = false;
        for dir in SEARCH {
            let Ok(real) = rootpath::resolve(root, Path::new(dir), true) else {
                continue;
            };
            if fs::symlink_metadata(root.join(&real).join(entry)).is_ok() {
                out.insert(real.join(entry));
                found = true;
            }
        }
        if !found {
            // Not installed: shim it anyway where sbin commands live, so a
            // script calling it is recorded rather than failing differently
            // in noop and live.
            if let Some(real) = ["usr/sbin", "sbin", "usr/bin", "bin"]
                .iter()
                .filter_map(|d| rootpath::resolve(root, Path::new(d), true).ok())
                .find(|r| root.join(r).is_dir())
            {
                out.insert(real.join(entry));
            }
        }
    }
    out.into_iter().collect()
}

/// Builds `s/K` for every mount that needs one; returns which mounts have
/// a shim layer.
/// Also returns the root's own tools the shims may run
/// ([`real_tools`]).
pub fn build(run: &RunDir, root: &Path, mounts: &[Mount]) -> Result<(Vec<bool>, Vec<RealTool>)> {
    let mut has = vec![false; mounts.len()];
    let script = shim_script();
    let paths = shim_paths(root, &shim_list(root)?);
    let real = real_tools(root, &paths);
    for rel in &paths {
        let k = owning_mount(mounts, rel);
        let inner = rel
            .strip_prefix(&mounts[k].rel)
            .expect("owning mount is a prefix");
        let layer = run.shim(k);
        mirror_parents(root, &mounts[k].rel, &layer, inner)?;
        let file = layer.join(inner);
        fs::write(&file, &script)
            .with_context(|| format!("cannot write shim {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755))?;
        has[k] = true;
    }
    if let Ok(hooks) = rootpath::resolve(root, Path::new(INIT_HOOKS), true) {
        if root.join(&hooks).is_dir() {
            let rel = hooks.join(INIT_HOOK_NAME);
            let k = owning_mount(mounts, &rel);
            let inner = rel
                .strip_prefix(&mounts[k].rel)
                .expect("owning mount is a prefix");
            let layer = run.shim(k);
            mirror_parents(root, &mounts[k].rel, &layer, inner)?;
            let file = layer.join(inner);
            fs::write(&file, init_hook())
                .with_context(|| format!("cannot write {}", file.display()))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
            has[k] = true;
        }
    }
    for dir in super::mounts::SANDBOX_DIRS {
        if fs::symlink_metadata(root.join(dir)).is_err() {
            let p = run.shim(0).join(dir);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            has[0] = true;
        }
    }
    if has[0] {
        // The layer's own root must look like ROOT's, or it would show through.
        copy_dir_attrs(root, &run.shim(0))?;
    }
    Ok((has, real))
}

/// The deepest mount whose path is a prefix of `rel`.
fn owning_mount(mounts: &[Mount], rel: &Path) -> usize {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| rel.starts_with(&m.rel))
        .max_by_key(|(_, m)| m.rel.components().count())
        .map(|(k, _)| k)
        .unwrap_or(0)
}

/// Creates the parents of `inner` in `layer`, each with the mode and owner
/// of the same directory in ROOT (0755 root:root where ROOT has none).
fn mirror_parents(root: &Path, mount_rel: &Path, layer: &Path, inner: &Path) -> Result<()> {
    let mut rel = PathBuf::new();
    fs::create_dir_all(layer).with_context(|| format!("cannot create {}", layer.display()))?;
    copy_dir_attrs(&root.join(mount_rel), layer)?;
    if let Some(parent) = inner.parent() {
        for c in parent.components() {
            rel.push(c);
            let dst = layer.join(&rel);
            if !dst.is_dir() {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dst)
                    .with_context(|| format!("cannot create {}", dst.display()))?;
                copy_dir_attrs(&root.join(mount_rel).join(&rel), &dst)?;
            }
        }
    }
    Ok(())
}

fn copy_dir_attrs(src: &Path, dst: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(src) {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))
            .with_context(|| format!("cannot chown {}", dst.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn shims_land_on_the_real_location_of_each_command() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        fs::write(r.join("usr/bin/systemctl"), "").unwrap();
        symlink("/bin/systemctl", r.join("usr/sbin/reboot")).unwrap();
        fs::create_dir_all(r.join("etc/disco")).unwrap();
        fs::write(
            r.join("etc/disco/shims"),
            "# site\n/opt/app/bin/restart-app\nservice\n",
        )
        .unwrap();
        let list = shim_list(r).unwrap();
        assert_eq!(list.last().unwrap(), "/opt/app/bin/restart-app");
        let paths = shim_paths(r, &list);
        for want in [
            "usr/bin/systemctl",
            "usr/sbin/reboot",
            "usr/sbin/service",
            "opt/app/bin/restart-app",
        ] {
            assert!(paths.contains(&PathBuf::from(want)), "{want} in {paths:?}");
        }
        assert!(
            !paths
                .iter()
                .any(|p| p.starts_with("sbin") || p.starts_with("bin")),
            "{paths:?}"
        );
        for bad in ["../../usr/bin/sudo", "/opt/../etc/passwd", "bin/x"] {
            fs::write(r.join("etc/disco/shims"), format!("{bad}\n")).unwrap();
            assert!(shim_list(r).is_err(), "{bad}");
        }
    }
}
