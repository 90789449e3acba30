//! WebSocket connections: handshake and `hello`, the per-connection reader task and the
//! sender task, for each kind of peer (Confab, the ceiling server, Socket.IO).

use std::io::{Cursor, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead, WebSocketWrite};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::Instant;

use crate::stats::{BATCH, Bits, Shared, find, parse_marker, parse_u64, string_after};

/// The server on the other end, and so the dialect on the wire.
#[derive(clap::ValueEnum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Confab: REST setup, `/ws?token=`, Confab's JSON frames.
    Confab,
    /// confab-ceiling (benches/ceiling.rs): `/ws?user=&room=`, Confab's JSON frames, no setup.
    Ceiling,
    /// A Socket.IO v4 server: Engine.IO v4 / Socket.IO v5 packets in text frames, no setup.
    Socketio,
}

/// The write half, shared by the sender, the reader (pongs) and the closer.
pub type Writer = Arc<Mutex<WebSocketWrite<OwnedWriteHalf>>>;

/// The read half: frames, and when the bytes that completed the last one arrived.
pub struct Reader {
    frames: WebSocketRead<Timed<tokio::io::Chain<Cursor<Bytes>, OwnedReadHalf>>>,
    arrived: Arc<AtomicU64>,
    /// A fragmented message being put together. No server here fragments; this is cheaper than
    /// fastwebsockets' `FragmentCollectorRead`, which rebuilds every frame it passes on.
    partial: Option<(OpCode, BytesMut)>,
}

impl Reader {
    /// The next whole message or control frame (opcode and payload); WebSocket pongs and close
    /// replies go out through `writer`.
    async fn frame(&mut self, writer: &Writer) -> Result<(OpCode, BytesMut), WebSocketError> {
        let mut send_fn = |frame: Frame<'static>| {
            let w = writer.clone();
            async move { w.lock().await.write_frame(frame).await }
        };
        loop {
            let f = self.frames.read_frame(&mut send_fn).await?;
            // Frames read from a socket own their bytes: take them, ending the borrow.
            let (opcode, fin) = (f.opcode, f.fin);
            let payload = match f.payload {
                Payload::Bytes(b) => b,
                other => BytesMut::from(&other[..]),
            };
            match opcode {
                OpCode::Text | OpCode::Binary if !fin => self.partial = Some((opcode, payload)),
                OpCode::Continuation => {
                    let (_, buf) = self
                        .partial
                        .as_mut()
                        .ok_or(WebSocketError::InvalidContinuationFrame)?;
                    buf.extend_from_slice(&payload);
                    if fin && let Some(whole) = self.partial.take() {
                        return Ok(whole);
                    }
                }
                _ => return Ok((opcode, payload)),
            }
        }
    }

    /// The next frame, which must be text (during the handshake).
    async fn text(&mut self, writer: &Writer, what: &str) -> Result<Vec<u8>> {
        let (opcode, payload) = self
            .frame(writer)
            .await
            .with_context(|| format!("waiting for {what}"))?;
        if opcode != OpCode::Text {
            bail!("expected {what} in a text frame, got {opcode:?}");
        }
        Ok(payload.to_vec())
    }
}

/// A read half that notes when bytes last arrived (ns since `base`): frames that came in one
/// read share that one clock reading, which costs a clock call per read instead of per frame.
struct Timed<R> {
    inner: R,
    base: std::time::Instant,
    arrived: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Timed<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = this.base.elapsed().as_nanos() as u64;
            this.arrived.store(now, Ordering::Relaxed);
        }
        res
    }
}

/// Writes one text frame.
async fn send_text(writer: &Writer, text: &[u8]) -> Result<(), WebSocketError> {
    let mut w = writer.lock().await;
    w.write_frame(Frame::text(Payload::Borrowed(text))).await?;
    w.flush().await
}

/// Longest a single frame write may block (a server that stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value (`host:port`).
    pub host: String,
}

