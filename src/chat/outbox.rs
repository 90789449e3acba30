//! A connection's outbound queue: bounded in bytes, shared frames, one wake-up per batch.

use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::Notify;

/// Why the hub wants a connection closed, and the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
}

/// What a connection's writer sends: one frame's payload (the writer adds the header), or
/// complete frames already joined into one buffer (a room's messages of one batch, shared by
/// every recipient: one reference and one iovec each instead of one per message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Payload(Bytes),
    Wire { bytes: Bytes, frames: usize },
}

impl Frame {
    /// What goes on the wire: the payload, or the complete frames.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Frame::Payload(b) | Frame::Wire { bytes: b, .. } => b,
        }
    }

    /// Bytes counted against the outbox's bound.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages it carries.
    pub fn frames(&self) -> usize {
        match self {
            Frame::Payload(_) => 1,
            Frame::Wire { frames, .. } => *frames,
        }
    }
}

struct Queue {
    frames: Vec<Frame>,
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
        self.push_frame(Frame::Payload(frame))
    }

    /// Queues a payload or a run of complete frames (`protocol::ws_frame::text_frames`).
    pub fn push_frame(&self, frame: Frame) -> Pushed {
        let (pushed, wake) = self.push_frame_deferred(frame);
        if wake {
            self.notify.notify_one();
        }
        pushed
    }

    /// Queues like `push_frame` but leaves the wake-up to the caller: `true` when the queue
    /// was empty, and the caller must then call `wake` (soon), for instance for many outboxes
    /// at once through a `BulkWaker`.
    pub fn push_frame_deferred(&self, frame: Frame) -> (Pushed, bool) {
        let mut q = self.queue.lock();
        if q.close.is_some() {
            return (Pushed::Closed, false);
        }
        if q.bytes + frame.len() > self.limit {
            return (self.overflow(q), false);
        }
        q.bytes += frame.len();
        let was_empty = q.frames.is_empty();
        q.frames.push(frame);
        // One wake-up per batch: the writer drains everything queued since.
        (Pushed::Queued, was_empty)
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
    pub fn drain_into(&self, out: &mut Vec<Frame>) -> Option<CloseRequest> {
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

/// Wakes many connection writers at once from a thread outside the runtime (the store's
/// writer thread): one hand-off to a task on the runtime, which wakes each writer there. Woken
/// one by one from outside, the runtime's parked worker is unparked by the first wake-up,
/// preempts the waking thread on a single core, writes that one frame and parks again, once
/// per recipient (seen: up to a hundred context switches for one message's fan-out).
pub struct BulkWaker {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Vec<Arc<Outbox>>>>,
}

impl BulkWaker {
    /// Starts the waking task on the current runtime; without one, `wake` wakes each writer
    /// itself.
    pub fn start() -> Self {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Self { tx: None };
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Arc<Outbox>>>();
        rt.spawn(async move {
            while let Some(list) = rx.recv().await {
                for ob in list {
                    ob.wake();
                }
            }
        });
        Self { tx: Some(tx) }
    }

    /// Wakes every outbox in `list` (emptying it): at once on a runtime thread, else through
    /// the waking task, or directly when that task is gone (the runtime is shutting down).
    pub fn wake(&self, list: &mut Vec<Arc<Outbox>>) {
        if list.is_empty() {
            return;
        }
        let rejected = match &self.tx {
            Some(tx) if tokio::runtime::Handle::try_current().is_err() => {
                match tx.send(std::mem::take(list)) {
                    Ok(()) => return,
                    Err(e) => e.0,
                }
            }
            _ => std::mem::take(list),
        };
        for ob in rejected {
            ob.wake();
        }
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

    fn one_frame() -> Frame {
        Frame::Payload(Bytes::from_static(b"x"))
    }

    /// Resolves `ready` within a short wait, or says it did not.
    async fn woken(ob: &Outbox) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(200), ob.ready())
            .await
            .is_ok()
    }

    #[test]
    fn a_deferred_push_leaves_the_wake_up_to_the_caller() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ob = Outbox::new(100);
        assert_eq!(ob.push_frame_deferred(one_frame()), (Pushed::Queued, true));
        // Not empty any more: whoever queued the first frame wakes the writer for both.
        assert_eq!(ob.push_frame_deferred(one_frame()), (Pushed::Queued, false));
        assert!(!rt.block_on(woken(&ob)), "a deferred push woke the writer");
        ob.wake();
        assert!(rt.block_on(woken(&ob)));
        let mut out = Vec::new();
        ob.drain_into(&mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_bulk_wake_from_outside_the_runtime_reaches_every_writer() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let waker = rt.block_on(async { BulkWaker::start() });
        let outboxes: Vec<Arc<Outbox>> = (0..50).map(|_| Arc::new(Outbox::new(100))).collect();
        let writers: Vec<_> = outboxes
            .iter()
            .map(|ob| {
                let ob = Arc::clone(ob);
                rt.spawn(async move {
                    let woke = woken(&ob).await;
                    let mut out = Vec::new();
                    ob.drain_into(&mut out);
                    (woke, out.len())
                })
            })
            .collect();
        // Like the store's writer thread: no runtime here.
        let queued = outboxes.clone();
        std::thread::spawn(move || {
            let mut list = Vec::new();
            for ob in queued {
                if ob.push_frame_deferred(one_frame()).1 {
                    list.push(ob);
                }
            }
            waker.wake(&mut list);
            assert!(list.is_empty());
        })
        .join()
        .expect("waking thread");
        for w in writers {
            assert_eq!(rt.block_on(w).expect("writer"), (true, 1));
        }
    }

    #[test]
    fn without_a_runtime_a_bulk_waker_wakes_each_writer_itself() {
        let waker = BulkWaker::start();
        let ob = Arc::new(Outbox::new(100));
        assert!(ob.push_frame_deferred(one_frame()).1);
        waker.wake(&mut vec![Arc::clone(&ob)]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        assert!(rt.block_on(woken(&ob)));
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
