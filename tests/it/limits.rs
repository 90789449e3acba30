//! Limits: token buckets refuse with `rate_limited` and `retry_after_ms` and store nothing, sustained abuse closes with 1008, per-user and per-IP connection limits answer 429.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, Options, Server, TIMEOUT, refused_upgrade, ws_request};

/// Sends every request at once (no waiting), then collects the whole reply frames in order.
async fn burst(c: &mut Client, requests: &[(&str, Value)]) -> Vec<Value> {
    let mut refs = Vec::new();
    for (event, data) in requests {
        refs.push(c.send_request(event, data.clone()).await);
    }
    let mut frames = Vec::new();
    for r in refs {
        frames.push(c.reply_frame(&r).await);
    }
    frames
}

/// Asserts a refusal is `rate_limited` with a positive `retry_after_ms`; returns it.
fn retry_after(frame: &Value, what: &str) -> u64 {
    assert_eq!(frame["event"], "error", "{what}: {frame}");
    assert_eq!(frame["data"]["code"], "rate_limited", "{what}: {frame}");
    let ms = frame["data"]["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: rate_limited carries data.retry_after_ms: {frame}"));
    assert!(
        ms > 0 && ms <= 60_000,
        "{what}: retry_after_ms {ms} should be a sensible wait"
    );
    ms
}

fn send(room: &str, cmid: &str) -> (&'static str, Value) {
    (
        "send_message",
        json!({"room_id": room, "client_msg_id": cmid, "type": "text", "content": cmid}),
    )
}

/// Issue 3: sending faster than the per-connection bucket (burst 5, 1/s) gets `rate_limited`
/// with `retry_after_ms`; the refused messages are not stored (not in history, and their
/// client_msg_id is not taken: a later retry stores them as new).
#[tokio::test]
async fn over_the_message_bucket_is_refused_and_nothing_is_stored() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__MESSAGES_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__MESSAGES_BURST", "5"),
    ]));
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("throttled", "private").await;
    let cmids: Vec<String> = (0..12).map(|i| format!("fast-{i}")).collect();
    let requests: Vec<(&str, Value)> = cmids.iter().map(|c| send(&room, c)).collect();
    let frames = burst(&mut alice, &requests).await;

    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let mut wait = 0;
    for (cmid, f) in cmids.iter().zip(&frames) {
        if f["event"] == "ack" {
            acked.push(cmid.clone());
        } else {
            wait = wait.max(retry_after(f, &format!("send {cmid}")));
            refused.push(cmid.clone());
        }
    }
    assert!(
        (5..=7).contains(&acked.len()),
        "a burst of 5 (plus what 1/s refills) is accepted, got {} acks: {frames:?}",
        acked.len()
    );
    assert!(!refused.is_empty(), "sends over the bucket are refused");

    let (history, _) = alice.history(json!({"room_id": room})).await;
    let mut stored: Vec<String> = history
        .iter()
        .map(|m| m["client_msg_id"].as_str().expect("cmid").to_string())
        .collect();
    stored.sort();
    let mut want = acked.clone();
    want.sort();
    assert_eq!(stored, want, "history holds exactly the acked messages");

    // After the advised wait the bucket has room again, and a refused client_msg_id is new.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let ack = alice
        .send_message(&room, &refused[0], "retried")
        .await
        .unwrap_or_else(|(code, m)| panic!("retry after retry_after_ms: {code}: {m}"));
    assert_eq!(
        ack["duplicate"], false,
        "a refused message was not stored, so its retry is not a duplicate"
    );
}

