//! Shared counters, latency histograms, bitsets and the cheap byte-level frame parsing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Highest latency the histograms hold, in microseconds (60 s); larger values saturate.
const HIST_MAX_US: u64 = 60_000_000;
/// Histogram shards, so that readers rarely wait on one another.
const SHARDS: usize = 16;
/// Latency samples a reader buffers before taking a shard lock.
pub const BATCH: usize = 128;

/// A new microsecond histogram (1 µs .. 60 s, 3 significant figures).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// State shared by every task of a run. Hot counters are relaxed atomics; the rare ones
/// (errors by code, disconnects) sit behind a mutex.
pub struct Shared {
    /// Time origin: send timestamps embedded in content are nanoseconds since `base`.
    pub base: Instant,
    /// Start of the measured window, in ns since `base` (`u64::MAX` until the load starts).
    pub window_start: AtomicU64,
    /// End of the measured window, in ns since `base`.
    pub window_end: AtomicU64,
    /// `send_message` requests written.
    pub sent: AtomicU64,
    /// Acks received for them.
    pub acked: AtomicU64,
    /// Error replies received for them.
    pub error_replies: AtomicU64,
    /// Acks per room.
    pub room_acked: Vec<AtomicU64>,
    /// First-time deliveries per room (duplicates excluded).
    pub room_delivered: Vec<AtomicU64>,
    /// `receive_message` frames received inside the measured window.
    pub window_deliveries: AtomicU64,
    /// Error replies by code.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Connections that ended before the run stopped them, by reason.
    pub disconnects: Mutex<BTreeMap<String, u64>>,
    /// Pushed events other than `receive_message`, by name.
    pub other_events: Mutex<BTreeMap<String, u64>>,
    /// Send → `receive_message` latency, µs, of messages sent inside the window.
    delivery_hist: Vec<Mutex<Histogram<u64>>>,
    /// Send → ack latency, µs, of messages sent inside the window.
    ack_hist: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new(rooms: usize) -> Self {
        Shared {
            base: Instant::now(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            room_acked: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            room_delivered: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            window_deliveries: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            disconnects: Mutex::new(BTreeMap::new()),
            other_events: Mutex::new(BTreeMap::new()),
            delivery_hist: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            ack_hist: Mutex::new(new_histogram()),
        }
    }

    /// Nanoseconds since `base`.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Whether a time (ns since `base`) falls inside the measured window.
    #[inline]
    pub fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start.load(Ordering::Relaxed)
            && ns < self.window_end.load(Ordering::Relaxed)
    }

    /// Records a batch of delivery latencies (µs) into shard `shard`.
    pub fn record_deliveries(&self, shard: usize, samples: &[u64]) {
        let mut h = self.delivery_hist[shard % SHARDS].lock();
        for &us in samples {
            h.saturating_record(us.max(1));
        }
    }

    /// Records a batch of ack latencies (µs).
    pub fn record_acks(&self, samples: &[u64]) {
        let mut h = self.ack_hist.lock();
        for &us in samples {
            h.saturating_record(us.max(1));
        }
    }

    /// All delivery latency shards merged.
    pub fn delivery_histogram(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.delivery_hist {
            all.add(&*shard.lock()).expect("same bounds");
        }
        all
    }

    /// The ack latency histogram.
    pub fn ack_histogram(&self) -> Histogram<u64> {
        self.ack_hist.lock().clone()
    }

    /// Adds one to `key` in a by-name counter map.
    pub fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        *map.lock().entry(key.to_owned()).or_insert(0) += 1;
    }
}

/// A growable bitset indexed by a sender's sequence number.
#[derive(Default, Clone)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was clear before.
    #[inline]
    pub fn set(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, i % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let was_clear = self.0[word] & mask == 0;
        self.0[word] |= mask;
        was_clear
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Number of bits set in both `self` and `other`.
    pub fn count_and(&self, other: &Bits) -> u64 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }
}

/// Position of the first `b` in `hay` (word-at-a-time, like memchr).
#[inline]
pub fn memchr(b: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(b);
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) ^ pattern;
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b)
        .map(|i| base + i)
}

/// Position of `needle` in `hay`.
#[inline]
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let at = from + memchr(first, &hay[from..=hay.len() - needle.len()])?;
        // A byte loop: needles are short, and this avoids a memcmp call per candidate.
        if rest.iter().zip(&hay[at + 1..]).all(|(a, b)| a == b) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The string value that follows `key` (which must end with `":"`), up to the next quote.
/// Fine for the fields read here: ids, codes, event names and refs never hold escapes.
#[inline]
pub fn string_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = find(hay, key)? + key.len();
    let len = hay[start..].iter().position(|&b| b == b'"')?;
    Some(&hay[start..start + len])
}

