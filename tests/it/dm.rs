//! Direct messages: one room per pair, both members, no invites, and a way back in after leaving.

use serde_json::json;

use crate::support::Server;

/// Issue 2: `open_dm` twice (and from either side, and over REST) returns the same room; both
/// users are members; inviting into a DM is refused and lets nobody in.
#[tokio::test]
async fn open_dm_returns_one_room_per_pair() {
    let server = Server::start();
    let alice_token = server.token("alice", Some("Alice"));
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;

    let first = alice.ok("open_dm", json!({"user_id": "bob"})).await["room"].clone();
    let room = first["id"].as_str().expect("room.id").to_string();
    assert_eq!(first["kind"], "dm", "{first}");
    assert_eq!(first["name"], "", "a DM has no name of its own: {first}");
    assert_eq!(first["member_count"], 2, "{first}");
    assert_eq!(
        bob.next_event("room_added").await["room"]["id"],
        room.as_str(),
        "bob is told about the DM"
    );

    let again = alice.ok("open_dm", json!({"user_id": "bob"})).await;
    assert_eq!(
        again["room"]["id"],
        room.as_str(),
        "open_dm again returns the same room"
    );
    let reverse = bob.ok("open_dm", json!({"user_id": "alice"})).await;
    assert_eq!(
        reverse["room"]["id"],
        room.as_str(),
        "open_dm from the other side returns the same room"
    );
    let rest = server
        .post("/api/dm", Some(&alice_token), &json!({"user_id": "bob"}))
        .await;
    assert_eq!(rest.status, 200, "POST /api/dm: {}", rest.text);
    assert_eq!(
        rest.json["room"]["id"],
        room.as_str(),
        "POST /api/dm returns the same room"
    );

    let members = alice.ok("list_members", json!({"room_id": room})).await;
    let mut listed: Vec<(String, String)> = members["members"]
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap_or("").to_string(),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("alice".to_string(), "member".to_string()),
            ("bob".to_string(), "member".to_string())
        ],
        "both users are plain members of the DM"
    );

    let hi = alice.say(&room, "hi bob").await;
    assert_eq!(bob.next_message_where(|m| m["id"] == hi["id"]).await, hi);

    match alice
        .request("invite", json!({"room_id": room, "user_id": "carol"}))
        .await
    {
        Err((code, _)) => assert_ne!(code, "internal", "inviting into a DM is refused cleanly"),
        Ok(ack) => panic!("inviting into a DM should be refused, got {ack}"),
    }
    let members = alice.ok("list_members", json!({"room_id": room})).await;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(2),
        "the DM still has two members"
    );
    match carol.request("history", json!({"room_id": room})).await {
        Err((code, _)) => assert_eq!(code, "not_found", "carol cannot read the DM"),
        Ok(ack) => panic!("carol read the DM: {ack}"),
    }
}

/// Issue 2: a member who left a DM gets back in with `open_dm`, to the same room and history.
#[tokio::test]
async fn a_member_who_left_a_dm_gets_back_in_with_open_dm() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let room = alice.ok("open_dm", json!({"user_id": "bob"})).await["room"]["id"]
        .as_str()
        .expect("room.id")
        .to_string();
    let hi = alice.say(&room, "before you left").await;

    bob.ok("leave_room", json!({"room_id": room})).await;
    assert_eq!(
        bob.next_event("room_removed").await["room_id"],
        room.as_str()
    );
    match bob.request("history", json!({"room_id": room})).await {
        Err((code, _)) => assert_eq!(code, "not_found", "history after leaving the DM"),
        Ok(ack) => panic!("history after leaving the DM should be not_found, got {ack}"),
    }

    let back = bob.ok("open_dm", json!({"user_id": "alice"})).await;
    assert_eq!(
        back["room"]["id"],
        room.as_str(),
        "open_dm brings bob back to the same room"
    );
    let (messages, _) = bob.history(json!({"room_id": room})).await;
    assert!(
        messages.iter().any(|m| m["id"] == hi["id"]),
        "the history is still there"
    );
}
