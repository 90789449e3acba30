//! Cross-origin use by host pages: CORS on the REST API and files for listed origins only, and
//! the SDK script importable from anywhere.

use crate::support::*;
use hyper::Method;

#[tokio::test]
async fn listed_origins_may_call_the_api_others_may_not() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_SERVER__ALLOWED_ORIGINS",
        "[\"https://app.example.com\"]",
    )]));
    let token = server.token("ana", None);
    let pre = server
        .http_raw(
            Method::OPTIONS,
            "/api/rooms",
            None,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            None,
        )
        .await;
    assert_eq!(pre.status, 204, "{}", pre.text);
    let listed = server
        .http_raw(
            Method::GET,
            "/api/rooms",
            Some(&token),
            &[("origin", "https://app.example.com")],
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let raw = raw_headers(&server, "/api/rooms", &token, "https://app.example.com").await;
    assert!(
        raw.contains("access-control-allow-origin: https://app.example.com"),
        "{raw}"
    );
    let other = raw_headers(&server, "/api/rooms", &token, "https://evil.example").await;
    assert!(!other.contains("access-control-allow-origin"), "{other}");
}

#[tokio::test]
async fn the_sdk_is_importable_from_any_origin() {
    let server = Server::start();
    let r = server.get("/sdk/confab.js", None).await;
    assert_eq!(r.status, 200, "the SDK is served at /sdk/confab.js");
    assert!(r.content_type.contains("javascript"), "{}", r.content_type);
    assert!(r.text.contains("export"), "an ES module");
    let raw = raw_headers(&server, "/sdk/confab.js", "", "https://anyone.example").await;
    assert!(raw.contains("access-control-allow-origin: *"), "{raw}");
    // The SDK's own test file is not shipped.
    let t = server.get("/sdk/test/sdk.test.mjs", None).await;
    assert_eq!(t.status, 404);
}

/// The response head of a GET, lowercased, read off a plain socket.
async fn raw_headers(server: &Server, path: &str, token: &str, origin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("authorization: Bearer {token}\r\n")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: {origin}\r\n{auth}connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    text.split("\r\n\r\n").next().unwrap_or("").to_owned()
}
