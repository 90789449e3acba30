//! Rooms and fan-out: members exchange messages, every device receives, outsiders see nothing, public rooms can be joined and left.

use serde_json::{Value, json};

use crate::support::{Client, Server, assert_message_shape, id_of, mentions};

/// The user ids in a `list_members` ack or REST body.
fn member_ids(members: &Value) -> Vec<String> {
    let mut ids: Vec<String> = members
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| m["user_id"].as_str().expect("member.user_id").to_string())
        .collect();
    ids.sort();
    ids
}

fn room_ids(rooms: &Value) -> Vec<String> {
    rooms
        .as_array()
        .expect("rooms array")
        .iter()
        .map(|r| r["id"].as_str().expect("room.id").to_string())
        .collect()
}

/// Issue 2: two members of a private room talk; a third user gets `not_found` for everything about
/// the room, over WebSocket and REST alike, exactly as for a room that does not exist, and never
/// receives any of its events.
#[tokio::test]
async fn members_exchange_messages_and_an_outsider_sees_nothing() {
    let server = Server::start();
    let carol_token = server.token("carol", Some("Carol"));
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = Client::connect(&server, &carol_token).await;
    assert_eq!(alice.hello["user"], json!({"id": "alice", "name": "Alice"}));
    assert!(
        alice.hello["connection_id"].is_string(),
        "hello.connection_id: {}",
        alice.hello
    );
    assert!(
        alice.hello["server_time"].is_u64(),
        "hello.server_time: {}",
        alice.hello
    );
    assert!(
        alice.hello["heartbeat_ms"].is_u64(),
        "hello.heartbeat_ms: {}",
        alice.hello
    );
    assert_eq!(
        alice.hello["limits"]["max_message_bytes"], 16384,
        "hello.limits: {}",
        alice.hello
    );
    assert_eq!(
        alice.hello["limits"]["max_frame_bytes"], 65536,
        "hello.limits: {}",
        alice.hello
    );

    // A canary room shared by alice and carol: its last message tells carol that everything
    // alice did before it has been fanned out.
    let canary = alice.create_room("canary", "private").await;
    alice.invite(&canary, "carol").await;

    let created = alice
        .ok(
            "create_room",
            json!({"name": "secret", "visibility": "private"}),
        )
        .await;
    let room = &created["room"];
    let room_id = room["id"].as_str().expect("room.id").to_string();
    id_of(&room["id"]);
    assert_eq!(room["name"], "secret");
    assert_eq!(room["visibility"], "private");
    assert_eq!(room["kind"], "group");
    assert_eq!(room["created_by"], "alice");
    assert_eq!(room["member_count"], 1);
    assert!(room["created_at"].is_u64(), "room.created_at: {room}");

    alice.invite(&room_id, "bob").await;
    let added = bob.next_event("room_added").await;
    assert_eq!(
        added["room"]["id"],
        room_id.as_str(),
        "room_added names the room: {added}"
    );
    for client in [&mut alice, &mut bob] {
        let member = client.next_member_joined(&room_id, "bob").await;
        assert_eq!(member["role"], "member", "{member}");
        assert_eq!(member["name"], "Bob", "{member}");
    }

    let members = alice.ok("list_members", json!({"room_id": room_id})).await;
    assert_eq!(member_ids(&members["members"]), ["alice", "bob"]);
    let owner = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user_id"] == "alice")
        .expect("alice is listed")
        .clone();
    assert_eq!(owner["role"], "owner", "the creator is the owner: {owner}");
    assert_eq!(owner["name"], "Alice");

    // alice -> bob over WebSocket.
    let ack = alice
        .send_message(&room_id, "hello-1", "hello bob")
        .await
        .expect("alice sends");
    assert_eq!(ack["duplicate"], false);
    let sent = ack["message"].clone();
    assert_message_shape(&sent);
    assert_eq!(sent["content"], "hello bob");
    assert_eq!(sent["sender_id"], "alice");
    assert_eq!(sent["room_id"], room_id.as_str());
    assert_eq!(bob.next_event("receive_message").await["message"], sent);
    assert_eq!(alice.next_event("receive_message").await["message"], sent);

    // bob -> alice over WebSocket, then over REST.
    let reply = bob.say(&room_id, "hi alice").await;
    assert_eq!(alice.next_event("receive_message").await["message"], reply);
    assert_eq!(bob.next_event("receive_message").await["message"], reply);
    let bob_token = server.token("bob", Some("Bob"));
    let posted = server
        .post(
            &format!("/api/rooms/{room_id}/messages"),
            Some(&bob_token),
            &json!({"client_msg_id": "rest-1", "type": "text", "content": "via rest"}),
        )
        .await;
    assert_eq!(posted.status, 201, "POST messages: {}", posted.text);
    assert_eq!(
        alice.next_event("receive_message").await["message"],
        posted.json["message"]
    );

    // The outsider, over WebSocket: the private room and a room that does not exist look alike.
    let missing = "4611686018427387904";
    for target in [room_id.as_str(), missing] {
        let requests = [
            ("history", json!({"room_id": target})),
            (
                "send_message",
                json!({"room_id": target, "client_msg_id": "c-1", "type": "text", "content": "let me in"}),
            ),
            ("list_members", json!({"room_id": target})),
            ("join_room", json!({"room_id": target})),
            ("invite", json!({"room_id": target, "user_id": "carol"})),
            ("leave_room", json!({"room_id": target})),
        ];
        for (event, data) in requests {
            let got = carol.request(event, data).await;
            match got {
                Err((code, _)) => assert_eq!(code, "not_found", "carol {event} on {target}"),
                Ok(ack) => panic!("carol {event} on {target} should be not_found, got ack {ack}"),
            }
        }
    }

    // The outsider, over REST.
    for target in [room_id.as_str(), missing] {
        let t = Some(carol_token.as_str());
        let what = |s: &str| format!("carol {s} on {target}");
        server
            .get(&format!("/api/rooms/{target}"), t)
            .await
            .assert_error(404, "not_found", &what("GET room"));
        server
            .get(&format!("/api/rooms/{target}/messages"), t)
            .await
            .assert_error(404, "not_found", &what("GET messages"));
        server
            .post(
                &format!("/api/rooms/{target}/messages"),
                t,
                &json!({"client_msg_id": "c-2", "type": "text", "content": "let me in"}),
            )
            .await
            .assert_error(404, "not_found", &what("POST messages"));
        server
            .get(&format!("/api/rooms/{target}/members"), t)
            .await
            .assert_error(404, "not_found", &what("GET members"));
        server
            .post(&format!("/api/rooms/{target}/join"), t, &json!({}))
            .await
            .assert_error(404, "not_found", &what("POST join"));
    }
    let carols_rooms = server.get("/api/rooms", Some(&carol_token)).await;
    assert_eq!(carols_rooms.status, 200, "{}", carols_rooms.text);
    assert!(
        !room_ids(&carols_rooms.json["rooms"]).contains(&room_id),
        "carol's rooms: {}",
        carols_rooms.text
    );
    let listed = carol.ok("list_rooms", json!({})).await;
    assert!(
        !room_ids(&listed["rooms"]).contains(&room_id),
        "carol's list_rooms: {listed}"
    );

    // Nothing carol tried reached the room.
    let history = server.full_history(&room_id, &bob_token).await;
    assert_eq!(
        history.len(),
        3,
        "only the three real messages are in the room: {history:?}"
    );
    let members = alice.ok("list_members", json!({"room_id": room_id})).await;
    assert_eq!(member_ids(&members["members"]), ["alice", "bob"]);

    // Carol never saw any event of the room.
    let last = alice.say(&canary, "canary").await;
    let got = carol.next_message_where(|m| m["id"] == last["id"]).await;
    assert_eq!(got["room_id"], canary.as_str());
    carol.ping().await;
    for event in carol.buffered_events() {
        assert!(
            !mentions(event, &room_id),
            "carol received an event of the private room: {event}"
        );
    }
}

