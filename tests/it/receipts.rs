//! Receipts: delivered and read watermarks, coalesced `message_delivered`, `message_read`, message status, unread counts and private receipts.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, Server, id_of};

/// docs/protocol.md: delivered receipts go out "about twice a second"; allow some slack.
const DELIVERY_WAIT: Duration = Duration::from_millis(2500);

/// alice's room with bob and carol, every join seen by everyone.
struct Trio {
    server: Server,
    room: String,
    alice: Client,
    bob: Client,
    carol: Client,
}

async fn trio() -> Trio {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let room = alice.create_room("receipts", "private").await;
    alice.invite(&room, "bob").await;
    alice.invite(&room, "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.next_member_joined(&room, "carol").await;
        c.clear_events();
    }
    Trio {
        server,
        room,
        alice,
        bob,
        carol,
    }
}

/// alice says `text`; bob and carol both receive it. Returns the message.
async fn say_to_all(t: &mut Trio, text: &str) -> Value {
    let m = t.alice.say(&t.room, text).await;
    for c in [&mut t.bob, &mut t.carol] {
        c.next_message_where(|x| x["id"] == m["id"]).await;
    }
    m
}

fn mid(m: &Value) -> String {
    m["id"].as_str().expect("message id").to_string()
}

async fn receipts(c: &mut Client, room: &str, message_id: &str) -> Value {
    c.ok(
        "message_receipts",
        json!({"room_id": room, "message_id": message_id}),
    )
    .await
}

/// The `status` of a message as `history` reports it now.
async fn status_in_history(c: &mut Client, room: &str, message_id: &str) -> String {
    let (messages, _) = c.history(json!({"room_id": room, "limit": 200})).await;
    let m = messages
        .iter()
        .find(|m| m["id"] == message_id)
        .unwrap_or_else(|| panic!("message {message_id} is not in history: {messages:?}"));
    m["status"].as_str().expect("message.status").to_string()
}

/// (unread_count, read_up_to) of `room` in the caller's `list_rooms`.
async fn unread(c: &mut Client, room: &str) -> (u64, Value) {
    let ack = c.ok("list_rooms", json!({})).await;
    let r = ack["rooms"]
        .as_array()
        .expect("rooms array")
        .iter()
        .find(|r| r["id"] == room)
        .unwrap_or_else(|| panic!("room {room} is not in list_rooms: {ack}"))
        .clone();
    let count = r["unread_count"]
        .as_u64()
        .unwrap_or_else(|| panic!("room.unread_count should be an integer: {r}"));
    (count, r["read_up_to"].clone())
}

/// Waits (up to `DELIVERY_WAIT`) until `message_delivered` frames in `room` have named every
/// user of `users` with a watermark at or past `message_id` (one coalesced frame may name
/// several); returns each user's receipt, in the order of `users`.
async fn delivered_events(
    c: &mut Client,
    room: &str,
    users: &[&str],
    message_id: &str,
) -> Vec<Value> {
    let at_least = message_id.parse::<u64>().expect("decimal id");
    let mut found: Vec<Option<Value>> = vec![None; users.len()];
    let started = Instant::now();
    while found.iter().any(Option::is_none) {
        let left = DELIVERY_WAIT.saturating_sub(started.elapsed());
        let d = c
            .try_next_event_where("message_delivered", left, |d| d["room_id"] == room)
            .await
            .unwrap_or_else(|stop| {
                panic!(
                    "no message_delivered naming all of {users:?} (up to {message_id}) in room \
                     {room} within {DELIVERY_WAIT:?} ({stop:?}); found {found:?}"
                )
            });
        let receipts = d["receipts"]
            .as_array()
            .unwrap_or_else(|| panic!("message_delivered.receipts should be an array: {d}"));
        for r in receipts {
            assert!(
                r["user_id"].is_string() && r["message_id"].is_string(),
                "a receipt is {{user_id, message_id}}: {d}"
            );
            let reached = r["message_id"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|m| m >= at_least);
            if let Some(i) = users.iter().position(|u| r["user_id"] == *u)
                && reached
            {
                found[i] = Some(r.clone());
            }
        }
    }
    found.into_iter().map(|r| r.expect("found")).collect()
}

/// `delivered_events` for one user.
async fn delivered_event(c: &mut Client, room: &str, user: &str, message_id: &str) -> Value {
    delivered_events(c, room, &[user], message_id)
        .await
        .remove(0)
}

