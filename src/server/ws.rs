//! WebSocket: the checked upgrade (Origin, token, limits), then one session per connection,
//! a reader that dispatches requests to the hub and a writer that drains the outbox.

use super::AppState;
use super::io::{self as wsio, FrameWriter};
use super::reply::{Resp, error_response, full};
use super::request::{auth_error, bearer};
use crate::auth::Identity;
use crate::chat::{ChatError, Connection, NewMessage, Reply};
use crate::model::now_ms;
use crate::protocol::{self, ErrorCode, WireError, close};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const SUBPROTOCOL: &str = "confab";

pub async fn upgrade(st: AppState, peer: SocketAddr, mut req: Request<Incoming>) -> Resp {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        st.metrics.refused("not_upgrade");
        return error_response(&WireError::new(
            ErrorCode::InvalidPayload,
            "expected a WebSocket upgrade request",
        ));
    }
    if req
        .headers()
        .get("sec-websocket-version")
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        st.metrics.refused("version");
        let mut r = error_response(&WireError::new(
            ErrorCode::InvalidPayload,
            "Sec-WebSocket-Version must be 13",
        ));
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return r;
    }
    if st.connects_per_ip.take(&peer.ip()).is_err() {
        st.metrics.refused("ip_rate");
        return error_response(&WireError::new(
            ErrorCode::RateLimited,
            "too many connection attempts from this address",
        ));
    }
    if let Err(e) = check_origin(&st, &req) {
        st.metrics.refused("origin");
        tracing::info!(%peer, "websocket refused: origin not allowed");
        return error_response(&e);
    }
    let (token, via_protocol) = match find_token(&req) {
        Ok(t) => t,
        Err((reason, e)) => {
            st.metrics.refused(reason);
            return error_response(&e);
        }
    };
    let identity = match st.auth.verify(&token) {
        Ok(i) => i,
        Err(e) => {
            st.metrics.refused("bad_token");
            // Never log the token itself.
            tracing::info!(%peer, reason = %e, "websocket refused: bad token");
            return error_response(&auth_error(e));
        }
    };
    if st.hub.connection_count(&identity.user_id) >= st.config.limits.max_connections_per_user {
        st.metrics.refused("user_connections");
        return error_response(&WireError::new(
            ErrorCode::RateLimited,
            "this user has as many connections open as allowed",
        ));
    }
    let catching_up = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "sync=1" || p == "sync=true"));
    let open = st.sockets.fetch_add(1, Ordering::AcqRel);
    if open >= st.ws_cap || !st.ready.load(Ordering::Acquire) {
        st.sockets.fetch_sub(1, Ordering::AcqRel);
        st.metrics.refused("limit");
        return error_response(&WireError::new(
            ErrorCode::Unavailable,
            "server is at its connection limit or shutting down",
        ));
    }
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => {
            st.sockets.fetch_sub(1, Ordering::AcqRel);
            return error_response(&WireError::new(ErrorCode::InvalidPayload, e.to_string()));
        }
    };
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => {
                let io = ws.into_inner();
                run_session(&st, io, identity, peer, catching_up).await;
            }
            Err(e) => tracing::debug!(error = %e, %peer, "upgrade failed"),
        }
        st.sockets.fetch_sub(1, Ordering::AcqRel);
    });
    let (parts, _) = resp.into_parts();
    let mut r = Response::from_parts(parts, full(Bytes::new()));
    if via_protocol {
        r.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    r
}

/// Same-origin unless `server.allowed_origins` says otherwise. No Origin: not a browser.
fn check_origin(st: &AppState, req: &Request<Incoming>) -> Result<(), WireError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let forbidden = || WireError::new(ErrorCode::Forbidden, "origin not allowed");
    let origin = origin.to_str().map_err(|_| forbidden())?;
    let allowed = &st.config.server.allowed_origins;
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(forbidden)?;
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(forbidden)?;
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

/// The token from `?token=`, `Authorization: Bearer`, or `Sec-WebSocket-Protocol: confab, <jwt>`.
/// The flag says whether the subprotocol carried it (and must be echoed). A token over
/// `MAX_TOKEN_BYTES`, wherever it travels, is refused before it is decoded.
/// Refusals carry the metric's reason label.
fn find_token<B>(req: &Request<B>) -> Result<(String, bool), (&'static str, WireError)> {
    let found = find_token_anywhere(req).ok_or_else(|| {
        let e = WireError::new(ErrorCode::Unauthorized, "missing token");
        ("no_token", e)
    })?;
    if found.0.len() > protocol::MAX_TOKEN_BYTES {
        let e = WireError::new(
            ErrorCode::Unauthorized,
            format!("token over {} bytes", protocol::MAX_TOKEN_BYTES),
        );
        return Err(("bad_token", e));
    }
    Ok((found.0.to_owned(), found.1))
}

