//! The transports: hyper's accept loop, REST routes, WebSocket sessions, embedded assets.
//!
//! Only this module knows hyper and fastwebsockets. It turns requests and frames into hub
//! calls and hub answers into responses and frames, mapping errors to wire codes once.

mod assets;
mod files;
mod http;
mod io;
mod ws;

use crate::auth::Authenticator;
use crate::chat::Hub;
use crate::config::Config;
use crate::metrics::Metrics;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    ready: Arc<AtomicBool>,
    sockets: Arc<AtomicUsize>,
    connects_per_ip: Arc<crate::chat::limits::Buckets<std::net::IpAddr>>,
    auth_limits: Arc<crate::chat::auth_limits::AuthLimits>,
    shutdown: watch::Receiver<bool>,
    #[expect(
        dead_code,
        reason = "held, never read: `serve` waits until every clone is dropped"
    )]
    alive: mpsc::Sender<()>,
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` resolves, then closes every
/// WebSocket with 1001 and waits (up to `server.shutdown_grace_secs`) for connections to end.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let state = AppState {
        hub: hub.clone(),
        auth,
        metrics,
        config: config.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        sockets: Arc::new(AtomicUsize::new(0)),
        connects_per_ip: Arc::new(crate::chat::limits::Buckets::new(
            config.rate_limits.connects_per_sec_per_ip,
            config.rate_limits.connects_burst_per_ip,
        )),
        auth_limits: Arc::new(crate::chat::auth_limits::AuthLimits::new(
            &config.rate_limits,
        )),
        shutdown: stop_rx,
        alive: alive_tx,
    };
    let header_timeout = Duration::from_secs(config.server.header_read_timeout_secs);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                tokio::spawn(async move {
                    let mut stop = st.shutdown.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(http::route(st, peer, req).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        res = conn.as_mut() => {
                            if let Err(e) = res {
                                tracing::debug!(error = %e, %peer, "http connection ended with an error");
                            }
                        }
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no new connections; closing sockets with 1001");
    drop(listener);
    state.ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    hub.drain_and_close(crate::protocol::close::GOING_AWAY, "server shutting down")
        .await;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    drop(state);
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!("some connections did not close within the shutdown grace period");
    }
}
