//! `cargo xtask setup`: make this machine able to build, run and test sonde.
//!
//! Every item is checked cheaply first (one `dpkg-query`, a few `--version`
//! calls, a look at /proc/self/mounts), so a machine that has everything is
//! done in well under a second and nothing is touched. Only what is missing
//! is installed, and `apt-get update` runs only when a package must be.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// What the caller is about to do, hence what must be present.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Compiling sonde (its build script builds the eBPF object).
    Build,
    /// Building, and fuzzing with cargo-fuzz.
    Fuzz,
    /// Building, fuzzing, running the daemon and the end-to-end tests' peers.
    Everything,
}

impl Scope {
    /// Whether what `needed_for` needs must be present for this scope.
    fn includes(self, needed_for: Scope) -> bool {
        match self {
            Scope::Everything => true,
            Scope::Fuzz => needed_for != Scope::Everything,
            Scope::Build => needed_for == Scope::Build,
        }
    }
}

/// Whether not being root is an error even when nothing is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Required,
    OnlyToInstall,
}

/// Debian packages and the scope that needs them. Node is not here: it is
/// preinstalled outside dpkg on these machines and Debian's `nodejs` would
/// conflict with it, so it is checked with `node --version` instead.
const APT_PACKAGES: &[(&str, Scope)] = &[
    // bpf-linker links against LLVM 22 (the nightly's LLVM) dynamically.
    ("llvm-22-dev", Scope::Build),
    ("libpolly-22-dev", Scope::Build),
    ("libzstd-dev", Scope::Build),
    ("zlib1g-dev", Scope::Build),
    ("nginx", Scope::Everything),
    ("wrk", Scope::Everything),
    ("curl", Scope::Everything),
    ("bpftool", Scope::Everything),
    ("iproute2", Scope::Everything),
    ("python3", Scope::Everything),
    // The bench chart's font (xtask/src/bench/chart.rs).
    ("fonts-dejavu-core", Scope::Everything),
    // promtool checks and unit-tests deploy/prometheus; the server scrapes
    // sonde in the end-to-end test of those rules and of the dashboard.
    ("prometheus", Scope::Everything),
];

/// Validates the rendered deploy/kubernetes objects against the Kubernetes
/// API schemas; PyPI's, as Debian does not package it. Pinned, so the
/// schemas checked against change only when this line does.
const KUBERNETES_VALIDATE: (&str, &str) = ("kubernetes-validate", "1.37.0");

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Installed when `cargo fuzz` is missing; one that is present is used as is.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";

/// One thing to do, in the order they must happen (LLVM before bpf-linker).
enum Action {
    AptInstall(Vec<String>),
    NightlyToolchain,
    RustSrc,
    BpfLinker,
    CargoFuzz,
    MountTracefs,
    MountBpffs,
    PipInstall(&'static str, &'static str),
}

pub fn ensure(scope: Scope, root: Root) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if root == Root::Required && !is_root {
        bail!("setup must run as root (try: sudo -E cargo xtask setup)");
    }
    let actions = missing(scope)?;
    if actions.is_empty() {
        eprintln!("setup: all present");
        return Ok(());
    }
    if !is_root {
        let todo: Vec<String> = actions.iter().map(Action::to_string).collect();
        bail!("setup must run as root to {}", todo.join(", "));
    }
    for action in &actions {
        perform(action)?;
    }
    eprintln!("setup: done ({} step(s))", actions.len());
    Ok(())
}

fn missing(scope: Scope) -> Result<Vec<Action>> {
    let mut actions = Vec::new();

    let wanted: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, needed_for)| scope.includes(*needed_for))
        .map(|(name, _)| *name)
        .collect();
    let mut apt = missing_packages(&wanted)?;
    if scope == Scope::Everything
        && cmd::stdout_if_ok(Command::new("node").arg("--version")).is_none()
    {
        apt.push("nodejs".to_owned());
    }
    if !apt.is_empty() {
        actions.push(Action::AptInstall(apt));
    }

    let toolchains = cmd::stdout_if_ok(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed; is rustup installed?")?;
    if !has_plain_nightly(&toolchains) {
        actions.push(Action::NightlyToolchain);
        actions.push(Action::RustSrc);
    } else {
        let components = cmd::stdout_if_ok(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))
        .unwrap_or_default();
        if !components.lines().any(|line| line.starts_with("rust-src")) {
            actions.push(Action::RustSrc);
        }
    }

    let linker = cmd::stdout_if_ok(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if linker.split_whitespace().nth(1) != Some(BPF_LINKER_VERSION) {
        actions.push(Action::BpfLinker);
    }

    if scope.includes(Scope::Fuzz)
        && cmd::stdout_if_ok(Command::new("cargo").args(["fuzz", "--version"])).is_none()
    {
        actions.push(Action::CargoFuzz);
    }

    if scope == Scope::Everything {
        let (name, version) = KUBERNETES_VALIDATE;
        let installed = cmd::stdout_if_ok(Command::new(name).arg("--version")).unwrap_or_default();
        if installed.trim() != version {
            actions.push(Action::PipInstall(name, version));
        }
        if !Path::new(TRACEFS).join("events").exists() {
            actions.push(Action::MountTracefs);
        }
        let mounts =
            std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        if !is_mounted(&mounts, BPFFS, "bpf") {
            actions.push(Action::MountBpffs);
        }
    }
    Ok(actions)
}

