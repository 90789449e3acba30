//! confab-ceiling: a bare WebSocket broadcast server, the ceiling Confab is measured against.
//!
//! The same stack and shape as Confab's hot path (hyper upgrade, a fastwebsockets reader, one
//! writer task per connection draining a bounded outbox of shared `Bytes`, one write per batch)
//! with no storage, no auth and no limits but the outbox bound. It speaks the subset of Confab's
//! protocol that confab-loadgen uses (`hello`, `send_message` → `ack` + `receive_message`,
//! errors), with frames shaped like Confab's so sizes compare. See benches/README.md.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{OpCode, Role, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Bytes queued for one connection before it is closed as a slow consumer (Confab's default).
const OUTBOX_LIMIT: usize = 1 << 20;
/// Largest frame a client may send (Confab's `limits.max_frame_bytes` is of this order).
const MAX_FRAME: usize = 64 * 1024;
/// A write buffer larger than this is freed after its batch, so idle connections stay small.
const KEEP_CAPACITY: usize = 256;
/// Confab's id clock: ms since 2025-01-01 in the top 42 bits, so ids have the same width.
const ID_EPOCH_MS: u64 = 1_735_689_600_000;
const SLOW_CONSUMER: u16 = 4003;

/// Bare WebSocket broadcast server (no storage, no auth): the ceiling for confab-loadgen.
#[derive(Parser)]
#[command(name = "confab-ceiling")]
struct Args {
    /// Address to listen on (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Make every message durable before its ack and broadcast: append it to this file with
    /// `O_DIRECT | O_DSYNC` (4 KiB blocks, one write per group of messages queued meanwhile),
    /// then push. The least any server that delivers only durable messages must do.
    #[arg(long)]
    durable_log: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Like Confab: as many sockets as the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("confab-ceiling: could not raise the open-file limit: {e}");
    }
    // The runtime Confab builds (src/main.rs): multi-threaded, one worker per available core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let log = match &args.durable_log {
        Some(path) => Some(DurableLog::open(path)?),
        None => None,
    };
    rt.block_on(serve(args.listen, log))
}

async fn serve(addr: SocketAddr, log: Option<DurableLog>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let hub = Arc::new(Hub {
        log,
        ..Hub::default()
    });
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, std::convert::Infallible>(route(hub, req)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            let _ = conn.with_upgrades().await;
        });
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `GET /ws?user=<u>&room=<r>` upgrades; anything else is 404. Query values are taken as they
/// are (the generator sends plain ASCII).
fn route(hub: Arc<Hub>, mut req: Request<Incoming>) -> Response<Empty<Bytes>> {
    let status = |s| {
        Response::builder()
            .status(s)
            .body(Empty::new())
            .unwrap_or_default()
    };
    if req.uri().path() != "/ws" || !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return status(StatusCode::NOT_FOUND);
    }
    let (mut user, mut room) = (String::new(), String::new());
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("user", v)) => user = format!("u{v}"),
            Some(("room", v)) => room = v.to_owned(),
            _ => {}
        }
    }
    if user.is_empty() || room.is_empty() {
        return status(StatusCode::BAD_REQUEST);
    }
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((resp, fut)) => {
            tokio::spawn(async move {
                if let Ok(ws) = fut.await {
                    session(&hub, ws.into_inner(), user, room).await;
                }
            });
            resp
        }
        Err(_) => status(StatusCode::BAD_REQUEST),
    }
}

/// Frames waiting for one connection's writer, bounded in bytes; frames are shared `Bytes`.
#[derive(Default)]
struct Outbox {
    queue: Mutex<Queue>,
    /// One wake-up per batch: pushed to when the queue goes from empty to not empty.
    ready: Notify,
    /// Wakes a writer blocked on a socket write when the connection must go (slow consumer).
    kill: Notify,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    pong: Option<Bytes>,
    close: Option<u16>,
}

impl Outbox {
    fn push(&self, frame: Bytes) {
        let mut q = self.queue.lock();
        if q.close.is_some() {
            return;
        }
        if q.bytes + frame.len() > OUTBOX_LIMIT {
            // A reader that stops reading is closed, never slowing its room (Confab: 4003).
            q.frames = VecDeque::new();
            q.bytes = 0;
            q.close = Some(SLOW_CONSUMER);
            drop(q);
            self.ready.notify_one();
            self.kill.notify_one();
            return;
        }
        q.bytes += frame.len();
        let was_empty = q.frames.is_empty();
        q.frames.push_back(frame);
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
    }

