//! docs/fleet.md's git publishing, run as the doc says: the bare
//! repository and the shipped `server-layout/hooks/pre-receive`, installed
//! by the doc's own commands into a repository owned by an unprivileged
//! account (`nobody`, through `setpriv`; the test adds no user to the
//! host), pushed to as that account. A push to `main` is linted, published
//! and then served to a node through the real `disco serve` behind a
//! private sshd; a push that does not lint is refused with a non-zero
//! `git push` and an `error:` line, and publishes nothing. The pushes are
//! local (`git push PATH` run as nobody, which starts `git-receive-pack`
//! and the hook as nobody, as sshd would for an SSH push as the `disco`
//! account): nobody's shell is nologin, through which sshd would run it.
//! A repository made without `--initial-branch` (HEAD `master`) publishes
//! `master`, the branch its HEAD names.
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{disco_for_anyone, git, run, with_disco_on_path, Fixture};

/// The body of the first ```sh block of docs/fleet.md that contains
/// `needle`, with `/srv/` moved into `base`, the shipped hooks taken from
/// this source tree and the `disco` account replaced by `nobody`.
fn fleet_block(needle: &str, base: &Path) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(repo.join("docs/fleet.md")).unwrap();
    let block = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("docs/fleet.md has no sh block with {needle}"));
    block
        .replace("/srv/", &format!("{}/", base.display()))
        .replace(
            "/usr/share/disco/hooks/",
            &format!("{}/server-layout/hooks/", repo.display()),
        )
        .replace("chown -R disco: ", "chown -R nobody: ")
        .replace("chown disco: ", "chown nobody: ")
}

/// Runs `script` with `sh -e` as root (the doc's set-up commands).
fn sh_as_root(script: &str, cwd: &Path) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(cwd)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The account that owns the repository and pushes, with its own home,
/// TMPDIR and `disco` on its PATH.
struct Pusher {
    home: PathBuf,
    tmp: PathBuf,
    bin: PathBuf,
}

impl Pusher {
    /// `git ARGS` in `home/work` as nobody: (exit code, stdout + stderr).
    fn git(&self, args: &[&str]) -> (i32, String) {
        let out: Output = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg("git")
            .args(args)
            .current_dir(self.home.join("work"))
            .env_clear()
            .env("HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.display()),
            )
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .output()
            .expect("setpriv (util-linux) is needed");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Pusher {
    /// Commits everything in `home/work` as nobody.
    fn commit(&self, msg: &str) {
        for args in [
            &["add", "-A"][..],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                msg,
            ],
        ] {
            let (code, out) = self.git(args);
            assert_eq!(code, 0, "git {args:?}: {out}");
        }
    }
}

fn chown_nobody(path: &Path) {
    let st = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The snapshot `served/current` points at.
fn current(served: &Path) -> Option<PathBuf> {
    fs::canonicalize(served.join("current")).ok()
}

#[test]
fn fleet_md_hooks_lint_publish_and_refuse_a_bad_push_visibly() {
    let f = Fixture::new();
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let base = f.dir.path().join("srv");
    // adduser --system: the account's home, 0755, its own.
    fs::create_dir_all(base.join("disco")).unwrap();
    fs::set_permissions(base.join("disco"), fs::Permissions::from_mode(0o755)).unwrap();
    chown_nobody(&base.join("disco"));
    let setup: String = fleet_block("adduser --system", &base)
        .lines()
        .filter(|l| !l.starts_with("apt ") && !l.starts_with("adduser "))
        .map(|l| format!("{l}\n"))
        .collect();
    sh_as_root(&setup, f.dir.path());
    sh_as_root(
        &format!("umask 022\n{}", fleet_block("git init --bare", &base)),
        f.dir.path(),
    );
    let repo = base.join("disco.git");
    let hook = repo.join("hooks/pre-receive");
    assert_eq!(
        fs::read(&hook).unwrap(),
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("server-layout/hooks/pre-receive"))
            .unwrap(),
        "the shipped hook is installed"
    );
    assert_eq!(fs::metadata(&repo).unwrap().uid(), 65534);
    assert_eq!(fs::metadata(&hook).unwrap().uid(), 65534);

    // The pusher's checkout of the tree: node n runs module m.
    let home = f.dir.path().join("home");
    let pusher = Pusher {
        tmp: home.join("tmp"),
        bin: disco_for_anyone(&f.dir.path().join("anyone"))
            .parent()
            .unwrap()
            .to_path_buf(),
        home: home.clone(),
    };
    let work = home.join("work");
    fs::create_dir_all(&pusher.tmp).unwrap();
    fs::create_dir_all(work.join("parameters/n/modules")).unwrap();
    fs::create_dir_all(work.join("modules/m/files/etc")).unwrap();
    fs::write(work.join("parameters/n/modules/m"), "").unwrap();
    fs::write(work.join("modules/m/files/etc/m.conf"), "one\n").unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    chown_nobody(&home);
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    let url = repo.to_str().unwrap();

    // A good push: linted, published, the hook's checkout removed.
    let (code, out) = pusher.git(&["push", url, "main"]);
    assert_eq!(code, 0, "{out}");
    let first = current(&base.join("disco")).expect("published");
    assert_eq!(
        fs::metadata(&first).unwrap().uid(),
        65534,
        "nobody's snapshot"
    );
    assert_eq!(
        fs::read_to_string(first.join("modules/m/files/etc/m.conf")).unwrap(),
        "one\n"
    );
    assert_eq!(
        fs::read_dir(&pusher.tmp).unwrap().count(),
        0,
        "the hook's checkout is removed"
    );

    // Served: a node fetches that snapshot through the real `disco serve`.
    {
        use common::sshd::{forced, keygen, Sshd};
        let key = f.dir.path().join("key");
        let pubkey = keygen(&key);
        let sshd = Sshd::start(
            &f.dir.path().join("sshd"),
            &[forced(&pubkey, &base.join("disco"), Some("n"))],
        );
        fs::write(f.config(), sshd.client_config(&key)).unwrap();
        let (code, out, err) = run(f
            .disco_without_server()
            .args(["--server", &sshd.uri(base.join("disco").to_str().unwrap())])
            .args(["--node", "n", "plan"]));
        assert_eq!(code, 0, "{err}");
        let id = first.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(&format!("snapshot {id}")), "{err}");
        assert!(out.lines().any(|l| l == "m"), "the plan is module m: {out}");
    }

