//! History paging: 1,000 messages walked with `before` and `after` over REST and WebSocket, without gap or repeat.

use serde_json::{Value, json};

use crate::support::{Client, Server, id_of};

const TOTAL: usize = 1000;
const BATCH: usize = 50;
const PAGE: usize = 100;

/// Sends `count` messages from one client in pipelined batches; returns the acked ids.
async fn send_batches(client: &mut Client, room: &str, tag: &str, count: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(BATCH) {
        let mut refs = Vec::with_capacity(BATCH);
        for i in batch * BATCH..((batch + 1) * BATCH).min(count) {
            let data = json!({"room_id": room, "client_msg_id": format!("{tag}-{i}"), "type": "text", "content": format!("{tag} #{i}")});
            refs.push(client.send_request("send_message", data).await);
        }
        for r in refs {
            match client.reply(&r).await {
                Ok(ack) => ids.push(id_of(&ack["message"]["id"])),
                Err((code, message)) => panic!("send_message {tag} failed: {code}: {message}"),
            }
        }
        client.clear_events();
    }
    ids
}

/// Checks one page: at most `PAGE` messages, all of the room, strictly newest first.
fn page_ids(page: &[Value], room: &str) -> Vec<u64> {
    assert!(
        page.len() <= PAGE,
        "a page holds at most `limit` messages, got {}",
        page.len()
    );
    let ids: Vec<u64> = page
        .iter()
        .map(|m| {
            assert_eq!(
                m["room_id"], room,
                "a message of another room in the page: {m}"
            );
            id_of(&m["id"])
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "a page is newest first, without repeats: {ids:?}"
    );
    ids
}

/// Fetches one page over REST or WebSocket.
async fn fetch(
    server: &Server,
    client: &mut Client,
    token: &str,
    over_ws: bool,
    room: &str,
    cursor: Option<(&str, u64)>,
) -> (Vec<Value>, bool) {
    if over_ws {
        let mut data = json!({"room_id": room, "limit": PAGE});
        if let Some((key, id)) = cursor {
            data[key] = json!(id.to_string());
        }
        client.history(data).await
    } else {
        let mut path = format!("/api/rooms/{room}/messages?limit={PAGE}");
        if let Some((key, id)) = cursor {
            path.push_str(&format!("&{key}={id}"));
        }
        let r = server.get(&path, Some(token)).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        let messages = r.json["messages"]
            .as_array()
            .expect("messages array")
            .clone();
        (
            messages,
            r.json["has_more"].as_bool().expect("has_more bool"),
        )
    }
}

/// Walks from the newest page to the oldest with `before`.
async fn walk_backward(
    server: &Server,
    client: &mut Client,
    token: &str,
    over_ws: bool,
    room: &str,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    for page_no in 0..=TOTAL / PAGE + 1 {
        let (page, has_more) = fetch(
            server,
            client,
            token,
            over_ws,
            room,
            cursor.map(|c| ("before", c)),
        )
        .await;
        let ids = page_ids(&page, room);
        if let (Some(c), Some(first)) = (cursor, ids.first()) {
            assert!(*first < c, "`before` gives ids below the cursor");
        }
        seen.extend(&ids);
        let full_pages = TOTAL / PAGE;
        assert_eq!(
            has_more,
            page_no + 1 < full_pages,
            "has_more on backward page {page_no} (over_ws={over_ws})"
        );
        if !has_more {
            return seen;
        }
        assert_eq!(ids.len(), PAGE, "a page that is not the last is full");
        cursor = ids.last().copied();
    }
    panic!("the backward walk did not end");
}

/// Walks from `start` (exclusive) towards the newest with `after`, asking again with the newest id
/// of each page.
async fn walk_forward(
    server: &Server,
    client: &mut Client,
    token: &str,
    over_ws: bool,
    room: &str,
    start: u64,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut cursor = start;
    for page_no in 0..=TOTAL / PAGE + 1 {
        let (page, has_more) = fetch(
            server,
            client,
            token,
            over_ws,
            room,
            Some(("after", cursor)),
        )
        .await;
        let mut ids = page_ids(&page, room);
        if let Some(last) = ids.last() {
            assert!(*last > cursor, "`after` gives ids above the cursor");
        }
        // Remaining after this page: TOTAL - 1 (the start is excluded) - already seen.
        let remaining = TOTAL - 1 - seen.len();
        assert_eq!(
            ids.len(),
            remaining.min(PAGE),
            "forward page {page_no} holds the oldest `limit` after the cursor"
        );
        assert_eq!(
            has_more,
            remaining > PAGE,
            "has_more on forward page {page_no} (over_ws={over_ws})"
        );
        let newest = ids.first().copied();
        ids.reverse();
        seen.extend(ids);
        if !has_more {
            return seen;
        }
        cursor = newest.expect("a page with more after it is not empty");
    }
    panic!("the forward walk did not end");
}

/// Issue 2: a thousand messages page back and forth, over REST and WebSocket, with no gap, no
/// repeat, newest first within a page, and `has_more` false at each end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_page_without_gap_or_repeat() {
    let server = Server::start();
    let alice_token = server.token("alice", Some("Alice"));
    let bob_token = server.token("bob", Some("Bob"));
    let created = server
        .post(
            "/api/rooms",
            Some(&alice_token),
            &json!({"name": "archive", "visibility": "private"}),
        )
        .await;
    assert_eq!(created.status, 201, "POST /api/rooms: {}", created.text);
    let room = created.json["room"]["id"]
        .as_str()
        .expect("room.id")
        .to_string();
    let invited = server
        .post(
            &format!("/api/rooms/{room}/invite"),
            Some(&alice_token),
            &json!({"user_id": "bob"}),
        )
        .await;
    assert_eq!(invited.status, 200, "POST invite: {}", invited.text);

    let mut alice = Client::connect(&server, &alice_token).await;
    let mut bob = Client::connect(&server, &bob_token).await;
    let (a, b) = tokio::join!(
        send_batches(&mut alice, &room, "a", TOTAL / 2),
        send_batches(&mut bob, &room, "b", TOTAL / 2)
    );
    let mut acked: Vec<u64> = a.into_iter().chain(b).collect();
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(acked.len(), TOTAL, "every send got its own id");

    // The default page is the newest 50; limits outside 1..=200 are refused.
    let (page, has_more) = alice.history(json!({"room_id": room})).await;
    assert_eq!(
        page_ids(&page, &room),
        acked.iter().rev().take(50).copied().collect::<Vec<_>>()
    );
    assert!(has_more);
    for limit in [0, 201] {
        match alice
            .request("history", json!({"room_id": room, "limit": limit}))
            .await
        {
            Err((code, _)) => assert_eq!(code, "invalid_payload", "history limit {limit}"),
            Ok(ack) => panic!(
                "history limit {limit} should be invalid_payload, got {} messages",
                ack["messages"]
            ),
        }
    }

    for over_ws in [false, true] {
        let backward = walk_backward(&server, &mut alice, &alice_token, over_ws, &room).await;
        let newest_first: Vec<u64> = acked.iter().rev().copied().collect();
        assert_eq!(
            backward.len(),
            TOTAL,
            "backward walk (over_ws={over_ws}) sees every message once"
        );
        assert_eq!(
            backward, newest_first,
            "backward walk (over_ws={over_ws}) matches the acked ids"
        );

        let forward = walk_forward(&server, &mut bob, &bob_token, over_ws, &room, acked[0]).await;
        assert_eq!(
            forward,
            acked[1..].to_vec(),
            "forward walk (over_ws={over_ws}) matches the acked ids"
        );
    }
}

