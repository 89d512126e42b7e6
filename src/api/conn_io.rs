//! The socket of one API connection: its first request's head, read before hyper sees the
//! connection (so that a connection over the cap can be asked what it wants, and a new
//! connection has its own header timeout), then replayed to hyper; and the connection's
//! place under the cap, held as long as the socket is open, through a WebSocket upgrade.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::limits::Slot;

/// The longest request head read ahead; a longer one is left for hyper to refuse.
const MAX_HEAD: usize = 64 * 1024;

/// A TCP connection with the bytes read ahead of hyper, and its place.
pub(crate) struct ConnIo {
    tcp: TcpStream,
    ahead: Vec<u8>,
    /// How much of `ahead` was given to hyper.
    given: usize,
    _place: Slot,
}

impl ConnIo {
    pub(crate) fn new(tcp: TcpStream, place: Slot) -> ConnIo {
        ConnIo {
            tcp,
            ahead: Vec::new(),
            given: 0,
            _place: place,
        }
    }

    /// Reads until the first request's head is complete (or longer than hyper accepts).
    /// An error if the connection closes first.
    pub(crate) async fn read_head(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let from = self.ahead.len().saturating_sub(3);
            self.ahead.extend_from_slice(&chunk[..n]);
            if self.ahead[from..].windows(4).any(|w| w == b"\r\n\r\n")
                || self.ahead.len() >= MAX_HEAD
            {
                return Ok(());
            }
        }
    }

    /// True if the head read is a `GET /v1/health`.
    pub(crate) fn asks_health(&self) -> bool {
        let path = b"GET /v1/health";
        self.ahead.starts_with(path) && matches!(self.ahead.get(path.len()), Some(b' ' | b'?'))
    }

    /// Writes `answer` whole (within `within`), then closes the connection.
    pub(crate) async fn answer_and_close(mut self, answer: &[u8], within: std::time::Duration) {
        use tokio::io::AsyncWriteExt;
        let write = async {
            self.tcp.write_all(answer).await?;
            self.tcp.shutdown().await
        };
        let _ = tokio::time::timeout(within, write).await;
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.given < this.ahead.len() {
            let rest = &this.ahead[this.given..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.given += n;
            if this.given == this.ahead.len() {
                this.ahead = Vec::new();
                this.given = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::limits::Slots;
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, ConnIo) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let slot = Slots::new(1).take().unwrap();
        (client, ConnIo::new(server, slot))
    }

    #[tokio::test]
    async fn the_head_read_ahead_is_replayed_then_the_socket_continues() {
        let (mut client, mut io) = pair().await;
        client
            .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        client.write_all(b"\r\nbody").await.unwrap();
        io.read_head().await.unwrap();
        assert!(io.asks_health());
        client.write_all(b" more").await.unwrap();
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\nbody more");
    }

    #[tokio::test]
    async fn only_a_health_request_asks_health_and_a_closed_socket_has_no_head() {
        let (mut client, mut io) = pair().await;
        client
            .write_all(b"GET /v1/healthy HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        io.read_head().await.unwrap();
        assert!(!io.asks_health());
        let (client, mut io) = pair().await;
        drop(client);
        assert!(io.read_head().await.is_err());
    }
}
