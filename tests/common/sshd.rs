//! A private sshd for the transport tests: on 127.0.0.1, a free port, its
//! own host key, config and authorized_keys (forced commands pointing at
//! the built binary). Never touches the system sshd or /etc/ssh. Killed on
//! drop.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    child: Child,
}

/// A client key pair made for a test.
pub fn keygen(path: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is needed");
    assert!(st.success());
    fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

impl Sshd {
    /// Starts sshd with `authorized` lines (each `command="…",restrict KEY`).
    pub fn start(dir: &Path, authorized: &[String]) -> Sshd {
        Sshd::start_with(dir, authorized, "")
    }

    /// [`Sshd::start`] with `settings` (sshd_config lines) first: sshd
    /// takes the first value of a keyword, so they win over the defaults.
    pub fn start_with(dir: &Path, authorized: &[String], settings: &str) -> Sshd {
        fs::create_dir_all(dir).unwrap();
        let host_key = dir.join("host_key");
        keygen(&host_key);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::write(dir.join("authorized_keys"), authorized.join("\n") + "\n").unwrap();
        fs::set_permissions(
            dir.join("authorized_keys"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let config = format!(
            "{settings}Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nLogLevel ERROR\nMaxStartups 100\n\
             SetEnv XDG_CACHE_HOME={}\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            // disco serve keeps its hash cache there, not in root's home.
            dir.join("cache").display()
        );
        fs::write(dir.join("sshd_config"), config).unwrap();
        let pubkey = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {pubkey}"),
        )
        .unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(Stdio::from(fs::File::create(dir.join("sshd.log")).unwrap()))
            .spawn()
            .expect("sshd (openssh-server) is needed");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd did not start: {}",
                fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            dir: dir.to_path_buf(),
            port,
            child,
        }
    }

    /// `ssh://root@127.0.0.1:PORT/path`.
    pub fn uri(&self, path: &str) -> String {
        format!("ssh://root@127.0.0.1:{}{path}", self.port)
    }

    /// A disco config that uses `key` and this server's known_hosts.
    pub fn client_config(&self, key: &Path) -> String {
        format!(
            "ssh_identity = \"{}\"\nssh_known_hosts = \"{}\"\nconnect_timeout = 5\n",
            key.display(),
            self.dir.join("known_hosts").display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An authorized_keys line with a forced `disco serve`.
pub fn forced(pubkey: &str, root: &Path, node: Option<&str>) -> String {
    let node = node.map(|n| format!(" --node {n}")).unwrap_or_default();
    format!(
        "command=\"{} serve --root {}{node}\",restrict {pubkey}",
        env!("CARGO_BIN_EXE_disco"),
        root.display()
    )
}
