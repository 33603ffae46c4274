//! `sonde`: resolve the settings (flags, `SONDE_*` variables, config file),
//! serve the endpoints, load and attach the kernel programs, run the pipeline
//! until SIGINT/SIGTERM, then detach and exit 0.
//!
//! Every failure a user can cause or meet (a bad flag, variable or config
//! entry, not root, no BTF, a port in use) ends in one line on stderr and a non-zero exit, never a panic.
use std::{
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use prometheus::Registry;
use sonde::{
    cli::Cli,
    conn::TrackerConfig,
    kubernetes::{
        api::{self, ApiConfig, Backoff},
        Pods,
    },
    loader::{self, Settings},
    logging,
    metrics::{Aggregator, AggregatorConfig, SelfMetrics},
    otlp, otlp_metrics,
    pipeline::{self, Pipeline, Tracing},
    privilege,
    process::{Names, ProcFs},
    route::Limits,
    server::{MetricsListener, MetricsServer, Probes},
    settings::{self, SettingsError},
    source::RingBufSource,
    trace::{self, Assembler},
};
use tokio::signal::unix::{signal, SignalKind};

/// How long the pipeline waits for the first list of pods.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit code for usage errors (flags, environment, config file), as clap uses.
const USAGE: u8 = 2;

/// A configuration error found after parsing (an `OTEL_*` variable).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = match settings::resolve(std::env::args_os()) {
        Ok(cli) => cli,
        Err(SettingsError::CommandLine(e)) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            logging::fatal(&e.to_string());
            return ExitCode::from(USAGE);
        }
    };
    logging::init(&cli.log_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(&format!("{e:#}").replace('\n', " "));
            if e.is::<UsageError>() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Everything that needs privilege happens first, on sonde's only thread:
/// bind the metrics port, load and attach the programs, then drop every
/// capability no longer needed. The async runtime's threads start after,
/// with the reduced set.
fn run(cli: Cli) -> anyhow::Result<()> {
    // Configuration errors before anything is loaded.
    let otlp_config = otlp::Config::from_cli(&cli).map_err(|e| UsageError(e.to_string()))?;
    let otlp_metrics_config =
        otlp_metrics::Config::from_cli(&cli).map_err(|e| UsageError(e.to_string()))?;
    let kubernetes_config = ApiConfig::from_cli(&cli).map_err(|e| UsageError(e.to_string()))?;

    // Bind before loading: a port in use should fail before any program is attached.
    let listener = MetricsListener::bind(cli.metrics_addr)?;
    let metrics_addr = listener.local_addr();

    let proc = ProcFs::default();
    let mut pids = proc.with_descendants(&cli.pids)?;
    if let Some(re) = &cli.exe {
        pids.extend(proc.matching(re)?);
    }
    let filter_pids = !cli.pids.is_empty() || cli.exe.is_some();
    let (probe, ring) = loader::load(&Settings {
        capture_bytes: cli.capture_bytes,
        ports: cli.ports.clone(),
        pids,
        filter_pids,
        notify_exec: cli.exe.is_some(),
        ignore_peer_port: metrics_addr.port(),
        ringbuf_bytes: cli.ringbuf_mib << 20,
        max_connections: cli.max_connections,
        floor: cli.bench_floor,
    })?;
    let kept = privilege::drop_after_attach()?;
    tracing::info!(
        attachments = probe.attached(),
        metrics = %metrics_addr,
        capture_bytes = cli.capture_bytes,
        cap_sys_ptrace = kept.sys_ptrace,
        "sonde is watching; capabilities dropped"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sonde-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(
        cli,
        Loaded {
            listener,
            otlp_config,
            otlp_metrics_config,
            kubernetes_config,
            proc,
            probe,
            ring,
        },
    ))
}

/// What [`run`] prepared with privileges, for [`serve`].
struct Loaded {
    listener: MetricsListener,
    otlp_config: Option<otlp::Config>,
    otlp_metrics_config: Option<otlp_metrics::Config>,
    kubernetes_config: Option<ApiConfig>,
    proc: ProcFs,
    probe: loader::Probe,
    ring: RingBuf<MapData>,
}

async fn serve(cli: Cli, loaded: Loaded) -> anyhow::Result<()> {
    // Pod metadata: the watch fills the index while the rest starts.
    let pods = loaded.kubernetes_config.map(|config| {
        let pods = Pods::default();
        tokio::spawn(api::watch_pods(config, pods.clone(), Backoff::default()));
        pods
    });
    let registry = Registry::new();
    let own =
        SelfMetrics::new(&registry, env!("CARGO_PKG_VERSION")).context("registering metrics")?;
    let aggregator = Aggregator::new(
        &registry,
        AggregatorConfig {
            limits: Limits {
                routes_per_service: cli.max_routes_per_service as usize,
                ..Limits::default()
            },
            pod_labels: pods.is_some(),
            ..AggregatorConfig::default()
        },
    )
    .context("registering metrics")?;

    let health = Probes::new(Duration::from_secs(30));
    let server = MetricsServer::new(loaded.listener, registry.clone(), health.clone())?;

    // Traces are off unless an OTLP endpoint is configured.
    let export = loaded
        .otlp_config
        .map(|config| otlp::Exporter::start(config, &registry))
        .transpose()?;
    let (span_sender, exporter) = export.unzip();
    // Metrics go over OTLP too only when asked, to the same collector.
    let metrics_export = loaded
        .otlp_metrics_config
        .map(|config| otlp_metrics::start(config, &registry))
        .transpose()?;

    // A process named before its pod is known keeps a series without the
    // pod's labels: the pipeline starts reading once the pods are listed, or
    // a few seconds later without them (the ring buffer holds what the
    // programs see meanwhile; anything past its size is counted as lost).
    let mut names = Names::new(loaded.proc.clone(), Names::DEFAULT_CAPACITY);
    if let Some(pods) = pods {
        if !pods.first_list(FIRST_LIST_TIMEOUT).await {
            tracing::warn!(
                "pod metadata: no pod list yet, starting without; pods get their labels once it comes"
            );
        }
        names = names.with_pods(pods);
    }
    let pipeline = Pipeline::new(
        TrackerConfig {
            idle_timeout_ns: cli.idle_timeout_secs * 1_000_000_000,
            max_connections: cli.max_connections as usize,
            ..TrackerConfig::default()
        },
        aggregator,
        names,
        own,
        cli.exe.clone(),
        loaded.proc,
        span_sender.map(|sender| Tracing::new(Assembler::new(trace::Config::default()), sender)),
    );
    // Before /readyz can say ready: a SIGTERM from then on must detach cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stop = Arc::new(AtomicBool::new(false));
    // Dropped when the pipeline thread ends, however it ends.
    let (alive, mut ended) = tokio::sync::oneshot::channel::<()>();
    let drain = {
        let (stop, health, interval) = (stop.clone(), health.clone(), cli.drain_interval());
        std::thread::Builder::new()
            .name("sonde-pipeline".into())
            .spawn(move || {
                let _alive = alive;
                pipeline::run(
                    RingBufSource::new(loaded.ring),
                    pipeline,
                    loaded.probe,
                    health,
                    interval,
                    stop,
                )
            })
            .context("cannot start the pipeline thread")?
    };
    health.set_ready();

    let (tx, mut rx) = tokio::sync::watch::channel(());
    let http = tokio::spawn(server.serve(async move {
        let _ = rx.changed().await;
    }));
    let unexpected = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching"); false }
        _ = sigint.recv() => { tracing::info!("SIGINT: detaching"); false }
        _ = &mut ended => true,
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tx.send(());
    // The pipeline thread owns the programs: joining it drops them (detach).
    tokio::task::spawn_blocking(move || drain.join())
        .await
        .context("joining the pipeline")?
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?;
    let _ = http.await;
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    // After the pipeline: the last export carries its final counts.
    if let Some(metrics_export) = metrics_export {
        metrics_export.shutdown().await;
    }
    if unexpected {
        anyhow::bail!("the pipeline stopped unexpectedly");
    }
    Ok(())
}
