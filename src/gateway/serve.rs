//! `lakesync serve`: a pipeline file with a gateway source, run as a server.
//!
//! Opens each gateway (its durable log recovered), starts its Flight and HTTP listeners, and
//! runs the pipeline that carries what clients push to the sinks. The pipeline is restarted —
//! never the gateway — when a sink fails (with capped exponential backoff; the durable log
//! replays whatever the failed epoch held) and when a table's schema changes through the admin
//! API (so sinks prepare the new columns). Ctrl-C or SIGTERM finishes the in-flight epoch and
//! stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::build::build_with;
use crate::config::plan::Plan;
use crate::config::spec::{GatewaySourceSpec, SinkSpec, SourceSpec};
use crate::gateway::actions::ActionDispatcher;
use crate::gateway::auth::Authenticator;
use crate::gateway::core::LakeCheckpoints;
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::rate_limit::RateLimiter;
use crate::gateway::{Gateway, GatewayOptions, Limits};
use crate::kernel::rules::SyncRules;
use crate::runtime::api::ReadMode;
use crate::runtime::pipeline::{RunOptions, run};
use crate::transport::{ServerContext, SharedContext};
use crate::{Error, Result};

/// Where a started gateway listens.
#[derive(Clone, Debug)]
pub struct Listening {
    /// The gateway id.
    pub id: String,
    /// The Flight address.
    pub flight: SocketAddr,
    /// The HTTP / WebSocket address.
    pub http: SocketAddr,
}

/// The limits of a gateway spec.
pub fn limits_of(spec: &GatewaySourceSpec) -> Limits {
    let l = &spec.limits;
    Limits {
        backpressure_bytes: l.backpressure_bytes.0,
        max_push_deltas: l.max_push_deltas as usize,
        max_push_bytes: l.max_push_bytes.0 as usize,
        default_pull_limit: l.default_pull_limit as usize,
        max_pull_limit: l.max_pull_limit as usize,
        max_drift: l.max_drift.get(),
        retention_age: l.retention.get(),
        retention_bytes: l.retention_bytes.0,
        rate_limit: l.rate_limit.map(|r| (r.requests, r.window.get())),
        ws_max_connections: l.ws_max_connections as usize,
        ws_max_messages_per_second: l.ws_max_messages_per_second as u32,
    }
}

/// Where the gateway of source `name` keeps its durable log.
pub fn gateway_data_dir(plan: &Plan, name: &str, spec: &GatewaySourceSpec) -> std::path::PathBuf {
    match &spec.data_dir {
        Some(dir) => plan.resolve_path(dir),
        None => plan.state_dir.join(format!("gateway-{name}")),
    }
}

/// Opens the gateway of source `name`.
pub async fn open_gateway(plan: &Plan, name: &str, spec: &GatewaySourceSpec) -> Result<Gateway> {
    let data_dir = gateway_data_dir(plan, name, spec);
    let tables = plan
        .source_tables(name)
        .0
        .into_iter()
        .map(std::borrow::Cow::into_owned)
        .collect();
    let sync_rules = match &spec.sync_rules {
        Some(value) => SyncRules::from_value(value)?,
        None => SyncRules::default(),
    };
    let lake = match &spec.lake_checkpoints {
        Some(sink) => Some(lake_checkpoints(plan, sink).await?),
        None => None,
    };
    Gateway::open(GatewayOptions {
        id: spec.id.clone(),
        data_dir,
        tables,
        sync_rules,
        limits: limits_of(spec),
        lake,
    })
    .await
}

/// The lake of the pipeline's Iceberg sink `sink`, for serving its checkpoints.
async fn lake_checkpoints(plan: &Plan, sink: &str) -> Result<LakeCheckpoints> {
    let Some(SinkSpec::Iceberg(iceberg)) = plan.sinks.get(sink) else {
        return Err(Error::invalid(
            "gateway lake_checkpoints",
            format!("{sink:?} is not an iceberg sink of this pipeline"),
        ));
    };
    let config = crate::build::catalog_config(plan, &iceberg.catalog)?;
    Ok(LakeCheckpoints {
        catalog: crate::adapters::iceberg::connect(&config).await?,
        namespace: iceberg.namespace.clone(),
    })
}

