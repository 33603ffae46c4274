//! sonde, the daemon: load and attach the kernel programs, then run the
//! pipeline ring buffer → decode → pair → name routes → aggregate → export.
//!
//! Everything after `source` is pure logic, free of aya types, so it runs on
//! recorded events in unit tests.
pub mod btf;
pub mod cli;
pub mod clock;
pub mod config_file;
pub mod conn;
pub mod event;
pub mod exchange;
pub mod http1;
#[cfg(any(test, fuzzing))]
pub mod invariants;
pub mod kubernetes;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod otlp_metrics;
pub mod pipeline;
pub mod privilege;
pub mod process;
pub mod route;
pub mod server;
pub mod settings;
pub mod source;
pub mod trace;
