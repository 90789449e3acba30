//! Issue 24, points 6 and 7: the WebSocket and HTTP edges outside testing found (close frames,
//! fragments, token caps and key ids; HEAD, 405, Host, UI headers, If-None-Match, slow bodies,
//! ids as numbers).

use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::support::{
    Client, Options, Server, TIMEOUT, claims_of, read_http_response, refused_upgrade, ws_request,
};

/// Sends a Close frame with exactly `payload` and returns the close code the server answers.
async fn close_with(server: &Server, payload: Vec<u8>) -> Option<u16> {
    let mut c = server.connect("alice").await;
    let frame = Frame::message(payload, OpCode::Control(Control::Close), true);
    let _ = c.send_raw(Message::Frame(frame)).await;
    c.expect_close(TIMEOUT).await
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Issue 24, point 6: a Close frame with a code that must not be sent, a 1-byte payload or a
/// reason that is not UTF-8 is answered 1002 / 1007, not 1000; well-formed ones get 1000.
#[tokio::test]
async fn malformed_close_frames_get_1002_or_1007() {
    let server = Server::start();
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        assert_eq!(
            close_with(&server, close_payload(code, b"")).await,
            Some(1002),
            "a Close frame with code {code}"
        );
    }
    assert_eq!(
        close_with(&server, vec![3]).await,
        Some(1002),
        "a 1-byte close payload"
    );
    assert_eq!(
        close_with(&server, close_payload(1000, &[0xff, 0xfe])).await,
        Some(1007),
        "a close reason that is not UTF-8"
    );
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        assert_eq!(
            close_with(&server, close_payload(code, "bye ☕".as_bytes())).await,
            Some(1000),
            "a well-formed Close frame with code {code}"
        );
    }
    assert_eq!(
        close_with(&server, Vec::new()).await,
        Some(1000),
        "an empty Close frame"
    );
}

/// Issue 24, point 6: a fragmented text message with invalid UTF-8 is failed (1007) at the
/// first bad fragment, without waiting for the last one; a code point split across fragments
/// is fine.
#[tokio::test]
async fn a_bad_fragment_closes_with_1007_at_once() {
    let server = Server::start();
    let mut ok = server.connect("alice").await;
    // Split inside the euro sign of a ref.
    let text = r#"{"event":"ping","ref":"p€1"}"#;
    let at = text.find('€').expect("euro") + 1;
    let _ = ok
        .send_fragments(&[&text.as_bytes()[..at], &text.as_bytes()[at..]])
        .await;
    let r = ok.next_reply_frame(TIMEOUT).await.expect("a reply");
    assert_eq!(r["ref"], "p€1", "a code point split across fragments: {r}");

    let mut bad = server.connect("bob").await;
    // The first fragment is fine, the second holds a byte that never starts UTF-8, the last
    // never comes: the server must not wait for it.
    let first = Frame::message(
        br#"{"event":"ping","#.to_vec(),
        OpCode::Data(tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text),
        false,
    );
    let second = Frame::message(
        vec![b'"', 0xff, b'"'],
        OpCode::Data(tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Continue),
        false,
    );
    bad.send_raw(Message::Frame(first)).await.expect("first");
    bad.send_raw(Message::Frame(second)).await.expect("second");
    assert_eq!(
        bad.expect_close(Duration::from_secs(5)).await,
        Some(1007),
        "invalid UTF-8 in a middle fragment"
    );
}

/// Issue 24, point 6: a token in a header or the subprotocol is capped like the query's.
#[tokio::test]
async fn oversized_tokens_are_refused_in_headers_and_subprotocols() {
    let server = Server::start();
    let good = server.token("alice", None);
    // A valid token padded past the cap: the claims stay the same, the size does not.
    let long = format!("{good}{}", "A".repeat(9000));
    let mut req = ws_request(&server, "");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {long}").parse().expect("header"),
    );
    let (status, body) = refused_upgrade(req, "an oversized Bearer token").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("over 8192 bytes")),
        "the answer names the cap: {body}"
    );
    let mut req = ws_request(&server, "");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("confab, {long}").parse().expect("header"),
    );
    let (status, body) = refused_upgrade(req, "an oversized subprotocol token").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("over 8192 bytes")),
        "the answer names the cap: {body}"
    );
    let r = server.get("/api/me", Some(&long)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("over 8192 bytes"), "REST too: {}", r.text);
}

