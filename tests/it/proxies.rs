//! Behind a reverse proxy: a trusted proxy's `Forwarded` / `X-Forwarded-For` names the client
//! for the per-address limits and the logs; the same headers from anyone else are ignored.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{Options, RawReply, Server, TIMEOUT, read_http_response};

/// Sends `request` from the source address `src` (any 127.0.0.0/8 address works on Linux)
/// and reads the answer.
pub async fn raw_from(src: IpAddr, port: u16, request: &str) -> RawReply {
    let exchange = async {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(src, 0)).expect("bind the source");
        let mut s = sock
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        read_http_response(&mut s, false).await
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("answer timed out")
        .unwrap_or_else(|e| panic!("from {src}: {e}"))
}

/// A WebSocket upgrade for `/ws{query}` with extra header lines (each ending in CRLF). Without
/// a token it passes the per-address bucket (or not: 429) and then gets 401.
pub fn upgrade(query: &str, extra: &str) -> String {
    format!(
        "GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Waits (bounded) until the server's output mentions `needle`.
async fn output_mentions(server: &Server, needle: &str) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        if server.output().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Guards issue 24, point 9: with 127.0.0.1 as the trusted proxy, each forwarded client has
/// its own connect bucket (burst 2 here), named by `X-Forwarded-For` or `Forwarded`, and is
/// the address in the logs; from 127.0.0.2, not trusted, the same headers change nothing.
#[tokio::test]
async fn forwarded_client_addresses_count_only_from_trusted_proxies() {
    let server = Server::start_with(
        Options::config("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").with_env(&[
            ("CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP", "1"),
            ("CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP", "2"),
        ]),
    );
    let proxy = ip("127.0.0.1");
    let stranger = ip("127.0.0.2");
    // Ten clients behind the proxy: none shares a bucket with another.
    for i in 1..=10 {
        let r = raw_from(
            proxy,
            server.port,
            &upgrade("", &format!("X-Forwarded-For: 6.6.6.6, 203.0.113.{i}\r\n")),
        )
        .await;
        r.assert_error(401, "unauthorized", "a forwarded client's first upgrade");
    }
    for i in 1..=5 {
        let r = raw_from(
            proxy,
            server.port,
            &upgrade(
                "",
                &format!("Forwarded: for=\"198.51.100.{i}:5000\";proto=https\r\n"),
            ),
        )
        .await;
        r.assert_error(401, "unauthorized", "a `Forwarded` client's first upgrade");
    }
    // One forwarded client still has its own limit.
    let one = upgrade("", "X-Forwarded-For: 203.0.113.50\r\n");
    for _ in 0..2 {
        raw_from(proxy, server.port, &one).await.assert_error(
            401,
            "unauthorized",
            "within the burst",
        );
    }
    raw_from(proxy, server.port, &one).await.assert_error(
        429,
        "rate_limited",
        "the same forwarded client over its burst",
    );
    // An untrusted peer's headers are ignored: its own address runs out after the burst.
    let mut statuses = Vec::new();
    for i in 1..=4 {
        let r = raw_from(
            stranger,
            server.port,
            &upgrade("", &format!("X-Forwarded-For: 192.0.2.{i}\r\n")),
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [401, 401, 429, 429], "spoofed headers ignored");

    // Logs name the forwarded client, never a spoofed one.
    raw_from(
        proxy,
        server.port,
        &upgrade("?token=not-a-token", "X-Forwarded-For: 203.0.113.77\r\n"),
    )
    .await
    .assert_error(401, "unauthorized", "a bad token");
    assert!(
        output_mentions(&server, "203.0.113.77").await,
        "the log names the forwarded client:\n{}",
        server.output()
    );
    let spoofed = raw_from(
        ip("127.0.0.3"),
        server.port,
        &upgrade("?token=not-a-token", "X-Forwarded-For: 192.0.2.99\r\n"),
    )
    .await;
    spoofed.assert_error(401, "unauthorized", "a bad token from an untrusted peer");
    assert!(output_mentions(&server, "127.0.0.3").await);
    assert!(
        !server.output().contains("192.0.2.99"),
        "a spoofed address reached the log:\n{}",
        server.output()
    );
}
