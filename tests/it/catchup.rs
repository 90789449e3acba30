//! Catch-up: a member who was away reconnects with `sync=1` and gets every change exactly once, in `seq` order, then live traffic with nothing missed or repeated, across restarts too.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, Server, id_of};

const AWAY_MESSAGES: usize = 1000;
const EDITS: usize = 10;
const DELETES: usize = 5;
/// Messages a second connection of alice sends while bob pages through his catch-up.
const DURING_CATCH_UP: usize = 30;
/// docs/protocol.md: `sync` returns at most 200 changes per room by default.
const DEFAULT_SYNC_LIMIT: usize = 200;

/// Events about a room that a `sync=1` connection must not get before its catch-up is done:
/// every pushed event but `hello` (the connection's own) and `presence` (about users).
fn is_room_event(ev: &str) -> bool {
    confab::protocol::PUSHED_EVENTS.contains(&ev) && !matches!(ev, "hello" | "presence")
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Between {
    Nothing,
    CleanRestart,
    Kill9,
}

/// One expected change: (seq, kind, message id).
type Expected = (u64, &'static str, String);

/// Everything but `status` (which is "as of the call") must match the message as it is now.
fn without_status(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("status");
    }
    m
}

/// The whole scenario: bob connects and leaves; alice sends 1,000 messages, edits 10 and deletes
/// 5; `between` happens to the server; bob reconnects with sync=1 and pages; meanwhile alice's
/// other device keeps sending; then one more message arrives live.
async fn catch_up(between: Between) {
    let mut server = Server::start();
    let alice_token = server.token("alice", Some("Alice"));
    let bob_token = server.token("bob", Some("Bob"));
    let mut alice = Client::connect(&server, &alice_token).await;
    let mut bob = Client::connect(&server, &bob_token).await;
    let room = alice.create_room("catch-up", "private").await;
    alice.invite(&room, "bob").await;
    bob.next_event("room_added").await;
    let elsewhere = alice.create_room("alice alone", "private").await;
    let seen = alice.say(&room, "before bob leaves").await;
    let got = bob.next_message_where(|m| m["id"] == seen["id"]).await;
    let cursor = got["id"].as_str().expect("id").to_string();
    bob.close().await;

    // While bob is away.
    let sent = alice
        .say_many(&room, AWAY_MESSAGES, 32, |i| {
            format!("while you were away {i}")
        })
        .await;
    let mut now: HashMap<String, Value> = sent
        .iter()
        .map(|m| (m["id"].as_str().expect("id").to_string(), m.clone()))
        .collect();
    let mut expected: Vec<Expected> = sent
        .iter()
        .map(|m| {
            (
                id_of(&m["id"]),
                "message",
                m["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    expected.sort();
    for i in 0..EDITS {
        let m = &sent[100 + 37 * i];
        let id = m["id"].as_str().expect("id").to_string();
        let ack = alice
            .ok(
                "edit_message",
                json!({"room_id": room, "message_id": id, "content": format!("edited {i}")}),
            )
            .await;
        let ev = alice
            .next_event_where("message_updated", |d| d["message"]["id"] == id.as_str())
            .await;
        assert_eq!(
            ev["message"], ack["message"],
            "message_updated carries the edit"
        );
        let seq = id_of(&ev["seq"]);
        assert!(seq > id_of(&m["id"]), "an edit gets a new seq: {ev}");
        expected.push((seq, "updated", id.clone()));
        now.insert(id, ack["message"].clone());
    }
    for i in 0..DELETES {
        let m = &sent[600 + 51 * i];
        let id = m["id"].as_str().expect("id").to_string();
        let ack = alice
            .ok("delete_message", json!({"room_id": room, "message_id": id}))
            .await;
        let ev = alice
            .next_event_where("message_deleted", |d| d["message"]["id"] == id.as_str())
            .await;
        let seq = id_of(&ev["seq"]);
        assert!(seq > id_of(&m["id"]), "a delete gets a new seq: {ev}");
        expected.push((seq, "deleted", id.clone()));
        now.insert(id, ack["message"].clone());
    }
    let mut seqs = HashSet::new();
    assert!(
        expected.iter().all(|(s, _, _)| seqs.insert(*s)),
        "every change has its own seq"
    );
    expected.sort();

    match between {
        Between::Nothing => {}
        Between::CleanRestart => {
            alice.close().await;
            server.sigterm();
            server.wait_exit(Duration::from_secs(10));
            server.restart();
            alice = Client::connect(&server, &alice_token).await;
        }
        Between::Kill9 => {
            server.kill9();
            server.restart();
            alice = Client::connect(&server, &alice_token).await;
        }
    }

    // bob comes back and catches up while alice's other device keeps talking.
    let mut bob = Client::connect_sync(&server, &bob_token).await;
    let mut alice2 = Some(Client::connect(&server, &alice_token).await);
    let mut changes: Vec<Value> = Vec::new();
    let mut last = cursor.clone();
    let mut live_ref = None;
    let mut talker = None;
    for page in 0..100 {
        let mut rooms = serde_json::Map::new();
        rooms.insert(room.clone(), json!(last));
        if page == 0 {
            rooms.insert(elsewhere.clone(), json!(cursor));
            rooms.insert("4242".to_string(), json!(cursor));
        }
        let r = bob.send_request("sync", json!({ "rooms": rooms })).await;
        let ack = bob
            .reply(&r)
            .await
            .unwrap_or_else(|(code, msg)| panic!("sync failed: {code}: {msg}"));
        if page == 0 {
            let mut missing: Vec<String> = ack["missing"]
                .as_array()
                .unwrap_or_else(|| panic!("sync.missing should be an array: {ack}"))
                .iter()
                .map(|v| v.as_str().expect("room id").to_string())
                .collect();
            missing.sort();
            let mut want = vec![elsewhere.clone(), "4242".to_string()];
            want.sort();
            assert_eq!(
                missing, want,
                "rooms bob is not in (or that do not exist) come back in `missing`"
            );
            // From now on alice's other device talks while bob pages.
            let mut a2 = alice2.take().expect("alice's other device");
            let room2 = room.clone();
            talker = Some(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..DURING_CATCH_UP {
                    out.push(a2.say(&room2, &format!("during catch-up {i}")).await);
                }
                out
            }));
        }
        let entry = &ack["rooms"][room.as_str()];
        let page_changes = entry["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("sync.rooms[room].changes should be an array: {ack}"))
            .clone();
        let has_more = entry["has_more"]
            .as_bool()
            .unwrap_or_else(|| panic!("sync.rooms[room].has_more should be a bool: {ack}"));
        assert!(
            page_changes.len() <= DEFAULT_SYNC_LIMIT,
            "a page holds at most the default 200 changes, got {}",
            page_changes.len()
        );
        assert!(
            ack["live"].is_boolean(),
            "sync answers carry `live`: {}",
            ack["live"]
        );
        if has_more {
            assert!(!page_changes.is_empty(), "has_more with an empty page");
            assert_eq!(
                ack["live"], false,
                "an answer with more to come is not live yet"
            );
        }
        if let Some(c) = page_changes.last() {
            last = c["seq"].as_str().expect("change.seq").to_string();
        }
        changes.extend(page_changes);
        if !has_more {
            assert_eq!(
                ack["live"], true,
                "the answer with nothing more says live: true"
            );
            live_ref = Some(r);
            break;
        }
    }
    let live_ref = live_ref.expect("the catch-up ended within 100 pages");
    let during = tokio::time::timeout(Duration::from_secs(30), talker.expect("talker started"))
        .await
        .expect("alice's other device finished sending")
        .expect("talker task");
    let after = alice.say(&room, "after the catch-up").await;
    let live_after = bob.next_message_where(|m| m["id"] == after["id"]).await;
    assert_eq!(live_after, after, "a new message arrives live");

    // Nothing about the room reached bob before the live answer.
    let arrivals = bob.arrivals().to_vec();
    let live_at = arrivals
        .iter()
        .position(|(ev, r)| ev == "ack" && r.as_deref() == Some(live_ref.as_str()))
        .expect("the live answer is in the log");
    let early: Vec<&(String, Option<String>)> = arrivals[..live_at]
        .iter()
        .filter(|(ev, _)| is_room_event(ev))
        .collect();
    if !early.is_empty() {
        let early_messages = arrivals[..live_at]
            .iter()
            .filter(|(ev, _)| ev == "receive_message")
            .count();
        let early_ids: Vec<Value> = bob
            .buffered("receive_message")
            .iter()
            .take(early_messages)
            .map(|d| d["message"]["id"].clone())
            .collect();
        let also_in_pages: Vec<&Value> = early_ids
            .iter()
            .filter(|id| changes.iter().any(|c| c["message"]["id"] == **id))
            .collect();
        let during_index: Vec<Option<usize>> = early_ids
            .iter()
            .map(|id| during.iter().position(|m| m["id"] == *id))
            .collect();
        let pages_of_during = changes
            .iter()
            .filter(|c| during.iter().any(|m| m["id"] == c["message"]["id"]))
            .count();
        panic!(
            "a sync=1 connection got room events before the sync answer saying live: true \
             ({between:?}): {early:?}; early messages {early_ids:?} (index among the {} sent \
             during the catch-up: {during_index:?}; {pages_of_during} of those came in pages), \
             of which also in the sync pages: {also_in_pages:?}; frames around the answer: {:?}",
            during.len(),
            &arrivals[live_at.saturating_sub(4)..(live_at + 2).min(arrivals.len())]
        );
    }

    // The changes: seq strictly increasing (no repeat, in order), each well formed.
    let mut prev = id_of(&json!(cursor));
    for c in &changes {
        let seq = id_of(&c["seq"]);
        assert!(
            seq > prev,
            "changes out of seq order or repeated: {seq} after {prev}"
        );
        prev = seq;
        let kind = c["kind"].as_str().expect("change.kind");
        assert!(
            ["message", "updated", "deleted"].contains(&kind),
            "change.kind: {c}"
        );
        if kind == "message" {
            assert_eq!(
                c["seq"], c["message"]["id"],
                "a new message's seq is its id: {c}"
            );
        }
    }
    let got: Vec<Expected> = changes
        .iter()
        .map(|c| {
            let kind = match c["kind"].as_str() {
                Some("message") => "message",
                Some("updated") => "updated",
                Some("deleted") => "deleted",
                other => panic!("change.kind {other:?}"),
            };
            (
                id_of(&c["seq"]),
                kind,
                c["message"]["id"].as_str().expect("message.id").to_string(),
            )
        })
        .collect();
    let n = expected.len();
    assert!(
        got.len() >= n,
        "bob got {} changes, expected {} ({} messages, {} edits, {} deletes) plus those sent \
         during the catch-up ({between:?})",
        got.len(),
        n,
        AWAY_MESSAGES,
        EDITS,
        DELETES
    );
    if got[..n] != expected[..] {
        let want: HashSet<&Expected> = expected.iter().collect();
        let have: HashSet<&Expected> = got[..n].iter().collect();
        let missing: Vec<_> = want.difference(&have).take(5).collect();
        let extra: Vec<_> = have.difference(&want).take(5).collect();
        panic!(
            "the catch-up is not exactly the 1,000 messages, 10 edits and 5 deletes in seq \
             order ({between:?}); missing e.g. {missing:?}; unexpected e.g. {extra:?}"
        );
    }
    for c in &changes[..n] {
        let id = c["message"]["id"].as_str().expect("id");
        assert_eq!(
            without_status(&c["message"]),
            without_status(&now[id]),
            "a change carries the message as it is now"
        );
    }

    // The messages sent during the catch-up: a prefix in the pages, the rest live, each once.
    let tail = &changes[n..];
    for (c, m) in tail.iter().zip(&during) {
        assert_eq!(c["kind"], "message", "{c}");
        assert_eq!(
            c["message"]["id"], m["id"],
            "messages sent during the catch-up come in order, none skipped"
        );
    }
    assert!(
        tail.len() <= during.len(),
        "unexpected changes after the expected ones: {:?}",
        &tail[during.len().min(tail.len())..]
    );
    let mut live_ids: Vec<Value> = Vec::new();
    for e in bob.buffered("receive_message") {
        live_ids.push(e["message"]["id"].clone());
    }
    let want_live: Vec<Value> = during[tail.len()..]
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(
        live_ids,
        want_live,
        "every message of the catch-up window that was not in a page arrives live, once, in \
         order ({} in pages, {} live)",
        tail.len(),
        want_live.len()
    );
    eprintln!(
        "catch-up ({between:?}): {} changes in pages, {} of the {} concurrent messages live",
        changes.len(),
        want_live.len(),
        DURING_CATCH_UP
    );
}

/// Issue 3: bob leaves; alice sends 1,000 messages, edits 10 and deletes 5; bob reconnects with
/// `sync=1`, pages with `sync` while `has_more`, and gets exactly those changes in `seq` order,
/// no gap, no repeat, no room event before the answer that says `live: true`; messages sent
/// during the catch-up come once, in a page or live; a new message then arrives live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_member_catches_up_exactly_once() {
    catch_up(Between::Nothing).await;
}

/// Issue 3: the same catch-up across a clean restart (SIGTERM) while bob is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_across_a_clean_restart() {
    catch_up(Between::CleanRestart).await;
}

/// Issue 3: the same catch-up across kill -9 while bob is away: every acked change is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_across_kill_9() {
    catch_up(Between::Kill9).await;
}
