//! WebSocket connections: handshake and `hello`, the per-connection reader task and the
//! sender task.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocket, WebSocketWrite,
};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::Instant;

use crate::stats::{BATCH, Bits, Shared, parse_marker, parse_u64, string_after};

type Stream = TokioIo<Upgraded>;
pub type Reader = FragmentCollectorRead<tokio::io::ReadHalf<Stream>>;
pub type Writer = Arc<Mutex<WebSocketWrite<tokio::io::WriteHalf<Stream>>>>;

/// Longest a single frame write may block (a server that stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value (`host:port`).
    pub host: String,
}

/// Opens `/ws?token=`, checks the upgrade and waits for `hello`.
pub async fn connect(target: &Target, token: &str) -> Result<(Reader, Writer)> {
    let stream = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("TCP connect to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends once the upgrade hands the socket over (or the request fails).
        let _ = conn.with_upgrades().await;
    });
    let req = Request::builder()
        .method("GET")
        .uri(format!("/ws?token={token}"))
        .header(header::HOST, &target.host)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(
            header::SEC_WEBSOCKET_KEY,
            fastwebsockets::handshake::generate_key(),
        )
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<Bytes>::new())?;
    let mut resp = sender.send_request(req).await.context("upgrade request")?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "upgrade refused: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.context("upgrade")?;
    let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    let hello = ws.read_frame().await.context("waiting for hello")?;
    if hello.opcode != OpCode::Text {
        bail!("expected a hello text frame, got {:?}", hello.opcode);
    }
    if string_after(&hello.payload, b"\"event\":\"") != Some(b"hello") {
        bail!(
            "expected hello first, got {}",
            String::from_utf8_lossy(&hello.payload)
        );
    }
    let (r, w) = ws.split(tokio::io::split);
    Ok((FragmentCollectorRead::new(r), Arc::new(Mutex::new(w))))
}

/// Sends a close frame (1000) and gives up after a second.
pub async fn close(writer: &Writer) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut w = writer.lock().await;
        w.write_frame(Frame::close(1000, b"")).await?;
        w.flush().await
    })
    .await;
}

/// What a reader task needs to know about its connection.
pub struct ReaderCtx {
    pub conn: usize,
    /// Room index of this connection.
    pub room: usize,
    /// Number of rooms (sender k is in room k % rooms with local index k / rooms).
    pub rooms: usize,
    /// Senders in this room.
    pub senders_in_room: usize,
    pub shared: Arc<Shared>,
    /// In-flight permits of this connection when it sends.
    pub in_flight: Option<Arc<Semaphore>>,
    /// Becomes true when the run is over.
    pub stop: watch::Receiver<bool>,
}

/// What a reader task saw, handed back when it ends.
#[derive(Default)]
pub struct ReaderOut {
    /// Per local sender of the room: sequence numbers received.
    pub seen: Vec<Bits>,
    /// Sequence numbers acked (sending connections only).
    pub acked: Bits,
    /// First-time deliveries.
    pub deliveries: u64,
    /// Deliveries of a (sender, seq) already received.
    pub duplicates: u64,
    /// Deliveries whose message id was not above the previous one (the room order broke).
    pub reorders: u64,
    /// `receive_message` frames without our marker or from a sender outside the room.
    pub foreign: u64,
    /// Acks carrying `"duplicate":true`.
    pub duplicate_acks: u64,
    /// The connection ended before the run stopped it.
    pub ended_early: bool,
}

/// Per-connection parsing state of a reader task.
struct ReaderState {
    room: usize,
    rooms: usize,
    conn: usize,
    shared: Arc<Shared>,
    in_flight: Option<Arc<Semaphore>>,
    out: ReaderOut,
    last_id: u64,
    lat: Vec<u64>,
    ack_lat: Vec<u64>,
}

