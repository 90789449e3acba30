//! Idempotent sends: the same (sender, client_msg_id) stores and broadcasts one message and acks every retry with it.

use serde_json::{Value, json};

use crate::support::{Client, Server};

/// The message ids of a `sync` page's changes (one room, one page).
fn synced_ids(ack: &Value, room: &str) -> Vec<Value> {
    ack["rooms"][room]["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("sync.rooms[room].changes should be an array: {ack}"))
        .iter()
        .map(|c| c["message"]["id"].clone())
        .collect()
}

/// Two members of a fresh room: (server, room, alice, bob).
async fn pair() -> (Server, String, Client, Client) {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let room = alice.create_room("retries", "private").await;
    alice.invite(&room, "bob").await;
    bob.next_event("room_added").await;
    (server, room, alice, bob)
}

/// The `receive_message`s bob gets up to (and including) the marker message.
async fn received_until(bob: &mut Client, marker: &Value) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..1000 {
        let m = bob.next_event("receive_message").await["message"].clone();
        let done = m["id"] == marker["id"];
        got.push(m);
        if done {
            return got;
        }
    }
    panic!("the marker message never arrived");
}

fn count_cmid(messages: &[Value], sender: &str, cmid: &str) -> usize {
    messages
        .iter()
        .filter(|m| m["sender_id"] == sender && m["client_msg_id"] == cmid)
        .count()
}

/// Issue 2: the same client_msg_id sent three times gives one message in history, one broadcast,
/// and three identical acks (the later two flagged `duplicate`).
#[tokio::test]
async fn the_same_client_msg_id_three_times_stores_one_message() {
    let (_server, room, mut alice, mut bob) = pair().await;
    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(
            alice
                .send_message(&room, "once-1", "only once")
                .await
                .expect("send is acked"),
        );
    }
    assert_eq!(
        acks[0]["duplicate"], false,
        "the first send is not a duplicate"
    );
    assert_eq!(acks[1]["duplicate"], true, "the second send is a duplicate");
    assert_eq!(acks[2]["duplicate"], true, "the third send is a duplicate");
    assert_eq!(
        acks[0]["message"], acks[1]["message"],
        "same message, same id and created_at"
    );
    assert_eq!(
        acks[0]["message"], acks[2]["message"],
        "same message, same id and created_at"
    );

    let marker = alice.say(&room, "marker").await;
    let received = received_until(&mut bob, &marker).await;
    assert_eq!(
        count_cmid(&received, "alice", "once-1"),
        1,
        "bob received the message once: {received:?}"
    );

    let (history, _) = alice.history(json!({"room_id": room})).await;
    assert_eq!(
        count_cmid(&history, "alice", "once-1"),
        1,
        "history holds it once"
    );
    assert_eq!(history.len(), 2, "history holds the message and the marker");
}

/// Issue 2: over REST a retry answers `201 {"message","duplicate"}` with the original message.
#[tokio::test]
async fn a_rest_retry_returns_the_original() {
    let (server, room, _alice, _bob) = pair().await;
    let token = server.token("alice", Some("Alice"));
    let path = format!("/api/rooms/{room}/messages");
    let body = json!({"client_msg_id": "rest-1", "type": "text", "content": "only once"});
    let first = server.post(&path, Some(&token), &body).await;
    assert_eq!(first.status, 201, "POST messages: {}", first.text);
    assert_eq!(first.json["duplicate"], false);
    let retry = server.post(&path, Some(&token), &body).await;
    assert_eq!(retry.json["duplicate"], true, "{}", retry.text);
    assert_eq!(
        retry.json["message"], first.json["message"],
        "the retry returns the original"
    );
    assert_eq!(
        retry.status, 201,
        "docs/protocol.md: POST messages answers 201 {{\"message\",\"duplicate\"}}: {}",
        retry.text
    );
    let history = server.full_history(&room, &token).await;
    assert_eq!(
        count_cmid(&history, "alice", "rest-1"),
        1,
        "history holds it once"
    );
}

