//! The transports: hyper's accept loop, REST routes, WebSocket sessions, embedded assets.
//!
//! Only this module knows hyper and fastwebsockets. It turns requests and frames into hub
//! calls and hub answers into responses and frames, mapping errors to wire codes once.

mod assets;
mod client;
mod files;
mod http;
mod io;
mod reply;
mod request;
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
    /// Most open WebSockets: `server.max_connections` fitted to the open-file limit.
    ws_cap: usize,
    connects_per_ip: Arc<crate::chat::limits::Buckets<std::net::IpAddr>>,
    auth_limits: Arc<crate::chat::auth_limits::AuthLimits>,
    shutdown: watch::Receiver<bool>,
    #[expect(
        dead_code,
        reason = "held, never read: `serve` waits until every clone is dropped"
    )]
    alive: mpsc::Sender<()>,
}

impl AppState {
    /// Records in the metrics how many keys every rate limiter remembers.
    fn sample_limiters(&self) {
        self.hub.sample_limiters();
        self.metrics
            .limiter_keys("connects_per_ip", self.connects_per_ip.len());
    }
}

/// Descriptors kept free of connections at the open-file limit: the database and its log,
/// the search index's segment files (a few sets of about eight while segments merge), uploads
/// being written and files being served, the listener, the runtime's own.
pub const FILE_RESERVE: u64 = 128;

/// The connection caps, fitted to the open-file limit so that a socket over the limit is
/// answered 503 instead of waiting in the listen backlog of a server that cannot accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most open WebSockets (`server.max_connections`, or less to fit the file limit).
    pub websockets: usize,
    /// Most open sockets of every kind (WebSockets and HTTP): beyond it a new socket gets a
    /// bare 503 and is closed.
    pub sockets: usize,
    /// Descriptors kept for everything else (0 when no limit is known).
    pub reserve: u64,
}

impl Caps {
    /// Fits `max_connections` under `file_limit` (the soft RLIMIT_NOFILE), keeping
    /// `FILE_RESERVE` descriptors (at most half the limit) for files, and one sixteenth of
    /// the sockets (1 to 256) for plain HTTP, so health checks and REST still get through
    /// while WebSockets fill their cap.
    pub fn fit(max_connections: usize, file_limit: Option<u64>) -> Self {
        let Some(limit) = file_limit else {
            return Self {
                websockets: max_connections,
                sockets: usize::MAX,
                reserve: 0,
            };
        };
        let reserve = FILE_RESERVE.min(limit / 2);
        let sockets = usize::try_from(limit - reserve)
            .unwrap_or(usize::MAX)
            .max(1);
        let http = (sockets / 16).clamp(1, 256);
        Self {
            websockets: max_connections.min(sockets.saturating_sub(http).max(1)),
            sockets,
            reserve,
        }
    }
}

/// Says at most once per second that `accept` failed, with how many failures it did not
/// log since (out of descriptors, a flood of aborted handshakes, ...).
struct AcceptWarnings {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptWarnings {
    fn failed(&mut self, e: &std::io::Error) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "accept failed");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Whether an accept error means "out of file descriptors" (EMFILE, ENFILE).
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The whole answer to a socket over the cap: written without hyper, then closed.
fn over_cap_response() -> bytes::Bytes {
    let body = serde_json::json!({"error": {
        "code": "unavailable",
        "message": "server is at its connection limit",
    }})
    .to_string();
    bytes::Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers 503 on a socket the server will not serve, without waiting for its request:
/// one non-blocking write (the response fits any socket buffer), then close.
fn refuse(stream: tokio::net::TcpStream, response: &[u8]) {
    let _ = stream.try_write(response);
    drop(stream);
}

/// Counts one plain HTTP socket while it lives (a WebSocket leaves this count at its
/// upgrade: hyper's connection ends there, and `AppState::sockets` counts it).
struct HttpOpen(Arc<AtomicUsize>);

impl HttpOpen {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Self(n)
    }
}

impl Drop for HttpOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    let caps = Caps::fit(config.server.max_connections, config.open_file_limit);
    let state = AppState {
        hub: hub.clone(),
        auth,
        metrics,
        config: config.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        sockets: Arc::new(AtomicUsize::new(0)),
        ws_cap: caps.websockets,
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
    // Buckets full again are forgotten every `rate_limits.forget_idle_secs` (issue 24, point
    // 8): a churn of client addresses must not grow the map for good.
    let pruner = {
        let buckets = state.connects_per_ip.clone();
        let every = Duration::from_secs(config.rate_limits.forget_idle_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                buckets.forget_idle();
            }
        })
    };
    // Plain HTTP sockets open now (WebSockets are counted in `state.sockets`).
    let http_open = Arc::new(AtomicUsize::new(0));
    let refusal = over_cap_response();
    // One descriptor held back, so that at the open-file limit the server can still take a
    // waiting connection off the backlog and answer it 503 instead of leaving it hanging.
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut warnings = AcceptWarnings {
        last: None,
        suppressed: 0,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warnings.failed(&e);
                        if out_of_files(&e) && spare.take().is_some() {
                            // The connection waiting is still in the backlog: take it with
                            // the spare descriptor, refuse it, and take the spare back.
                            if let Ok(Ok((stream, _))) =
                                tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                            {
                                state.metrics.refused("files");
                                refuse(stream, &refusal);
                            }
                            spare = std::fs::File::open("/dev/null").ok();
                            continue;
                        }
                        // Back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if http_open.load(Ordering::Acquire) + state.sockets.load(Ordering::Acquire)
                    >= caps.sockets
                {
                    state.metrics.refused("limit");
                    refuse(stream, &refusal);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let open = HttpOpen::new(http_open.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let mut stop = st.shutdown.clone();
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        let client = client::client_addr(&st.config.trusted_proxies, peer, req.headers());
                        async move { Ok::<_, std::convert::Infallible>(http::route(st, client, req).await) }
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
    pruner.abort();
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
