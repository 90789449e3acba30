//! Typing indicators: relayed to the other members only, not repeated within 2 s, stopped by the server after 5 s, and invisible (with presence) to non-members.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::support::{Client, Options, Server};

/// docs/protocol.md: without a refresh the server sends `stop` by itself after 5 s.
const TYPING_EXPIRY: Duration = Duration::from_secs(5);

/// alice (two devices) and bob and carol in one room; dave shares no room with any of them.
struct Room {
    server: Server,
    room: String,
    alice: Client,
    alice2: Client,
    bob: Client,
    carol: Client,
    dave: Client,
}

async fn room() -> Room {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut alice2 = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let mut dave = server.connect("dave").await;
    let room = alice.create_room("typing", "private").await;
    alice.invite(&room, "bob").await;
    alice.invite(&room, "carol").await;
    for c in [&mut alice, &mut alice2, &mut bob, &mut carol] {
        c.next_member_joined(&room, "carol").await;
        c.clear_events();
    }
    dave.ping().await;
    dave.clear_events();
    Room {
        server,
        room,
        alice,
        alice2,
        bob,
        carol,
        dave,
    }
}

/// Issue 3: a `start` reaches bob and carol as `typing {room_id, user_id, state}`, never the
/// typist (on either of her devices) nor a non-member; a repeated `start` within 2 s is not
/// relayed again; without a refresh the server itself sends `stop` after about 5 s.
#[tokio::test]
async fn typing_reaches_the_other_members_and_expires() {
    let mut r = room().await;
    let room = r.room.clone();
    let ack = r
        .alice
        .ok("typing", json!({"room_id": room, "state": "start"}))
        .await;
    assert_eq!(ack, json!({}), "typing acks {{}}");
    for c in [&mut r.bob, &mut r.carol] {
        let ev = c.next_event("typing").await;
        assert_eq!(
            ev,
            json!({"room_id": room, "user_id": "alice", "state": "start"})
        );
    }
    // The refresh: acked, not relayed again (checked below), and it restarts the 5 s.
    r.alice
        .ok("typing", json!({"room_id": room, "state": "start"}))
        .await;
    let refreshed = Instant::now();

    let stop = r
        .bob
        .try_next_event_where("typing", TYPING_EXPIRY + Duration::from_secs(2), |d| {
            d["state"] == "stop"
        })
        .await
        .unwrap_or_else(|stop| {
            panic!("the server did not send typing stop within 7 s of the last start: {stop:?}")
        });
    let after = refreshed.elapsed();
    assert_eq!(
        stop,
        json!({"room_id": room, "user_id": "alice", "state": "stop"})
    );
    assert!(
        after >= TYPING_EXPIRY - Duration::from_millis(500),
        "typing expired after {after:?}, before the 5 s of docs/protocol.md"
    );
    assert!(
        r.bob.buffered("typing").is_empty(),
        "the repeated start within 2 s must not be relayed: {:?}",
        r.bob.buffered("typing")
    );
    r.carol
        .next_event_where("typing", |d| d["state"] == "stop")
        .await;
    assert!(r.carol.buffered("typing").is_empty());

    // Everything was fanned out long ago; a round trip flushes what each connection got.
    for (name, c) in [
        ("alice", &mut r.alice),
        ("alice's other device", &mut r.alice2),
        ("dave (not a member)", &mut r.dave),
    ] {
        c.ping().await;
        assert!(
            c.buffered("typing").is_empty(),
            "{name} must get no typing event: {:?}",
            c.buffered("typing")
        );
    }
}

