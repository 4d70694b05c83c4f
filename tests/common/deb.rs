//! The Debian package of this build, made by `scripts/build-deb`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `scripts/build-deb` of the built binary into `out`: the .deb's path.
pub fn build(out: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new(repo.join("scripts/build-deb"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_disco"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}
