//! 64-bit time-ordered ids, unique across nodes: 42 bits of ms since 2025, 10 of node, 12 of sequence.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// 2025-01-01T00:00:00Z in Unix milliseconds: the zero of the id clock.
pub const ID_EPOCH_MS: u64 = 1_735_689_600_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// Largest node id that fits in an id.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// A message or room id. Travels as a decimal string: JavaScript numbers stop at 2^53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

impl Id {
    /// Unix milliseconds at which the id was made.
    /// The smallest id made at or after `ms` (milliseconds since the Unix epoch).
    pub fn first_at(ms: u64) -> Id {
        Id(ms.saturating_sub(ID_EPOCH_MS) << (NODE_BITS + SEQ_BITS))
    }

    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> (NODE_BITS + SEQ_BITS)) + ID_EPOCH_MS
    }

    /// Node that made the id.
    pub fn node(self) -> u16 {
        ((self.0 >> SEQ_BITS) & u64::from(MAX_NODE_ID)) as u16
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Id {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>().map(Id)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id as a decimal string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                v.parse()
                    .map_err(|_| E::custom("an id must be a decimal string"))
            }
        }
        // Strings only: a JSON number is refused (`invalid_payload` on the wire), since a
        // client that sends numbers has already lost precision past 2^53.
        d.deserialize_str(V)
    }
}

/// Makes strictly increasing ids for one node, even when the clock steps back.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    last: u64,
}

impl IdGenerator {
    /// `last` is the largest id this node ever issued (kept in storage), so ids keep rising
    /// across restarts whatever the clock does.
    pub fn new(node: u16, last: Id) -> Self {
        Self {
            node: u64::from(node.min(MAX_NODE_ID)),
            last: last.0,
        }
    }

    /// The next id at wall-clock time `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> Id {
        let ts = now_ms.saturating_sub(ID_EPOCH_MS);
        let candidate = (ts << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS);
        let id = if candidate > self.last {
            candidate
        } else {
            // Same millisecond (or clock behind): bump the sequence; on overflow borrow the
            // next millisecond, keeping our node bits.
            let last_ts = self.last >> (NODE_BITS + SEQ_BITS);
            let seq = self.last & SEQ_MASK;
            if seq < SEQ_MASK {
                (last_ts << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | (seq + 1)
            } else {
                ((last_ts + 1) << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS)
            }
        };
        self.last = id;
        Id(id)
    }

    /// The last id issued.
    pub fn last(&self) -> Id {
        Id(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_rise_within_a_millisecond_and_when_the_clock_steps_back() {
        let mut g = IdGenerator::new(7, Id(0));
        let t = ID_EPOCH_MS + 1_000;
        let mut prev = g.next(t);
        for i in 0..10_000u64 {
            let now = if i % 100 == 0 { t - 500 } else { t };
            let id = g.next(now);
            assert!(id > prev, "{id} after {prev}");
            assert_eq!(id.node(), 7);
            prev = id;
        }
    }

    #[test]
    fn id_carries_its_time_and_node() {
        let mut g = IdGenerator::new(1023, Id(0));
        let id = g.next(ID_EPOCH_MS + 123_456);
        assert_eq!(id.timestamp_ms(), ID_EPOCH_MS + 123_456);
        assert_eq!(id.node(), 1023);
    }

    #[test]
    fn ids_travel_as_strings() {
        let id = Id(u64::MAX);
        let s = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(s, format!("\"{}\"", u64::MAX));
        let back: Id = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(back, id);
    }
}
