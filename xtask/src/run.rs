//! `cargo xtask run -- <flags>`: set up, build in release mode, then replace
//! this process with sonde, so Ctrl-C reaches sonde itself and its exit
//! status is the command's.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{setup, workspace};

pub fn run(sonde_args: &[OsString]) -> Result<()> {
    // Loading eBPF programs needs root (CAP_BPF, CAP_PERFMON), so this
    // fails now rather than after a build.
    setup::ensure(setup::Scope::Everything, setup::Root::Required)?;
    let sonde = workspace::build_sonde(true)?;
    let err = Command::new(&sonde).args(sonde_args).exec();
    Err(err).with_context(|| format!("cannot execute {}", sonde.display()))
}