/// Opens `path` (`/ws?token=…`, `/ws?user=…`, `/socket.io/?…`), checks the upgrade and waits
/// until the connection is ready: `hello` (Confab, ceiling) or the Socket.IO connect answer.
/// `base` is the run's time origin (`Shared::base`).
pub async fn connect(
    target: &Target,
    path: &str,
    peer: Peer,
    base: std::time::Instant,
) -> Result<(Reader, Writer)> {
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
        .uri(path)
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
    // Take the TCP stream back from hyper: owned halves need no lock between reader and writer,
    // and reads skip hyper's indirection. Bytes hyper read past the response are read first.
    let parts = upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map_err(|_| anyhow!("upgraded connection is not a TCP stream"))?;
    let (read, write) = parts.io.into_inner().into_split();
    let arrived = Arc::new(AtomicU64::new(0));
    let source = Timed {
        inner: Cursor::new(parts.read_buf).chain(read),
        base,
        arrived: arrived.clone(),
    };
    let (rx, tx) = fastwebsockets::after_handshake_split(source, write, Role::Client);
    let mut reader = Reader {
        frames: rx,
        arrived,
        partial: None,
    };
    let writer: Writer = Arc::new(Mutex::new(tx));
    match peer {
        Peer::Confab | Peer::Ceiling => {
            let hello = reader.text(&writer, "hello").await?;
            if string_after(&hello, b"\"event\":\"") != Some(b"hello") {
                bail!(
                    "expected hello first, got {}",
                    String::from_utf8_lossy(&hello)
                );
            }
        }
        Peer::Socketio => {
            // Engine.IO open (`0{"sid":…}`), then connect to the main namespace (`40`) and
            // wait for its answer (`40{"sid":…}`), answering Engine.IO pings meanwhile.
            let open = reader.text(&writer, "the Engine.IO open packet").await?;
            if open.first() != Some(&b'0') {
                bail!(
                    "expected an Engine.IO open packet, got {}",
                    String::from_utf8_lossy(&open)
                );
            }
            send_text(&writer, b"40").await?;
            loop {
                let p = reader.text(&writer, "the Socket.IO connect answer").await?;
                match p.as_slice() {
                    [b'4', b'0', ..] => break,
                    b"2" => send_text(&writer, b"3").await?,
                    _ => bail!("expected 40, got {}", String::from_utf8_lossy(&p)),
                }
            }
        }
    }
    Ok((reader, writer))
}

/// Sends a close frame (1000), after Socket.IO's disconnect packet, and gives up after a second.
pub async fn close(writer: &Writer, peer: Peer) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut w = writer.lock().await;
        if peer == Peer::Socketio {
            w.write_frame(Frame::text(Payload::Borrowed(b"41"))).await?;
        }
        w.write_frame(Frame::close(1000, b"")).await?;
        w.flush().await
    })
    .await;
}

/// A sender's in-flight window: the permits, and the send time of each outstanding request so
/// that its ack can be timed (Socket.IO acks carry no content marker).
pub struct Window {
    pub permits: Semaphore,
    /// Slot `seq % len`: (seq, send ns). Sized well above the window, so a slot is reused only
    /// after its request was answered (barring acks far out of order, which then go untimed).
    times: parking_lot::Mutex<Vec<(u64, u64)>>,
}

impl Window {
    pub fn new(in_flight: usize) -> Self {
        Window {
            permits: Semaphore::new(in_flight),
            times: parking_lot::Mutex::new(vec![
                (u64::MAX, 0);
                (4 * in_flight).next_power_of_two()
            ]),
        }
    }

    fn sent(&self, seq: u64, ns: u64) {
        let mut t = self.times.lock();
        let len = t.len() as u64;
        t[(seq % len) as usize] = (seq, ns);
    }

    /// The send time of `seq`, once.
    fn answered(&self, seq: u64) -> Option<u64> {
        let mut t = self.times.lock();
        let len = t.len() as u64;
        let slot = &mut t[(seq % len) as usize];
        (slot.0 == seq).then(|| std::mem::replace(slot, (u64::MAX, 0)).1)
    }
}

