//! Machine resources: memory stays within the page cache after a start and a long history
//! read, rate-limiter maps shrink back after a churn of client addresses and
//! users, and a low open-file limit lowers the connection cap (said at start) so that the
//! connections over it get 503 instead of hanging.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::proxies::{raw_from, upgrade};
use crate::support::{Options, Server, TIMEOUT, read_http_response};

/// The value of `confab_limiter_keys{limiter="<name>"}`.
async fn limiter_keys(server: &Server, name: &str) -> u64 {
    let r = server.get("/metrics", None).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text);
    let prefix = format!("confab_limiter_keys{{limiter=\"{name}\"}} ");
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no {prefix}:\n{}", r.text))
}

/// Waits (bounded) until the limiter `name` remembers no key.
async fn drains(server: &Server, name: &str) -> u64 {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = limiter_keys(server, name).await;
        if n == 0 || tokio::time::Instant::now() >= until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Guards issue 24, points 8 and 10(d): 2,000 distinct client addresses fill the per-address
/// connect buckets, and the map empties again once their buckets are full
/// (`rate_limits.forget_idle_secs` = 1 here); the per-user upload buckets too.
#[tokio::test]
async fn limiter_maps_shrink_back_after_churn_from_many_addresses() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__FORGET_IDLE_SECS", "1"),
        ("CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP", "1"),
        ("CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP", "5"),
        ("CONFAB_RATE_LIMITS__UPLOADS_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__UPLOADS_BURST", "5"),
    ]));
    let port = server.port;
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000u32 {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let src = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
            raw_from(src, port, &upgrade("", "")).await.status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(
            status.expect("task"),
            401,
            "every address is within its burst"
        );
    }
    let seen = limiter_keys(&server, "connects_per_ip").await;
    assert!(seen >= 1, "the last addresses are still remembered");
    // Uploads by a few users fill their buckets.
    for u in 0..4 {
        let token = server.token(&format!("uploader-{u}"), None);
        server.upload_ok(&token, "a.txt", b"hello").await;
    }
    assert!(limiter_keys(&server, "user_uploads").await >= 1);
    assert_eq!(
        drains(&server, "connects_per_ip").await,
        0,
        "per-address buckets forgotten after the idle period"
    );
    assert_eq!(
        drains(&server, "user_uploads").await,
        0,
        "per-user upload buckets forgotten after the idle period"
    );
}

/// Opens a raw upgrade (no token) from 127.0.0.1 and returns the answer's status, or None if
/// no answer came within `wait` (the socket hung).
async fn status_within(port: u16, wait: Duration) -> Option<u16> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        read_http_response(&mut s, false)
            .await
            .ok()
            .map(|r| r.status)
    };
    tokio::time::timeout(wait, exchange).await.ok().flatten()
}

/// Guards issue 24, point 10(c): started under `prlimit --nofile=300`, the server says at
/// start that it lowered its WebSocket cap below `server.max_connections`; WebSockets over
/// that cap get 503; idle sockets held up to the file limit make new ones get an immediate
/// 503 rather than hang; and `accept failed` is logged at most about once a second.
#[tokio::test]
async fn a_low_open_file_limit_lowers_the_cap_and_answers_503() {
    let server = Server::start_with(Options {
        wrapper: vec!["prlimit".into(), "--nofile=300:300".into()],
        ..Options::default()
    });
    let out = server.output();
    let line = out
        .lines()
        .find(|l| l.starts_with("connections:"))
        .unwrap_or_else(|| panic!("no `connections:` line at start:\n{out}"));
    assert!(
        line.contains("open-file limit is 300") && line.contains("not server.max_connections"),
        "{line}"
    );
    // 300 - 128 reserved = 172 sockets, 10 of them kept for plain HTTP: 162 WebSockets.
    assert!(line.contains("at most 162 WebSockets"), "{line}");
    let mut clients = Vec::new();
    for i in 0..162 {
        clients.push(server.connect(&format!("u{i}")).await);
    }
    let token = server.token("one-too-many", None);
    let (status, _) = crate::support::refused_upgrade(
        {
            let mut r = crate::support::ws_request(&server, "");
            r.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
            r
        },
        "over the fitted cap",
    )
    .await;
    assert_eq!(status, 503, "a WebSocket over the fitted cap");
    // Idle sockets up to and past the file limit: each new one is answered, never left hanging.
    let mut idle = Vec::new();
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    for _ in 0..5 {
        assert_eq!(
            status_within(server.port, Duration::from_secs(3)).await,
            Some(503),
            "a connection past the file limit is answered 503:\n{}",
            server.output()
        );
    }
    drop(idle);
    // Once the idle sockets are gone, plain requests work again.
    let until = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if status_within(server.port, Duration::from_secs(2)).await == Some(200) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the server recovers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warnings = server
        .output()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(warnings <= 20, "accept failed logged {warnings} times");
    drop(clients);
}

