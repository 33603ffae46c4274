//! End-to-end tests of sonde: the real `sonde` binary loads the real eBPF
//! programs, real uninstrumented servers (Python `http.server`, nginx, Node)
//! serve real clients (raw sockets, curl, wrk, Python `http.client`), and the
//! tests assert exact values scraped from sonde's `/metrics`.
//!
//! They need root, a kernel with BTF, and the tools `cargo xtask setup`
//! installs (nginx, wrk, curl, prometheus; python3 and node). Run them with
//!
//! ```text
//! cargo xtask test
//! ```
//!
//! or, as root, against a given build:
//!
//! ```text
//! cargo build --release -p probe-user
//! SONDE_BIN=$PWD/target/release/sonde cargo test -p sonde-tests --release -- --test-threads=1
//! ```
//!
//! Each test starts its own servers and its own sonde scoped with `--port` to
//! those servers, so tests do not see each other's traffic; one at a time
//! keeps their timings honest on small machines. `SONDE_BIN` defaults to
//! `target/release/sonde`; `SONDE_TEST_PYTHON` overrides the interpreter.
//!
//! This library is the harness: `prom` parses the exposition, `sonde` runs
//! the daemon, `prometheus_server` runs a Prometheus that scrapes it,
//! `servers` and `clients` make the traffic, `process` keeps every spawned
//! process tied to a guard that ends it when a test fails.
pub mod clients;
pub mod names;
pub mod otlp_receiver;
pub mod process;
pub mod prom;
pub mod prometheus_server;
pub mod servers;
pub mod sonde;
