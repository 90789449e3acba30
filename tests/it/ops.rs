//! Operations: health and readiness probes, Prometheus metrics, `confab check-config` and `confab --version`.

use serde_json::json;

use crate::support::{Server, run_cli};

/// The samples of a Prometheus text exposition: (metric name, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            let value = l.rsplit(' ').find_map(|v| v.parse::<f64>().ok())?;
            Some((l[..name_end].to_string(), value))
        })
        .collect()
}

/// Issue 2: `/healthz` and `/readyz` answer 200; `/metrics` is Prometheus text with connection
/// and message counters that move.
#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = Server::start();
    assert_eq!(
        server.get("/healthz", None).await.status,
        200,
        "GET /healthz"
    );
    assert_eq!(server.get("/readyz", None).await.status, 200, "GET /readyz");

    let mut alice = server.connect("alice").await;
    let room = alice.create_room("metered", "private").await;
    for i in 0..3 {
        let sent = alice.say(&room, &format!("counted {i}")).await;
        // The broadcast reaching alice means the message is fully handled.
        alice.next_message_where(|m| m["id"] == sent["id"]).await;
    }

    let metrics = server.get("/metrics", None).await;
    assert_eq!(metrics.status, 200, "GET /metrics");
    assert!(
        metrics.content_type.starts_with("text/plain")
            || metrics
                .content_type
                .starts_with("application/openmetrics-text"),
        "/metrics content type: {:?}",
        metrics.content_type
    );
    assert!(
        metrics.text.contains("# TYPE"),
        "/metrics is Prometheus text:\n{}",
        metrics.text
    );
    let samples = samples(&metrics.text);
    assert!(
        samples
            .iter()
            .any(|(name, v)| name.contains("connection") && *v >= 1.0),
        "a connection metric counts the open connection:\n{}",
        metrics.text
    );
    assert!(
        samples
            .iter()
            .any(|(name, v)| name.contains("message") && *v >= 3.0),
        "a message counter counts the three messages:\n{}",
        metrics.text
    );
}

/// Issue 2: `confab check-config` names unknown keys (top-level and nested) and shows values
/// from the file and the environment.
#[test]
fn check_config_names_unknown_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("confab.toml");
    std::fs::write(
        &config,
        "bogus_top = 1\n[server]\nlisten = \"127.0.0.1:9999\"\nbogus_key = true\n[limits]\nmax_mesage_bytes = 10\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let (_, out) = run_cli(
        dir.path(),
        &["check-config", "--config", &config],
        &[("CONFAB_LIMITS__MAX_MESSAGE_BYTES", "4096")],
    );
    for key in ["bogus_top", "bogus_key", "max_mesage_bytes"] {
        assert!(
            out.contains(key),
            "check-config should name the unknown key {key}:\n{out}"
        );
    }
    assert!(
        out.contains("127.0.0.1:9999"),
        "check-config shows the value from the file:\n{out}"
    );
    assert!(
        out.contains("4096"),
        "check-config shows the value from the environment:\n{out}"
    );

    let clean = dir.path().join("clean.toml");
    std::fs::write(&clean, "[server]\nlisten = \"127.0.0.1:9998\"\n").expect("write config");
    let (ok, out) = run_cli(
        dir.path(),
        &[
            "check-config",
            "--config",
            clean.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert!(ok, "check-config of a valid file succeeds:\n{out}");
    assert!(!out.contains("bogus"), "{out}");
}

/// Issue 2: `confab --version` prints the crate version.
#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, out) = run_cli(dir.path(), &["--version"], &[]);
    assert!(ok, "confab --version succeeds: {out}");
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "confab --version prints {}: {out}",
        env!("CARGO_PKG_VERSION")
    );
}

/// Issue 2: REST answers bodies that are not JSON with 400 `invalid_json` and unknown rooms with
/// 404, and keeps serving.
#[tokio::test]
async fn rest_errors_use_the_documented_codes() {
    let server = Server::start();
    let token = server.token("alice", Some("Alice"));
    let raw = server
        .http_raw(
            hyper::Method::POST,
            "/api/rooms",
            Some(&token),
            &[],
            Some("{\"name\": ".into()),
        )
        .await;
    raw.assert_error(
        400,
        "invalid_json",
        "POST /api/rooms with a body that is not JSON",
    );
    server
        .post("/api/rooms", Some(&token), &json!({"name": 5}))
        .await
        .assert_error(
            400,
            "invalid_payload",
            "POST /api/rooms with a name that is a number",
        );
    let created = server
        .post("/api/rooms", Some(&token), &json!({"name": "ok"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        created.json["room"]["visibility"], "private",
        "visibility defaults to private"
    );
    let room = created.json["room"]["id"]
        .as_str()
        .expect("room.id")
        .to_string();
    let got = server
        .get(&format!("/api/rooms/{room}"), Some(&token))
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json["room"], created.json["room"]);
    server
        .post(
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            &json!({"client_msg_id": "e-1", "type": "text", "content": ""}),
        )
        .await
        .assert_error(400, "invalid_payload", "POST messages with empty content");
    server
        .post(
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            &json!({"client_msg_id": "e-2", "type": "text", "content": "z".repeat(16385)}),
        )
        .await
        .assert_error(413, "too_large", "POST messages over max_message_bytes");
}
