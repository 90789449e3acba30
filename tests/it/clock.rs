//! The machine's clock set back (issue 24, point 10b): ids keep rising and `created_at` follows the clock instead of freezing.

use serde_json::json;
use std::time::Duration;

use crate::support::{Server, debian_file, now_secs};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const DAY_MS: u64 = 86_400_000;

fn u64_of(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A small device boots without a real-time clock: the server restarts a day in the past.
/// Before the fix every new message carried the newest stored time (a day ahead of the
/// clock), frozen; now ids keep rising and `created_at` is the clock's.
#[tokio::test]
async fn a_clock_set_back_keeps_ids_rising_and_times_moving() {
    let faketime = debian_file("libfaketime", LIBFAKETIME);
    let mut server = Server::start();
    let mut alice = server.connect("alice").await;
    let room = alice.create_room("clock", "public").await;
    let before = alice.say(&room, "before the jump").await;
    let real_now_ms = now_secs() * 1000;
    assert!(u64_of(&before["created_at"]).abs_diff(real_now_ms) < 60_000);
    alice.close().await;
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());

    server.set_env("LD_PRELOAD", faketime.to_str().expect("utf-8 path"));
    server.set_env("FAKETIME", "-1d");
    server.set_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    server.restart();
    let mut alice = server.connect("alice").await;
    let first = alice.say(&room, "a day earlier").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = alice.say(&room, "a second later").await;

    let ids: Vec<u64> = [&before, &first, &second]
        .iter()
        .map(|m| u64_of(&m["id"]))
        .collect();
    assert!(
        ids[0] < ids[1] && ids[1] < ids[2],
        "ids keep rising: {ids:?}"
    );
    let (t1, t2) = (u64_of(&first["created_at"]), u64_of(&second["created_at"]));
    assert!(
        t1.abs_diff(real_now_ms - DAY_MS) < 60_000,
        "created_at is the (set back) clock's time: {t1}, expected about {}",
        real_now_ms - DAY_MS
    );
    assert!(
        (1_000..10_000).contains(&(t2 - t1)),
        "created_at moves with the clock: {t1} then {t2}"
    );
    // History is still in id order, whatever the times say.
    let page = alice
        .ok("history", json!({"room_id": room, "limit": 10}))
        .await;
    let listed: Vec<u64> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| u64_of(&m["id"]))
        .collect();
    assert_eq!(listed, vec![ids[2], ids[1], ids[0]]);
}