fn find_token_anywhere<B>(req: &Request<B>) -> Option<(&str, bool)> {
    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=")
                && !t.is_empty()
            {
                return Some((t, false));
            }
        }
    }
    if let Some(t) = bearer(req.headers()) {
        return Some((t, false));
    }
    let protocols = req.headers().get("sec-websocket-protocol")?.to_str().ok()?;
    let mut items = protocols.split(',').map(str::trim);
    if items.clone().any(|p| p == SUBPROTOCOL) {
        return items
            .find(|p| *p != SUBPROTOCOL && p.matches('.').count() == 2)
            .map(|t| (t, true));
    }
    None
}

/// What the reader asks the writer to send: a pong, or a close. Shared by the session's two
/// tasks; lighter than a channel, which matters at tens of thousands of idle connections. It
/// wakes the writer through the connection's outbox, so the writer waits on one signal: a
/// second `Notify` cost every delivery a waiter to register and drop.
struct Control {
    state: parking_lot::Mutex<ControlState>,
    /// Set after `state` changes; lets the writer skip the lock on the usual, frames-only wake.
    pending: AtomicBool,
    outbox: Arc<crate::chat::Outbox>,
}

#[derive(Default)]
struct ControlState {
    pong: Option<Vec<u8>>,
    close: Option<(u16, &'static str)>,
    reader_done: bool,
}

impl Control {
    fn new(outbox: Arc<crate::chat::Outbox>) -> Self {
        Self {
            state: parking_lot::Mutex::new(ControlState::default()),
            pending: AtomicBool::new(false),
            outbox,
        }
    }

    fn signal(&self) {
        self.pending.store(true, Ordering::Release);
        self.outbox.wake();
    }

    fn pong(&self, payload: &[u8]) {
        // Only the latest ping needs an answer (RFC 6455 §5.5.3).
        self.state.lock().pong = Some(payload.to_vec());
        self.signal();
    }

    fn close(&self, code: u16, reason: &'static str) {
        self.state.lock().close.get_or_insert((code, reason));
        self.signal();
    }

    fn reader_done(&self) {
        self.state.lock().reader_done = true;
        self.signal();
    }

    /// What was asked since the last call, if anything was.
    fn take(&self) -> Option<ControlState> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *self.state.lock()))
    }
}

#[derive(Serialize)]
struct Hello<'a> {
    user: HelloUser<'a>,
    connection_id: String,
    server_time: u64,
    heartbeat_ms: u64,
    limits: HelloLimits,
}

#[derive(Serialize)]
struct HelloUser<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct HelloLimits {
    max_message_bytes: usize,
    max_frame_bytes: usize,
}

async fn run_session(
    st: &AppState,
    io: TokioIo<hyper::upgrade::Upgraded>,
    me: Identity,
    peer: SocketAddr,
    catching_up: bool,
) {
    // Take the TCP stream back from hyper: owned halves need no lock between reader and writer.
    let parts = match io.into_inner().downcast::<TokioIo<TcpStream>>() {
        Ok(p) => p,
        Err(_) => {
            tracing::error!("upgraded connection is not a TCP stream");
            return;
        }
    };
    let (read, write) = parts.io.into_inner().into_split();
    // Bytes the client sent right behind its handshake. Copied, so hyper's whole read buffer
    // is not kept alive for the life of the connection.
    let early = bytes::Bytes::copy_from_slice(&parts.read_buf);
    drop(parts.read_buf);
    let read_total = AtomicU64::new(0);
    let mut source = CountingRead {
        inner: tokio::io::AsyncReadExt::chain(std::io::Cursor::new(early), read),
        total: &read_total,
    };
    // The write side is ours (`io::FrameWriter`): a batch goes out in one vectored write of
    // shared payloads, with no per-connection buffer.
    let tx = FrameWriter::new(write);

    let hello = |id: u64| {
        protocol::event(
            "hello",
            &Hello {
                user: HelloUser {
                    id: &me.user_id,
                    name: &me.name,
                },
                connection_id: format!("c{id}"),
                server_time: now_ms(),
                heartbeat_ms: st.config.server.heartbeat_interval_secs * 1000,
                limits: HelloLimits {
                    max_message_bytes: st.config.limits.max_message_bytes,
                    max_frame_bytes: st.config.limits.max_frame_bytes,
                },
            },
        )
    };
    // `hello` is queued before the connection joins the fan-out, so it is always first.
    let conn = st.hub.connect(&me.user_id, &me.name, catching_up, hello);
    st.metrics.connections.inc();
    st.metrics.connections_total.inc();
    tracing::debug!(%peer, conn = conn.id, user = %me.user_id, "websocket open");

    let last_seen = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let control = Arc::new(Control::new(conn.outbox.clone()));
    let writer = tokio::spawn(write_loop(
        tx,
        conn.outbox.clone(),
        control.clone(),
        WriterTimers {
            heartbeat: Duration::from_secs(st.config.server.heartbeat_interval_secs),
            idle: Duration::from_secs(st.config.server.idle_timeout_secs),
            expires_in: Duration::from_secs(me.expires_at.saturating_sub(now_ms() / 1000)),
            started,
            last_seen: last_seen.clone(),
        },
        st.metrics.clone(),
    ));
    let reader = async {
        read_loop(st, &mut source, &conn, &control, &last_seen, started).await;
        control.reader_done();
    };
    tokio::pin!(reader);
    tokio::pin!(writer);
    tokio::select! {
        _ = &mut reader => {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        }
        _ = &mut writer => {
            // The writer sent a close (shutdown, slow consumer, expiry, idle): give the peer a
            // moment to answer it, then drop the socket.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut reader).await;
        }
    }
    st.hub.disconnect(&conn);
    st.metrics.connections.dec();
    tracing::debug!(%peer, conn = conn.id, "websocket closed");
}