fn delivered_users(r: &Value) -> Vec<String> {
    let mut users: Vec<String> = r["delivered"]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("receipts.delivered.users should be an array: {r}"))
        .iter()
        .map(|u| u.as_str().expect("user id").to_string())
        .collect();
    users.sort();
    users
}

fn read_users(r: &Value) -> Vec<String> {
    let mut users: Vec<String> = r["read"]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("receipts.read.users should be an array: {r}"))
        .iter()
        .map(|u| {
            u["user_id"]
                .as_str()
                .expect("read.users[].user_id")
                .to_string()
        })
        .collect();
    users.sort();
    users
}

/// Issue 3: bob's `mark_delivered` reaches alice as a coalesced `message_delivered` within about
/// 2 s; receipts count delivered and read users out of the 2 recipients; bob's `mark_read`
/// reaches alice and carol as `message_read`; the status in history moves sent → delivered
/// (after bob and carol deliver) → read (after both read); unread counts follow.
#[tokio::test]
async fn delivered_then_read_moves_the_status_and_notifies_the_sender() {
    let mut t = trio().await;
    let room = t.room.clone();
    let m1 = say_to_all(&mut t, "first").await;
    let m2 = say_to_all(&mut t, "second").await;
    let (id1, id2) = (mid(&m1), mid(&m2));
    assert_eq!(m1["status"], "sent", "a new message is sent: {m1}");
    assert_eq!(status_in_history(&mut t.alice, &room, &id1).await, "sent");

    let (bob_unread, _) = unread(&mut t.bob, &room).await;
    assert_eq!(bob_unread, 2, "bob has two unread messages from alice");
    let (alice_unread, _) = unread(&mut t.alice, &room).await;
    assert_eq!(alice_unread, 0, "one's own messages are never unread");

    // bob's device says it has m1.
    let ack = t
        .bob
        .ok(
            "mark_delivered",
            json!({"room_id": room, "message_id": id1}),
        )
        .await;
    assert_eq!(ack, json!({}), "mark_delivered acks {{}}");
    let receipt = delivered_event(&mut t.alice, &room, "bob", &id1).await;
    assert_eq!(
        receipt,
        json!({"user_id": "bob", "message_id": id1}),
        "message_delivered names bob and his watermark"
    );
    let r = receipts(&mut t.alice, &room, &id1).await;
    assert_eq!(r["message_id"], id1.as_str(), "{r}");
    assert_eq!(r["recipients"], 2, "alice's message has 2 recipients: {r}");
    assert_eq!(r["delivered"]["count"], 1, "delivered to 1 of 2: {r}");
    assert_eq!(delivered_users(&r), ["bob"], "{r}");
    assert_eq!(r["read"]["count"], 0, "read by nobody yet: {r}");
    assert_eq!(read_users(&r), Vec::<String>::new(), "{r}");
    assert_eq!(r["status"], "sent", "carol has not delivered yet: {r}");
    assert_eq!(status_in_history(&mut t.alice, &room, &id1).await, "sent");

    // carol and bob deliver up to m2: both messages are delivered.
    t.carol
        .ok(
            "mark_delivered",
            json!({"room_id": room, "message_id": id2}),
        )
        .await;
    t.bob
        .ok(
            "mark_delivered",
            json!({"room_id": room, "message_id": id2}),
        )
        .await;
    delivered_events(&mut t.alice, &room, &["carol", "bob"], &id2).await;
    for id in [&id1, &id2] {
        assert_eq!(
            status_in_history(&mut t.alice, &room, id).await,
            "delivered",
            "message {id} reached bob's and carol's devices"
        );
    }
    let r = receipts(&mut t.alice, &room, &id2).await;
    assert_eq!(r["status"], "delivered", "{r}");
    assert_eq!(r["delivered"]["count"], 2, "{r}");
    assert_eq!(delivered_users(&r), ["bob", "carol"], "{r}");

    // bob reads m2.
    let ack = t
        .bob
        .ok("mark_read", json!({"room_id": room, "message_id": id2}))
        .await;
    let read_at = ack["read_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("mark_read acks {{read_at: ms}}: {ack}"));
    for c in [&mut t.alice, &mut t.carol] {
        let ev = c
            .next_event_where("message_read", |d| d["user_id"] == "bob")
            .await;
        assert_eq!(
            ev,
            json!({"room_id": room, "user_id": "bob", "message_id": id2, "read_at": read_at}),
            "message_read carries bob's watermark and the read_at of his ack"
        );
    }
    let r = receipts(&mut t.alice, &room, &id2).await;
    assert_eq!(r["read"]["count"], 1, "read by 1 of 2: {r}");
    assert_eq!(
        r["read"]["users"],
        json!([{"user_id": "bob", "read_at": read_at}]),
        "{r}"
    );
    assert_eq!(r["status"], "delivered", "carol has not read yet: {r}");
    let r1 = receipts(&mut t.alice, &room, &id1).await;
    assert_eq!(read_users(&r1), ["bob"], "reading m2 also reads m1: {r1}");
    assert_eq!(
        status_in_history(&mut t.alice, &room, &id2).await,
        "delivered"
    );
    let (bob_unread, read_up_to) = unread(&mut t.bob, &room).await;
    assert_eq!(bob_unread, 0, "bob read everything");
    assert_eq!(
        read_up_to,
        id2.as_str(),
        "list_rooms.read_up_to is bob's watermark"
    );
    let (carol_unread, _) = unread(&mut t.carol, &room).await;
    assert_eq!(carol_unread, 2, "carol has read nothing");

    // carol reads m2 over REST.
    let carol_token = t.server.token("carol", Some("Carol"));
    let reply = t
        .server
        .post(
            &format!("/api/rooms/{room}/read"),
            Some(&carol_token),
            &json!({"message_id": id2}),
        )
        .await;
    assert_eq!(
        reply.status, 200,
        "POST /api/rooms/{{id}}/read: {}",
        reply.text
    );
    let carol_read_at = reply.json["read_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("POST read answers {{read_at}}: {}", reply.text));
    let ev = t
        .alice
        .next_event_where("message_read", |d| d["user_id"] == "carol")
        .await;
    assert_eq!(
        ev,
        json!({"room_id": room, "user_id": "carol", "message_id": id2, "read_at": carol_read_at})
    );
    for id in [&id1, &id2] {
        assert_eq!(
            status_in_history(&mut t.alice, &room, id).await,
            "read",
            "message {id} was read by both recipients"
        );
    }
    let r = receipts(&mut t.alice, &room, &id2).await;
    assert_eq!(r["status"], "read", "{r}");
    assert_eq!(r["read"]["count"], 2, "{r}");
    assert_eq!(read_users(&r), ["bob", "carol"], "{r}");
    assert_eq!(r["delivered"]["count"], 2, "{r}");
    let (carol_unread, _) = unread(&mut t.carol, &room).await;
    assert_eq!(carol_unread, 0);

    // The REST receipts equal the WebSocket ones.
    let alice_token = t.server.token("alice", Some("Alice"));
    let rest = t
        .server
        .get(
            &format!("/api/rooms/{room}/messages/{id2}/receipts"),
            Some(&alice_token),
        )
        .await;
    assert_eq!(rest.status, 200, "GET receipts: {}", rest.text);
    assert_eq!(rest.json, r, "REST receipts are `message_receipts`");
}

/// Issue 3: `mark_read` also counts as delivered; watermarks never move backwards (an older
/// `mark_delivered` or `mark_read` changes nothing); unread counts only count others'
/// messages after the read watermark, deleted ones excluded; read watermarks survive a restart.
#[tokio::test]
async fn watermarks_only_move_forward_and_survive_a_restart() {
    let mut t = trio().await;
    let room = t.room.clone();
    let m1 = say_to_all(&mut t, "one").await;
    let m2 = say_to_all(&mut t, "two").await;
    let m3 = say_to_all(&mut t, "three").await;
    let (id1, id2, id3) = (mid(&m1), mid(&m2), mid(&m3));

    // mark_read without mark_delivered: delivered too.
    t.bob
        .ok("mark_read", json!({"room_id": room, "message_id": id2}))
        .await;
    t.alice
        .next_event_where("message_read", |d| d["user_id"] == "bob")
        .await;
    let r = receipts(&mut t.alice, &room, &id2).await;
    assert_eq!(
        delivered_users(&r),
        ["bob"],
        "mark_read counts as delivered: {r}"
    );
    assert_eq!(read_users(&r), ["bob"], "{r}");
    let bob_read_at = r["read"]["users"][0]["read_at"].clone();

    // Backwards: older marks change nothing.
    t.bob
        .ok(
            "mark_delivered",
            json!({"room_id": room, "message_id": id1}),
        )
        .await;
    t.bob
        .ok("mark_read", json!({"room_id": room, "message_id": id1}))
        .await;
    let r = receipts(&mut t.alice, &room, &id2).await;
    assert_eq!(
        delivered_users(&r),
        ["bob"],
        "an older mark_delivered does not move bob's watermark back: {r}"
    );
    assert_eq!(
        r["read"]["users"],
        json!([{"user_id": "bob", "read_at": bob_read_at}]),
        "an older mark_read does not move bob's read watermark back: {r}"
    );
    let (bob_unread, read_up_to) = unread(&mut t.bob, &room).await;
    assert_eq!(read_up_to, id2.as_str(), "read_up_to stays at m2");
    assert_eq!(bob_unread, 1, "only m3 is unread for bob");

    // Unread counts exclude deleted messages and one's own.
    let m4 = say_to_all(&mut t, "four").await;
    t.alice
        .ok(
            "delete_message",
            json!({"room_id": room, "message_id": mid(&m4)}),
        )
        .await;
    t.bob
        .next_event_where("message_deleted", |d| d["message"]["id"] == m4["id"])
        .await;
    t.bob.say(&room, "bob's own").await;
    let (bob_unread, _) = unread(&mut t.bob, &room).await;
    assert_eq!(
        bob_unread, 1,
        "m3 only: m4 is deleted and bob's own message is not unread"
    );
    let (carol_unread, _) = unread(&mut t.carol, &room).await;
    assert_eq!(carol_unread, 4, "m1, m2, m3 from alice and bob's message");

    // Read watermarks are durable.
    let alice_token = t.server.token("alice", Some("Alice"));
    let bob_token = t.server.token("bob", Some("Bob"));
    let Trio {
        mut server,
        alice,
        bob,
        carol,
        ..
    } = t;
    for c in [alice, bob, carol] {
        c.close().await;
    }
    server.sigterm();
    server.wait_exit(Duration::from_secs(10));
    server.restart();
    let mut alice = Client::connect(&server, &alice_token).await;
    let mut bob = Client::connect(&server, &bob_token).await;
    let r = receipts(&mut alice, &room, &id2).await;
    assert_eq!(
        r["read"]["users"],
        json!([{"user_id": "bob", "read_at": bob_read_at}]),
        "bob's read watermark survives a restart: {r}"
    );
    let (bob_unread, read_up_to) = unread(&mut bob, &room).await;
    assert_eq!(read_up_to, id2.as_str(), "read_up_to survives a restart");
    assert_eq!(bob_unread, 1, "unread survives a restart");
    let r3 = receipts(&mut alice, &room, &id3).await;
    assert_eq!(r3["read"]["count"], 0, "nobody read m3: {r3}");
}

/// Issue 3: with `private_receipts: true`, bob's read position is never sent to anyone: no
/// `message_read` for bob reaches alice or carol, `read.users` leaves him out, and his read
/// does not make a message `read`. His delivered receipts are still shown.
#[tokio::test]
async fn private_receipts_hide_the_read_position() {
    let mut t = trio().await;
    let room = t.room.clone();
    let ack = t
        .bob
        .ok("set_settings", json!({"private_receipts": true}))
        .await;
    assert_eq!(ack, json!({"settings": {"private_receipts": true}}));
    let bob_token = t.server.token("bob", Some("Bob"));
    let me = t.server.get("/api/me", Some(&bob_token)).await;
    assert_eq!(me.status, 200, "GET /api/me: {}", me.text);
    assert_eq!(
        me.json["settings"],
        json!({"private_receipts": true}),
        "GET /api/me carries the settings: {}",
        me.text
    );

    let m1 = say_to_all(&mut t, "private").await;
    let id1 = mid(&m1);
    for c in [&mut t.bob, &mut t.carol] {
        c.ok(
            "mark_delivered",
            json!({"room_id": room, "message_id": id1}),
        )
        .await;
    }
    delivered_events(&mut t.alice, &room, &["bob", "carol"], &id1).await;
    let r = receipts(&mut t.alice, &room, &id1).await;
    assert_eq!(
        delivered_users(&r),
        ["bob", "carol"],
        "private receipts still show delivery: {r}"
    );
    assert_eq!(r["status"], "delivered", "{r}");

    // bob reads: acked, but nobody hears of it and the status stays delivered.
    let ack = t
        .bob
        .ok("mark_read", json!({"room_id": room, "message_id": id1}))
        .await;
    assert!(
        ack["read_at"].is_u64(),
        "mark_read still acks read_at: {ack}"
    );
    let r = receipts(&mut t.alice, &room, &id1).await;
    assert_eq!(r["read"]["count"], 0, "bob is not counted: {r}");
    assert_eq!(read_users(&r), Vec::<String>::new(), "{r}");
    assert_eq!(
        r["status"], "delivered",
        "bob's private read does not make it read: {r}"
    );
    assert_eq!(
        status_in_history(&mut t.alice, &room, &id1).await,
        "delivered"
    );
    let (bob_unread, _) = unread(&mut t.bob, &room).await;
    assert_eq!(
        bob_unread, 0,
        "bob's own unread count still follows his reads"
    );

    // carol reads: her message_read is the marker that bob's would have come before.
    t.carol
        .ok("mark_read", json!({"room_id": room, "message_id": id1}))
        .await;
    t.alice
        .next_event_where("message_read", |d| d["user_id"] == "carol")
        .await;
    t.carol
        .next_event_where("message_read", |d| d["user_id"] == "carol")
        .await;
    for (name, c) in [("alice", &mut t.alice), ("carol", &mut t.carol)] {
        c.assert_no_event(
            "message_read",
            Duration::from_millis(300),
            &format!("{name} must get no message_read for private bob"),
            |d| d["user_id"] == "bob",
        )
        .await;
    }
    let r = receipts(&mut t.alice, &room, &id1).await;
    assert_eq!(read_users(&r), ["carol"], "read.users excludes bob: {r}");
    assert_eq!(r["read"]["count"], 1, "{r}");
    assert_eq!(
        r["status"], "read",
        "read by every member who shares receipts (carol): {r}"
    );
    let rc = receipts(&mut t.carol, &room, &id1).await;
    assert_eq!(
        read_users(&rc),
        ["carol"],
        "nobody else sees bob either: {rc}"
    );

    // Turning it off again: later reads are shown.
    let ack = t
        .bob
        .ok("set_settings", json!({"private_receipts": false}))
        .await;
    assert_eq!(ack, json!({"settings": {"private_receipts": false}}));
}

/// Issue 3: receipts and marks for a room one is not in, or that does not exist, are
/// `not_found`, over WebSocket and REST alike.
#[tokio::test]
async fn receipts_of_a_room_one_is_not_in_are_not_found() {
    let mut t = trio().await;
    let room = t.room.clone();
    let m1 = say_to_all(&mut t, "members only").await;
    let id1 = mid(&m1);
    let mut dave = t.server.connect("dave").await;
    for event in ["message_receipts", "mark_delivered", "mark_read"] {
        for (room_id, what) in [(room.as_str(), "not a member"), ("4242", "no such room")] {
            let got = dave
                .request(event, json!({"room_id": room_id, "message_id": id1}))
                .await;
            assert_eq!(
                got.map_err(|(code, _)| code),
                Err("not_found".to_string()),
                "{event} by dave ({what})"
            );
        }
    }
    let got = t
        .alice
        .request(
            "message_receipts",
            json!({"room_id": room, "message_id": "4242"}),
        )
        .await;
    assert_eq!(
        got.map_err(|(code, _)| code),
        Err("not_found".to_string()),
        "receipts of a message that does not exist"
    );

    let dave_token = t.server.token("dave", Some("Dave"));
    let rest = t
        .server
        .get(
            &format!("/api/rooms/{room}/messages/{id1}/receipts"),
            Some(&dave_token),
        )
        .await;
    rest.assert_error(404, "not_found", "GET receipts by a non-member");
    let rest = t
        .server
        .post(
            &format!("/api/rooms/{room}/read"),
            Some(&dave_token),
            &json!({"message_id": id1}),
        )
        .await;
    rest.assert_error(404, "not_found", "POST read by a non-member");

    // Nothing leaked: alice's receipts are untouched.
    let r = receipts(&mut t.alice, &room, &id1).await;
    assert_eq!(r["delivered"]["count"], 0, "{r}");
    assert_eq!(r["read"]["count"], 0, "{r}");
    assert_eq!(id_of(&r["message_id"]), id_of(&m1["id"]));
}