    // A push that does not lint: refused, visibly, nothing published.
    fs::write(work.join("parameters/n/modules/nosuch"), "").unwrap();
    fs::write(work.join("modules/m/files/etc/m.conf"), "two\n").unwrap();
    pusher.commit("two");
    let (code, out) = pusher.git(&["push", url, "main"]);
    assert_ne!(code, 0, "the push is refused: {out}");
    assert!(
        out.contains("remote: error: parameters/n/modules/nosuch: module 'nosuch'"),
        "{out}"
    );
    assert!(
        out.contains("remote: error: disco lint refused main (")
            && out.contains("push refused, nothing was published"),
        "{out}"
    );
    assert!(out.contains("pre-receive hook declined"), "{out}");
    assert_eq!(current(&base.join("disco")).as_ref(), Some(&first));
    assert_eq!(
        fs::read_to_string(first.join("modules/m/files/etc/m.conf")).unwrap(),
        "one\n"
    );
    assert_eq!(fs::read_dir(&pusher.tmp).unwrap().count(), 0);
    let (_, remote_main) = pusher.git(&["ls-remote", url, "refs/heads/main"]);
    let (_, pushed) = pusher.git(&["rev-parse", "HEAD~1"]);
    assert_eq!(
        remote_main.split_whitespace().next(),
        Some(pushed.trim()),
        "main stays where it was"
    );

