//! A full disk (issue 24, point 10a): writes are refused with a typed `insufficient_storage`, reads go on, `/readyz` agrees, and writes resume by themselves once space is back.

use serde_json::json;
use std::time::{Duration, Instant};

use crate::support::{Options, Server, SmallDisk};

const MIB: u64 = 1024 * 1024;

/// Sends one message: notes its id in `acked` when acknowledged, or returns the error code.
async fn send(
    client: &mut crate::support::Client,
    room: &str,
    client_msg_id: &str,
    acked: &mut Vec<serde_json::Value>,
) -> Option<String> {
    match client.send_message(room, client_msg_id, "a message").await {
        Ok(ack) => {
            acked.push(ack["message"]["id"].clone());
            None
        }
        Err((code, _)) => Some(code),
    }
}

/// Polls `check` every 50 ms for at most 5 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_a_typed_error_and_they_resume_when_space_is_back() {
    let mut server = Server::start_with(Options::env(&[(
        "CONFAB_STORAGE__MIN_FREE_DISK_BYTES",
        "8388608",
    )]));
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let disk = SmallDisk::mount_over(&server.data_dir, 48 * MIB);
    server.restart();

    let token = server.token("alice", Some("Alice"));
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("full", "public").await;
    let mut acked = vec![alice.say(&room, "before").await["id"].clone()];

    let filler = disk.fill_leaving(4 * MIB);
    let mut n = 0;
    eventually("a send is refused with insufficient_storage", async || {
        n += 1;
        let refused = send(&mut alice, &room, &format!("full-{n}"), &mut acked).await;
        if let Some(code) = &refused {
            assert_eq!(code, "insufficient_storage");
        }
        refused.is_some()
    })
    .await;
    let rest = server
        .post(
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            &json!({"client_msg_id": "rest-full", "type": "text", "content": "x"}),
        )
        .await;
    rest.assert_error(507, "insufficient_storage", "a REST send on a full disk");
    let ready = server.get("/readyz", None).await;
    assert_eq!(
        ready.status, 503,
        "/readyz while writes are refused: {}",
        ready.text
    );
    // Reads go on.
    let (page, _) = alice.history(json!({"room_id": room, "limit": 50})).await;
    assert_eq!(page.len(), acked.len());

    std::fs::remove_file(&filler).expect("free the space");
    eventually("writes resume by themselves", async || {
        n += 1;
        send(&mut alice, &room, &format!("back-{n}"), &mut acked)
            .await
            .is_none()
    })
    .await;
    let ready = server.get("/readyz", None).await;
    assert_eq!(
        ready.status, 200,
        "/readyz once writes work: {}",
        ready.text
    );
    let (page, _) = alice.history(json!({"room_id": room, "limit": 50})).await;
    let listed: Vec<_> = page.iter().rev().map(|m| m["id"].clone()).collect();
    assert_eq!(
        listed, acked,
        "every acknowledged message, and nothing else"
    );
    assert!(server.metric("confab_storage_disk_full").await == 0.0);
    drop(alice);
    server.sigterm();
    let _ = server.wait_exit(Duration::from_secs(10));
    drop(disk);
}