impl ReaderState {
    /// Handles one text frame.
    #[inline]
    fn text(&mut self, p: &[u8]) {
        let shared = &*self.shared;
        match string_after(p, b"\"event\":\"") {
            Some(b"receive_message") => {
                let now = shared.now_ns();
                if shared.in_window(now) {
                    shared.window_deliveries.fetch_add(1, Ordering::Relaxed);
                }
                let Some(m) = parse_marker(p) else {
                    self.out.foreign += 1;
                    return;
                };
                let local = (m.sender as usize) / self.rooms;
                if m.sender as usize % self.rooms != self.room || local >= self.out.seen.len() {
                    self.out.foreign += 1;
                    return;
                }
                if self.out.seen[local].set(m.seq) {
                    self.out.deliveries += 1;
                    shared.room_delivered[self.room].fetch_add(1, Ordering::Relaxed);
                } else {
                    self.out.duplicates += 1;
                }
                if let Some((id, _)) = string_after(p, b"\"id\":\"").and_then(parse_u64) {
                    if id <= self.last_id {
                        self.out.reorders += 1;
                    }
                    self.last_id = self.last_id.max(id);
                }
                if shared.in_window(m.sent_ns) {
                    self.lat.push(now.saturating_sub(m.sent_ns) / 1000);
                    if self.lat.len() == BATCH {
                        shared.record_deliveries(self.conn, &self.lat);
                        self.lat.clear();
                    }
                }
            }
            Some(b"ack") => {
                let now = shared.now_ns();
                let seq = string_after(p, b"\"ref\":\"").and_then(parse_u64);
                let (Some(sem), Some((seq, _))) = (&self.in_flight, seq) else {
                    Shared::bump(&shared.other_events, "ack (not ours)");
                    return;
                };
                if self.out.acked.set(seq) {
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                    shared.room_acked[self.room].fetch_add(1, Ordering::Relaxed);
                }
                sem.add_permits(1);
                if crate::stats::find(p, b"\"duplicate\":true").is_some() {
                    self.out.duplicate_acks += 1;
                }
                if let Some(m) = parse_marker(p)
                    && shared.in_window(m.sent_ns)
                {
                    self.ack_lat.push(now.saturating_sub(m.sent_ns) / 1000);
                    if self.ack_lat.len() == BATCH {
                        shared.record_acks(&self.ack_lat);
                        self.ack_lat.clear();
                    }
                }
            }
            Some(b"error") => {
                let code = string_after(p, b"\"code\":\"").unwrap_or(b"?");
                Shared::bump(&shared.errors, &String::from_utf8_lossy(code));
                let ours = string_after(p, b"\"ref\":\"").and_then(parse_u64);
                if let (Some(sem), Some(_)) = (&self.in_flight, ours) {
                    shared.error_replies.fetch_add(1, Ordering::Relaxed);
                    sem.add_permits(1);
                }
            }
            Some(other) => Shared::bump(&shared.other_events, &String::from_utf8_lossy(other)),
            None => Shared::bump(&shared.other_events, "(frame without event)"),
        }
    }
}

/// Reads frames until the run stops or the connection ends, parsing only what it needs.
pub async fn read_loop(ctx: ReaderCtx, mut reader: Reader, writer: Writer) -> ReaderOut {
    let ReaderCtx {
        conn,
        room,
        rooms,
        senders_in_room,
        shared,
        in_flight,
        mut stop,
    } = ctx;
    let mut st = ReaderState {
        room,
        rooms,
        conn,
        shared,
        in_flight,
        out: ReaderOut {
            seen: vec![Bits::default(); senders_in_room],
            ..ReaderOut::default()
        },
        last_id: 0,
        lat: Vec::with_capacity(BATCH),
        ack_lat: Vec::with_capacity(BATCH),
    };
    // Pongs and close replies go through the shared write half.
    let mut send_fn = |frame: Frame<'static>| {
        let w = writer.clone();
        async move { w.lock().await.write_frame(frame).await }
    };
    let work = async {
        loop {
            let frame = match reader.read_frame(&mut send_fn).await {
                Ok(f) => f,
                Err(e) => {
                    Shared::bump(&st.shared.disconnects, &format!("read error: {e}"));
                    st.out.ended_early = true;
                    return;
                }
            };
            match frame.opcode {
                OpCode::Text => st.text(&frame.payload),
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]).to_string())
                        .unwrap_or_else(|| "without code".into());
                    Shared::bump(&st.shared.disconnects, &format!("closed by server: {code}"));
                    st.out.ended_early = true;
                    return;
                }
                _ => {}
            }
        }
    };
    // One select around the whole loop: the stop future is made once, not per frame.
    tokio::select! {
        biased;
        _ = stop.wait_for(|&s| s) => {}
        () = work => {}
    }
    st.shared.record_deliveries(conn, &st.lat);
    st.shared.record_acks(&st.ack_lat);
    st.out
}

