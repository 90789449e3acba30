//! Order on one connection: replies leave in the order requests arrived, a read sees the writes sent before it, every stored send is acked before a 1008 close, and a `sync=1` connection gets no room event before its live `sync` answer.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, Options, Server, TIMEOUT, unique};

fn send(room: &str, content: &str) -> (&'static str, Value) {
    (
        "send_message",
        json!({"room_id": room, "client_msg_id": format!("o-{}", unique()), "type": "text",
            "content": content}),
    )
}

fn history(room: &str) -> (&'static str, Value) {
    ("history", json!({"room_id": room, "limit": 200}))
}

/// Waits for the reply to every ref; returns the whole frames, by ref order.
async fn replies(c: &mut Client, refs: &[String]) -> Vec<Value> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        out.push(c.reply_frame(r).await);
    }
    out
}

/// The refs among `refs` in the order their replies arrived.
fn reply_order(c: &Client, refs: &[String]) -> Vec<String> {
    let wanted: HashSet<&String> = refs.iter().collect();
    c.arrivals()
        .iter()
        .filter(|(ev, r)| {
            (ev == "ack" || ev == "error") && r.as_ref().is_some_and(|r| wanted.contains(r))
        })
        .filter_map(|(_, r)| r.clone())
        .collect()
}

/// Sends `requests` in one write and checks: the replies come in request order, and every
/// `history` holds exactly the messages whose sends came before it (the room starts empty).
async fn check_burst(c: &mut Client, room: &str, requests: &[(&str, Value)], what: &str) {
    let refs = c.send_requests_at_once(requests).await;
    let frames = replies(c, &refs).await;
    let order = reply_order(c, &refs);
    let names: Vec<&str> = requests.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        order, refs,
        "{what}: replies must leave in the order the requests arrived ({names:?})"
    );
    let mut sent: Vec<Value> = Vec::new();
    for ((event, data), frame) in requests.iter().zip(&frames) {
        match *event {
            "send_message" => {
                assert_eq!(frame["event"], "ack", "{what}: a send failed: {frame}");
                sent.push(frame["data"]["message"]["id"].clone());
            }
            "history" if data["room_id"] == room => {
                assert_eq!(frame["event"], "ack", "{what}: history failed: {frame}");
                let mut got: Vec<Value> = frame["data"]["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| m["id"].clone())
                    .collect();
                got.reverse();
                assert_eq!(
                    got, sent,
                    "{what}: a history sees exactly the messages sent before it on this \
                     connection"
                );
            }
            _ => {}
        }
    }
}

/// Issue 24, point 3: `send_message`, `ping` and `history` sent at once on one socket are
/// answered in that order, and the history holds the message just sent (10 rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_then_ping_then_history_are_answered_in_order() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    for round in 0..10 {
        let room = alice
            .create_room(&format!("order {round}"), "private")
            .await;
        let reqs = [
            send(&room, &format!("first {round}")),
            ("ping", json!({})),
            history(&room),
        ];
        check_burst(&mut alice, &room, &reqs, &format!("round {round}")).await;
    }
}

/// Issue 24, point 3: several sends interleaved with reads, in different patterns: replies in
/// arrival order, each history holding exactly the sends before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_sends_and_reads_keep_their_order() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    // s: send, h: history, p: ping.
    let patterns = [
        "sssh",
        "shsh",
        "ssssssssph",
        "hsphsphs",
        "sssssssssssssssshp",
        "spspspsh",
        "shhhs",
    ];
    for round in 0..3 {
        for (i, pattern) in patterns.iter().enumerate() {
            let room = alice
                .create_room(&format!("mix {round}-{i}"), "private")
                .await;
            let reqs: Vec<(&str, Value)> = pattern
                .chars()
                .enumerate()
                .map(|(k, c)| match c {
                    's' => send(&room, &format!("{pattern} #{k}")),
                    'h' => history(&room),
                    _ => ("ping", json!({})),
                })
                .collect();
            check_burst(
                &mut alice,
                &room,
                &reqs,
                &format!("pattern {pattern} round {round}"),
            )
            .await;
        }
    }
}