/// What a reader task needs to know about its connection.
pub struct ReaderCtx {
    pub conn: usize,
    pub peer: Peer,
    /// Room index of this connection.
    pub room: usize,
    /// Number of rooms (sender k is in room k % rooms with local index k / rooms).
    pub rooms: usize,
    /// Senders in this room.
    pub senders_in_room: usize,
    pub shared: Arc<Shared>,
    /// In-flight window of this connection when it sends.
    pub in_flight: Option<Arc<Window>>,
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

/// What the read loop does after a text frame.
enum After {
    Continue,
    /// Answer an Engine.IO ping (`2`) with a pong (`3`).
    Pong,
    /// The server ended the session (Socket.IO disconnect or Engine.IO close packet).
    End(&'static str),
}

/// Per-connection parsing state of a reader task.
struct ReaderState {
    peer: Peer,
    room: usize,
    rooms: usize,
    conn: usize,
    shared: Arc<Shared>,
    in_flight: Option<Arc<Window>>,
    out: ReaderOut,
    last_id: u64,
    /// When the frame being handled arrived (ns since `Shared::base`).
    now: u64,
    lat: Vec<u64>,
    ack_lat: Vec<u64>,
}

/// Where a `receive_message` frame puts the message id when it has the usual layout (the
/// id then needs no search): Confab's and the ceiling's, and Socket.IO's.
const CONFAB_DELIVERY: &[u8] = br#"{"event":"receive_message","data":{"message":{"id":""#;
const SOCKETIO_DELIVERY: &[u8] = br#"42["receive_message",{"id":""#;

impl ReaderState {
    /// Handles one text frame.
    #[inline]
    fn text(&mut self, p: &[u8]) -> After {
        match self.peer {
            Peer::Confab | Peer::Ceiling => {
                self.confab(p);
                After::Continue
            }
            Peer::Socketio => self.socketio(p),
        }
    }

    /// Confab's frames: `{"event":"…","ref":"…","data":…}`.
    #[inline]
    fn confab(&mut self, p: &[u8]) {
        if let Some(rest) = p.strip_prefix(CONFAB_DELIVERY) {
            return self.delivery(p, Some(rest));
        }
        let shared = &*self.shared;
        match string_after(p, b"\"event\":\"") {
            Some(b"receive_message") => self.delivery(p, None),
            Some(b"ack") => match string_after(p, b"\"ref\":\"").and_then(parse_u64) {
                Some((seq, _)) => self.ack(seq, find(p, b"\"duplicate\":true").is_some()),
                None => Shared::bump(&shared.other_events, "ack (not ours)"),
            },
            Some(b"error") => {
                let code = string_after(p, b"\"code\":\"").unwrap_or(b"?");
                let ours = string_after(p, b"\"ref\":\"").and_then(parse_u64);
                self.error(code, ours.is_some());
            }
            Some(other) => Shared::bump(&shared.other_events, &String::from_utf8_lossy(other)),
            None => Shared::bump(&shared.other_events, "(frame without event)"),
        }
    }

    /// Socket.IO v5 packets in Engine.IO v4 message packets: `42[event,data]`,
    /// `43<ackid>[data]`, `41` (disconnect); and Engine.IO's `2` (ping) and `1` (close).
    #[inline]
    fn socketio(&mut self, p: &[u8]) -> After {
        if let Some(rest) = p.strip_prefix(SOCKETIO_DELIVERY) {
            self.delivery(p, Some(rest));
            return After::Continue;
        }
        if p.starts_with(br#"42["receive_message","#) {
            self.delivery(p, None);
            return After::Continue;
        }
        let mut other = None;
        match p {
            b"2" => return After::Pong,
            [b'4', b'3', rest @ ..] => match parse_u64(rest) {
                Some((seq, n)) => {
                    let body = &rest[n..];
                    match string_after(body, b"[{\"error\":\"") {
                        Some(code) => self.error(code, true),
                        None => self.ack(seq, false),
                    }
                }
                None => other = Some("ack without id (43)".into()),
            },
            [b'4', b'2', rest @ ..] => {
                let name = string_after(rest, b"[\"").unwrap_or(b"?");
                other = Some(String::from_utf8_lossy(name).into_owned());
            }
            [b'4', b'1', ..] => return After::End("socket.io disconnect packet (41)"),
            [b'1', ..] => return After::End("engine.io close packet (1)"),
            [b'4', b'4', ..] => other = Some("socket.io connect_error (44)".into()),
            _ => {
                let head = String::from_utf8_lossy(&p[..p.len().min(2)]);
                other = Some(format!("engine.io packet {head}"));
            }
        }
        if let Some(what) = other {
            Shared::bump(&self.shared.other_events, &what);
        }
        After::Continue
    }