/// How one sending connection paces itself.
pub struct SenderCfg {
    /// Global connection index (also the sender id in the content marker).
    pub k: usize,
    pub room_id: String,
    /// Prefix of `client_msg_id`s (the run id).
    pub run_id: String,
    /// Content size in bytes (at least the marker).
    pub size: usize,
    /// Time between sends; `None` sends as fast as the in-flight bound allows.
    pub period: Option<Duration>,
    pub first_at: Instant,
    pub end_at: Instant,
}

/// What a sender did.
#[derive(Default)]
pub struct SenderOut {
    pub sent: u64,
    /// Sends more than 10 ms behind their schedule (the generator or the in-flight bound lagged).
    pub late: u64,
    pub write_error: Option<String>,
}

/// Sends `send_message` until `end_at`, each content embedding its send time.
pub async fn send_loop(
    cfg: SenderCfg,
    writer: Writer,
    in_flight: Arc<Semaphore>,
    shared: Arc<Shared>,
) -> SenderOut {
    let mut out = SenderOut::default();
    let mut buf: Vec<u8> = Vec::with_capacity(cfg.size + 256);
    let mut next = cfg.first_at;
    let late_after = Duration::from_millis(10);
    let mut seq: u64 = 0;
    loop {
        if let Some(period) = cfg.period {
            if next >= cfg.end_at {
                break;
            }
            tokio::time::sleep_until(next).await;
            if Instant::now().saturating_duration_since(next) > late_after {
                out.late += 1;
            }
            next += period;
        } else if Instant::now() < cfg.first_at {
            tokio::time::sleep_until(cfg.first_at).await;
        }
        match tokio::time::timeout_at(cfg.end_at, in_flight.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => break,
        }
        if Instant::now() >= cfg.end_at {
            in_flight.add_permits(1);
            break;
        }
        build_send(&mut buf, &cfg, seq, shared.now_ns());
        let res = tokio::time::timeout(WRITE_TIMEOUT, async {
            let mut w = writer.lock().await;
            w.write_frame(Frame::text(Payload::BorrowedMut(&mut buf)))
                .await?;
            w.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                out.write_error = Some(e.to_string());
                break;
            }
            Err(_) => {
                out.write_error = Some(format!("write blocked for {WRITE_TIMEOUT:?}"));
                break;
            }
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        out.sent += 1;
        seq += 1;
    }
    out
}

/// Writes one `send_message` frame into `buf`; content is `lg|k|seq|ns|` padded with `x`.
fn build_send(buf: &mut Vec<u8>, cfg: &SenderCfg, seq: u64, now_ns: u64) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"event":"send_message","ref":"{seq}","data":{{"room_id":"{}","client_msg_id":"{}-{}-{seq}","type":"text","content":""#,
        cfg.room_id, cfg.run_id, cfg.k
    );
    let start = buf.len();
    let _ = write!(buf, "lg|{}|{seq}|{now_ns}|", cfg.k);
    let pad = cfg.size.saturating_sub(buf.len() - start);
    buf.resize(buf.len() + pad, b'x');
    buf.extend_from_slice(b"\"}}");
}

/// Resolves `host:port` once.
pub async fn resolve(host: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(host)
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_frame_shape() {
        let cfg = SenderCfg {
            k: 4,
            room_id: "77".into(),
            run_id: "lgab".into(),
            size: 40,
            period: None,
            first_at: Instant::now(),
            end_at: Instant::now(),
        };
        let mut buf = Vec::new();
        build_send(&mut buf, &cfg, 9, 123);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        let content = v["data"]["content"].as_str().expect("content");
        assert_eq!(content.len(), 40);
        assert!(content.starts_with("lg|4|9|123|x"));
        assert_eq!(v["ref"], "9");
        assert_eq!(v["data"]["client_msg_id"], "lgab-4-9");
        let m = parse_marker(&buf).expect("marker");
        assert_eq!((m.sender, m.seq, m.sent_ns), (4, 9, 123));
    }
}