/// Issue 3: the per-user bucket spans all of a user's connections.
#[tokio::test]
async fn the_user_bucket_spans_connections() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__USER_MESSAGES_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__USER_MESSAGES_BURST", "4"),
    ]));
    let mut a1 = server.connect("alice").await;
    let mut a2 = server.connect("alice").await;
    let room = a1.create_room("shared bucket", "private").await;
    let first: Vec<(&str, Value)> = (0..4).map(|i| send(&room, &format!("a1-{i}"))).collect();
    let second: Vec<(&str, Value)> = (0..4).map(|i| send(&room, &format!("a2-{i}"))).collect();
    let mut frames = burst(&mut a1, &first).await;
    frames.extend(burst(&mut a2, &second).await);
    let acks = frames.iter().filter(|f| f["event"] == "ack").count();
    assert!(
        (4..=5).contains(&acks),
        "alice's two connections share one bucket of 4: {acks} acks: {frames:?}"
    );
    for f in frames.iter().filter(|f| f["event"] != "ack") {
        retry_after(f, "a send over the user bucket");
    }
    let (history, _) = a1.history(json!({"room_id": room})).await;
    assert_eq!(history.len(), acks, "only acked messages are stored");
}

/// Issue 3: a connection that keeps hitting limits (more refusals than `abuse_strikes` within
/// 10 s) is closed with 1008.
#[tokio::test]
async fn sustained_abuse_closes_with_1008() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__MESSAGES_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__MESSAGES_BURST", "2"),
        ("CONFAB_RATE_LIMITS__ABUSE_STRIKES", "5"),
    ]));
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("abused", "private").await;
    for i in 0..30 {
        let (event, data) = send(&room, &format!("spam-{i}"));
        if alice.try_send_request(event, data).await.is_err() {
            break;
        }
    }
    let code = alice.expect_close(TIMEOUT).await;
    assert_eq!(
        code,
        Some(1008),
        "sustained abuse closes with 1008 (policy)"
    );

    // The server goes on serving others (and alice on a new connection).
    let mut again = server.connect("alice").await;
    again.ping().await;
}

/// Issue 3: a user at `limits.max_connections_per_user` gets HTTP 429 before the upgrade; other
/// users are unaffected; closing one connection makes room again.
#[tokio::test]
async fn too_many_connections_for_one_user_get_429() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_LIMITS__MAX_CONNECTIONS_PER_USER",
        "3",
    )]));
    let token = server.token("alice", Some("Alice"));
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&server, &token).await);
    }
    let req = ws_request(&server, &format!("?token={token}"));
    let (status, body) = refused_upgrade(req, "a 4th connection for alice").await;
    assert_eq!(status, 429, "over the per-user connection limit: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let mut bob = server.connect("bob").await;
    bob.ping().await;

    open.pop().expect("a connection").close().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let req = ws_request(&server, &format!("?token={token}"));
        match Client::try_connect(req).await {
            Ok((mut c, _)) => {
                c.ping().await;
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!(
                "alice could not connect again after closing one of 3: {}",
                crate::support::describe_ws_error(&e)
            ),
        }
    }
}

/// Issue 3: connection attempts from one IP over `connects_*_per_ip` get HTTP 429.
#[tokio::test]
async fn too_many_connection_attempts_from_one_ip_get_429() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP", "1"),
        ("CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP", "3"),
    ]));
    let token = server.token("alice", Some("Alice"));
    let mut open = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..8 {
        let req = ws_request(&server, &format!("?token={token}"));
        match Client::try_connect(req).await {
            Ok((c, _)) => open.push(c),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body: Value = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                refusals.push((resp.status().as_u16(), body));
            }
            Err(e) => panic!("connection attempt failed oddly: {e}"),
        }
    }
    assert!(
        (3..=4).contains(&open.len()),
        "a burst of 3 attempts (plus what 1/s refills) is accepted, {} were",
        open.len()
    );
    assert!(!refusals.is_empty(), "attempts over the bucket are refused");
    for (status, body) in &refusals {
        assert_eq!(*status, 429, "over the per-IP attempt limit: {body}");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    // Open connections keep working.
    open[0].ping().await;
}