/// The transports' shared context for `gateway`.
pub fn context(gateway: Gateway, spec: &GatewaySourceSpec) -> SharedContext {
    let secrets: Vec<String> = spec
        .auth
        .jwt_secrets
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    if secrets.is_empty() {
        tracing::warn!(gateway = %spec.id, "authentication is OFF: no jwt_secrets configured, every caller is an admin");
    }
    let rate_limiter = gateway
        .limits()
        .rate_limit
        .map(|(requests, window)| RateLimiter::new(requests, window));
    Arc::new(ServerContext {
        auth: Authenticator::new(spec.id.clone(), secrets),
        gateway,
        rate_limiter,
        metrics: GatewayMetrics::new(),
        actions: ActionDispatcher::new(),
        draining: AtomicBool::new(false),
    })
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| Error::External {
        system: "listener",
        message: format!("cannot listen for {what} on {addr}: {e}"),
        retryable: false,
        source: Some(Box::new(e)),
    })
}

/// Runs `plan` as a server until Ctrl-C / SIGTERM; `on_listening` is told each gateway's
/// addresses once its listeners are bound.
pub async fn serve(plan: Plan, on_listening: impl Fn(&Listening)) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing the in-flight epoch");
        let _ = on_signal.send(true);
    });

    let mut gateways = HashMap::new();
    let mut contexts = Vec::new();
    let mut servers = tokio::task::JoinSet::new();
    for (name, spec) in plan.sources.iter() {
        let SourceSpec::Gateway(spec) = spec else {
            continue;
        };
        let gateway = open_gateway(&plan, name, spec).await?;
        let ctx = context(gateway.clone(), spec);
        let flight = bind(&spec.listen.flight, "Arrow Flight").await?;
        let http = bind(&spec.listen.http, "HTTP").await?;
        let listening = Listening {
            id: spec.id.clone(),
            flight: flight
                .local_addr()
                .map_err(|e| Error::external("listener", false, e))?,
            http: http
                .local_addr()
                .map_err(|e| Error::external("listener", false, e))?,
        };
        on_listening(&listening);
        tracing::info!(gateway = %spec.id, flight = %listening.flight, http = %listening.http, "gateway listening");
        let stop = stopped(stop_rx.clone());
        servers.spawn(crate::transport::flight::serve(ctx.clone(), flight, stop));
        let stop = stopped(stop_rx.clone());
        servers.spawn(crate::transport::http::serve(ctx.clone(), http, stop));
        gateways.insert(name.to_string(), gateway);
        contexts.push(ctx);
    }
    if gateways.is_empty() {
        return Err(Error::invalid(
            "pipeline",
            format!(
                "pipeline {:?} has no gateway source: `lakesync serve` needs one (use `lakesync run` for other pipelines)",
                plan.name
            ),
        ));
    }

    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop_rx.borrow() {
            break;
        }
        let mut reloads: Vec<watch::Receiver<u64>> =
            gateways.values().map(Gateway::watch_reload).collect();
        let graph = match build_with(&plan, &gateways).await {
            Ok(graph) => graph,
            Err(e) => {
                tracing::error!(pipeline = %plan.name, error = %e, ?backoff, "cannot build the flush pipeline; retrying");
                if sleep_or_stop(backoff, stop_rx.clone()).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let reload = futures::future::select_all(
                reloads
                    .iter_mut()
                    .map(|r| Box::pin(async move { r.changed().await.is_ok() })),
            );
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = reload => tracing::info!("a table changed: restarting the flush pipeline"),
            }
        };
        let options = RunOptions {
            mode: ReadMode::Follow {
                poll_interval: Duration::from_secs(1),
            },
            progress: false,
        };
        match run(graph, options, shutdown).await {
            Ok(summary) => {
                tracing::info!(pipeline = %plan.name, epochs = summary.epochs, "flush pipeline stopped");
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                for ctx in &contexts {
                    ctx.metrics.record_flush(false, Duration::ZERO);
                }
                tracing::error!(pipeline = %plan.name, error = %e, ?backoff, "flush pipeline failed; the buffered changes stay in the durable log and are retried");
                if sleep_or_stop(backoff, stop_rx.clone()).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    for ctx in &contexts {
        ctx.draining.store(true, Ordering::Release);
    }
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Err(e)) => tracing::error!(error = %e, "a listener failed"),
            Err(e) => tracing::error!(error = %e, "a listener task panicked"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `delay` unless asked to stop first; true when stopping.
async fn sleep_or_stop(delay: Duration, mut stop: watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => None,
        _ = stop.wait_for(|s| *s) => Some(true),
    };
    stopped.unwrap_or_else(|| *stop.borrow())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
