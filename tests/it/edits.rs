//! Edits and soft deletes: who may change a message, what members are told, and what history shows afterwards.

use serde_json::{Value, json};

use crate::support::{Client, Server};

/// A server with alice owning a room that bob and carol were invited into.
async fn room_of_three() -> (Server, String, Client, Client, Client) {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let room = alice.create_room("edits", "private").await;
    alice.invite(&room, "bob").await;
    alice.invite(&room, "carol").await;
    bob.next_event("room_added").await;
    carol.next_event("room_added").await;
    (server, room, alice, bob, carol)
}

fn find<'a>(messages: &'a [Value], id: &Value) -> &'a Value {
    messages
        .iter()
        .find(|m| &m["id"] == id)
        .unwrap_or_else(|| panic!("message {id} is missing from history"))
}

/// Issue 2: the sender edits and every member hears `message_updated`; a member who is neither
/// sender nor admin gets `forbidden`; the room owner deletes another's message, which keeps its id
/// and `deleted_at` with content "" in `message_deleted` and in history.
#[tokio::test]
async fn edits_and_soft_deletes_over_websocket() {
    let (_server, room, mut alice, mut bob, mut carol) = room_of_three().await;
    let original = bob.say(&room, "first draft").await;
    let id = original["id"].clone();

    let ack = bob
        .ok(
            "edit_message",
            json!({"room_id": room, "message_id": id, "content": "final text"}),
        )
        .await;
    let edited = ack["message"].clone();
    assert_eq!(edited["id"], id);
    assert_eq!(edited["content"], "final text");
    assert_eq!(
        edited["created_at"], original["created_at"],
        "editing keeps created_at"
    );
    assert!(
        edited["edited_at"]
            .as_u64()
            .is_some_and(|t| t >= original["created_at"].as_u64().unwrap_or(u64::MAX)),
        "edited_at is set: {edited}"
    );
    assert_eq!(edited["deleted_at"], Value::Null);
    for (who, client) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        let updated = client.next_event("message_updated").await;
        assert_eq!(updated["message"], edited, "{who} hears the edit");
    }

    for (event, data) in [
        (
            "edit_message",
            json!({"room_id": room, "message_id": id, "content": "mine now"}),
        ),
        ("delete_message", json!({"room_id": room, "message_id": id})),
    ] {
        match carol.request(event, data).await {
            Err((code, _)) => assert_eq!(code, "forbidden", "carol {event} on bob's message"),
            Ok(ack) => panic!("carol may not {event} bob's message, got {ack}"),
        }
    }
    match bob
        .request(
            "edit_message",
            json!({"room_id": room, "message_id": id, "content": "  "}),
        )
        .await
    {
        Err((code, _)) => assert_eq!(code, "invalid_payload", "an edit to whitespace only"),
        Ok(ack) => panic!("an edit to whitespace only should be refused, got {ack}"),
    }

    let ack = alice
        .ok("delete_message", json!({"room_id": room, "message_id": id}))
        .await;
    let deleted = ack["message"].clone();
    assert_eq!(deleted["id"], id, "a deleted message keeps its id");
    assert_eq!(
        deleted["content"], "",
        "a deleted message has empty content"
    );
    assert!(
        deleted["deleted_at"].is_u64(),
        "deleted_at is set: {deleted}"
    );
    assert_eq!(deleted["sender_id"], "bob");
    for (who, client) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        let got = client.next_event("message_deleted").await;
        assert_eq!(got["message"], deleted, "{who} hears the delete");
    }
    for client in [&mut alice, &mut bob, &mut carol] {
        let (messages, _) = client.history(json!({"room_id": room})).await;
        assert_eq!(
            find(&messages, &id),
            &deleted,
            "history shows the deleted record"
        );
    }

    for (event, data) in [
        (
            "edit_message",
            json!({"room_id": room, "message_id": id, "content": "again"}),
        ),
        ("delete_message", json!({"room_id": room, "message_id": id})),
    ] {
        match bob.request(event, data).await {
            Err((code, _)) => assert_eq!(code, "not_found", "{event} on a deleted message"),
            Ok(ack) => panic!("{event} on a deleted message should be not_found, got {ack}"),
        }
    }
    match bob
        .request(
            "edit_message",
            json!({"room_id": room, "message_id": "12345", "content": "x"}),
        )
        .await
    {
        Err((code, _)) => assert_eq!(code, "not_found", "editing a message that does not exist"),
        Ok(ack) => panic!("editing a message that does not exist should be not_found, got {ack}"),
    }
}

/// Issue 2: the same rules over REST: PATCH by the sender, 403 for another member, DELETE by the
/// sender empties the content; members are told over WebSocket.
#[tokio::test]
async fn edits_and_soft_deletes_over_rest() {
    let (server, room, mut alice, mut bob, _carol) = room_of_three().await;
    let bob_token = server.token("bob", Some("Bob"));
    let carol_token = server.token("carol", Some("Carol"));
    let sent = bob.say(&room, "typo").await;
    let id = sent["id"].as_str().expect("id").to_string();
    let path = format!("/api/rooms/{room}/messages/{id}");

    let r = server
        .patch(&path, Some(&bob_token), &json!({"content": "fixed"}))
        .await;
    assert_eq!(r.status, 200, "PATCH by the sender: {}", r.text);
    assert_eq!(r.json["message"]["content"], "fixed");
    assert_eq!(
        alice.next_event("message_updated").await["message"],
        r.json["message"]
    );

    server
        .patch(&path, Some(&carol_token), &json!({"content": "hijacked"}))
        .await
        .assert_error(403, "forbidden", "PATCH by another member");
    server.delete(&path, Some(&carol_token)).await.assert_error(
        403,
        "forbidden",
        "DELETE by another member",
    );
    let outsider = server.token("mallory", None);
    server.delete(&path, Some(&outsider)).await.assert_error(
        404,
        "not_found",
        "DELETE by a non-member",
    );

    let r = server.delete(&path, Some(&bob_token)).await;
    assert_eq!(r.status, 200, "DELETE by the sender: {}", r.text);
    assert_eq!(r.json["message"]["content"], "");
    assert!(r.json["message"]["deleted_at"].is_u64(), "{}", r.text);
    assert_eq!(
        alice.next_event("message_deleted").await["message"],
        r.json["message"]
    );

    let history = server
        .get(&format!("/api/rooms/{room}/messages"), Some(&carol_token))
        .await;
    assert_eq!(history.status, 200, "{}", history.text);
    let messages = history.json["messages"]
        .as_array()
        .expect("messages")
        .clone();
    let m = find(&messages, &json!(id));
    assert_eq!(
        (m["content"].as_str(), m["deleted_at"].is_u64()),
        (Some(""), true),
        "REST history: {m}"
    );
    server
        .patch(&path, Some(&bob_token), &json!({"content": "resurrect"}))
        .await
        .assert_error(404, "not_found", "PATCH on a deleted message");
}