/// Issue 3: typing events over their bucket (burst 3, 1/s) get `rate_limited`.
#[tokio::test]
async fn typing_over_its_bucket_is_refused() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__TYPING_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__TYPING_BURST", "3"),
    ]));
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("typing fast", "private").await;
    let requests: Vec<(&str, Value)> = (0..8)
        .map(|i| {
            let state = if i % 2 == 0 { "start" } else { "stop" };
            ("typing", json!({"room_id": room, "state": state}))
        })
        .collect();
    let frames = burst(&mut alice, &requests).await;
    let acks = frames.iter().filter(|f| f["event"] == "ack").count();
    assert!(
        (3..=4).contains(&acks),
        "a typing burst of 3 is accepted, {acks} were: {frames:?}"
    );
    for f in frames.iter().filter(|f| f["event"] != "ack") {
        retry_after(f, "typing over its bucket");
    }
    // Messages have their own bucket.
    alice.say(&room, "still allowed to talk").await;
}

/// Issue 3: joins, invitations and room creations share a per-user bucket; refused creations
/// create nothing.
#[tokio::test]
async fn room_creation_over_the_joins_bucket_is_refused() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__JOINS_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__JOINS_BURST", "3"),
    ]));
    let mut alice = server.connect("alice").await;
    let requests: Vec<(&str, Value)> = (0..6)
        .map(|i| {
            (
                "create_room",
                json!({"name": format!("room {i}"), "visibility": "private"}),
            )
        })
        .collect();
    let frames = burst(&mut alice, &requests).await;
    let acks = frames.iter().filter(|f| f["event"] == "ack").count();
    assert!(
        (3..=4).contains(&acks),
        "a burst of 3 creations is accepted, {acks} were: {frames:?}"
    );
    for f in frames.iter().filter(|f| f["event"] != "ack") {
        retry_after(f, "create_room over the joins bucket");
    }
    let rooms = alice.ok("list_rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"].as_array().expect("rooms").len(),
        acks,
        "only acked creations made rooms: {rooms}"
    );
}

/// Issue 3: `limits.max_rooms_per_user` caps memberships: past it, creating a room is refused
/// with `rate_limited` and creates nothing.
#[tokio::test]
async fn the_room_cap_refuses_more_rooms() {
    let server = Server::start_with(Options::env(&[("CONFAB_LIMITS__MAX_ROOMS_PER_USER", "2")]));
    let mut alice = server.connect("alice").await;
    alice.create_room("one", "private").await;
    alice.create_room("two", "private").await;
    let refused = alice
        .request_frame(
            "create_room",
            json!({"name": "three", "visibility": "private"}),
        )
        .await;
    assert_eq!(
        refused["event"], "error",
        "a third room is refused: {refused}"
    );
    assert_eq!(
        refused["data"]["code"], "rate_limited",
        "docs/protocol.md (Limits): over a limit the request gets rate_limited: {refused}"
    );
    let rooms = alice.ok("list_rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"].as_array().expect("rooms").len(),
        2,
        "{rooms}"
    );
}

/// Issue 3: the shipped limits (`config.toml`: 30 messages at once per connection, 10/s) hold
/// without any configuration: a burst of 40 sends gets about 30 acks and `rate_limited` for the rest.
#[tokio::test]
async fn the_shipped_message_bucket_is_30() {
    let server = Server::start_with(Options::default().stock_limits());
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("stock", "private").await;
    let requests: Vec<(&str, Value)> = (0..40).map(|i| send(&room, &format!("s-{i}"))).collect();
    let frames = burst(&mut alice, &requests).await;
    let acks = frames.iter().filter(|f| f["event"] == "ack").count();
    assert!(
        (30..=32).contains(&acks),
        "the shipped burst is 30 per connection (10/s refill), {acks} were acked"
    );
    for f in frames.iter().filter(|f| f["event"] != "ack") {
        retry_after(f, "a send over the shipped bucket");
    }
}