    /// A `receive_message` frame `p`; `id_at`: the frame from the message id on, when the
    /// usual layout put it there (the content marker is then searched for after the id only);
    /// else both are searched for in the whole frame.
    #[inline]
    fn delivery(&mut self, p: &[u8], id_at: Option<&[u8]>) {
        let shared = &*self.shared;
        let now = self.now;
        if shared.in_window(now) {
            shared.window_deliveries.fetch_add(1, Ordering::Relaxed);
        }
        let (id, rest) = match id_at.and_then(|at| Some((at, parse_u64(at)?))) {
            Some((at, (id, n))) => (Some(id), &at[n..]),
            None => {
                let id = string_after(p, b"\"id\":\"").and_then(parse_u64);
                (id.map(|(id, _)| id), p)
            }
        };
        let Some(m) = parse_marker(rest) else {
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
        if let Some(id) = id {
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

    /// The ack of our request `seq`.
    fn ack(&mut self, seq: u64, duplicate: bool) {
        let shared = &*self.shared;
        let now = self.now;
        let Some(window) = &self.in_flight else {
            Shared::bump(&shared.other_events, "ack (not ours)");
            return;
        };
        if self.out.acked.set(seq) {
            shared.acked.fetch_add(1, Ordering::Relaxed);
            shared.room_acked[self.room].fetch_add(1, Ordering::Relaxed);
        }
        window.permits.add_permits(1);
        if duplicate {
            self.out.duplicate_acks += 1;
        }
        if let Some(sent) = window.answered(seq)
            && shared.in_window(sent)
        {
            self.ack_lat.push(now.saturating_sub(sent) / 1000);
            if self.ack_lat.len() == BATCH {
                shared.record_acks(&self.ack_lat);
                self.ack_lat.clear();
            }
        }
    }

    /// An error reply (`ours`: it answers one of our requests).
    fn error(&mut self, code: &[u8], ours: bool) {
        let shared = &*self.shared;
        Shared::bump(&shared.errors, &String::from_utf8_lossy(code));
        if let (Some(window), true) = (&self.in_flight, ours) {
            shared.error_replies.fetch_add(1, Ordering::Relaxed);
            window.permits.add_permits(1);
        }
    }
}

/// Reads frames until the run stops or the connection ends, parsing only what it needs.
pub async fn read_loop(ctx: ReaderCtx, mut reader: Reader, writer: Writer) -> ReaderOut {
    let ReaderCtx {
        conn,
        peer,
        room,
        rooms,
        senders_in_room,
        shared,
        in_flight,
        mut stop,
    } = ctx;
    let mut st = ReaderState {
        peer,
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
        now: 0,
        lat: Vec::with_capacity(BATCH),
        ack_lat: Vec::with_capacity(BATCH),
    };
    let work = async {
        loop {
            let (opcode, payload) = match reader.frame(&writer).await {
                Ok(f) => f,
                Err(e) => {
                    Shared::bump(&st.shared.disconnects, &format!("read error: {e}"));
                    st.out.ended_early = true;
                    return;
                }
            };
            st.now = reader.arrived.load(Ordering::Relaxed);
            match opcode {
                OpCode::Text => match st.text(&payload) {
                    After::Continue => {}
                    After::Pong => {
                        let _ = send_text(&writer, b"3").await;
                    }
                    After::End(why) => {
                        Shared::bump(&st.shared.disconnects, why);
                        st.out.ended_early = true;
                        return;
                    }
                },
                OpCode::Close => {
                    let code = payload
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
    pub peer: Peer,
    /// Global connection index (also the sender id in the content marker).
    pub k: usize,
    pub room_id: String,
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
    in_flight: Arc<Window>,
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
        match tokio::time::timeout_at(cfg.end_at, in_flight.permits.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => break,
        }
        if Instant::now() >= cfg.end_at {
            in_flight.permits.add_permits(1);
            break;
        }
        let now_ns = shared.now_ns();
        build_send(&mut buf, &cfg, seq, now_ns);
        // Before the write: the ack may be read before the write returns.
        in_flight.sent(seq, now_ns);
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

/// Writes one `send_message` request into `buf`; content is `lg|k|seq|ns|` padded with `x`.
/// Confab and the ceiling: `{"event":"send_message","ref":"<seq>","data":{…}}`; Socket.IO:
/// `42<seq>["send_message",{…}]` (an event with ack id `seq`).
fn build_send(buf: &mut Vec<u8>, cfg: &SenderCfg, seq: u64, now_ns: u64) {
    buf.clear();
    let (room, k) = (&cfg.room_id, cfg.k);
    let _ = match cfg.peer {
        Peer::Confab | Peer::Ceiling => write!(
            buf,
            r#"{{"event":"send_message","ref":"{seq}","data":{{"room_id":"{room}","client_msg_id":""#
        ),
        Peer::Socketio => write!(
            buf,
            r#"42{seq}["send_message",{{"room_id":"{room}","client_msg_id":""#
        ),
    };
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    write_uuid_v7(buf, unix_ms, rand::random());
    buf.extend_from_slice(br#"","type":"text","content":""#);
    let start = buf.len();
    let _ = write!(buf, "lg|{k}|{seq}|{now_ns}|");
    let pad = cfg.size.saturating_sub(buf.len() - start);
    buf.resize(buf.len() + pad, b'x');
    buf.extend_from_slice(match cfg.peer {
        Peer::Confab | Peer::Ceiling => b"\"}}",
        Peer::Socketio => b"\"}]",
    });
}

/// A UUIDv7 (RFC 9562: 48 bits of Unix milliseconds, version, variant, random bits), as the
/// SDK makes its `client_msg_id`s: unique across runs, and time-ordered like a real client's.
fn write_uuid_v7(buf: &mut Vec<u8>, unix_ms: u64, random: u128) {
    let ms = unix_ms & 0xffff_ffff_ffff;
    let _ = write!(
        buf,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        0x7000 | (random as u16 & 0x0fff),
        0x8000 | ((random >> 16) as u16 & 0x3fff),
        (random >> 32) as u64 & 0xffff_ffff_ffff,
    );
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

    fn cfg(peer: Peer) -> SenderCfg {
        SenderCfg {
            peer,
            k: 4,
            room_id: "77".into(),
            size: 40,
            period: None,
            first_at: Instant::now(),
            end_at: Instant::now(),
        }
    }

    fn assert_uuid_v7(id: &str) {
        let b = id.as_bytes();
        assert_eq!(b.len(), 36, "{id}");
        assert!([8, 13, 18, 23].iter().all(|&i| b[i] == b'-'), "{id}");
        assert_eq!(b[14], b'7', "version 7: {id}");
        assert!(b"89ab".contains(&b[19]), "RFC 9562 variant: {id}");
    }

    #[test]
    fn uuid_v7_is_time_ordered_and_carries_the_milliseconds() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_uuid_v7(&mut a, 1_764_288_000_000, u128::MAX);
        write_uuid_v7(&mut b, 1_764_288_000_001, 0);
        let (a, b) = (
            String::from_utf8(a).expect("utf8"),
            String::from_utf8(b).expect("utf8"),
        );
        assert_uuid_v7(&a);
        assert_uuid_v7(&b);
        assert!(a < b, "a later millisecond sorts later: {a} {b}");
        // 2025-11-28T00:00:00Z in milliseconds, 0x19ac7c27000, in the first 48 bits.
        assert_eq!(&a[..13], "019ac7c2-7000", "{a}");
    }

    #[test]
    fn send_frame_shape() {
        let cfg = cfg(Peer::Confab);
        let mut buf = Vec::new();
        build_send(&mut buf, &cfg, 9, 123);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        let content = v["data"]["content"].as_str().expect("content");
        assert_eq!(content.len(), 40);
        assert!(content.starts_with("lg|4|9|123|x"));
        assert_eq!(v["ref"], "9");
        assert_uuid_v7(v["data"]["client_msg_id"].as_str().expect("client_msg_id"));
        let m = parse_marker(&buf).expect("marker");
        assert_eq!((m.sender, m.seq, m.sent_ns), (4, 9, 123));
    }

    #[test]
    fn socketio_send_frame_shape() {
        let mut buf = Vec::new();
        build_send(&mut buf, &cfg(Peer::Socketio), 9, 123);
        let (head, json) = buf.split_at(3);
        assert_eq!(head, b"429");
        let v: serde_json::Value = serde_json::from_slice(json).expect("valid JSON");
        assert_eq!(v[0], "send_message");
        assert_eq!(v[1]["room_id"], "77");
        assert_uuid_v7(v[1]["client_msg_id"].as_str().expect("client_msg_id"));
        assert_eq!(v[1]["content"].as_str().map(str::len), Some(40));
    }

    /// A reader of room 0 (of 2) whose connection is sender 0, fed frames of each dialect.
    fn reader(peer: Peer) -> ReaderState {
        ReaderState {
            peer,
            room: 0,
            rooms: 2,
            conn: 0,
            shared: Arc::new(Shared::new(2)),
            in_flight: Some(Arc::new(Window::new(4))),
            out: ReaderOut {
                seen: vec![Bits::default(); 1],
                ..ReaderOut::default()
            },
            last_id: 0,
            now: 0,
            lat: Vec::new(),
            ack_lat: Vec::new(),
        }
    }

    #[test]
    fn reads_socketio_packets() {
        let mut st = reader(Peer::Socketio);
        let w = st.in_flight.clone().expect("window");
        w.sent(0, 5);
        assert!(matches!(st.text(b"2"), After::Pong));
        assert!(matches!(st.text(br#"430[{"id":"12"}]"#), After::Continue));
        assert_eq!(st.out.acked.count(), 1);
        assert_eq!(w.answered(0), None, "the send time is used once");
        st.text(br#"431[{"error":"not_found"}]"#);
        assert_eq!(st.shared.errors.lock().get("not_found"), Some(&1));
        for (id, seq) in [(12, 0), (13, 1), (13, 1), (11, 2)] {
            let f = format!(
                r#"42["receive_message",{{"id":"{id}","room_id":"r0","sender_id":"u0","content":"lg|0|{seq}|7|xx","created_at":1}}]"#
            );
            st.text(f.as_bytes());
        }
        assert_eq!(st.out.deliveries, 3);
        assert_eq!(st.out.duplicates, 1);
        assert_eq!(st.out.reorders, 2, "13 after 13, 11 after 13");
        // Another field order: the id and the marker are searched for.
        st.text(br#"42["receive_message",{"room_id":"r0","content":"lg|0|3|7|x","id":"14"}]"#);
        assert_eq!((st.out.deliveries, st.out.reorders), (4, 2));
        st.text(br#"42["typing",{}]"#);
        assert_eq!(st.shared.other_events.lock().get("typing"), Some(&1));
        assert!(matches!(st.text(b"41"), After::End(_)));
    }

    #[test]
    fn reads_confab_frames() {
        let mut st = reader(Peer::Ceiling);
        st.text(br#"{"event":"ack","ref":"0","data":{"message":{"id":"5","content":"lg|0|0|7|x"},"duplicate":false}}"#);
        st.text(br#"{"event":"receive_message","data":{"message":{"id":"5","room_id":"r0","sender_id":"u0","content":"lg|0|0|7|x"}}}"#);
        st.text(br#"{"event":"error","ref":"1","data":{"code":"not_found","message":"room not found"}}"#);
        assert_eq!(st.out.acked.count(), 1);
        assert_eq!(st.out.deliveries, 1);
        assert_eq!(st.shared.error_replies.load(Ordering::Relaxed), 1);
    }
}
