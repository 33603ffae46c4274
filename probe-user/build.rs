//! Builds the eBPF programs (probe-ebpf, nightly, bpfel-unknown-none) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
use aya_build::{build_ebpf, Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "probe-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-ebpf"),
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../probe-common/src");
    build_ebpf([ebpf], Toolchain::Nightly)
}
