//! The WebSocket write side: a batch of shared frames goes out in one vectored write, with
//! each frame's header built on the stack and its payload (`Bytes` shared with every other
//! recipient) handed to the kernel as is: no copy, no per-connection buffer, no allocation.
//! Slices and headers are built afresh in a plain function for every write attempt, so
//! nothing but two counters lives across an `.await`: the writer task of an idle connection
//! stays small.

use std::io::{self, IoSlice};

/// Frames per `writev`: two slices each (header, payload), well under `IOV_MAX` (1024).
const FRAMES_PER_WRITE: usize = 64;
use crate::chat::Frame;
use crate::protocol::ws_frame::{self, MAX_HEADER};

/// WebSocket opcodes the server sends (RFC 6455 §5.2).
#[derive(Clone, Copy)]
pub enum OpCode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// A non-blocking stream: a vectored write that may say `WouldBlock`, and a wait until it
/// may not. Implemented by the socket's write half.
pub trait Sink {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl Sink for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
    async fn writable(&self) -> io::Result<()> {
        tokio::net::tcp::OwnedWriteHalf::writable(self).await
    }
}

/// Writes server frames (unmasked, unfragmented) to a socket.
pub struct FrameWriter<S> {
    sock: S,
}

/// Something the writer sends: a payload that still needs its frame header (control
/// payloads, `Frame::Payload`), or complete frames (`Frame::Wire`), written as they are.
pub trait Outgoing {
    fn bytes(&self) -> &[u8];
    fn framed(&self) -> bool;
}

impl Outgoing for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn framed(&self) -> bool {
        false
    }
}

impl Outgoing for Frame {
    fn bytes(&self) -> &[u8] {
        Frame::bytes(self)
    }
    fn framed(&self) -> bool {
        matches!(self, Frame::Wire { .. })
    }
}

/// The header `f` needs with opcode `op` (none for complete frames); returns its length.
fn header<F: Outgoing>(out: &mut [u8; MAX_HEADER], op: OpCode, f: &F) -> usize {
    if f.framed() {
        0
    } else {
        ws_frame::header(out, op as u8, f.bytes().len())
    }
}

/// The wire length of `f`.
fn frame_len<F: Outgoing>(op: OpCode, f: &F) -> usize {
    header(&mut [0; MAX_HEADER], op, f) + f.bytes().len()
}

/// One write attempt of `frames` (all with opcode `op`) from `skip` bytes into the first.
/// Returns the bytes written.
fn write_some<S: Sink, B: Outgoing>(
    sock: &S,
    op: OpCode,
    frames: &[B],
    skip: usize,
) -> io::Result<usize> {
    // Most writes carry one or two frames: stack arrays sized for 64 would be zeroed (3 KiB)
    // on every write for nothing.
    if frames.len() <= FEW_FRAMES {
        write_some_n::<S, B, FEW_FRAMES>(sock, op, frames, skip)
    } else {
        write_some_n::<S, B, FRAMES_PER_WRITE>(sock, op, frames, skip)
    }
}

/// Frames per write on the small path.
const FEW_FRAMES: usize = 4;