/// Parses leading ASCII digits; `None` if there are none or they overflow.
#[inline]
pub fn parse_u64(s: &[u8]) -> Option<(u64, usize)> {
    // Up to 19 digits cannot overflow, so no checked (128-bit) multiply there, and eight at a
    // time where they are: ids have 18 digits and send times 10 or more, several per delivery.
    let (mut v, mut n) = (0u64, 0);
    while n + 8 <= 19
        && let Some(d) = s.get(n..n + 8).and_then(eight_digits)
    {
        v = v * 100_000_000 + d;
        n += 8;
    }
    while n < 19
        && let Some(&b) = s.get(n)
        && b.is_ascii_digit()
    {
        v = v * 10 + u64::from(b - b'0');
        n += 1;
    }
    while let Some(&b) = s.get(n)
        && b.is_ascii_digit()
    {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// The value of eight ASCII digits, or `None` if they are not all digits (SWAR: the pairs,
/// then the quads, each in one multiply).
#[inline]
fn eight_digits(b: &[u8]) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let x = u64::from_le_bytes(b.try_into().ok()?);
    // Every byte 0x30..=0x39: high nibble 3, and adding 6 keeps it 3.
    if x & HIGH != ZEROS || x.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    let v = x - ZEROS;
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    const PAIRS: u64 = 0x0000_00FF_0000_00FF;
    let v = (v & PAIRS)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((v >> 16) & PAIRS).wrapping_mul(1 + (10_000 << 32)));
    Some(v >> 32)
}

/// What the content marker (`lg|<sender>|<seq>|<send ns>|`, then padding) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Global index of the sending connection.
    pub sender: u64,
    /// The sender's sequence number (also the request `ref`).
    pub seq: u64,
    /// Send time, ns since `Shared::base`.
    pub sent_ns: u64,
}

/// Finds `"content":"lg|a|b|c|` in a frame and parses it. `|` is rare in these frames, so the
/// search looks for it first and then checks what precedes it.
#[inline]
pub fn parse_marker(frame: &[u8]) -> Option<Marker> {
    const KEY: &[u8] = b"\"content\":\"lg";
    let mut from = 0;
    let mut at = loop {
        let bar = from + memchr(b'|', &frame[from..])?;
        if bar >= KEY.len() && &frame[bar - KEY.len()..bar] == KEY {
            break bar + 1;
        }
        from = bar + 1;
    };
    let mut fields = [0u64; 3];
    for f in &mut fields {
        let (v, n) = parse_u64(&frame[at..])?;
        if frame.get(at + n) != Some(&b'|') {
            return None;
        }
        *f = v;
        at += n + 1;
    }
    Some(Marker {
        sender: fields[0],
        seq: fields[1],
        sent_ns: fields[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames() {
        let f = br#"{"event":"receive_message","data":{"message":{"id":"7263112342016","room_id":"9","sender_id":"a","client_msg_id":"m","type":"text","content":"lg|3|17|123456|xxxx","status":"sent"}}}"#;
        assert_eq!(
            string_after(f, b"\"event\":\""),
            Some(&b"receive_message"[..])
        );
        assert_eq!(string_after(f, b"\"id\":\""), Some(&b"7263112342016"[..]));
        assert_eq!(
            parse_marker(f),
            Some(Marker {
                sender: 3,
                seq: 17,
                sent_ns: 123456
            })
        );
        assert_eq!(find(b"abc", b"abcd"), None);
        let long = b"0123456789abcdef|x|";
        for i in 0..long.len() {
            assert_eq!(
                memchr(long[i], long),
                long.iter().position(|&c| c == long[i])
            );
        }
        assert_eq!(memchr(b'z', long), None);
        assert_eq!(
            parse_marker(br#"{"x":"a|b","content":"lg|1|2|3|"}"#).map(|m| m.seq),
            Some(2)
        );
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(parse_u64(b"18446744073709551615x"), Some((u64::MAX, 20)));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(
            parse_u64(b"1234567890123456789|"),
            Some((1234567890123456789, 19))
        );
        assert_eq!(parse_u64(b"007,"), Some((7, 3)));
        assert_eq!(parse_u64(b"x1"), None);
        for n in [
            0u64,
            7,
            12345678,
            99999999,
            100000000,
            1764316800123456789,
            u64::MAX / 3,
        ] {
            for tail in ["", "|", "\"", "12345678901234567890123"] {
                let text = format!("{n}{tail}");
                let want = text[..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .try_fold(0u64, |v, b| {
                        v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
                    });
                let len = text.bytes().take_while(u8::is_ascii_digit).count();
                assert_eq!(parse_u64(text.as_bytes()), want.map(|v| (v, len)), "{text}");
            }
        }
        assert_eq!(eight_digits(b"1234567/"), None);
        assert_eq!(eight_digits(b"12:45678"), None);
        assert_eq!(eight_digits(b"00000001"), Some(1));
        let mut b = Bits::default();
        assert!(b.set(130));
        assert!(!b.set(130));
        assert_eq!(b.count(), 1);
    }
}