/// The packages among `wanted` that dpkg does not report as installed.
fn missing_packages(wanted: &[&str]) -> Result<Vec<String>> {
    // dpkg-query exits 1 when any package is unknown but still prints the
    // known ones, so its status is not the answer: its output is.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(wanted)
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(wanted
        .iter()
        .filter(|name| !is_installed(&listing, name))
        .map(|name| (*name).to_owned())
        .collect())
}

fn is_installed(dpkg_listing: &str, package: &str) -> bool {
    dpkg_listing.lines().any(|line| {
        line.strip_prefix(package)
            .and_then(|rest| rest.strip_prefix(' '))
            == Some("install ok installed")
    })
}

/// Whether `rustup toolchain list` shows `nightly` itself (what `+nightly`
/// and the eBPF build use), not only a dated `nightly-2026-05-19`.
fn has_plain_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name.strip_prefix("nightly-")
            .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
    })
}

fn is_mounted(proc_mounts: &str, mount_point: &str, fs_type: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(mount_point) && fields.next() == Some(fs_type)
    })
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AptInstall(packages) => {
                write!(f, "install Debian packages {}", packages.join(" "))
            }
            Action::NightlyToolchain => write!(f, "install the nightly toolchain"),
            Action::RustSrc => write!(f, "add rust-src to nightly"),
            Action::BpfLinker => write!(f, "install bpf-linker {BPF_LINKER_VERSION}"),
            Action::CargoFuzz => write!(f, "install cargo-fuzz {CARGO_FUZZ_VERSION}"),
            Action::MountTracefs => write!(f, "mount tracefs at {TRACEFS}"),
            Action::MountBpffs => write!(f, "mount bpffs at {BPFFS}"),
            Action::PipInstall(name, version) => write!(f, "pip install {name}=={version}"),
        }
    }
}

fn perform(action: &Action) -> Result<()> {
    eprintln!("setup: {action}");
    match action {
        Action::AptInstall(packages) => {
            cmd::run(
                Command::new("apt-get")
                    .arg("update")
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            cmd::run(
                Command::new("apt-get")
                    .args(["-q", "install", "-y", "--no-install-recommends"])
                    .args(packages)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        }
        Action::NightlyToolchain => cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ])),
        Action::RustSrc => cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        // --locked: the dependency versions bpf-linker was released (and
        // tried here) with, not whatever is newest on the day of install.
        Action::BpfLinker => cmd::run(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        ),
        Action::CargoFuzz => cmd::run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ])),
        Action::MountTracefs => {
            cmd::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))
        }
        Action::MountBpffs => cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])),
        // The interpreter the tests run (`python3` on PATH), so the tool's
        // own modules (yaml, jsonschema) are importable there too.
        Action::PipInstall(name, version) => cmd::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .arg(format!("{name}=={version}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dpkg_listing() {
        let listing = "curl install ok installed\n\
                       nginx deinstall ok config-files\n\
                       llvm-22-dev install ok installed\n";
        let cases = [
            ("curl", true),
            ("nginx", false),   // removed, only its config left
            ("llvm-22", false), // a prefix of an installed package's name
            ("llvm-22-dev", true),
            ("wrk", false), // unknown to dpkg: not listed at all
        ];
        for (package, expected) in cases {
            assert_eq!(is_installed(listing, package), expected, "{package}");
        }
    }

    #[test]
    fn scopes_include_what_they_need() {
        use Scope::*;
        let cases = [
            (Build, Build, true),
            (Build, Fuzz, false),
            (Build, Everything, false),
            (Fuzz, Build, true),
            (Fuzz, Fuzz, true),
            (Fuzz, Everything, false),
            (Everything, Build, true),
            (Everything, Fuzz, true),
            (Everything, Everything, true),
        ];
        for (scope, needed_for, expected) in cases {
            assert_eq!(scope.includes(needed_for), expected);
        }
    }

    #[test]
    fn finds_the_nightly_toolchain() {
        let cases = [
            ("stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n", true),
            ("nightly-aarch64-unknown-linux-gnu (active)\n", true),
            ("stable-x86_64-unknown-linux-gnu (default)\nnightly-2026-05-19-x86_64-unknown-linux-gnu\n", false),
            ("stable-x86_64-unknown-linux-gnu (default)\n", false),
            ("no installed toolchains\n", false),
        ];
        for (list, expected) in cases {
            assert_eq!(has_plain_nightly(list), expected, "{list}");
        }
    }

    #[test]
    fn reads_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n\
                      bpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        let cases = [
            (BPFFS, "bpf", true),
            (TRACEFS, "tracefs", true),
            ("/sys/fs/bpf/x", "bpf", false),
            ("/sys", "bpf", false),
        ];
        for (mount_point, fs_type, expected) in cases {
            assert_eq!(
                is_mounted(mounts, mount_point, fs_type),
                expected,
                "{mount_point}"
            );
        }
    }
}