/// Issue 24, point 6: an HS256 token whose `kid` names no key is refused (the local secret
/// has none); the same claims without a kid are accepted.
#[tokio::test]
async fn hs256_tokens_with_an_unknown_kid_are_refused() {
    let server = Server::start();
    let claims = claims_of(&server.token("alice", None));
    let secret = server.jwt_secret();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("some-other-key".into());
    let with_kid = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("sign");
    let (status, _) = refused_upgrade(
        ws_request(&server, &format!("?token={with_kid}")),
        "an HS256 token with a kid",
    )
    .await;
    assert_eq!(status, 401);
    let r = server.get("/api/me", Some(&with_kid)).await;
    assert_eq!(r.status, 401, "REST: {}", r.text);
    let without = crate::support::sign_hs256(&claims, &secret);
    assert_eq!(server.get("/api/me", Some(&without)).await.status, 200);
}

/// Issue 24, point 7: HEAD is answered wherever GET is, without a body.
#[tokio::test]
async fn head_is_served_wherever_get_is() {
    let server = Server::start();
    let token = server.token("alice", None);
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/sdk/confab.js",
        "/api/rooms",
    ] {
        let get = server.fetch(Method::GET, path, Some(&token), &[]).await;
        let head = server.fetch(Method::HEAD, path, Some(&token), &[]).await;
        assert_eq!(get.status, 200, "GET {path}: {}", get.text());
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.text());
        assert!(head.body.is_empty(), "HEAD {path} has no body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path} has GET's type"
        );
    }
}

/// Issue 24, point 7: a wrong method on a known path is 405 with `Allow`; unknown paths stay 404.
#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_405_with_allow() {
    let server = Server::start();
    let token = server.token("alice", None);
    let cases: [(Method, &str, &str); 7] = [
        (Method::PUT, "/api/rooms", "GET, HEAD, POST"),
        (Method::DELETE, "/healthz", "GET, HEAD"),
        (Method::POST, "/metrics", "GET, HEAD"),
        (Method::GET, "/api/auth/login", "POST"),
        (Method::PUT, "/api/rooms/1/messages/2", "PATCH, DELETE"),
        (Method::POST, "/files/1/thumb", "GET, HEAD"),
        (Method::DELETE, "/", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        // Without a token too: the method is wrong whoever asks.
        for t in [Some(token.as_str()), None] {
            let r = server.fetch(method.clone(), path, t, &[]).await;
            r.assert_error(405, "method_not_allowed", &format!("{method} {path}"));
            assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        }
    }
    let r = server
        .fetch(Method::PUT, "/api/nope", Some(&token), &[])
        .await;
    r.assert_error(404, "not_found", "an unknown path");
    let r = server.fetch(Method::POST, "/nope.html", None, &[]).await;
    assert_eq!(r.status, 404, "an unknown asset: {}", r.text());
}

/// Every REST endpoint the protocol's tables list: each documented method is served (not 405),
/// and every other method on the same path is 405 with an `Allow` naming exactly the
/// documented ones (and HEAD beside GET). Walks docs/protocol.md so a route added to the
/// router without its `Allow` entry, or documented but not served, fails here.
#[tokio::test]
async fn every_documented_endpoint_answers_its_methods_and_405_for_the_rest() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("protocol.md");
    let mut table: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in doc.lines() {
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((method, rest)) = cell.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PATCH", "DELETE", "PUT"].contains(&method) {
            continue;
        }
        let path = rest.split(['`', '?']).next().unwrap_or_default();
        // Parameters become ids that exist nowhere: the method check comes before any lookup.
        let path = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        table.entry(path).or_default().push(method.to_string());
    }
    assert!(table.len() >= 25, "the tables were read: {table:?}");
    let server = Server::start();
    let token = server.token("alice", None);
    let all = [
        Method::GET,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::PUT,
    ];
    for (path, methods) in &table {
        let mut allow: Vec<&str> = Vec::new();
        for m in ["GET", "HEAD", "POST", "PATCH", "DELETE"] {
            if methods.iter().any(|d| d == m) || (m == "HEAD" && methods.iter().any(|d| d == "GET"))
            {
                allow.push(m);
            }
        }
        let allow = allow.join(", ");
        for method in &all {
            let r = server.fetch(method.clone(), path, Some(&token), &[]).await;
            if methods.iter().any(|d| d == method.as_str()) {
                assert_ne!(r.status, 405, "{method} {path} is documented: {}", r.text());
                // A missing room or file is 404 too; only the router's own miss names no endpoint.
                assert!(
                    !r.text().contains("no such endpoint"),
                    "{method} {path} is documented: {}",
                    r.text()
                );
            } else {
                r.assert_error(405, "method_not_allowed", &format!("{method} {path}"));
                assert_eq!(r.header("allow"), Some(allow.as_str()), "{method} {path}");
            }
        }
    }
}

/// Sends raw request bytes and reads one answer.
async fn raw_request(server: &Server, bytes: &[u8]) -> crate::support::RawReply {
    let stream = server.tcp().await;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(bytes).await.expect("write");
    let r = tokio::time::timeout(TIMEOUT, read_http_response(&mut rd, false))
        .await
        .expect("an answer in time");
    drop(wr);
    r.expect("a complete answer")
}