struct WriterTimers {
    heartbeat: Duration,
    idle: Duration,
    expires_in: Duration,
    started: Instant,
    last_seen: Arc<AtomicU64>,
}

async fn write_loop<W: wsio::Sink>(
    mut tx: FrameWriter<W>,
    outbox: Arc<crate::chat::Outbox>,
    ctrl: Arc<Control>,
    t: WriterTimers,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut batch: Vec<crate::chat::Frame> = Vec::new();
    // One timer for both deadlines (the next ping, the token's expiry): each wake-up polls
    // every branch of the select, and a second timer cost every delivery a poll.
    let expires_at = tokio::time::Instant::now()
        .checked_add(t.expires_in)
        .unwrap_or_else(far_future);
    let mut next_ping = tokio::time::Instant::now() + t.heartbeat;
    let timer = tokio::time::sleep_until(next_ping.min(expires_at));
    tokio::pin!(timer);
    let mut close: Option<(u16, &'static str)> = None;
    let mut pong: Option<Vec<u8>> = None;
    let mut send_ping = false;
    loop {
        if let Some(c) = ctrl.take() {
            if c.pong.is_some() {
                pong = c.pong;
            }
            if let Some(req) = c.close {
                close.get_or_insert(req);
            } else if c.reader_done && close.is_none() {
                return;
            }
        }
        let req = outbox.drain_into(&mut batch);
        if let Some(c) = req {
            close = Some((c.code, c.reason));
            if c.code == close::SLOW_CONSUMER {
                batch.clear();
            }
        }
        if let Some(p) = pong.take()
            && tx.control(wsio::OpCode::Pong, &p).await.is_err()
        {
            return;
        }
        if send_ping {
            send_ping = false;
            if tx.control(wsio::OpCode::Ping, b"").await.is_err() {
                return;
            }
        }
        let entries = batch.len();
        if entries > 0 && tx.text_frames(&batch).await.is_err() {
            return;
        }
        let frames: usize = batch.iter().map(crate::chat::Frame::frames).sum();
        batch.clear();
        metrics.frames_out.inc_by(frames as u64);
        if entries <= 2 && batch.capacity() > 16 {
            // A quiet moment after a burst: give the burst's capacity back.
            batch = Vec::new();
        }
        if let Some((code, reason)) = close {
            let _ = tx.close(code, reason).await;
            return;
        }
        // Unbiased: a connection that never runs out of frames still gets its pings and expiry.
        tokio::select! {
            _ = outbox.ready() => {}
            _ = &mut timer => {
                let now = tokio::time::Instant::now();
                if now >= expires_at {
                    close = Some((close::TOKEN_EXPIRED, "token expired"));
                } else {
                    let seen = Duration::from_millis(t.last_seen.load(Ordering::Relaxed));
                    if t.started.elapsed().saturating_sub(seen) > t.idle {
                        close = Some((close::IDLE_TIMEOUT, "no frames within the idle timeout"));
                    } else {
                        send_ping = true;
                    }
                    // Like an interval that skips missed ticks: the next ping is a whole
                    // heartbeat after this one was due, never in the past.
                    next_ping = (next_ping + t.heartbeat).max(now);
                    timer.as_mut().reset(next_ping.min(expires_at));
                }
            }
        }
    }
}

/// Where tokio puts "never": far enough, and safe from overflow.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Counts the bytes the WebSocket reader pulls from the socket.
struct CountingRead<'a, R> {
    inner: R,
    total: &'a AtomicU64,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingRead<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.total.fetch_add(n, Ordering::Relaxed);
        res
    }
}