/// Issue 3: an explicit `stop` is relayed at once; typing in a room one is not in is
/// `not_found`; a state other than start/stop is `invalid_payload`.
#[tokio::test]
async fn typing_stop_is_relayed_and_bad_typing_is_refused() {
    let mut r = room().await;
    let room = r.room.clone();
    r.bob
        .ok("typing", json!({"room_id": room, "state": "start"}))
        .await;
    let ev = r.alice.next_event("typing").await;
    assert_eq!(
        ev,
        json!({"room_id": room, "user_id": "bob", "state": "start"})
    );
    r.bob
        .ok("typing", json!({"room_id": room, "state": "stop"}))
        .await;
    let started = Instant::now();
    let ev = r.alice.next_event("typing").await;
    assert_eq!(
        ev,
        json!({"room_id": room, "user_id": "bob", "state": "stop"})
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an explicit stop is relayed at once, not at expiry"
    );
    assert_eq!(
        r.alice2.next_event("typing").await["state"],
        "start",
        "every connection of the other members gets it"
    );

    let got = r
        .dave
        .request("typing", json!({"room_id": room, "state": "start"}))
        .await;
    assert_eq!(
        got.map_err(|(code, _)| code),
        Err("not_found".to_string()),
        "typing in a room one is not in"
    );
    let got = r
        .bob
        .request("typing", json!({"room_id": room, "state": "dancing"}))
        .await;
    assert_eq!(
        got.map_err(|(code, _)| code),
        Err("invalid_payload".to_string()),
        "typing with an unknown state"
    );
    r.alice.ping().await;
    assert!(
        r.alice
            .buffered("typing")
            .iter()
            .all(|d| d["state"] != "dancing"),
        "a refused typing is not relayed"
    );
    let _ = &r.server;
}

/// Issue 3: a user who shares no room with the members gets neither their typing nor their
/// presence events, while the members do.
#[tokio::test]
async fn a_non_member_gets_neither_typing_nor_presence() {
    let mut r = room().await;
    let room = r.room.clone();
    let carol_token = r.server.token("carol", Some("Carol"));

    // carol goes offline (grace 1 s in tests) and comes back.
    r.carol.close().await;
    for c in [&mut r.alice, &mut r.bob] {
        let ev = c
            .next_event_where("presence", |d| d["user_id"] == "carol")
            .await;
        assert_eq!(ev["status"], "offline", "{ev}");
    }
    let mut carol = Client::connect(&r.server, &carol_token).await;
    for c in [&mut r.alice, &mut r.bob] {
        let ev = c
            .next_event_where("presence", |d| d["user_id"] == "carol")
            .await;
        assert_eq!(ev["status"], "online", "{ev}");
    }
    // And someone types.
    carol
        .ok("typing", json!({"room_id": room, "state": "start"}))
        .await;
    r.bob.next_event("typing").await;

    r.dave.ping().await;
    assert!(
        r.dave.buffered("presence").is_empty() && r.dave.buffered("typing").is_empty(),
        "dave shares no room with them and must get none of their presence or typing: {:?}",
        r.dave.buffered_events()
    );
}

/// Presence is pushed only through rooms of at most `presence.push_max_room_members` members:
/// with the limit at 3, bob (who shares only a 4-member room with carol) hears nothing when
/// carol comes back, erin (who shares a 2-member room with her) does, and bob still sees her
/// status in `list_members`.
#[tokio::test]
async fn presence_is_not_pushed_through_rooms_over_the_size_limit() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_PRESENCE__PUSH_MAX_ROOM_MEMBERS",
        "3",
    )]));
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut erin = server.connect("erin").await;
    let carol = server.connect("carol").await;
    let big = alice.create_room("big", "private").await;
    for u in ["bob", "carol", "dave"] {
        alice.invite(&big, u).await;
    }
    let small = erin.create_room("small", "private").await;
    erin.invite(&small, "carol").await;
    for c in [&mut bob, &mut erin] {
        c.ping().await;
    }

    carol.close().await;
    let ev = erin
        .next_event_where("presence", |d| d["user_id"] == "carol")
        .await;
    assert_eq!(ev["status"], "offline", "{ev}");
    let _carol = server.connect("carol").await;
    let ev = erin
        .next_event_where("presence", |d| d["user_id"] == "carol")
        .await;
    assert_eq!(ev["status"], "online", "{ev}");

    bob.ping().await;
    let heard: Vec<_> = bob
        .buffered("presence")
        .into_iter()
        .filter(|d| d["user_id"] == "carol")
        .collect();
    assert!(
        heard.is_empty(),
        "bob shares only a room over the limit with carol: no presence pushed, got {heard:?}"
    );
    let members = bob.ok("list_members", json!({"room_id": big})).await;
    let carol_row = members["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["user_id"] == "carol"))
        .cloned()
        .unwrap_or_else(|| panic!("carol in list_members: {members}"));
    assert_eq!(carol_row["presence"], "online", "{carol_row}");
}
