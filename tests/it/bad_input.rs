//! Bad input over WebSocket: each malformed frame or payload gets a clear error or close code, and the server keeps serving.

use serde_json::json;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::support::{Client, Options, Server, Stop, TIMEOUT};

/// Limits lowered through a config file so that large frames stay small.
const CONFIG: &str = "
[limits]
max_frame_bytes = 8192
max_message_bytes = 1024
";
const MAX_FRAME: usize = 8192;
const MAX_MESSAGE: usize = 1024;

/// A server with low limits, a room shared by alice and bob, and bob listening.
struct Fixture {
    server: Server,
    alice_token: String,
    room: String,
    bob: Client,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = Server::start_with(Options::config(CONFIG));
        let alice_token = server.token("alice", Some("Alice"));
        let mut alice = Client::connect(&server, &alice_token).await;
        assert_eq!(
            alice.hello["limits"],
            json!({"max_message_bytes": MAX_MESSAGE, "max_frame_bytes": MAX_FRAME}),
            "hello reports the configured limits"
        );
        let room = alice.create_room("sandbox", "private").await;
        alice.invite(&room, "bob").await;
        let mut bob = server.connect("bob").await;
        bob.ping().await;
        Fixture {
            server,
            alice_token,
            room,
            bob,
        }
    }

    /// A fresh connection for alice.
    async fn alice(&self) -> Client {
        Client::connect(&self.server, &self.alice_token).await
    }

    /// A healthy client still sends and receives: a new alice connection sends, bob receives.
    async fn still_serving(&mut self) {
        let mut alice = self.alice().await;
        let sent = alice.say(&self.room, "still here").await;
        let got = self.bob.next_message_where(|m| m["id"] == sent["id"]).await;
        assert_eq!(got, sent);
        let own = alice.next_message_where(|m| m["id"] == sent["id"]).await;
        assert_eq!(own, sent);
    }
}

/// Asserts the reply to a request is an error with `code`.
fn assert_code(got: Result<serde_json::Value, (String, String)>, code: &str, what: &str) {
    match got {
        Err((c, message)) => {
            assert_eq!(c, code, "{what}: {message}");
            assert!(
                !message.is_empty(),
                "{what}: the error carries a human message"
            );
        }
        Ok(ack) => panic!("{what}: expected error {code}, got ack {ack}"),
    }
}

/// Issue 2: a frame that is not JSON gets `invalid_json`; an unknown event gets `unknown_event`;
/// the connection then goes on serving.
#[tokio::test]
async fn malformed_json_and_unknown_events_get_errors() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;

    alice
        .send_text_frame("{\"event\": \"send_message\", \"data\": {")
        .await;
    let frame = alice
        .next_reply_frame(TIMEOUT)
        .await
        .expect("an error answers malformed JSON");
    assert_eq!(frame["event"], "error", "{frame}");
    assert_eq!(frame["data"]["code"], "invalid_json", "{frame}");

    alice.send_text_frame("not json at all").await;
    let frame = alice
        .next_reply_frame(TIMEOUT)
        .await
        .expect("an error answers malformed JSON");
    assert_eq!(frame["data"]["code"], "invalid_json", "{frame}");

    let got = alice.request("frobnicate", json!({})).await;
    assert_code(got, "unknown_event", "an unknown event");

    alice
        .send_text_frame(r#"{"event":"ack","ref":"x1","data":{}}"#)
        .await;
    let frame = alice
        .next_reply_frame(TIMEOUT)
        .await
        .expect("an error answers a server-only event");
    assert_eq!(
        frame["data"]["code"], "unknown_event",
        "a client may not send `ack`: {frame}"
    );

    alice.ping().await;
    fx.still_serving().await;
}

