//! Slow consumers: a member that stops reading is closed with 4003 once its queue passes `limits.outbound_queue_bytes`, the room goes on without delay, and the slow member catches up with `sync`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, Options, Server, Stop, TIMEOUT, id_of};

/// The outbound queue bound of these tests (docs: it must be >= max_frame_bytes, 65536).
const QUEUE_BYTES: usize = 65536;
/// Content of each message: large, yet two of them (ack + echo to the sender) fit the queue.
const CONTENT_BYTES: usize = 16_000;
/// The slow client's kernel receive buffer.
const SLOW_RCVBUF: u32 = 4096;
/// How late bob may get a message after alice's ack and still count as "without delay".
const MAX_LAG: Duration = Duration::from_millis(1500);

/// The most a server's socket can buffer for one connection: the kernel's send-buffer ceiling.
fn kernel_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 * 1024 * 1024)
}

/// Issue 3: carol stops reading while alice sends many large messages: once carol's queue passes
/// `outbound_queue_bytes` she is closed with 4003 (seen when she reads again), bob keeps getting
/// every message without delay, and carol then reconnects with sync=1 and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4003_and_catches_up() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_LIMITS__OUTBOUND_QUEUE_BYTES",
        "65536",
    )]));
    let alice_token = server.token("alice", Some("Alice"));
    let carol_token = server.token("carol", Some("Carol"));
    let mut alice = Client::connect(&server, &alice_token).await;
    let mut bob = server.connect("bob").await;
    let mut carol = Client::connect_small_buffer(&server, &carol_token, SLOW_RCVBUF).await;
    let room = alice.create_room("firehose", "private").await;
    alice.invite(&room, "bob").await;
    alice.invite(&room, "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.next_member_joined(&room, "carol").await;
    }
    let before = alice.say(&room, "before carol stalls").await;
    for c in [&mut bob, &mut carol] {
        c.next_message_where(|m| m["id"] == before["id"]).await;
    }
    // From here on carol never polls her socket until the burst is over.

    // Enough bytes to fill the kernel's buffers for carol at their largest, plus the queue.
    let frame_estimate = CONTENT_BYTES + 300;
    let total = kernel_send_buffer_max() + 2 * QUEUE_BYTES + 512 * 1024;
    let n = total.div_ceil(frame_estimate);

    let bob_task = tokio::spawn(async move {
        let mut seen: Vec<(Value, Instant)> = Vec::with_capacity(n);
        while seen.len() < n {
            let m = bob.next_event("receive_message").await["message"].clone();
            seen.push((m["id"].clone(), Instant::now()));
        }
        (bob, seen)
    });

    let filler = "x".repeat(CONTENT_BYTES - 16);
    let mut acked: Vec<(Value, Instant)> = Vec::with_capacity(n);
    for i in 0..n {
        // One at a time: each commit fans out one frame per connection (two for alice), which
        // fits the small queue of a connection that does read.
        let m = alice.say(&room, &format!("{i:08} {filler}")).await;
        acked.push((m["id"].clone(), Instant::now()));
        alice.clear_events();
    }
    let (_bob, bob_seen) = tokio::time::timeout(TIMEOUT, bob_task)
        .await
        .expect("bob received every message in time")
        .expect("bob task");
    let ids: Vec<&Value> = acked.iter().map(|(id, _)| id).collect();
    let bob_ids: Vec<&Value> = bob_seen.iter().map(|(id, _)| id).collect();
    assert_eq!(bob_ids, ids, "bob got every message, in order, once");
    let got_at: HashMap<String, Instant> = bob_seen
        .iter()
        .map(|(id, at)| (id.to_string(), *at))
        .collect();
    let worst = acked
        .iter()
        .map(|(id, acked_at)| got_at[&id.to_string()].saturating_duration_since(*acked_at))
        .max()
        .unwrap_or_default();
    assert!(
        worst <= MAX_LAG,
        "bob got a message {worst:?} after its ack while carol stalled: the room was held up"
    );

    // carol reads again: whatever the kernel held, then the 4003 close.
    let mut carol_last = before["id"].clone();
    let mut carol_count = 0usize;
    let code = loop {
        match carol.try_next_event("receive_message", TIMEOUT).await {
            Ok(d) => {
                carol_count += 1;
                carol_last = d["message"]["id"].clone();
            }
            Err(Stop::Closed(code)) => break code,
            Err(Stop::Timeout) => panic!(
                "carol stopped reading for {n} messages of {CONTENT_BYTES} bytes and was not \
                 closed (she read {carol_count} of them)"
            ),
        }
    };
    assert_eq!(
        code,
        Some(4003),
        "a slow consumer is closed with 4003 (she read {carol_count} of {n} messages first)"
    );
    assert!(
        carol_count < n,
        "the backlog past the queue was dropped, not delivered"
    );
    eprintln!(
        "slow consumer: {n} messages of {CONTENT_BYTES} bytes; carol read {carol_count} before \
         4003; bob's worst lag {worst:?}"
    );

    // carol comes back and catches up from the last message she saw, in small pages.
    let mut carol = Client::connect_sync(&server, &carol_token).await;
    let mut cursor = carol_last.clone();
    let mut caught: Vec<Value> = Vec::new();
    let mut live = false;
    for _ in 0..2 * n + 10 {
        let ack = carol
            .ok(
                "sync",
                json!({"rooms": {room.as_str(): cursor}, "limit": 3}),
            )
            .await;
        let entry = &ack["rooms"][room.as_str()];
        for c in entry["changes"].as_array().expect("changes") {
            assert_eq!(c["kind"], "message", "{c}");
            caught.push(c["message"]["id"].clone());
            cursor = c["seq"].clone();
        }
        if entry["has_more"] == false {
            live = ack["live"] == true;
            break;
        }
    }
    assert!(live, "the catch-up ended with live: true");
    let from = ids
        .iter()
        .position(|id| **id == carol_last)
        .map_or(0, |p| p + 1);
    let want: Vec<Value> = ids[from..].iter().map(|v| (*v).clone()).collect();
    assert_eq!(
        caught.len(),
        want.len(),
        "carol catches up on exactly what she missed"
    );
    assert_eq!(caught, want, "in order, none missing, none repeated");
    assert!(
        caught.iter().all(|id| id_of(id) > id_of(&carol_last)),
        "nothing she had already seen"
    );
    // And she is live again.
    let after = alice.say(&room, "welcome back").await;
    carol.next_message_where(|m| m["id"] == after["id"]).await;
}