    fn control(&self, pong: Option<Bytes>, close: Option<u16>) {
        let mut q = self.queue.lock();
        q.pong = pong.or(q.pong.take());
        q.close = q.close.or(close);
        drop(q);
        self.ready.notify_one();
    }
}

/// Appends one unmasked server frame (FIN set) to `buf`.
fn put_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    buf.push(0x80 | opcode as u8);
    match payload.len() {
        n if n < 126 => buf.push(n as u8),
        n if n <= 0xffff => {
            buf.push(126);
            buf.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            buf.push(127);
            buf.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    buf.extend_from_slice(payload);
}

/// Drains everything queued, writes it with one `write_all` (a syscall per batch, not per
/// frame), and waits for more. Ends after writing a close.
async fn write_loop(mut sock: OwnedWriteHalf, ob: Arc<Outbox>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let close = {
            let mut q = ob.queue.lock();
            if let Some(p) = q.pong.take() {
                put_frame(&mut buf, OpCode::Pong, &p);
            }
            for f in q.frames.drain(..) {
                put_frame(&mut buf, OpCode::Text, &f);
            }
            q.bytes = 0;
            q.close
        };
        if let Some(code) = close {
            put_frame(&mut buf, OpCode::Close, &code.to_be_bytes());
        }
        if !buf.is_empty() {
            // Biased: a write that can go through goes, even with a kill pending.
            let ok = tokio::select! {
                biased;
                r = sock.write_all(&buf) => r.is_ok(),
                () = ob.kill.notified() => false,
            };
            if !ok || close.is_some() {
                return;
            }
            buf.clear();
            if buf.capacity() > KEEP_CAPACITY {
                buf = Vec::new();
            }
        }
        ob.ready.notified().await;
    }
}

/// One connection: join the room (after `hello`), read and answer frames, leave.
async fn session(hub: &Hub, io: TokioIo<hyper::upgrade::Upgraded>, user: String, room: String) {
    // Take the TCP stream back from hyper: owned halves need no lock between reader and writer.
    let Ok(parts) = io.into_inner().downcast::<TokioIo<TcpStream>>() else {
        return;
    };
    let (read, write) = parts.io.into_inner().into_split();
    let early = std::io::Cursor::new(Bytes::copy_from_slice(&parts.read_buf));
    let (mut rx, _) =
        fastwebsockets::after_handshake_split(early.chain(read), tokio::io::sink(), Role::Server);
    // Pongs and the close reply go through our writer, which owns the write half.
    rx.set_auto_close(false);
    rx.set_auto_pong(false);
    rx.set_max_message_size(MAX_FRAME);
    let ob = Arc::new(Outbox::default());
    let conn = hub.join(&room, user, ob.clone());
    let mut writer = tokio::spawn(write_loop(write, ob.clone()));
    let mut nothing_owed = |_| async { Ok::<(), std::io::Error>(()) };
    let reader = async {
        loop {
            let frame = match rx.read_frame(&mut nothing_owed).await {
                Ok(f) => f,
                Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => break,
                Err(WebSocketError::FrameTooLarge) => break ob.control(None, Some(1009)),
                Err(_) => break ob.control(None, Some(1002)),
            };
            match frame.opcode {
                OpCode::Text if frame.fin => hub.handle(&conn, &frame.payload),
                // Fragmented and binary messages: not part of the protocol subset.
                OpCode::Text | OpCode::Continuation | OpCode::Binary => {
                    break ob.control(None, Some(1003));
                }
                OpCode::Ping => ob.control(Some(Bytes::copy_from_slice(&frame.payload)), None),
                OpCode::Pong => {}
                OpCode::Close => break ob.control(None, Some(1000)),
            }
        }
    };
    tokio::pin!(reader);
    tokio::select! {
        () = &mut reader => {
            // Let the writer send what is queued and the close, then drop the socket.
            ob.control(None, Some(1000));
            if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
                writer.abort();
            }
        }
        // The writer sent a close (slow consumer): give the peer a moment to answer it.
        _ = &mut writer => {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut reader).await;
        }
    }
    hub.leave(&conn);
}