/// Sends `bursts` × `per_burst` messages of `content`, each burst written at once and then
/// acked (a burst's echoes must fit the 1 MiB outbound queue, or the server closes with 4003).
async fn send_in_bursts(
    ana: &mut crate::support::Client,
    room: &str,
    content: &str,
    bursts: usize,
    per_burst: usize,
) {
    for burst in 0..bursts {
        let requests: Vec<(&str, serde_json::Value)> = (0..per_burst)
            .map(|i| {
                let data = serde_json::json!({
                    "room_id": room,
                    "client_msg_id": format!("m{burst}-{i}"),
                    "type": "text",
                    "content": content,
                });
                ("send_message", data)
            })
            .collect();
        for r in ana.send_requests_at_once(&requests).await {
            if let Err((code, message)) = ana.reply(&r).await {
                panic!("send_message failed: {code}: {message}");
            }
        }
    }
}

/// The server's anonymous resident memory (RssAnon: heap and stacks, not the binary's
/// pages), in bytes.
fn anon_bytes(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("an RssAnon line")
        * 1024
}

/// Guards issue 24, point 8: a start and a long history read keep the server's memory within
/// `storage.cache_bytes`. Before, redb ran with its own 1 GiB cache and kept every page it
/// read or wrote, so memory grew with everything served and never came back. 60,000 messages
/// are stored, the server restarted and their whole history read over REST: the process holds
/// the 1 MiB cache and its own few MiB, not the data (2.8 MiB of anonymous memory here; with
/// a 1 GiB cache 29 MiB).
#[tokio::test]
async fn a_start_and_a_long_history_read_keep_memory_within_the_page_cache() {
    let mut server =
        Server::start_with(Options::env(&[("CONFAB_STORAGE__CACHE_BYTES", "1048576")]));
    let mut ana = server.connect("ana").await;
    let room = ana.create_room("long", "public").await;
    // Small messages, as chat is: redb caches the pages of small records (a record of many
    // KiB sits on pages of its own that it reads uncached).
    let content = "x".repeat(200);
    // 500 at once: their echoes (about 200 KiB) stay under the 1 MiB outbound queue.
    let (total, at_once) = (60_000, 500);
    send_in_bursts(&mut ana, &room, &content, total / at_once, at_once).await;
    // Wait until the index holds the last message, so the restarted server has nothing to
    // replay into the search writer while its memory is measured.
    ana.ok(
        "send_message",
        serde_json::json!({"room_id": room, "client_msg_id": "last", "type": "text",
                           "content": "zanzibarquokka"}),
    )
    .await;
    let token = server.token("ana", None);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = server
            .get("/api/search?q=zanzibarquokka", Some(&token))
            .await;
        if r.json["hits"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "never indexed: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ana);
    server.sigterm();
    assert!(server.wait_exit(TIMEOUT).success(), "clean exit");
    server.restart();
    let all = server.full_history(&room, &token).await;
    assert_eq!(all.len(), total + 1, "the whole history was read");
    let anon = anon_bytes(&server);
    assert!(
        anon < 16 << 20,
        "after a start and reading {} MB of history the server holds {:.1} MiB of anonymous \
         memory (cache 1 MiB)",
        total * content.len() / 1_000_000,
        anon as f64 / 1048576.0
    );
}

/// Guards issue 24, point 8: after a burst, once the server has been quiet for 5 s, it hands
/// the memory its allocator kept back to the system (`confab_memory_released_bytes_total`
/// moves, and the resident size falls below what it was right after the burst).
#[tokio::test]
async fn a_quiet_server_hands_free_memory_back() {
    let server = Server::start();
    let mut ana = server.connect("ana").await;
    let room = ana.create_room("burst", "public").await;
    let content = "y".repeat(2000);
    send_in_bursts(&mut ana, &room, &content, 40, 100).await;
    drop(ana);
    let released = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("confab_memory_released_bytes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics has no confab_memory_released_bytes_total"))
    };
    // A metrics read is an HTTP request, which counts as activity: read only after more
    // than two of the trimmer's 5 s ticks, so one whole interval between them was quiet.
    let mut seen = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(11)).await;
        seen = released(&server.get("/metrics", None).await.text);
        if seen > 0 {
            break;
        }
    }
    assert!(seen > 0, "nothing handed back 33 s after the burst");
}