/// Issue 2: fields of the wrong type or out of range get `invalid_payload`.
#[tokio::test]
async fn wrong_field_types_get_invalid_payload() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;
    let room = fx.room.clone();
    let cases = [
        (
            "content a number",
            json!({"room_id": room, "client_msg_id": "t-1", "type": "text", "content": 42}),
        ),
        (
            "room_id an object",
            json!({"room_id": {"id": room}, "client_msg_id": "t-2", "type": "text", "content": "x"}),
        ),
        (
            "client_msg_id missing",
            json!({"room_id": room, "type": "text", "content": "x"}),
        ),
        (
            "client_msg_id empty",
            json!({"room_id": room, "client_msg_id": "", "type": "text", "content": "x"}),
        ),
        (
            "client_msg_id over 64 bytes",
            json!({"room_id": room, "client_msg_id": "k".repeat(65), "type": "text", "content": "x"}),
        ),
        (
            "type unknown",
            json!({"room_id": room, "client_msg_id": "t-3", "type": "video", "content": "x"}),
        ),
        (
            "type system from a client",
            json!({"room_id": room, "client_msg_id": "t-4", "type": "system", "content": "x"}),
        ),
        (
            "content missing",
            json!({"room_id": room, "client_msg_id": "t-5", "type": "text"}),
        ),
    ];
    for (what, data) in cases {
        assert_code(
            alice.request("send_message", data).await,
            "invalid_payload",
            what,
        );
    }
    assert_code(
        alice
            .request("history", json!({"room_id": room, "limit": "ten"}))
            .await,
        "invalid_payload",
        "history limit a string",
    );
    assert_code(
        alice
            .request(
                "create_room",
                json!({"name": ["x"], "visibility": "public"}),
            )
            .await,
        "invalid_payload",
        "room name an array",
    );
    assert_code(
        alice
            .request("create_room", json!({"name": "x", "visibility": "secret"}))
            .await,
        "invalid_payload",
        "visibility neither public nor private",
    );

    alice
        .send_text_frame(r#"{"event":"send_message","ref":"s1","data":"hello"}"#)
        .await;
    let frame = alice
        .next_reply_frame(TIMEOUT)
        .await
        .expect("an error answers data of the wrong type");
    assert_eq!(
        frame["data"]["code"], "invalid_payload",
        "data a string: {frame}"
    );

    alice.send_text_frame(r#"{"event":42,"ref":"s2"}"#).await;
    let frame = alice
        .next_reply_frame(TIMEOUT)
        .await
        .expect("an error answers an event of the wrong type");
    let code = frame["data"]["code"].as_str().unwrap_or("");
    assert!(
        code == "invalid_payload" || code == "unknown_event",
        "event a number: {frame}"
    );

    let long_ref = "r".repeat(65);
    alice
        .send_text_frame(&json!({"event": "ping", "ref": long_ref, "data": {}}).to_string())
        .await;
    let frame = alice
        .next_reply_frame(TIMEOUT)
        .await
        .expect("an error answers a ref over 64 bytes");
    assert_eq!(
        frame["data"]["code"], "invalid_payload",
        "ref over 64 bytes: {frame}"
    );

    // None of these stored anything.
    let (messages, _) = alice.history(json!({"room_id": room})).await;
    assert!(
        messages.is_empty(),
        "refused requests stored nothing: {messages:?}"
    );
    fx.still_serving().await;
}

/// Issue 2: empty and whitespace-only content is `invalid_payload`; content over
/// `max_message_bytes` (counted in UTF-8 bytes) is `too_large`; exactly the limit is accepted.
#[tokio::test]
async fn empty_and_oversized_content_is_refused() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;
    let room = fx.room.clone();

    for (i, content) in ["", " ", "  \n\t  ", "\u{3000}"].into_iter().enumerate() {
        let got = alice
            .send_message(&room, &format!("blank-{i}"), content)
            .await;
        assert_code(got, "invalid_payload", &format!("content {content:?}"));
    }

    let over = "a".repeat(MAX_MESSAGE + 1);
    assert_code(
        alice.send_message(&room, "big-1", &over).await,
        "too_large",
        "content of max+1 ASCII bytes",
    );
    // 513 two-byte characters: under the limit in characters, over it in bytes.
    let over_utf8 = "é".repeat(MAX_MESSAGE / 2 + 1);
    assert_code(
        alice.send_message(&room, "big-2", &over_utf8).await,
        "too_large",
        "content of max+2 UTF-8 bytes",
    );

    let exact = "b".repeat(MAX_MESSAGE);
    let ack = alice
        .send_message(&room, "exact-1", &exact)
        .await
        .expect("content of exactly max bytes is accepted");
    assert_eq!(
        ack["message"]["content"].as_str().map(str::len),
        Some(MAX_MESSAGE)
    );
    let exact_utf8 = "é".repeat(MAX_MESSAGE / 2);
    alice
        .send_message(&room, "exact-2", &exact_utf8)
        .await
        .expect("multi-byte content of exactly max bytes");

    let (messages, _) = alice.history(json!({"room_id": room})).await;
    assert_eq!(messages.len(), 2, "only the two valid messages were stored");
    fx.still_serving().await;
}