type SocketSource<'a> =
    CountingRead<'a, tokio::io::Chain<std::io::Cursor<Bytes>, tokio::net::tcp::OwnedReadHalf>>;

/// Reads frames and answers them. The fastwebsockets reader (and its 8 KiB buffer) lives only
/// while a burst of frames is being read: once every byte taken from the socket belongs to a
/// frame already handled, it is dropped and the session waits for readability holding no
/// buffer. That is most of the memory of an idle connection (see the commit measuring it).
async fn read_loop(
    st: &AppState,
    source: &mut SocketSource<'_>,
    conn: &Arc<Connection>,
    ctrl: &Control,
    last_seen: &AtomicU64,
    started: Instant,
) {
    let max = st.config.limits.max_frame_bytes;
    let mut partial: Option<Vec<u8>> = None;
    let mut strikes = Strikes::new();
    let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    let total = source.total;
    let mut consumed: u64 = 0;
    loop {
        let (early, tcp) = source.inner.get_ref();
        if early.position() as usize >= early.get_ref().len() && tcp.readable().await.is_err() {
            return;
        }
        // Boxed, once per burst: the frame reader and the request handling are large, and
        // inline they would sit in every idle connection's session future.
        let burst = Box::pin(async {
            let mut rx = frame_reader(&mut *source, max);
            loop {
                if read_one(
                    st,
                    &mut rx,
                    &mut no_obligations,
                    conn,
                    ctrl,
                    &mut partial,
                    &mut strikes,
                    max,
                    &mut consumed,
                    last_seen,
                    started,
                )
                .await
                .is_break()
                {
                    return std::ops::ControlFlow::Break(());
                }
                if total.load(Ordering::Relaxed) == consumed {
                    return std::ops::ControlFlow::Continue(());
                }
            }
        });
        if burst.await.is_break() {
            return;
        }
    }
}

/// The frame reader a session uses over `source`: no automatic close or pong (the session
/// answers those itself, through the writer), frames up to `max` bytes.
fn frame_reader<R: tokio::io::AsyncRead + Unpin>(
    source: R,
    max: usize,
) -> fastwebsockets::WebSocketRead<R> {
    let (mut rx, _) =
        fastwebsockets::after_handshake_split(source, tokio::io::sink(), Role::Server);
    rx.set_auto_close(false);
    rx.set_auto_pong(false);
    // `payload_len >= max` is refused, so allow exactly max_frame_bytes.
    rx.set_max_message_size(max + 1);
    rx
}