/// Issue 24, point 7: an HTTP/1.1 request without Host is 400; HTTP/1.0 needs none.
#[tokio::test]
async fn http11_without_host_is_400() {
    let server = Server::start();
    let r = raw_request(
        &server,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    r.assert_error(400, "invalid_payload", "HTTP/1.1 without Host");
    let r = raw_request(&server, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "HTTP/1.0 without Host: {}", r.text());
    let r = raw_request(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "with Host: {}", r.text());
}

/// Issue 24, point 7: the UI pages (whose URLs carry setup and invite secrets) are never sent
/// on as a Referer and never framed.
#[tokio::test]
async fn ui_pages_forbid_referrers_and_framing() {
    let server = Server::start();
    for path in ["/", "/index.html"] {
        let r = server.fetch(Method::GET, path, None, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
}

/// Issue 24, point 7: `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `W/"x"`
/// matches `"x"`, lists and `*` work, on UI assets and on files.
#[tokio::test]
async fn if_none_match_compares_weakly() {
    let server = Server::start();
    let token = server.token("alice", None);
    let file = server.upload_ok(&token, "notes.txt", b"hello, etags").await;
    let file_path = format!("/files/{}", file["id"].as_str().expect("id"));
    for path in ["/", file_path.as_str()] {
        let r = server.fetch(Method::GET, path, Some(&token), &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let etag = r.header("etag").expect("an ETag").to_owned();
        let weak = format!("W/{etag}");
        let listed = format!("\"nope\", {weak}");
        for inm in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let r = server
                .fetch(Method::GET, path, Some(&token), &[("if-none-match", inm)])
                .await;
            assert_eq!(r.status, 304, "{path} with If-None-Match: {inm}");
        }
        let r = server
            .fetch(
                Method::GET,
                path,
                Some(&token),
                &[("if-none-match", "W/\"other\"")],
            )
            .await;
        assert_eq!(r.status, 200, "{path}: another tag does not match");
    }
}

/// Issue 24, point 7: a request body trickled in slowly is cut off after
/// `server.body_timeout_secs` with 408, for JSON bodies and uploads alike.
#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408() {
    let server = Server::start_with(Options::config("[server]\nbody_timeout_secs = 1\n"));
    let token = server.token("alice", None);
    for (path, content_type) in [
        ("/api/rooms", "application/json"),
        ("/api/files?name=slow.bin", "application/octet-stream"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n{{\"name\""
        );
        let stream = server.tcp().await;
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(head.as_bytes()).await.expect("write");
        let started = std::time::Instant::now();
        // The rest of the body never comes; the answer must, within a few seconds.
        let r = tokio::time::timeout(Duration::from_secs(6), read_http_response(&mut rd, false))
            .await
            .unwrap_or_else(|_| panic!("{path}: the trickled body was never cut off"))
            .expect("an answer");
        r.assert_error(408, "request_timeout", path);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{path}: not before the timeout"
        );
        drop(wr);
    }
    // The log line is written before the answer; its capture may lag a moment behind.
    let logged = async {
        while !server.output().contains("request body cut off") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, logged)
        .await
        .expect("the cut is logged");
    // A body sent in good time still works.
    let r = server
        .post("/api/rooms", Some(&token), &json!({"name": "quick"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// Issue 24, point 7: ids are strings on the wire; one sent as a JSON number is
/// `invalid_payload`, over WebSocket and REST.
#[tokio::test]
async fn ids_sent_as_numbers_are_invalid_payload() {
    let server = Server::start();
    let token = server.token("alice", None);
    let mut alice = Client::connect(&server, &token).await;
    let room = alice.create_room("numbers", "private").await;
    let sent = alice.say(&room, "hi").await;
    let n: u64 = room.parse().expect("numeric id");
    let mid: u64 = sent["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("message id: {sent}"));
    let cases: [(&str, Value); 4] = [
        ("history", json!({"room_id": n})),
        ("list_members", json!({"room_id": n})),
        ("mark_read", json!({"room_id": room, "message_id": mid})),
        ("sync", json!({"rooms": {room.clone(): mid}})),
    ];
    for (event, data) in cases {
        match alice.request(event, data.clone()).await {
            Err((code, _)) => assert_eq!(code, "invalid_payload", "{event} {data}"),
            Ok(v) => panic!("{event} {data}: accepted a number as an id: {v}"),
        }
    }
    let r = server
        .post(
            &format!("/api/rooms/{room}/read"),
            Some(&token),
            &json!({"message_id": mid}),
        )
        .await;
    r.assert_error(400, "invalid_payload", "REST read with a numeric id");
    // The same as strings is fine.
    let r = server
        .post(
            &format!("/api/rooms/{room}/read"),
            Some(&token),
            &json!({"message_id": mid.to_string()}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