/// `write_some` with room for `N` frames (`2 * N` slices).
fn write_some_n<S: Sink, B: Outgoing, const N: usize>(
    sock: &S,
    op: OpCode,
    frames: &[B],
    skip: usize,
) -> io::Result<usize> {
    let frames = &frames[..frames.len().min(N)];
    let mut heads = [[0u8; MAX_HEADER]; N];
    let mut lens = [0usize; N];
    for (i, f) in frames.iter().enumerate() {
        lens[i] = header(&mut heads[i], op, f);
    }
    let mut slices = [[IoSlice::new(&[]); 2]; N];
    for (i, f) in frames.iter().enumerate() {
        slices[i] = [IoSlice::new(&heads[i][..lens[i]]), IoSlice::new(f.bytes())];
    }
    let mut slices = &mut slices.as_flattened_mut()[..2 * frames.len()];
    IoSlice::advance_slices(&mut slices, skip);
    // Empty payloads must not make a zero-length write look like a closed socket.
    while !slices.is_empty() && slices[0].is_empty() {
        slices = &mut slices[1..];
    }
    if slices.is_empty() {
        return Ok(0);
    }
    match sock.try_write_vectored(slices)? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

impl<S: Sink> FrameWriter<S> {
    pub fn new(sock: S) -> Self {
        Self { sock }
    }

    /// Writes every frame, in order, waiting for the socket as needed.
    async fn frames<B: Outgoing>(&mut self, op: OpCode, frames: &[B]) -> io::Result<()> {
        let (mut at, mut skip) = (0usize, 0usize);
        while at < frames.len() {
            match write_some(&self.sock, op, &frames[at..], skip) {
                Ok(mut n) => {
                    // Whole frames written move `at`; the rest is the offset into the next.
                    n += skip;
                    skip = 0;
                    while at < frames.len() {
                        let len = frame_len(op, &frames[at]);
                        if n < len {
                            skip = n;
                            break;
                        }
                        n -= len;
                        at += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes one control frame (ping, pong, close); `payload` is cut to 125 bytes.
    pub async fn control(&mut self, op: OpCode, payload: &[u8]) -> io::Result<()> {
        let payload = &payload[..payload.len().min(125)];
        self.frames(op, &[payload]).await
    }

    /// A close frame with its status code and reason.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        self.control(OpCode::Close, &payload).await
    }

    /// Writes every frame (payloads as text frames), in order, in as few `writev` calls as it
    /// takes.
    pub async fn text_frames(&mut self, frames: &[Frame]) -> io::Result<()> {
        self.frames(OpCode::Text, frames).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A sink that accepts at most `step` bytes per call and says `WouldBlock` every other
    /// call, to exercise short writes and the wait.
    struct Trickle {
        out: std::sync::Mutex<Vec<u8>>,
        step: usize,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Sink for Trickle {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            use std::sync::atomic::Ordering;
            if self.calls.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut out = self.out.lock().expect("lock");
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Ok(n)
        }
        async fn writable(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Parses unmasked server frames back into (opcode, payload).
    fn parse(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0] & 0xF0, 0x80, "FIN set, no RSV bits");
            assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
            let (len, at) = match b[1] & 0x7F {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push((b[0] & 0x0F, b[at..at + len].to_vec()));
            b = &b[at + len..];
        }
        out
    }

    #[tokio::test]
    async fn frames_of_every_length_class_survive_short_writes() {
        let frames: Vec<Bytes> = [0usize, 1, 125, 126, 65535, 65536, 70000]
            .iter()
            .cycle()
            .take(150) // more than one writev chunk
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![(i % 251) as u8; n]))
            .collect();
        // The same payloads, every third one joined with the next two into complete frames.
        let mut out: Vec<Frame> = Vec::new();
        for chunk in frames.chunks(3) {
            match chunk {
                [one] => out.push(Frame::Payload(one.clone())),
                run => out.push(Frame::Wire {
                    bytes: ws_frame::text_frames(run.iter().map(|b| &b[..])),
                    frames: run.len(),
                }),
            }
            if let Some(f) = chunk.first() {
                out.push(Frame::Payload(f.clone()));
            }
        }
        let expected: Vec<Bytes> = frames
            .chunks(3)
            .flat_map(|c| c.iter().chain(c.first()).cloned())
            .collect();
        for step in [3, 4096, 1 << 40] {
            let mut w = FrameWriter::new(Trickle {
                out: Default::default(),
                step,
                calls: Default::default(),
            });
            w.control(OpCode::Pong, b"hi").await.expect("pong");
            w.text_frames(&out).await.expect("frames");
            w.close(4003, "slow consumer").await.expect("close");
            let got = parse(&w.sock.out.lock().expect("lock"));
            assert_eq!(got.len(), expected.len() + 2);
            assert_eq!(got[0], (0xA, b"hi".to_vec()));
            for (g, f) in got[1..].iter().zip(&expected) {
                assert_eq!(g.0, 0x1);
                assert_eq!(&g.1[..], &f[..]);
            }
            let last = got.last().expect("a close frame");
            assert_eq!(last.0, 0x8);
            assert_eq!(&last.1[..2], &4003u16.to_be_bytes());
            assert_eq!(&last.1[2..], b"slow consumer");
        }
    }
}
