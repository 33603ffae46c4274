//! Where things are in the repository, and building the sonde binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// The repository root (xtask lives one level below it).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest directory is inside the repository")
}

/// `cargo`, the same one that runs xtask when there is one.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Cargo's target directory; a relative CARGO_TARGET_DIR is relative to the
/// root because every cargo command here runs there.
pub fn target_dir() -> PathBuf {
    root().join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

pub fn sonde_path(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sonde")
}

/// `cargo build [--release] -p probe-user`, which also builds the eBPF object.
pub fn sonde_build(release: bool) -> Command {
    let mut build = cargo();
    build.args(["build", "-p", "probe-user"]);
    if release {
        build.arg("--release");
    }
    build
}

/// Builds sonde and returns the binary's path.
pub fn build_sonde(release: bool) -> Result<PathBuf> {
    cmd::run(&mut sonde_build(release))?;
    Ok(sonde_path(release))
}
