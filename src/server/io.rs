//! A write half that gathers every frame of a batch and sends them with one flush.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

/// Above this, the buffer is freed after a flush so idle connections stay small (a burst of
/// frames, or one history page, would otherwise stay allocated for the connection's life).
const KEEP_CAPACITY: usize = 256;

/// Buffers writes until `poll_flush`, then writes them out in as few syscalls as possible.
/// Allocates only while it holds data.
pub struct CoalescingWriter<W> {
    inner: W,
    buf: Vec<u8>,
    written: usize,
}

impl<W> CoalescingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CoalescingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Bounded by the caller: a connection's outbound queue is bounded in bytes.
        self.get_mut().buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = bufs.iter().map(|b| b.len()).sum();
        this.buf.reserve(n);
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.written < this.buf.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.buf[this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
        }
        this.written = 0;
        if this.buf.capacity() > KEEP_CAPACITY {
            this.buf = Vec::new();
        } else {
            this.buf.clear();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