/// Issue 3 (slow consumers): a page of large messages is cut short by the byte budget (half of
/// `limits.outbound_queue_bytes`) instead of overflowing the reader's own queue and getting it
/// closed with 4003; paging on with `before` and with `sync` still reaches every message once.
#[tokio::test]
async fn pages_of_large_messages_fit_the_outbound_queue() {
    let server = Server::start_with(crate::support::Options::env(&[(
        "CONFAB_LIMITS__OUTBOUND_QUEUE_BYTES",
        "65536",
    )]));
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("big", "private").await;
    let big = "x".repeat(15_000);
    let mut sent = Vec::new();
    for i in 0..12 {
        let ack = alice
            .ok(
                "send_message",
                json!({"room_id": room, "client_msg_id": format!("big-{i}"), "type": "text", "content": big}),
            )
            .await;
        sent.push(id_of(&ack["message"]["id"]));
    }
    alice.clear_events();

    // History: pages of at most ~32 KiB, has_more until the end, every message once.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..20 {
        let mut data = json!({"room_id": room, "limit": 200});
        if let Some(b) = &before {
            data["before"] = json!(b);
        }
        let page = alice.ok("history", data).await;
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        assert!(!msgs.is_empty(), "a page holds at least one message");
        assert!(
            msgs.len() < 12,
            "12 messages of 15 KB do not fit one page under a 64 KiB queue"
        );
        seen.extend(msgs.iter().map(|m| id_of(&m["id"])));
        before = msgs
            .last()
            .map(|m| m["id"].as_str().unwrap_or_default().to_owned());
        if page["has_more"] == json!(false) {
            break;
        }
    }
    seen.reverse();
    assert_eq!(seen, sent, "paging reaches every message once, in order");

    // Sync from the start: the same budget, the same messages, and the connection stays open.
    let mut got = Vec::new();
    let mut cursor = "0".to_owned();
    for _ in 0..20 {
        let answer = alice
            .ok("sync", json!({"rooms": {room.clone(): cursor}}))
            .await;
        let changes = answer["rooms"][&room]["changes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        got.extend(changes.iter().map(|c| id_of(&c["message"]["id"])));
        if let Some(last) = changes.last() {
            cursor = last["seq"].as_str().unwrap_or_default().to_owned();
        }
        if answer["rooms"][&room]["has_more"] == json!(false) {
            break;
        }
    }
    assert_eq!(got, sent, "sync pages reach every message once, in order");
    alice.ping().await;
}
