use std::time::Duration;

use clap::Parser;
use sonde::{
    cli::Cli,
    event,
    loader::{self, Settings},
    source::{EventSource, RingBufSource},
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (probe, rb) = loader::load(&Settings {
        capture_bytes: cli.capture_bytes,
        ports: cli.ports.clone(),
        pids: cli.pids.clone(),
        filter_pids: !cli.pids.is_empty(),
        notify_exec: false,
        ignore_peer_port: cli.metrics_addr.port(),
        ringbuf_bytes: cli.ringbuf_mib << 20,
        max_connections: cli.max_connections,
    })?;
    eprintln!("attached {}", probe.attached());
    let mut src = RingBufSource::new(rb);
    loop {
        src.wait(Duration::from_millis(20));
        src.drain(&mut |r| println!("{:?}", event::decode(r)));
        eprintln!("{:?}", probe.losses());
    }
}
