//! The two tasks of one link: the reader decodes frames from the peer's stream and forwards
//! them as events (waiting when the owner is slow: backpressure), and owns the link's end;
//! the writer drains the peer's send queue and writes batches of frames on our stream,
//! through one deflate stream flushed after every batch when the Hellos agreed on it.
//! A malformed frame or an unexpected Hello is counted and closes the connection; nothing
//! here panics on what the peer sends. Admission is `admit.rs`'s; events are delivered
//! through `state.rs`.

use std::sync::Arc;

use flate2::{Compress, Compression, FlushCompress};

use super::frames::{FrameError, FrameReader};
use super::peers::SharedQueue;
use super::state::{code, wait_closing, Inner, WriterGuard};
use super::stats::{PeerCounters, Reject};
use super::TransportEvent;
use crate::wire::{self, Message, WireError};

/// A batch is written once it holds this many bytes (or the queue is empty).
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches larger than this go uncompressed (stored deflate blocks): they are a large
/// document's changes or sync data, often random or compressed already by Automerge, and
/// compressing them would hold a runtime thread for long. Small batches (the writes of a
/// busy cluster) are where the bytes per write are saved.
const STORED_ABOVE: usize = 1024 * 1024;

/// What a writer needs.
pub(crate) struct WriterArgs {
    pub(crate) peer: String,
    pub(crate) conn: quinn::Connection,
    pub(crate) send: quinn::SendStream,
    pub(crate) first_frame: Option<Vec<u8>>,
    pub(crate) queue: SharedQueue,
    pub(crate) counters: Arc<PeerCounters>,
    /// Compress what follows the first frame (both Hellos offered deflate).
    pub(crate) compress: bool,
    /// The protocol version messages are encoded in.
    pub(crate) version: u8,
}

/// Reads frames until the connection ends, then tells the state the link is gone.
pub(crate) async fn run_reader(
    inner: Arc<Inner>,
    peer: String,
    id: u64,
    conn: quinn::Connection,
    mut frames: FrameReader,
    counters: Arc<PeerCounters>,
) {
    let mut closing = inner.closing_rx();
    loop {
        match frames.read().await {
            Ok((Message::Hello(_), _)) => {
                inner.rejected.inc(Reject::BadHello);
                tracing::warn!(peer, "unexpected hello after the handshake; closing");
                conn.close(code::BAD_HELLO, b"unexpected hello");
                break;
            }
            Ok((msg, wire_bytes)) => {
                counters.received(wire_bytes as u64);
                let ev = TransportEvent::Message {
                    from: peer.clone(),
                    msg,
                };
                if !inner.deliver(ev, &mut closing).await {
                    break;
                }
            }
            Err(FrameError::Finished) => break,
            Err(e) if e.is_malformed() => {
                inner.rejected.inc(Reject::BadFrame);
                tracing::warn!(peer, error = %e, "malformed frame; closing the connection");
                conn.close(code::BAD_FRAME, b"malformed frame");
                break;
            }
            Err(e) => {
                tracing::debug!(peer, error = %e, "connection ended");
                break;
            }
        }
    }
    conn.close(code::DONE, b"link closed");
    inner.link_gone(&peer, id).await;
}

/// Appends `msg`'s frame in `version` to `buf`; false if it cannot be encoded (counted,
/// logged) or does not exist in that older version (skipped: nothing an older peer cannot
/// read is sent to it).
fn push_frame(
    buf: &mut Vec<u8>,
    msg: &Message,
    version: u8,
    peer: &str,
    counters: &PeerCounters,
) -> bool {
    match wire::encode_as(msg, version) {
        Ok(frame) => {
            buf.extend_from_slice(&frame);
            counters.sent_kind(msg.kind_index());
            true
        }
        Err(e @ WireError::NotInVersion { .. }) => {
            tracing::debug!(peer, error = %e, "not sent to a peer of an older release");
            false
        }
        Err(e) => {
            counters.inc_dropped_unencodable();
            tracing::warn!(peer, kind = msg.kind(), error = %e, "dropping unencodable message");
            false
        }
    }
}

