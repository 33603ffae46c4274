//! deploy/prometheus checked by promtool: the rules' syntax, then their unit
//! tests in deploy/prometheus/tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cmd, workspace};

/// `promtool check rules` on every rule file, then `promtool test rules` on
/// every unit test of them.
pub fn check() -> Result<()> {
    let dir = workspace::root().join("deploy/prometheus");
    let rules = yaml_files(&dir)?;
    let tests = yaml_files(&dir.join("tests"))?;
    cmd::run(
        Command::new("promtool")
            .args(["check", "rules"])
            .args(&rules),
    )?;
    cmd::run(
        Command::new("promtool")
            .args(["test", "rules"])
            .args(&tests),
    )
}

/// The `.yaml` files directly in `dir`, sorted; an error if there are none,
/// so a moved directory cannot pass by checking nothing.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    if files.is_empty() {
        bail!("no .yaml file in {}", dir.display());
    }
    files.sort();
    Ok(files)
}