/// Reads and handles one frame; `Break` ends the session.
#[allow(clippy::too_many_arguments)]
async fn read_one<R: tokio::io::AsyncRead + Unpin, F, Fut>(
    st: &AppState,
    rx: &mut fastwebsockets::WebSocketRead<R>,
    no_obligations: &mut F,
    conn: &Arc<Connection>,
    ctrl: &Control,
    partial: &mut Option<Vec<u8>>,
    strikes: &mut Strikes,
    max: usize,
    consumed: &mut u64,
    last_seen: &AtomicU64,
    started: Instant,
) -> std::ops::ControlFlow<()>
where
    F: FnMut(Frame<'_>) -> Fut,
    Fut: std::future::Future<Output = Result<(), std::io::Error>>,
{
    use std::ops::ControlFlow::{Break, Continue};
    {
        let frame = match rx.read_frame(no_obligations).await {
            Ok(f) => f,
            Err(e) => {
                let (code, reason) = match e {
                    WebSocketError::FrameTooLarge => (close::TOO_BIG, "frame too large"),
                    WebSocketError::InvalidUTF8 => (close::INVALID_DATA, "invalid UTF-8"),
                    WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => return Break(()),
                    _ => (close::PROTOCOL_ERROR, "protocol error"),
                };
                tracing::info!(conn = conn.id, error = %e, "closing websocket");
                return close_after_acks(conn, ctrl, code, reason).await;
            }
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut head = [0u8; 16];
        let mut f = frame;
        // The header as received: same length field, same mask, so the same size.
        let head_len = f.fmt_head(&mut head);
        *consumed += (head_len + f.payload.len()) as u64;
        if head[1] & 0x80 == 0 {
            // RFC 6455 §5.1: a server must close on an unmasked client frame.
            return close_after_acks(
                conn,
                ctrl,
                close::PROTOCOL_ERROR,
                "client frames must be masked",
            )
            .await;
        }
        match f.opcode {
            OpCode::Text if partial.is_some() => {
                return close_after_acks(
                    conn,
                    ctrl,
                    close::PROTOCOL_ERROR,
                    "expected a continuation frame",
                )
                .await;
            }
            OpCode::Text if f.fin => {
                if handle_text(st, conn, &f.payload).await
                    && strikes.hit(st.config.rate_limits.abuse_strikes)
                {
                    return close_after_acks(
                        conn,
                        ctrl,
                        close::POLICY,
                        "too many requests over the rate limits",
                    )
                    .await;
                }
            }
            OpCode::Text => {
                // RFC 6455 §8.1: fail at the first fragment that cannot be UTF-8.
                if !protocol::utf8_fragment_ok(&f.payload, 0, false) {
                    return close_after_acks(conn, ctrl, close::INVALID_DATA, "invalid UTF-8")
                        .await;
                }
                *partial = Some(f.payload.to_vec());
            }
            OpCode::Continuation => {
                let Some(buf) = partial.as_mut() else {
                    return close_after_acks(
                        conn,
                        ctrl,
                        close::PROTOCOL_ERROR,
                        "unexpected continuation frame",
                    )
                    .await;
                };
                if buf.len() + f.payload.len() > max {
                    return close_after_acks(conn, ctrl, close::TOO_BIG, "message too large").await;
                }
                let checked = buf.len();
                buf.extend_from_slice(&f.payload);
                if !protocol::utf8_fragment_ok(buf, checked, f.fin) {
                    return close_after_acks(conn, ctrl, close::INVALID_DATA, "invalid UTF-8")
                        .await;
                }
                if f.fin {
                    let whole = partial.take().unwrap_or_default();
                    if handle_text(st, conn, &whole).await
                        && strikes.hit(st.config.rate_limits.abuse_strikes)
                    {
                        return close_after_acks(
                            conn,
                            ctrl,
                            close::POLICY,
                            "too many requests over the rate limits",
                        )
                        .await;
                    }
                }
            }
            OpCode::Binary => {
                let e = WireError::new(
                    ErrorCode::InvalidPayload,
                    "binary frames are not supported; send JSON text frames",
                );
                st.metrics.error(e.code);
                conn.settled().await;
                conn.outbox.push(protocol::error(None, &e));
            }
            OpCode::Close => {
                // Answer once (fastwebsockets' auto-close would answer twice), with 1002 or
                // 1007 for a Close frame that is itself malformed.
                let (code, reason) = close::answer(&f.payload);
                return close_after_acks(conn, ctrl, code, reason).await;
            }
            OpCode::Ping => {
                ctrl.pong(&f.payload);
            }
            OpCode::Pong => {}
        }
    }
    Continue(())
}

/// Asks the writer to close once every send in flight on the connection has its ack queued:
/// nothing stored goes unacknowledged on a live socket (the writer sends what is queued, then
/// the close frame).
async fn close_after_acks(
    conn: &Connection,
    ctrl: &Control,
    code: u16,
    reason: &'static str,
) -> std::ops::ControlFlow<()> {
    conn.settled().await;
    ctrl.close(code, reason);
    std::ops::ControlFlow::Break(())
}

/// Answers one text frame. Returns true when a limit refused it (a strike).
///
/// Replies leave in the order requests arrived. Sends pipeline: a send is submitted without
/// waiting for the sends before it, and its ack is queued by its completion, in commit order.
/// Anything else answered here (another request, a refused send, a bad frame) first waits
/// until every earlier send's ack is queued (`Connection::settled`), so it never overtakes
/// one, and a read then sees every write sent before it on this connection.
async fn handle_text(st: &AppState, conn: &Arc<Connection>, text: &[u8]) -> bool {
    let frame = match protocol::parse_client_frame(text) {
        Ok(f) => f,
        Err(e) => {
            st.metrics.error(e.code);
            tracing::debug!(conn = conn.id, code = e.code.as_str(), "bad frame");
            conn.settled().await;
            conn.outbox.push(protocol::error(None, &e));
            return false;
        }
    };
    let reference = frame.reference.as_deref();
    let pipelined = &*frame.event == "send_message";
    if !pipelined {
        conn.settled().await;
    }
    // Boxed: the request handlers' futures are large, and inline they would be part of every
    // idle connection's session future. One allocation per request, none per delivery.
    let answer = Box::pin(dispatch(st, conn, &frame.event, reference, frame.data)).await;
    match answer {
        Ok(Some(bytes)) => {
            conn.outbox.push(bytes);
        }
        Ok(None) => {}
        Err(e) => {
            st.metrics.error(e.code);
            tracing::debug!(conn = conn.id, event = %frame.event, code = e.code.as_str(), "request refused");
            // A send refused before storage: after the acks of the sends before it.
            conn.settled().await;
            conn.outbox.push(protocol::error(reference, &e));
            return e.code == ErrorCode::RateLimited;
        }
    }
    false
}

/// Refusals within a 10 s window; past `rate_limits.abuse_strikes` the connection is closed.
struct Strikes {
    window_start: Instant,
    count: u32,
}

impl Strikes {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            count: 0,
        }
    }

    /// Counts one refusal; true when the connection has now abused its limits.
    fn hit(&mut self, max: u32) -> bool {
        if self.window_start.elapsed() > Duration::from_secs(10) {
            self.window_start = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        self.count > max
    }
}

/// Runs one request. `Ok(None)`: the answer will be queued later (sends, after commit).
async fn dispatch(
    st: &AppState,
    conn: &Arc<Connection>,
    event: &str,
    reference: Option<&str>,
    data: Option<&serde_json::value::RawValue>,
) -> Result<Option<Bytes>, WireError> {
    let hub = &st.hub;
    let user = &conn.user;
    let chat = |e: ChatError| hub.wire_error(&e);
    let ack = |v: serde_json::Value| Ok(Some(protocol::ack(reference, &v)));
    match event {
        "send_message" => {
            let d: protocol::SendMessage = protocol::parse_data(data)?;
            conn.take_message_token().map_err(chat)?;
            hub.send_any(
                user,
                NewMessage {
                    room_id: d.room_id,
                    client_msg_id: d.client_msg_id,
                    kind: d.kind,
                    content: d.content,
                    file_id: d.file_id,
                },
                Reply::Socket {
                    send: conn.begin_send(),
                    reference: reference.map(str::to_owned),
                },
            )
            .await
            .map_err(chat)?;
            Ok(None)
        }
        "edit_message" => {
            let d: protocol::EditMessage = protocol::parse_data(data)?;
            conn.take_message_token().map_err(chat)?;
            let m = hub
                .edit_message(user, d.room_id, d.message_id, d.content)
                .await
                .map_err(chat)?;
            ack(serde_json::json!({ "message": m }))
        }
        "delete_message" => {
            let d: protocol::MessageRef = protocol::parse_data(data)?;
            conn.take_message_token().map_err(chat)?;
            let m = hub
                .delete_message(user, d.room_id, d.message_id)
                .await
                .map_err(chat)?;
            ack(serde_json::json!({ "message": m }))
        }
        "history" => {
            let d: protocol::History = protocol::parse_data(data)?;
            let page = hub
                .history(user, d.room_id, d.before, d.after, d.limit)
                .await
                .map_err(chat)?;
            Ok(Some(protocol::ack(reference, &page)))
        }
        "create_room" => {
            let d: protocol::CreateRoom = protocol::parse_data(data)?;
            let room = hub
                .create_room(user, &d.name, &d.topic, d.visibility)
                .await
                .map_err(chat)?;
            ack(serde_json::json!({ "room": room }))
        }
        "list_rooms" => {
            let _: protocol::Empty = protocol::parse_data(data)?;
            let rooms = hub.my_rooms(user).await.map_err(chat)?;
            ack(serde_json::json!({ "rooms": rooms }))
        }
        "list_public_rooms" => {
            let _: protocol::Empty = protocol::parse_data(data)?;
            ack(serde_json::json!({ "rooms": hub.public_rooms() }))
        }
        "join_room" => {
            let d: protocol::RoomRef = protocol::parse_data(data)?;
            let room = hub.join_room(user, d.room_id).await.map_err(chat)?;
            ack(serde_json::json!({ "room": room }))
        }
        "invite" => {
            let d: protocol::Invite = protocol::parse_data(data)?;
            hub.invite(user, d.room_id, &d.user_id)
                .await
                .map_err(chat)?;
            ack(serde_json::json!({}))
        }
        "leave_room" => {
            let d: protocol::RoomRef = protocol::parse_data(data)?;
            hub.leave_room(user, d.room_id).await.map_err(chat)?;
            ack(serde_json::json!({}))
        }
        "list_members" => {
            let d: protocol::RoomRef = protocol::parse_data(data)?;
            let members = hub.members(user, d.room_id).map_err(chat)?;
            ack(serde_json::json!({ "members": members }))
        }
        "open_dm" => {
            let d: protocol::UserRef = protocol::parse_data(data)?;
            let room = hub.open_dm(user, &d.user_id).await.map_err(chat)?;
            ack(serde_json::json!({ "room": room }))
        }
        "sync" => {
            let d: protocol::Sync = protocol::parse_data(data)?;
            let rooms = d.rooms.into_iter().collect();
            let answer = hub
                .sync(conn, rooms, d.limit, reference.map(str::to_owned))
                .await
                .map_err(chat)?;
            Ok(answer.map(|a| protocol::ack(reference, &a)))
        }
        "mark_delivered" => {
            let d: protocol::MessageRef = protocol::parse_data(data)?;
            hub.mark_delivered(user, d.room_id, d.message_id)
                .map_err(chat)?;
            ack(serde_json::json!({}))
        }
        "mark_read" => {
            let d: protocol::MessageRef = protocol::parse_data(data)?;
            let read_at = hub
                .mark_read(user, d.room_id, d.message_id)
                .await
                .map_err(chat)?;
            ack(serde_json::json!({ "read_at": read_at }))
        }
        "message_receipts" => {
            let d: protocol::MessageRef = protocol::parse_data(data)?;
            let r = hub
                .message_receipts(user, d.room_id, d.message_id)
                .await
                .map_err(chat)?;
            Ok(Some(protocol::ack(reference, &r)))
        }
        "typing" => {
            let d: protocol::Typing = protocol::parse_data(data)?;
            hub.typing(conn, d.room_id, &d.state).map_err(chat)?;
            ack(serde_json::json!({}))
        }
        "set_settings" => {
            let d: protocol::Settings = protocol::parse_data(data)?;
            let settings = hub
                .set_settings(user, d.private_receipts)
                .await
                .map_err(chat)?;
            ack(serde_json::json!({ "settings": settings }))
        }
        "search" => {
            let d: protocol::SearchRequest = protocol::parse_data(data)?;
            let answer = hub.search(user, d).await.map_err(chat)?;
            Ok(Some(protocol::ack(reference, &answer)))
        }
        "ping" => {
            let _: protocol::Empty = protocol::parse_data(data)?;
            ack(serde_json::json!({ "server_time": now_ms() }))
        }
        other => Err(WireError::new(
            ErrorCode::UnknownEvent,
            format!("unknown event {:?}", truncate(other, 64)),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn request(query: &str, headers: &[(&str, &str)]) -> Option<Request<()>> {
        let mut b = Request::builder().uri(format!("/ws?{query}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).ok()
    }

    /// Issue 24, point 6: a token over `MAX_TOKEN_BYTES` is refused wherever it travels.
    #[test]
    fn tokens_over_the_cap_are_refused_everywhere() {
        let max = protocol::MAX_TOKEN_BYTES;
        let jwt = |n: usize| format!("a.b.{}", "c".repeat(n - 4));
        for (n, ok) in [(max, true), (max + 1, false)] {
            let t = jwt(n);
            let by_query = request(&format!("token={t}"), &[]).expect("request");
            let bearer = format!("Bearer {t}");
            let by_header = request("", &[("authorization", &bearer)]).expect("request");
            let protocols = format!("confab, {t}");
            let by_protocol =
                request("", &[("sec-websocket-protocol", &protocols)]).expect("request");
            for (req, via) in [(by_query, false), (by_header, false), (by_protocol, true)] {
                match find_token(&req) {
                    Ok((found, v)) => {
                        assert!(ok, "{n} bytes accepted (via protocol: {via})");
                        assert_eq!((found.len(), v), (n, via));
                    }
                    Err((_, e)) => {
                        assert!(!ok, "{n} bytes refused (via protocol: {via})");
                        assert!(e.message.contains("over"), "{}", e.message);
                    }
                }
            }
        }
    }

    /// Issue 24, point 11: token extraction from any upgrade request gives a token from the
    /// request, within the cap, or a typed refusal; never a panic.
    #[test]
    fn any_upgrade_request_yields_a_token_or_a_refusal() {
        let token = prop_oneof![
            "[A-Za-z0-9_-]{0,20}\\.[A-Za-z0-9_-]{0,20}\\.[A-Za-z0-9_-]{0,20}",
            (8180usize..8200).prop_map(|n| format!("x.y.{}", "z".repeat(n))),
            "[ -~]{0,40}",
        ];
        let case = (
            proptest::collection::vec(
                prop_oneof![
                    token.clone().prop_map(|t| format!("token={t}")),
                    "[a-z=&%0-9]{0,12}",
                ],
                0..4,
            ),
            proptest::option::of(prop_oneof![
                token.clone().prop_map(|t| format!("Bearer {t}")),
                "[ -~]{0,30}",
            ]),
            proptest::option::of(prop_oneof![
                token.prop_map(|t| format!("confab, {t}")),
                "[ -~]{0,30}",
            ]),
        );
        proptest!(config(), |((query, auth, protocols) in case)| {
            let query = query.join("&");
            let mut headers = Vec::new();
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            if let Some(p) = &protocols {
                headers.push(("sec-websocket-protocol", p.as_str()));
            }
            let Some(req) = request(&query, &headers) else {
                return Ok(());
            };
            match find_token(&req) {
                Ok((t, via_protocol)) => {
                    prop_assert!(!t.is_empty() && t.len() <= protocol::MAX_TOKEN_BYTES);
                    let source = if via_protocol {
                        protocols.clone().unwrap_or_default()
                    } else {
                        format!("{query} {}", auth.clone().unwrap_or_default())
                    };
                    prop_assert!(source.contains(&t), "{t:?} not from {source:?}");
                }
                Err((reason, e)) => {
                    prop_assert!(matches!(reason, "no_token" | "bad_token"));
                    prop_assert_eq!(e.code, ErrorCode::Unauthorized);
                }
            }
        });
    }

    /// One client frame on the wire: any opcode, flags, mask and length encoding.
    fn wire_frame(
        (fin, rsv, opcode, masked, key, wide, payload): (bool, u8, u8, bool, [u8; 4], u8, Vec<u8>),
    ) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
        let m = u8::from(masked) << 7;
        let n = payload.len();
        match wide {
            0 if n < 126 => out.push(m | n as u8),
            0 | 1 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&key);
        }
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
        );
        out
    }

    /// Reads `bytes` as a session does (the same reader, the same checks on each frame) until
    /// the stream ends or a frame ends the session; fails if it reads more frames than the
    /// bytes could hold (a loop) or a frame over `max`.
    async fn read_as_a_session(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
        let mut rx = frame_reader(bytes, max);
        let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        let mut partial: Option<Vec<u8>> = None;
        // Every frame takes at least two bytes.
        for _ in 0..=bytes.len() / 2 {
            let Ok(mut f) = rx.read_frame(&mut no_obligations).await else {
                return Ok(());
            };
            prop_assert!(f.payload.len() <= max);
            let mut head = [0u8; 16];
            f.fmt_head(&mut head);
            if head[1] & 0x80 == 0 {
                return Ok(());
            }
            match f.opcode {
                OpCode::Text if f.fin => {
                    if partial.is_some() {
                        return Ok(());
                    }
                    let _ = protocol::parse_client_frame(&f.payload);
                }
                OpCode::Text => {
                    if partial.is_some() || !protocol::utf8_fragment_ok(&f.payload, 0, false) {
                        return Ok(());
                    }
                    partial = Some(f.payload.to_vec());
                }
                OpCode::Continuation => {
                    let Some(buf) = partial.as_mut() else {
                        return Ok(());
                    };
                    if buf.len() + f.payload.len() > max {
                        return Ok(());
                    }
                    let checked = buf.len();
                    buf.extend_from_slice(&f.payload);
                    if !protocol::utf8_fragment_ok(buf, checked, f.fin) {
                        return Ok(());
                    }
                    if f.fin {
                        let whole = partial.take().unwrap_or_default();
                        prop_assert!(std::str::from_utf8(&whole).is_ok());
                        let _ = protocol::parse_client_frame(&whole);
                    }
                }
                OpCode::Close => {
                    let (code, _) = close::answer(&f.payload);
                    prop_assert!(matches!(code, 1000 | 1002 | 1007));
                    return Ok(());
                }
                OpCode::Binary | OpCode::Ping | OpCode::Pong => {}
            }
        }
        prop_assert!(false, "more frames than the input could hold");
        Ok(())
    }

    /// Issue 24, point 11: the session's frame reading path (fastwebsockets' reader as the
    /// session sets it up, then the session's checks) ends on any input: frames of any kind,
    /// cut anywhere, or plain noise. In memory, bounded.
    #[test]
    fn any_bytes_read_as_frames_end_cleanly() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let frame = (
            any::<bool>(),
            prop_oneof![9 => Just(0u8), 1 => 0u8..8],
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(2),
                Just(8),
                Just(9),
                Just(10),
                0u8..16
            ],
            prop_oneof![9 => Just(true), 1 => Just(false)],
            any::<[u8; 4]>(),
            0u8..3,
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                ".{0,100}".prop_map(String::into_bytes),
                Just(br#"{"event":"ping"}"#.to_vec()),
            ],
        )
            .prop_map(wire_frame);
        let input = prop_oneof![
            proptest::collection::vec(frame, 0..8).prop_map(|fs| fs.concat()),
            proptest::collection::vec(any::<u8>(), 0..600),
        ];
        let case = (input, any::<proptest::sample::Index>());
        proptest!(config(), |((bytes, cut) in case)| {
            // Also cut short anywhere: a connection can end mid-frame.
            let end = if bytes.is_empty() { 0 } else { cut.index(bytes.len() + 1) };
            rt.block_on(read_as_a_session(&bytes[..end], 256))?;
            rt.block_on(read_as_a_session(&bytes, 256))?;
        });
    }
}
