//! Heartbeat and idle timeout: a client that never answers pings is closed with 4002; one that answers stays.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{Options, Server, Stop, TIMEOUT};

const HEARTBEAT: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);

/// One frame from the server (unmasked): opcode and payload.
#[derive(Debug)]
struct RawFrame {
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client made by hand on a bare TCP socket: after the upgrade it writes only the
/// frames a test sends with `send`, so unless told to it answers no ping.
struct Mute {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Mute {
    async fn connect(server: &Server, token: &str) -> Mute {
        let mut tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", server.port)))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.port
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("send the upgrade");
        let mut buf = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
                .await
                .expect("no upgrade answer in time")
                .expect("read the upgrade answer");
            assert!(n > 0, "the server closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "the upgrade is accepted: {head}"
        );
        buf.drain(..head_end);
        Mute { tcp, buf }
    }

    /// Sends one final, masked client frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126, "short frames only");
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.expect("send a frame");
    }

    /// Reads one frame, or None at EOF (or a reset).
    async fn frame(&mut self, deadline: Instant) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .expect("nothing from the server in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`: (frame, bytes used).
fn parse(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    Some((
        RawFrame {
            opcode,
            payload: buf[head..head + len].to_vec(),
        },
        head + len,
    ))
}

/// Issue 3: with `heartbeat_interval_secs = 1` and `idle_timeout_secs = 2`, a client that never
/// answers the server's pings is closed with 4002 within a few seconds, while a client that
/// answers them (tungstenite pongs as it reads) stays connected past the idle timeout.
#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_SERVER__HEARTBEAT_INTERVAL_SECS", "1"),
        ("CONFAB_SERVER__IDLE_TIMEOUT_SECS", "2"),
    ]));
    let token = server.token("alice", Some("Alice"));

    let mute = async {
        let mut mute = Mute::connect(&server, &token).await;
        let started = Instant::now();
        let deadline = started + TIMEOUT;
        let mut pings = 0;
        let close = loop {
            match mute.frame(deadline).await {
                None => panic!("the connection ended without a close frame ({pings} pings)"),
                Some(f) if f.opcode == 0x9 => pings += 1,
                Some(f) if f.opcode == 0x8 => break f,
                Some(_) => {}
            }
        };
        let after = started.elapsed();
        assert!(close.payload.len() >= 2, "the close frame carries a code");
        let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
        assert_eq!(code, 4002, "heartbeat timeout closes with 4002");
        assert!(pings >= 1, "the server pinged before giving up");
        assert!(
            after >= IDLE - Duration::from_millis(200),
            "closed after {after:?}, before the {IDLE:?} idle timeout"
        );
        assert!(
            after <= IDLE + HEARTBEAT * 3,
            "closed after {after:?}: not within a few seconds of the {IDLE:?} idle timeout"
        );
        // Then the socket goes away.
        let eof = mute.frame(Instant::now() + TIMEOUT).await;
        assert!(
            eof.is_none(),
            "after the close frame the server drops the socket: {eof:?}"
        );
    };

    let talker = async {
        let mut alice = server.connect("alice").await;
        match alice
            .try_next_event(
                "no-such-event",
                IDLE + HEARTBEAT + Duration::from_millis(500),
            )
            .await
        {
            Err(Stop::Timeout) => {}
            other => panic!("a client that answers pings must stay connected: {other:?}"),
        }
        alice.ping().await;
    };
    tokio::join!(mute, talker);
}

/// The reader's requests reach the writer: a client's ping is answered with a pong carrying its
/// payload (RFC 6455 §5.5.3), and its close with a close of the same code, then the socket ends.
#[tokio::test]
async fn a_client_ping_gets_its_pong_and_a_client_close_gets_a_close() {
    let server = Server::start();
    let token = server.token("alice", Some("Alice"));
    let mut client = Mute::connect(&server, &token).await;
    let deadline = Instant::now() + TIMEOUT;

    client.send(0x9, b"are-you-there-42").await;
    let pong = loop {
        match client.frame(deadline).await {
            None => panic!("the connection ended before the pong"),
            Some(f) if f.opcode == 0xA => break f,
            Some(f) => assert_eq!(
                f.opcode, 0x1,
                "only text frames come before the pong: {f:?}"
            ),
        }
    };
    assert_eq!(
        pong.payload, b"are-you-there-42",
        "the pong echoes the ping's payload"
    );

    client.send(0x8, &1000u16.to_be_bytes()).await;
    let close = loop {
        match client.frame(deadline).await {
            None => panic!("the connection ended without a close frame"),
            Some(f) if f.opcode == 0x8 => break f,
            Some(_) => {}
        }
    };
    assert!(close.payload.len() >= 2, "the close frame carries a code");
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1000,
        "a normal close is answered with a normal close"
    );
    let eof = client.frame(Instant::now() + TIMEOUT).await;
    assert!(
        eof.is_none(),
        "after the close the server drops the socket: {eof:?}"
    );
}
