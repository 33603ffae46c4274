//! Running external commands: echo them, run them, turn a failing exit status
//! into an error that names the command.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// How a command line reads when echoed (`$ cargo build -p probe-user`).
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio after echoing it; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` silently and returns its stdout if it exits 0, `None` if it
/// fails or does not exist: the answer to "is this tool present?".
pub fn stdout_if_ok(cmd: &mut Command) -> Option<String> {
    match cmd.output() {
        Ok(Output { status, stdout, .. }) if status.success() => {
            Some(String::from_utf8_lossy(&stdout).into_owned())
        }
        _ => None,
    }
}