/// Issue 2: retries that race (all in flight at once) still store one message.
#[tokio::test]
async fn racing_retries_store_one_message() {
    let (_server, room, mut alice, _bob) = pair().await;
    let data =
        json!({"room_id": room, "client_msg_id": "race-1", "type": "text", "content": "racing"});
    let mut refs = Vec::new();
    for _ in 0..3 {
        refs.push(alice.send_request("send_message", data.clone()).await);
    }
    let mut messages = Vec::new();
    let mut firsts = 0;
    for r in refs {
        let ack = alice.reply(&r).await.expect("each retry is acked");
        if ack["duplicate"] == false {
            firsts += 1;
        }
        messages.push(ack["message"].clone());
    }
    assert_eq!(firsts, 1, "exactly one ack is not a duplicate");
    assert!(
        messages.iter().all(|m| *m == messages[0]),
        "all acks carry the same message: {messages:?}"
    );
    let (history, _) = alice.history(json!({"room_id": room})).await;
    assert_eq!(
        count_cmid(&history, "alice", "race-1"),
        1,
        "history holds it once"
    );
}

/// Issue 2: a retry with other content still returns the original; the key is per sender, so bob
/// may use the same client_msg_id for his own message.
#[tokio::test]
async fn the_key_is_per_sender_and_the_original_wins() {
    let (_server, room, mut alice, mut bob) = pair().await;
    let original = alice
        .send_message(&room, "k-1", "original")
        .await
        .expect("acked")["message"]
        .clone();
    let retry = alice
        .send_message(&room, "k-1", "changed my mind")
        .await
        .expect("acked");
    assert_eq!(retry["duplicate"], true);
    assert_eq!(
        retry["message"], original,
        "the retry returns the original message, content included"
    );

    let bobs = bob
        .send_message(&room, "k-1", "bob's own")
        .await
        .expect("acked");
    assert_eq!(
        bobs["duplicate"], false,
        "another sender's key does not collide"
    );
    assert_ne!(bobs["message"]["id"], original["id"]);

    let (history, _) = alice.history(json!({"room_id": room})).await;
    assert_eq!(
        history.len(),
        2,
        "alice's message once and bob's: {history:?}"
    );
}

/// Issue 3: a client whose connection dropped sends again a message it had sent: on the new
/// connection three resends get three identical acks (the original message, `duplicate: true`),
/// and a member catching up with `sync` gets the message once.
#[tokio::test]
async fn resends_after_a_reconnect_get_the_original_ack() {
    let server = Server::start();
    let alice_token = server.token("alice", Some("Alice"));
    let bob_token = server.token("bob", Some("Bob"));
    let mut alice = Client::connect(&server, &alice_token).await;
    let mut bob = Client::connect(&server, &bob_token).await;
    let room = alice.create_room("resends", "private").await;
    alice.invite(&room, "bob").await;
    bob.next_event("room_added").await;
    let seen = alice.say(&room, "before").await;
    bob.next_message_where(|m| m["id"] == seen["id"]).await;
    bob.close().await;

    let original = alice
        .send_message(&room, "lost-ack-1", "did it arrive?")
        .await
        .expect("acked");
    assert_eq!(original["duplicate"], false);
    alice.close().await;

    let mut alice = Client::connect(&server, &alice_token).await;
    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(
            alice
                .send_message(&room, "lost-ack-1", "did it arrive?")
                .await
                .expect("a resend is acked"),
        );
    }
    let want = json!({"message": original["message"], "duplicate": true});
    for ack in &acks {
        assert_eq!(
            *ack, want,
            "every resend gets the original ack, flagged duplicate"
        );
    }

    let mut bob = Client::connect_sync(&server, &bob_token).await;
    let ack = bob
        .ok("sync", json!({"rooms": {room.as_str(): seen["id"]}}))
        .await;
    assert_eq!(
        synced_ids(&ack, &room),
        vec![original["message"]["id"].clone()],
        "the catch-up holds the message once: {ack}"
    );
    assert_eq!(ack["live"], true, "{ack}");
}
