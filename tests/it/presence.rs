//! Presence: online while any device is connected, offline after the last one closed and the grace passed, shown in member lists.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, Options, Server};

/// The grace these tests run with.
const GRACE: Duration = Duration::from_secs(1);

fn server() -> Server {
    Server::start_with(Options::env(&[(
        "CONFAB_PRESENCE__OFFLINE_GRACE_SECS",
        "1",
    )]))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The member record of `user` in `room`, as `list_members` shows it to `c`.
async fn member(c: &mut Client, room: &str, user: &str) -> Value {
    let ack = c.ok("list_members", json!({"room_id": room})).await;
    ack["members"]
        .as_array()
        .expect("members array")
        .iter()
        .find(|m| m["user_id"] == user)
        .unwrap_or_else(|| panic!("{user} is not listed: {ack}"))
        .clone()
}

/// alice and bob in one room; bob on the devices given.
async fn pair(server: &Server, bob_devices: usize) -> (String, Client, Vec<Client>) {
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("presence", "private").await;
    alice.invite(&room, "bob").await;
    let mut bobs = Vec::new();
    for _ in 0..bob_devices {
        bobs.push(server.connect("bob").await);
    }
    alice.next_member_joined(&room, "bob").await;
    alice.ping().await;
    alice.clear_events();
    (room, alice, bobs)
}

/// Issue 3: bob on two devices closes one: alice sees no change (no offline event, still online
/// in the member list); he closes the other: after the grace alice gets
/// `presence {user_id: bob, status: offline, last_seen}` and the member list says offline with
/// that `last_seen`; he comes back: `presence` online.
#[tokio::test]
async fn offline_only_after_the_last_device_and_the_grace() {
    let server = server();
    let (room, mut alice, mut bobs) = pair(&server, 2).await;
    let bob = member(&mut alice, &room, "bob").await;
    assert_eq!(bob["presence"], "online", "member record: {bob}");
    assert!(
        bob.get("last_seen")
            .is_some_and(|v| v.is_null() || v.is_u64()),
        "member.last_seen is ms or null: {bob}"
    );
    let me = member(&mut alice, &room, "alice").await;
    assert_eq!(me["presence"], "online", "{me}");

    bobs.pop().expect("device").close().await;
    alice
        .assert_no_event(
            "presence",
            GRACE * 2,
            "bob still has a device connected",
            |d| d["user_id"] == "bob",
        )
        .await;
    let bob = member(&mut alice, &room, "bob").await;
    assert_eq!(bob["presence"], "online", "one device left: {bob}");

    let closed_ms = now_ms();
    let closed = Instant::now();
    bobs.pop().expect("device").close().await;
    let ev = alice
        .next_event_where("presence", |d| d["user_id"] == "bob")
        .await;
    let waited = closed.elapsed();
    assert_eq!(ev["status"], "offline", "{ev}");
    let last_seen = ev["last_seen"]
        .as_u64()
        .unwrap_or_else(|| panic!("presence offline carries last_seen in ms: {ev}"));
    assert!(
        last_seen + 1000 >= closed_ms && last_seen <= now_ms(),
        "last_seen {last_seen} should be about when bob left ({closed_ms})"
    );
    assert!(
        waited >= GRACE - Duration::from_millis(100),
        "offline came {waited:?} after the close, before the {GRACE:?} grace"
    );
    assert!(
        waited <= GRACE + Duration::from_secs(3),
        "offline came {waited:?} after the close, long after the {GRACE:?} grace"
    );
    let bob = member(&mut alice, &room, "bob").await;
    assert_eq!(bob["presence"], "offline", "{bob}");
    assert_eq!(bob["last_seen"], last_seen, "{bob}");

    let _bob = server.connect("bob").await;
    let ev = alice
        .next_event_where("presence", |d| d["user_id"] == "bob")
        .await;
    assert_eq!(ev["status"], "online", "{ev}");
    assert_eq!(member(&mut alice, &room, "bob").await["presence"], "online");
}

/// Issue 3: a reconnect inside the grace is invisible: no presence event at all for bob.
#[tokio::test]
async fn a_reconnect_inside_the_grace_is_invisible() {
    let server = server();
    let (room, mut alice, mut bobs) = pair(&server, 1).await;
    let token = server.token("bob", Some("Bob"));
    bobs.pop().expect("device").close().await;
    let _bob = Client::connect(&server, &token).await;
    alice
        .assert_no_event(
            "presence",
            GRACE * 2,
            "bob reconnected inside the grace",
            |d| d["user_id"] == "bob",
        )
        .await;
    let bob = member(&mut alice, &room, "bob").await;
    assert_eq!(bob["presence"], "online", "{bob}");
}
