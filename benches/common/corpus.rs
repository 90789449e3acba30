//! The generated chat corpus the storage-side benchmarks share: N messages of 5–19 words from a
//! 20,000-word vocabulary with a Zipf-like spread, in 1,000 rooms, stored through the real
//! group-commit writer.

use confab::model::{Id, MessageType, UserId, Visibility};
use confab::store::{Store, WriteOp, WriteOutput};
use rand::Rng;
use rand::SeedableRng;
use std::time::{Duration, Instant};

pub const ROOMS: usize = 1000;
pub const VOCABULARY: usize = 20_000;

/// A deterministic vocabulary of pronounceable words.
pub fn vocabulary() -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fe", "go", "ha", "ji", "ku",
        "la", "mo", "nu", "pi", "ro", "se", "tu", "ve", "zo",
    ];
    (0..VOCABULARY)
        .map(|i| {
            let mut w = String::new();
            let mut n = i + 24;
            while n > 0 {
                w.push_str(SYL[n % 24]);
                n /= 24;
            }
            w
        })
        .collect()
}

/// Zipf-like pick: low indexes are common, high ones rare.
pub fn pick(rng: &mut impl Rng, n: usize) -> usize {
    let u: f64 = rng.random_range(0.0..1.0);
    ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
}

/// Creates the rooms and stores `total` messages (seeded, so every run stores the same text).
/// Returns the room ids and how long storing the messages took.
pub fn store_corpus(
    store: &Store,
    words: &[String],
    total: usize,
) -> anyhow::Result<(Vec<Id>, Duration)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rooms = Vec::with_capacity(ROOMS);
    for i in 0..ROOMS {
        let out = store.write_blocking(WriteOp::CreateRoom {
            name: format!("room {i}"),
            topic: String::new(),
            visibility: Visibility::Public,
            owner: UserId::from("bench"),
        })?;
        if let WriteOutput::RoomCreated { room, .. } = out {
            rooms.push(room.id);
        }
    }
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    // Writes in flight at once: enough for large group commits, bounded in memory.
    let window = 20_000;
    for i in 0..total {
        if i >= window {
            rx.recv()?;
        }
        let len = rng.random_range(5..20);
        let content: Vec<&str> = (0..len)
            .map(|_| words[pick(&mut rng, VOCABULARY)].as_str())
            .collect();
        let tx = tx.clone();
        store.submit(
            WriteOp::AppendMessage {
                room: rooms[i % ROOMS],
                sender: UserId::from(format!("user{}", i % 500)),
                client_msg_id: format!("m{i}"),
                kind: MessageType::Text,
                content: content.join(" "),
                file: None,
            },
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        )?;
    }
    for _ in 0..total.min(window) {
        rx.recv()?;
    }
    Ok((rooms, started.elapsed()))
}