/// Issue 2: a user with two connections receives on both; the sending device gets its own
/// message too; the ack carries id and created_at and equals the broadcast.
#[tokio::test]
async fn every_device_of_every_member_receives_and_the_ack_equals_the_broadcast() {
    let server = Server::start();
    let alice_token = server.token("alice", Some("Alice"));
    let mut phone = Client::connect(&server, &alice_token).await;
    let mut laptop = Client::connect(&server, &alice_token).await;
    let mut bob = server.connect("bob").await;
    assert_ne!(
        phone.hello["connection_id"], laptop.hello["connection_id"],
        "each connection has its own id"
    );

    let room = phone.create_room("devices", "private").await;
    phone.invite(&room, "bob").await;
    bob.next_event("room_added").await;

    for (i, sender) in ["phone", "laptop"].into_iter().enumerate() {
        let cmid = format!("dev-{i}");
        let ack = match sender {
            "phone" => phone.send_message(&room, &cmid, sender).await,
            _ => laptop.send_message(&room, &cmid, sender).await,
        }
        .expect("send_message is acked");
        let message = ack["message"].clone();
        assert_message_shape(&message);
        assert!(
            message["id"].is_string() && message["created_at"].is_u64(),
            "ack: {ack}"
        );
        assert_eq!(message["status"], "sent");
        assert_eq!(message["type"], "text");
        assert_eq!(message["client_msg_id"], cmid.as_str());
        assert_eq!(message["edited_at"], Value::Null);
        assert_eq!(message["deleted_at"], Value::Null);
        for (who, client) in [
            ("phone", &mut phone),
            ("laptop", &mut laptop),
            ("bob", &mut bob),
        ] {
            let got = client.next_event("receive_message").await;
            assert_eq!(
                got["message"], message,
                "{who} receives exactly the acked message"
            );
        }
    }
}