/// Takes queued messages (at least `first` if given) into one batch of frames.
fn fill_batch(
    buf: &mut Vec<u8>,
    first: Option<Message>,
    rx: &mut tokio::sync::mpsc::Receiver<Message>,
    version: u8,
    peer: &str,
    counters: &PeerCounters,
) -> u64 {
    buf.clear();
    let mut count = 0;
    if let Some(m) = first {
        count += u64::from(push_frame(buf, &m, version, peer, counters));
    }
    while buf.len() < BATCH_BYTES {
        match rx.try_recv() {
            Ok(m) => count += u64::from(push_frame(buf, &m, version, peer, counters)),
            Err(_) => break,
        }
    }
    count
}

/// Writes the first frame, then drains the peer's queue until the connection closes. On
/// shutdown, writes what is queued, finishes the stream and waits for the peer to read it.
pub(crate) async fn run_writer(inner: Arc<Inner>, args: WriterArgs, _guard: WriterGuard) {
    let WriterArgs {
        peer,
        conn,
        mut send,
        first_frame,
        queue,
        counters,
        compress,
        version,
    } = args;
    let mut deflate = compress.then(Deflate::new);
    let mut closing = inner.closing_rx();
    if let Some(frame) = first_frame {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let mut rx = tokio::select! {
        biased;
        _ = conn.closed() => return,
        _ = wait_closing(&mut closing) => {
            finish(&mut send).await;
            return;
        }
        rx = queue.lock() => rx,
    };
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.closed() => return,
            _ = wait_closing(&mut closing) => None,
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return,
            },
        };
        let flushing = next.is_none();
        let count = fill_batch(&mut buf, next, &mut rx, version, &peer, &counters);
        if !buf.is_empty() {
            let wire = match deflate.as_mut() {
                Some(d) => {
                    if let Err(e) = d.batch(&buf, &mut out) {
                        tracing::error!(peer, error = %e, "cannot compress; closing the link");
                        conn.close(code::DONE, b"compression failed");
                        return;
                    }
                    &out
                }
                None => &buf,
            };
            if send.write_all(wire).await.is_err() {
                return;
            }
            counters.sent(count, wire.len() as u64);
        }
        if buf.capacity() > 4 * BATCH_BYTES {
            // Do not keep a huge message's buffers for the link's lifetime.
            buf = Vec::new();
            out = Vec::new();
        }
        if flushing && buf.is_empty() {
            finish(&mut send).await;
            return;
        }
    }
}

/// The compressing side of a link's deflate stream.
struct Deflate(Compress);

impl Deflate {
    fn new() -> Self {
        Deflate(Compress::new(Compression::fast(), false))
    }

    /// Compresses `input` into `out` (cleared first) and flushes, so that the peer can
    /// read all of it. Batches over [`STORED_ABOVE`] go as stored blocks.
    fn batch(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), flate2::CompressError> {
        if input.len() <= STORED_ABOVE {
            return deflate(&mut self.0, input, out);
        }
        // Every batch ends with a sync flush, so the stream is at a byte boundary here and
        // stored blocks can follow. The compressor must then start over: the reader's
        // window now ends with these bytes, which the compressor has not seen.
        out.clear();
        out.reserve(input.len() + input.len() / 65535 * 5 + 5);
        for chunk in input.chunks(u16::MAX as usize) {
            let len = chunk.len() as u16;
            out.push(0); // not the final block, type 0 (stored), padded to the byte
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        self.0.reset();
        Ok(())
    }
}

/// Deflates `input` into `out` with a sync flush (the output ends on a byte boundary with
/// everything decodable).
fn deflate(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Result<(), flate2::CompressError> {
    out.clear();
    let mut at = 0;
    loop {
        let left = input.len() - at;
        out.reserve(left + left / 8 + 1024);
        let before = c.total_in();
        c.compress_vec(&input[at..], out, FlushCompress::Sync)?;
        at += (c.total_in() - before) as usize;
        // Flushed once all input is taken and the output did not fill its space.
        if at == input.len() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

/// Finishes the stream and waits until the peer has read it (bounded by `shutdown`, which
/// closes the connection after its flush timeout).
async fn finish(send: &mut quinn::SendStream) {
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}