/// Issue 24, point 3: every kind of request (and a refused send, a bad frame's error) sent right
/// behind a send is answered after that send's ack, in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_kind_waits_for_the_sends_before_it() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    bob.ping().await;
    let room = alice.create_room("kinds", "public").await;
    let spare = alice.create_room("to leave", "private").await;
    let first = alice.say(&room, "already there").await;
    let mid = first["id"].as_str().expect("id").to_string();
    let kinds: Vec<(&str, Value)> = vec![
        ("ping", json!({})),
        ("history", json!({"room_id": room, "limit": 5})),
        (
            "edit_message",
            json!({"room_id": room, "message_id": mid, "content": "edited"}),
        ),
        ("list_rooms", json!({})),
        ("list_public_rooms", json!({})),
        ("join_room", json!({"room_id": room})),
        ("invite", json!({"room_id": room, "user_id": "bob"})),
        ("list_members", json!({"room_id": room})),
        ("open_dm", json!({"user_id": "bob"})),
        ("sync", json!({"rooms": {room.clone(): "0"}})),
        (
            "mark_delivered",
            json!({"room_id": room, "message_id": mid}),
        ),
        ("mark_read", json!({"room_id": room, "message_id": mid})),
        (
            "message_receipts",
            json!({"room_id": room, "message_id": mid}),
        ),
        ("typing", json!({"room_id": room, "state": "start"})),
        ("set_settings", json!({"private_receipts": false})),
        ("search", json!({"q": "already"})),
        ("create_room", json!({"name": "made in a burst"})),
        ("leave_room", json!({"room_id": spare})),
        // Refusals: a send with a bad payload, a request for a room that does not exist, an
        // unknown event.
        (
            "send_message",
            json!({"room_id": room, "client_msg_id": "bad", "type": "nope", "content": "x"}),
        ),
        ("history", json!({"room_id": "4242"})),
        ("no_such_event", json!({})),
        (
            "delete_message",
            json!({"room_id": room, "message_id": mid}),
        ),
    ];
    let mut reqs: Vec<(&str, Value)> = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        reqs.push(send(&room, &format!("before {}", k.0)));
        reqs.push(k.clone());
        if i % 3 == 0 {
            reqs.push(send(&room, "a second one"));
            reqs.push(send(&room, "and a third"));
        }
    }
    let refs = alice.send_requests_at_once(&reqs).await;
    let frames = replies(&mut alice, &refs).await;
    let order = reply_order(&alice, &refs);
    if order != refs {
        let named: Vec<&str> = order
            .iter()
            .map(|r| reqs[refs.iter().position(|x| x == r).expect("known ref")].0)
            .collect();
        panic!("replies left out of arrival order: {named:?}");
    }
    for ((event, _), frame) in reqs.iter().zip(&frames) {
        if frame["data"]["code"] == "invalid_payload" || frame["data"]["code"] == "not_found" {
            continue;
        }
        if *event == "no_such_event" {
            assert_eq!(frame["data"]["code"], "unknown_event", "{frame}");
            continue;
        }
        assert_eq!(frame["event"], "ack", "{event} failed: {frame}");
    }

    // A frame that is not JSON gets an error without a ref: it too waits for the send before.
    let before = alice.arrivals().len();
    let r = format!("r{}", unique());
    let (e, d) = send(&room, "right before garbage");
    let texts = vec![
        json!({"event": e, "ref": r, "data": d}).to_string(),
        "this is not json".to_string(),
    ];
    alice
        .try_send_frames_at_once(&texts)
        .await
        .expect("send two frames");
    alice.reply_frame(&r).await;
    loop {
        let tail: Vec<_> = alice.arrivals()[before..].to_vec();
        if let Some(bad) = tail.iter().position(|(ev, r)| ev == "error" && r.is_none()) {
            let ack = tail
                .iter()
                .position(|(_, x)| x.as_deref() == Some(r.as_str()))
                .expect("the send's ack arrived");
            assert!(
                ack < bad,
                "a bad frame's error overtook the ack before it: {tail:?}"
            );
            break;
        }
        alice
            .next_reply_frame(TIMEOUT)
            .await
            .expect("the bad frame's error");
    }
}

/// Issue 24, point 4: a burst of 120 sends over a tight per-connection limit ends in a 1008
/// close; every stored message got its ack before the close frame (3 trials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_send_is_acked_before_the_abuse_close() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__MESSAGES_PER_SEC", "1"),
        ("CONFAB_RATE_LIMITS__MESSAGES_BURST", "30"),
        ("CONFAB_RATE_LIMITS__ABUSE_STRIKES", "5"),
    ]));
    let mut reader = server.connect("bob").await;
    for trial in 0..3 {
        let mut alice = server.connect("alice").await;
        let room = alice.create_room(&format!("burst {trial}"), "public").await;
        reader.ok("join_room", json!({"room_id": room})).await;
        let reqs: Vec<(&str, Value)> = (0..120)
            .map(|i| send(&room, &format!("burst {trial} #{i}")))
            .collect();
        let refs = alice.send_requests_at_once(&reqs).await;
        let code = alice.expect_close(TIMEOUT).await;
        assert_eq!(
            code,
            Some(1008),
            "trial {trial}: the burst is closed as abuse"
        );
        let wanted: HashSet<&String> = refs.iter().collect();
        let acked: Vec<Value> = alice
            .buffered_replies()
            .iter()
            .filter(|v| {
                v["event"] == "ack"
                    && v["ref"]
                        .as_str()
                        .is_some_and(|r| wanted.contains(&r.to_string()))
            })
            .map(|v| v["data"]["message"]["id"].clone())
            .collect();
        // Writes commit in order: once bob's own message is acked, every send of alice's that
        // reached storage is committed too.
        reader.say(&room, "marker").await;
        let (stored, has_more) = reader.history(json!({"room_id": room, "limit": 200})).await;
        assert!(!has_more);
        let mut stored: Vec<Value> = stored
            .iter()
            .filter(|m| m["sender_id"] == "alice")
            .map(|m| m["id"].clone())
            .collect();
        stored.reverse();
        assert!(
            !stored.is_empty(),
            "trial {trial}: some sends were stored; replies: {:?}",
            alice.buffered_replies().iter().take(3).collect::<Vec<_>>()
        );
        assert_eq!(
            acked.len(),
            stored.len(),
            "trial {trial}: {} messages stored, {} acks before the 1008 close",
            stored.len(),
            acked.len()
        );
        assert_eq!(
            acked, stored,
            "trial {trial}: the acks name the stored messages"
        );
    }
}