/// A connection as the hub knows it.
struct Conn {
    id: u64,
    user: String,
    room: Arc<Mutex<Room>>,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct Room {
    conns: Vec<(u64, Arc<Outbox>)>,
}

#[derive(Default)]
struct Hub {
    rooms: RwLock<HashMap<String, Arc<Mutex<Room>>>>,
    last_id: AtomicU64,
    next_conn: AtomicU64,
    log: Option<DurableLog>,
}

/// Bytes of log before writing starts over at offset 0 (the file is written full of zeros
/// first, so every later write overwrites allocated blocks and changes no metadata).
const LOG_CAPACITY: u64 = 16 << 20;
const LOG_BLOCK: usize = 4096;

/// A message waiting for its log write: then its ack and broadcast go out.
struct Durable {
    record: Bytes,
    sender: Arc<Outbox>,
    ack: Bytes,
    room: Arc<Mutex<Room>>,
}

/// The durable ceiling's log: one thread appends every message queued since its last write
/// in one `O_DIRECT | O_DSYNC` write (a group commit), then pushes their acks and broadcasts
/// in queue order, which is id order within a room.
struct DurableLog {
    queue: std::sync::mpsc::Sender<Durable>,
}

impl DurableLog {
    fn open(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut zeros =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        zeros.write_all(&vec![0; LOG_CAPACITY as usize])?;
        zeros.sync_all()?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        let (queue, rx) = std::sync::mpsc::channel::<Durable>();
        std::thread::Builder::new()
            .name("ceiling-log".into())
            .spawn(move || log_thread(&file, &rx))?;
        Ok(Self { queue })
    }
}

fn log_thread(file: &std::fs::File, rx: &std::sync::mpsc::Receiver<Durable>) {
    use std::os::unix::fs::FileExt;
    let mut pos = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        group.extend(rx.try_iter());
        let len: usize = group.iter().map(|d| 4 + d.record.len()).sum();
        let padded = len.next_multiple_of(LOG_BLOCK);
        if buf.len() < padded + LOG_BLOCK {
            buf = vec![0; padded + LOG_BLOCK];
        }
        let start = buf.as_ptr().align_offset(LOG_BLOCK);
        let block = &mut buf[start..start + padded];
        let mut at = 0;
        for d in &group {
            block[at..at + 4].copy_from_slice(&(d.record.len() as u32).to_le_bytes());
            block[at + 4..at + 4 + d.record.len()].copy_from_slice(&d.record);
            at += 4 + d.record.len();
        }
        block[at..].fill(0);
        if pos + padded as u64 > LOG_CAPACITY {
            pos = 0;
        }
        if let Err(e) = file.write_all_at(block, pos) {
            eprintln!("confab-ceiling: log write failed: {e}");
            std::process::exit(1);
        }
        pos += padded as u64;
        for d in group.drain(..) {
            d.sender.push(d.ack);
            for (_, ob) in &d.room.lock().conns {
                ob.push(d.record.clone());
            }
        }
    }
}

/// A message id, on the wire as a decimal string like Confab's.
struct StrId(u64);

impl Serialize for StrId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Confab's message record, field for field, so frames are the same size.
#[derive(Serialize)]
struct Message<'a> {
    id: StrId,
    room_id: &'a str,
    sender_id: &'a str,
    client_msg_id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    content: &'a str,
    status: &'static str,
    created_at: u64,
    edited_at: Option<u64>,
    deleted_at: Option<u64>,
}

/// `{"message":…}` (the broadcast), or `{"message":…,"duplicate":false}` (the ack).
#[derive(Serialize)]
struct WithMessage<'a> {
    message: &'a Message<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}

#[derive(Deserialize)]
struct ClientFrame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow, rename = "ref")]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SendMessage<'a> {
    #[serde(borrow)]
    room_id: Cow<'a, str>,
    #[serde(borrow)]
    client_msg_id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// Encodes `{"event":…,"ref":…,"data":…}` once, as Confab's `protocol::encode` does.