/// Issue 2: public rooms are listed and joinable; private ones are neither; leaving removes the
/// membership.
#[tokio::test]
async fn public_rooms_can_be_listed_joined_and_left() {
    let server = Server::start();
    let bob_token = server.token("bob", Some("Bob"));
    let mut alice = server.connect("alice").await;
    let mut bob = Client::connect(&server, &bob_token).await;

    let lobby = alice.create_room("lobby", "public").await;
    let hideout = alice.create_room("hideout", "private").await;
    let default = alice
        .ok("create_room", json!({"name": "unspecified"}))
        .await;
    assert_eq!(
        default["room"]["visibility"], "private",
        "visibility defaults to private"
    );
    let default_id = default["room"]["id"].as_str().expect("room.id").to_string();

    let listed = bob.ok("list_public_rooms", json!({})).await;
    let ids = room_ids(&listed["rooms"]);
    assert!(ids.contains(&lobby), "the public room is listed: {listed}");
    assert!(
        !ids.contains(&hideout),
        "a private room is not listed: {listed}"
    );
    assert!(
        !ids.contains(&default_id),
        "a room private by default is not listed: {listed}"
    );
    let rest = server.get("/api/rooms/public", Some(&bob_token)).await;
    assert_eq!(rest.status, 200, "{}", rest.text);
    let ids = room_ids(&rest.json["rooms"]);
    assert!(
        ids.contains(&lobby) && !ids.contains(&hideout),
        "GET /api/rooms/public: {}",
        rest.text
    );

    let too_long = "x".repeat(81);
    match alice
        .request(
            "create_room",
            json!({"name": too_long, "visibility": "public"}),
        )
        .await
    {
        Err((code, _)) => assert_eq!(code, "invalid_payload", "a name over max_room_name_chars"),
        Ok(ack) => panic!("a room name of 81 characters should be refused, got {ack}"),
    }

    let joined = bob.ok("join_room", json!({"room_id": lobby})).await;
    assert_eq!(joined["room"]["id"], lobby.as_str());
    assert_eq!(
        bob.next_event("room_added").await["room"]["id"],
        lobby.as_str()
    );
    alice.next_member_joined(&lobby, "bob").await;
    bob.next_member_joined(&lobby, "bob").await;
    let mine = bob.ok("list_rooms", json!({})).await;
    assert!(
        room_ids(&mine["rooms"]).contains(&lobby),
        "bob's rooms include the lobby: {mine}"
    );

    let hello = bob.say(&lobby, "hello lobby").await;
    assert_eq!(alice.next_event("receive_message").await["message"], hello);
    bob.history(json!({"room_id": lobby})).await;

    match bob.request("join_room", json!({"room_id": hideout})).await {
        Err((code, _)) => assert_eq!(code, "not_found", "joining a private room as a non-member"),
        Ok(ack) => panic!("bob joined a private room: {ack}"),
    }
    server
        .post(
            &format!("/api/rooms/{hideout}/join"),
            Some(&bob_token),
            &json!({}),
        )
        .await
        .assert_error(404, "not_found", "POST join on a private room");

    bob.ok("leave_room", json!({"room_id": lobby})).await;
    assert_eq!(
        bob.next_event("room_removed").await["room_id"],
        lobby.as_str()
    );
    for client in [&mut bob, &mut alice] {
        client
            .next_event_where("member_left", |d| {
                d["room_id"] == lobby.as_str() && d["user_id"] == "bob"
            })
            .await;
    }

    match bob.request("history", json!({"room_id": lobby})).await {
        Err((code, _)) => assert_eq!(code, "not_found", "history after leaving"),
        Ok(ack) => panic!("history after leaving should be not_found, got {ack}"),
    }
    let members = alice.ok("list_members", json!({"room_id": lobby})).await;
    assert_eq!(member_ids(&members["members"]), ["alice"]);
    let mine = bob.ok("list_rooms", json!({})).await;
    assert!(
        !room_ids(&mine["rooms"]).contains(&lobby),
        "bob's rooms after leaving: {mine}"
    );

    // Joining over REST works the same way.
    let rejoined = server
        .post(
            &format!("/api/rooms/{lobby}/join"),
            Some(&bob_token),
            &json!({}),
        )
        .await;
    assert_eq!(rejoined.status, 200, "POST join: {}", rejoined.text);
    assert_eq!(rejoined.json["room"]["id"], lobby.as_str());
    let members = alice.ok("list_members", json!({"room_id": lobby})).await;
    assert_eq!(member_ids(&members["members"]), ["alice", "bob"]);
}