/// Issue 2: a binary frame is refused, with close 1002 or an error.
#[tokio::test]
async fn a_binary_frame_is_refused() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;
    alice
        .send_raw(Message::Binary(Bytes::from_static(
            br#"{"event":"ping","ref":"b1","data":{}}"#,
        )))
        .await
        .expect("send a binary frame");
    match alice.next_reply_frame(TIMEOUT).await {
        Ok(frame) => {
            assert_eq!(
                frame["event"], "error",
                "a binary frame is not acked: {frame}"
            );
            alice.ping().await;
        }
        Err(Stop::Closed(code)) => assert_eq!(code, Some(1002), "a binary frame closes with 1002"),
        Err(Stop::Timeout) => panic!("nothing answered a binary frame"),
    }
    fx.still_serving().await;
}

/// Issue 2: a single frame over `max_frame_bytes` closes the connection with 1009.
#[tokio::test]
async fn a_frame_over_the_cap_closes_with_1009() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;
    let padding = "p".repeat(MAX_FRAME + 100);
    let frame = json!({"event": "ping", "ref": "big", "data": {"padding": padding}}).to_string();
    // The server may close while the frame is still being written; that is fine.
    let _ = alice.send_raw(Message::text(frame)).await;
    assert_eq!(
        alice.expect_close(TIMEOUT).await,
        Some(1009),
        "a frame over max_frame_bytes"
    );
    fx.still_serving().await;
}

/// Issue 2: fragments are reassembled; fragments that add up past `max_frame_bytes` close with
/// 1009 even though each one is small.
#[tokio::test]
async fn fragments_are_reassembled_up_to_the_cap() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;

    let request = json!({"event": "send_message", "ref": "frag-ok", "data": {
        "room_id": fx.room, "client_msg_id": "frag-1", "type": "text", "content": "c".repeat(600)}})
    .to_string();
    let bytes = request.as_bytes();
    let third = bytes.len() / 3;
    alice
        .send_fragments(&[
            &bytes[..third],
            &bytes[third..2 * third],
            &bytes[2 * third..],
        ])
        .await
        .expect("send fragments");
    let ack = alice
        .reply("frag-ok")
        .await
        .expect("a fragmented request is reassembled and acked");
    assert_eq!(ack["message"]["content"].as_str().map(str::len), Some(600));

    let part = vec![b' '; 3000];
    let mut oversized = Vec::new();
    oversized.extend_from_slice(b"{\"event\":\"ping\",\"data\":{},\"ref\":\"frag-big\"");
    oversized.extend_from_slice(&part);
    let _ = alice
        .send_fragments(&[&oversized, &part, &part, b"}"])
        .await;
    assert_eq!(
        alice.expect_close(TIMEOUT).await,
        Some(1009),
        "fragments adding up past max_frame_bytes"
    );
    fx.still_serving().await;
}

/// Issue 2: a text frame that is not valid UTF-8 closes with 1007.
#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let mut fx = Fixture::new().await;
    let mut alice = fx.alice().await;
    let _ = alice.send_fragments(&[&[b'{', 0xff, 0xfe, b'}']]).await;
    assert_eq!(
        alice.expect_close(TIMEOUT).await,
        Some(1007),
        "a text frame that is not UTF-8"
    );
    fx.still_serving().await;
}