/// Issue 24, point 5: bob reconnects with `sync=1` and catches up while alice keeps sending;
/// no `receive_message` reaches him before the `sync` answer saying `live: true`, and each of
/// alice's messages reaches him exactly once, in a page or live (20 races).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_event_before_the_live_sync_answer() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("race", "public").await;
    {
        let mut bob = server.connect("bob").await;
        bob.ok("join_room", json!({"room_id": room})).await;
        bob.close().await;
    }
    let mut cursor = "0".to_string();
    let mut early_runs = Vec::new();
    for race in 0..20 {
        let mut talker = server.connect("alice").await;
        let room2 = room.clone();
        let sending = tokio::spawn(async move {
            let sent = talker
                .say_many(&room2, 200, 32, |i| format!("race {race} #{i}"))
                .await;
            talker.close().await;
            sent
        });
        // bob comes back with sync=1 while alice talks.
        let mut bob = Client::connect_sync(&server, &server.token("bob", Some("Bob"))).await;
        let mut pages: Vec<Value> = Vec::new();
        let mut last = cursor.clone();
        let mut live_ref = None;
        for _ in 0..500 {
            let r = bob
                .send_request(
                    "sync",
                    json!({"rooms": {room.clone(): last.clone()}, "limit": 7}),
                )
                .await;
            let ack = bob
                .reply(&r)
                .await
                .unwrap_or_else(|(c, m)| panic!("sync failed: {c}: {m}"));
            let entry = &ack["rooms"][room.as_str()];
            let changes = entry["changes"].as_array().expect("changes").clone();
            if let Some(c) = changes.last() {
                last = c["seq"].as_str().expect("seq").to_string();
            }
            pages.extend(changes);
            if ack["live"] == true {
                live_ref = Some(r);
                break;
            }
        }
        let live_ref = live_ref.expect("the catch-up went live within 50 pages");
        let sent = tokio::time::timeout(Duration::from_secs(30), sending)
            .await
            .expect("alice finished sending")
            .expect("sender task");
        let newest = sent.last().expect("sent")["id"].clone();
        let in_pages: Vec<Value> = pages.iter().map(|c| c["message"]["id"].clone()).collect();
        // Taken from the buffer here, put back below in its place (the newest, so last).
        let newest_live = !in_pages.contains(&newest);
        if newest_live {
            bob.next_message_where(|m| m["id"] == newest).await;
        }
        let live_at = bob
            .arrivals()
            .iter()
            .position(|(_, r)| r.as_deref() == Some(live_ref.as_str()))
            .expect("the live answer arrived");
        let early = bob.arrivals()[..live_at]
            .iter()
            .filter(|(ev, _)| ev == "receive_message")
            .count();
        if early > 0 {
            early_runs.push((race, early));
        }
        let live: Vec<Value> = bob
            .buffered("receive_message")
            .iter()
            .map(|d| d["message"]["id"].clone())
            .collect();
        let mut got: Vec<Value> = in_pages;
        got.extend(live);
        if newest_live {
            got.push(newest.clone());
        }
        let want: Vec<Value> = sent.iter().map(|m| m["id"].clone()).collect();
        let got_sent: Vec<Value> = got.into_iter().filter(|id| want.contains(id)).collect();
        assert_eq!(
            got_sent, want,
            "race {race}: each message reaches bob once, in order, in a page or live"
        );
        cursor = newest.as_str().expect("id").to_string();
        bob.close().await;
    }
    assert!(
        early_runs.is_empty(),
        "receive_message before the live sync answer in (race, count): {early_runs:?}"
    );
}
