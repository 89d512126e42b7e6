//! Reading frames from a QUIC receive stream: the length prefix is checked against
//! `MAX_FRAME` before any payload is read, and the payload buffer grows with the bytes that
//! actually arrive, so a lying prefix cannot make the node allocate. Decoding itself is
//! [`crate::wire`]'s; this file only moves bytes.

use tokio::io::{AsyncReadExt, BufReader};

use crate::wire::{self, Message, WireError, HEADER_LEN};

/// Read buffer size: many small frames are served from one read of the stream.
const READ_BUFFER: usize = 64 * 1024;
/// Initial payload capacity; larger payloads grow as their bytes arrive.
const INITIAL_PAYLOAD: usize = 64 * 1024;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The peer finished its stream cleanly between two frames.
    #[error("stream finished")]
    Finished,
    /// The stream or connection failed (closed, reset, timed out).
    #[error("stream lost: {0}")]
    Lost(std::io::Error),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame announced (or the header size).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The frame is oversized or does not decode.
    #[error("bad frame: {0}")]
    Bad(#[from] WireError),
}

impl FrameError {
    /// Whether the peer sent bytes that are not a valid frame (as opposed to going away).
    pub(crate) fn is_malformed(&self) -> bool {
        matches!(self, FrameError::Truncated { .. } | FrameError::Bad(_))
    }
}

/// Frames of one receive stream.
pub(crate) struct FrameReader {
    stream: BufReader<quinn::RecvStream>,
}

impl FrameReader {
    pub(crate) fn new(stream: quinn::RecvStream) -> Self {
        FrameReader {
            stream: BufReader::with_capacity(READ_BUFFER, stream),
        }
    }

    /// The next message and the size of its frame on the wire.
    pub(crate) async fn read(&mut self) -> Result<(Message, usize), FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            let n = self
                .stream
                .read(&mut header[filled..])
                .await
                .map_err(FrameError::Lost)?;
            if n == 0 {
                return Err(if filled == 0 {
                    FrameError::Finished
                } else {
                    FrameError::Truncated {
                        expected: HEADER_LEN,
                        got: filled,
                    }
                });
            }
            filled += n;
        }
        let len = wire::frame_len(header)?;
        let mut payload = Vec::with_capacity(len.min(INITIAL_PAYLOAD));
        (&mut self.stream)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await
            .map_err(FrameError::Lost)?;
        if payload.len() < len {
            return Err(FrameError::Truncated {
                expected: len,
                got: payload.len(),
            });
        }
        let msg = wire::decode_payload(&payload)?;
        Ok((msg, HEADER_LEN + len))
    }
}