fn encode<T: Serialize>(event: &str, reference: Option<&str>, data: T) -> Bytes {
    #[derive(Serialize)]
    struct Frame<'a, T> {
        event: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        data: T,
    }
    let f = Frame {
        event,
        reference,
        data,
    };
    Bytes::from(serde_json::to_vec(&f).unwrap_or_default())
}

fn error(reference: Option<&str>, code: &str, message: &str) -> Bytes {
    let data = serde_json::json!({ "code": code, "message": message });
    encode("error", reference, data)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    /// Queues `hello`, then adds the connection to its room: `hello` is always first.
    fn join(&self, room_name: &str, user: String, outbox: Arc<Outbox>) -> Conn {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let existing = self.rooms.read().get(room_name).cloned();
        let room = existing.unwrap_or_else(|| {
            let mut rooms = self.rooms.write();
            rooms.entry(room_name.to_owned()).or_default().clone()
        });
        let hello = serde_json::json!({
            "user": { "id": &user, "name": &user },
            "connection_id": format!("c{id}"),
            "server_time": now_ms(),
        });
        outbox.push(encode("hello", None, hello));
        room.lock().conns.push((id, outbox.clone()));
        Conn {
            id,
            user,
            room,
            outbox,
        }
    }

    fn leave(&self, conn: &Conn) {
        let mut room = conn.room.lock();
        if let Some(i) = room.conns.iter().position(|(id, _)| *id == conn.id) {
            room.conns.swap_remove(i);
        }
    }

    /// Answers one text frame.
    fn handle(&self, conn: &Conn, text: &[u8]) {
        let f: ClientFrame<'_> = match serde_json::from_slice(text) {
            Ok(f) => f,
            Err(e) => {
                return conn
                    .outbox
                    .push(error(None, "invalid_json", &e.to_string()));
            }
        };
        let reference = f.reference.as_deref();
        let data = f.data.map_or("{}", RawValue::get);
        match f.event.as_ref() {
            "send_message" => match serde_json::from_str::<SendMessage<'_>>(data) {
                Ok(m) => self.send(conn, reference, &m),
                Err(e) => conn
                    .outbox
                    .push(error(reference, "invalid_payload", &e.to_string())),
            },
            other => conn.outbox.push(error(
                reference,
                "unknown_event",
                &format!("unknown event {other:?}"),
            )),
        }
    }

    /// Acks to the sender, then broadcasts to the room (the sender included). The id is taken
    /// and every push made under the room's lock, so each connection sees the room in id order.
    fn send(&self, conn: &Conn, reference: Option<&str>, m: &SendMessage<'_>) {
        let room = self.rooms.read().get(m.room_id.as_ref()).cloned();
        let Some(room_arc) = room else {
            return conn
                .outbox
                .push(error(reference, "not_found", "room not found"));
        };
        let room = room_arc.lock();
        let created_at = now_ms();
        // Time-ordered like Confab's ids: ms in the top bits, then a sequence.
        let floor = created_at.saturating_sub(ID_EPOCH_MS) << 22;
        let next = |last: u64| last.max(floor) + 1;
        let (Ok(last) | Err(last)) =
            self.last_id
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(next(l)));
        let id = next(last);
        let message = Message {
            id: StrId(id),
            room_id: &m.room_id,
            sender_id: &conn.user,
            client_msg_id: &m.client_msg_id,
            kind: &m.kind,
            content: &m.content,
            status: "sent",
            created_at,
            edited_at: None,
            deleted_at: None,
        };
        let (message, duplicate) = (&message, Some(false));
        let ack = encode("ack", reference, WithMessage { message, duplicate });
        // Serialized once; every recipient's outbox holds a reference to the same buffer.
        let duplicate = None;
        let frame = encode("receive_message", None, WithMessage { message, duplicate });
        if let Some(log) = &self.log {
            // Queued under the room's lock, so the log thread sees the room in id order.
            let durable = Durable {
                record: frame,
                sender: conn.outbox.clone(),
                ack,
                room: room_arc.clone(),
            };
            if log.queue.send(durable).is_err() {
                conn.outbox
                    .push(error(reference, "internal", "the log thread is gone"));
            }
            return;
        }
        conn.outbox.push(ack);
        for (_, ob) in &room.conns {
            ob.push(frame.clone());
        }
    }
}
