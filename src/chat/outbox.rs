//! A connection's outbound queue: bounded in bytes, shared frames, one wake-up per batch.

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why the hub wants a connection closed, and the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
}

struct Queue {
    frames: Vec<Bytes>,
    bytes: usize,
    close: Option<CloseRequest>,
}

/// Frames waiting to be written to one connection. Producers (the hub, on any thread) push
/// shared `Bytes`; the connection's writer drains everything at once and flushes once.
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    limit: usize,
}

/// What `push` did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue passed its bound: the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                frames: Vec::new(),
                bytes: 0,
                close: None,
            }),
            notify: Notify::new(),
            limit: limit_bytes,
        }
    }

    /// Queues a frame. Past the byte bound the queue is dropped and the connection is asked
    /// to close with `SLOW_CONSUMER`: a reader that stops reading never slows its room.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let mut q = self.queue.lock();
        if q.close.is_some() {
            return Pushed::Closed;
        }
        if q.bytes + frame.len() > self.limit {
            return self.overflow(q);
        }
        q.bytes += frame.len();
        let was_empty = q.frames.is_empty();
        q.frames.push(frame);
        drop(q);
        // One wake-up per batch: the writer drains everything queued since.
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Past the bound: drops the backlog and asks for a `SLOW_CONSUMER` close.
    fn overflow(&self, mut q: parking_lot::MutexGuard<'_, Queue>) -> Pushed {
        q.frames.clear();
        q.bytes = 0;
        q.close = Some(CloseRequest {
            code: crate::protocol::close::SLOW_CONSUMER,
            reason: "slow consumer",
        });
        drop(q);
        self.notify.notify_one();
        Pushed::Overflowed
    }

    /// Queues several frames at once (one lock, at most one wake-up), like `push` for each.
    pub fn push_all(&self, frames: &[Bytes]) -> Pushed {
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        let mut q = self.queue.lock();
        if q.close.is_some() {
            return Pushed::Closed;
        }
        if q.bytes + bytes > self.limit {
            return self.overflow(q);
        }
        q.bytes += bytes;
        let was_empty = q.frames.is_empty();
        q.frames.extend_from_slice(frames);
        drop(q);
        if was_empty && !frames.is_empty() {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Asks the writer to close after the frames already queued.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.close = Some(CloseRequest { code, reason });
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Wakes the writer without queuing anything, for signals kept beside the queue (a pong to
    /// send, a close the reader asked for): the writer then waits on this one queue alone.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Moves every queued frame into `out` and returns a pending close request, if any.
    pub fn drain_into(&self, out: &mut Vec<Bytes>) -> Option<CloseRequest> {
        let mut q = self.queue.lock();
        if out.is_empty() {
            // The usual case: the writer's empty batch and the queue trade places.
            std::mem::swap(&mut q.frames, out);
        } else {
            out.append(&mut q.frames);
        }
        q.bytes = 0;
        if out.len() <= 2 && q.frames.capacity() > 16 {
            // A quiet moment after a burst: give the burst's capacity back, so idle
            // connections stay small (under load batches are large and nothing churns).
            q.frames = Vec::new();
        }
        q.close
    }

    /// Resolves once something was pushed or a close was requested since the last drain.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_the_backlog() {
        let ob = Outbox::new(10);
        assert_eq!(ob.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(ob.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(ob.push(Bytes::from_static(b"1")), Pushed::Overflowed);
        assert_eq!(ob.push(Bytes::from_static(b"1")), Pushed::Closed);
        let mut out = Vec::new();
        let close = ob.drain_into(&mut out);
        assert!(out.is_empty());
        assert_eq!(
            close.map(|c| c.code),
            Some(crate::protocol::close::SLOW_CONSUMER)
        );
    }

    #[test]
    fn push_all_queues_in_order_with_one_bound_check() {
        let ob = Outbox::new(10);
        let frames = [Bytes::from_static(b"123"), Bytes::from_static(b"4567")];
        assert_eq!(ob.push_all(&frames), Pushed::Queued);
        assert_eq!(ob.push_all(&frames), Pushed::Overflowed, "14 bytes > 10");
        assert_eq!(ob.push_all(&frames), Pushed::Closed);
        let ob = Outbox::new(10);
        ob.push_all(&frames);
        ob.push(Bytes::from_static(b"8"));
        let mut out = Vec::new();
        assert!(ob.drain_into(&mut out).is_none());
        assert_eq!(out, [&b"123"[..], b"4567", b"8"]);
    }

    #[test]
    fn drained_bytes_free_room_for_more() {
        let ob = Outbox::new(10);
        ob.push(Bytes::from_static(b"1234567890"));
        let mut out = Vec::new();
        assert!(ob.drain_into(&mut out).is_none());
        assert_eq!(out.len(), 1);
        assert_eq!(ob.push(Bytes::from_static(b"1234567890")), Pushed::Queued);
    }
}