    // Another branch is accepted and not published; fixed, main publishes.
    let (code, out) = pusher.git(&["push", url, "main:refs/heads/wip"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(current(&base.join("disco")).as_ref(), Some(&first));
    fs::remove_file(work.join("parameters/n/modules/nosuch")).unwrap();
    pusher.commit("three");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // ids have seconds
    let (code, out) = pusher.git(&["push", url, "main"]);
    assert_eq!(code, 0, "{out}");
    let second = current(&base.join("disco")).unwrap();
    assert_ne!(second, first);
    assert_eq!(
        fs::read_to_string(second.join("modules/m/files/etc/m.conf")).unwrap(),
        "two\n"
    );
}

#[test]
fn the_hook_publishes_the_branch_head_names_in_a_repository_made_without_initial_branch() {
    // `git init --bare` as an older set-up ran it: HEAD is master.
    let f = Fixture::new();
    let d = f.dir.path();
    let (repo, served, work) =
        hooked_repo(d, "-c init.defaultBranch=master init -q --bare", "", "");
    let push = |refspec: &str| push_as_root(&work, &repo, d, &[refspec]);
    let (code, out) = push("main:main");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(current(&served), None, "main is not what HEAD names");
    let (code, out) = push("main:master");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("remote: info: published "), "{out}");
    let snapshot = current(&served).expect("master published");
    assert!(snapshot.join("parameters/n/modules/m").exists());
}

#[test]
fn with_disco_candidate_the_hook_publishes_that_branch_as_the_candidate() {
    let f = Fixture::new();
    let d = f.dir.path();
    let (repo, served, work) = hooked_repo(
        d,
        "init -q --bare --initial-branch=main",
        "git --git-dir={repo} config disco.candidate candidate\n",
        "--initial-branch=main",
    );
    let push = |refspec: &str| push_as_root(&work, &repo, d, &["-q", refspec]);
    let candidate = || fs::canonicalize(served.join("candidate")).ok();
    let (code, out) = push("main:main");
    assert_eq!(code, Some(0), "{out}");
    let first = current(&served).expect("main published");
    assert_eq!(candidate(), None);
    // The candidate branch: published as the candidate, current untouched.
    fs::write(work.join("modules/m/files/etc/m.conf"), "two\n").unwrap();
    git(&work, &["commit", "-q", "-am", "two"]);
    let (code, out) = push("main:candidate");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(", the candidate; "), "{out}");
    let cand = candidate().expect("the candidate is published");
    assert_eq!(
        fs::read_to_string(cand.join("modules/m/files/etc/m.conf")).unwrap(),
        "two\n"
    );
    assert_eq!(current(&served), Some(first.clone()));
    // A candidate that does not lint is refused and changes nothing.
    fs::write(work.join("parameters/n/modules/nosuch"), "").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "bad"]);
    let (code, out) = push("main:candidate");
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("disco lint refused candidate (the candidate) ("),
        "{out}"
    );
    assert_eq!(candidate(), Some(cand));
    // Deleting the branch drops the candidate.
    let (code, out) = push(":candidate");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("dropped the candidate snapshot"), "{out}");
    assert_eq!(candidate(), None);
    assert_eq!(current(&served), Some(first));
}

/// `git push [ARGS…] REPO` from `work` as root, with this build's `disco`
/// first on PATH (the hook runs it): the exit code and stderr.
fn push_as_root(work: &Path, repo: &Path, tmp: &Path, args: &[&str]) -> (Option<i32>, String) {
    let (flags, refspec) = args.split_at(args.len() - 1);
    let out = with_disco_on_path(
        Command::new("git")
            .arg("push")
            .args(flags)
            .arg(repo)
            .args(refspec)
            .current_dir(work),
        tmp,
    )
    .output()
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A bare repository `d/disco.git` made as root by `git INIT REPO` (then
/// the `EXTRA` script lines, `{repo}` replaced), publishing into a fresh
/// 0700 `d/served` through the shipped pre-receive hook, and a work tree
/// `d/work` (`git init -q WORK_INIT`) with one commit of node `n` running
/// module `m`: (repo, served, work).
fn hooked_repo(d: &Path, init: &str, extra: &str, work_init: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (repo, served) = (d.join("disco.git"), d.join("served"));
    fs::create_dir(&served).unwrap();
    fs::set_permissions(&served, fs::Permissions::from_mode(0o700)).unwrap();
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("server-layout/hooks/pre-receive");
    sh_as_root(
        &format!(
            "git {init} {repo}\n\
             git --git-dir={repo} config disco.root {served}\n\
             {extra}\
             install -m 0755 {hook} {repo}/hooks/pre-receive\n",
            repo = repo.display(),
            served = served.display(),
            hook = hook.display(),
            extra = extra.replace("{repo}", &repo.display().to_string()),
        ),
        d,
    );
    let work = d.join("work");
    fs::create_dir_all(work.join("parameters/n/modules")).unwrap();
    fs::create_dir_all(work.join("modules/m/files/etc")).unwrap();
    fs::write(work.join("parameters/n/modules/m"), "").unwrap();
    fs::write(work.join("modules/m/files/etc/m.conf"), "one\n").unwrap();
    let mut init_args = vec!["init", "-q"];
    if !work_init.is_empty() {
        init_args.push(work_init);
    }
    git(&work, &init_args);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    (repo, served, work)
}
