//! Reading messages from a QUIC receive stream, and the deflate stream below them when the
//! Hellos agreed on compression. Frame headers are checked (by [`crate::wire`]) before any
//! payload is read, and buffers grow only with the bytes that actually arrive (inflated at
//! most [`INFLATE_STEP`] at a time), so neither a lying header nor a deflate bomb can make
//! the node allocate more than [`crate::wire::MAX_MESSAGE`] plus a step. Decoding itself is
//! [`crate::wire`]'s, in the connection's protocol version; this file only moves bytes (and
//! skips the messages of kinds a newer peer added, see [`crate::wire::WireError::UnknownKind`]).

use flate2::{Decompress, FlushDecompress, Status};

use crate::wire::{self, Message, WireError, HEADER_LEN};

/// Most bytes taken from the stream by one read.
const READ_CHUNK: usize = 64 * 1024;
/// Most bytes inflated at a time.
const INFLATE_STEP: usize = 256 * 1024;

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The peer finished its stream cleanly between two messages.
    #[error("stream finished")]
    Finished,
    /// The stream or connection failed (closed, reset, timed out).
    #[error("stream lost: {0}")]
    Lost(quinn::ReadError),
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({got} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished message received.
        got: usize,
    },
    /// The compressed stream is not valid deflate.
    #[error("bad compressed stream: {0}")]
    Inflate(String),
    /// A frame is oversized or the message does not decode.
    #[error("bad frame: {0}")]
    Bad(#[from] WireError),
}

impl FrameError {
    /// Whether the peer sent bytes that are not a valid message (as opposed to going away).
    pub(crate) fn is_malformed(&self) -> bool {
        matches!(
            self,
            FrameError::Truncated { .. } | FrameError::Inflate(_) | FrameError::Bad(_)
        )
    }
}

/// Messages of one receive stream.
pub(crate) struct FrameReader {
    stream: quinn::RecvStream,
    /// Bytes of the stream not yet inflated (compressed streams only).
    raw: Vec<u8>,
    /// Bytes of frames not yet parsed, from `at` on.
    plain: Vec<u8>,
    at: usize,
    inflate: Option<Decompress>,
    /// Bytes read from the stream and not yet reported by [`FrameReader::read`].
    wire_bytes: usize,
    /// The connection's protocol version.
    version: u8,
}

impl FrameReader {
    /// Messages of `stream`, a connection of protocol `version`.
    pub(crate) fn new(stream: quinn::RecvStream, version: u8) -> Self {
        FrameReader {
            stream,
            raw: Vec::new(),
            plain: Vec::new(),
            at: 0,
            inflate: None,
            wire_bytes: 0,
            version,
        }
    }

    /// From here on the stream is one deflate stream (the Hellos agreed on compression).
    /// Bytes already read past the last message are the start of it.
    pub(crate) fn inflate(&mut self) {
        self.raw = self.plain.split_off(self.at);
        self.plain.clear();
        self.at = 0;
        self.inflate = Some(Decompress::new(false));
    }

    /// The next message, and the bytes read from the stream since the previous one (after
    /// decompression, a message's own size may be larger).
    pub(crate) async fn read(&mut self) -> Result<(Message, usize), FrameError> {
        let mut joined: Vec<u8> = Vec::new();
        let mut frames = 0;
        loop {
            let head = match self.plain.get(self.at..self.at + HEADER_LEN) {
                Some(h) => {
                    let mut header = [0u8; HEADER_LEN];
                    header.copy_from_slice(h);
                    Some(wire::frame_head(header)?)
                }
                None => None,
            };
            if let Some(head) = head {
                wire::check_message_len(joined.len(), head.len)?;
                let start = self.at + HEADER_LEN;
                if let Some(body) = self.plain.get(start..start + head.len) {
                    frames += 1;
                    self.at = start + head.len;
                    if !head.more {
                        let decoded = if joined.is_empty() {
                            wire::decode_payload_as(body, self.version)
                        } else {
                            joined.extend_from_slice(body);
                            wire::decode_payload_as(&joined, self.version)
                        };
                        self.compact();
                        match decoded {
                            Ok(msg) => return Ok((msg, std::mem::take(&mut self.wire_bytes))),
                            Err(WireError::UnknownKind(kind)) => {
                                tracing::debug!(kind, "skipped a message of an unknown kind");
                                joined.clear();
                                frames = 0;
                                continue;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    joined.extend_from_slice(body);
                    self.compact();
                    continue;
                }
            }
            if !self.fill().await? {
                let got = joined.len() + self.plain.len() - self.at;
                return Err(if got == 0 && frames == 0 {
                    FrameError::Finished
                } else {
                    FrameError::Truncated { got }
                });
            }
        }
    }

    /// Drops the parsed bytes once they are most of the buffer.
    fn compact(&mut self) {
        if self.at == self.plain.len() {
            self.plain.clear();
            self.at = 0;
        } else if self.at > READ_CHUNK && self.at * 2 > self.plain.len() {
            self.plain.drain(..self.at);
            self.at = 0;
        }
    }

    /// Adds bytes to `plain`: false once the stream has finished and nothing more comes.
    async fn fill(&mut self) -> Result<bool, FrameError> {
        loop {
            if self.inflate.is_some() && !self.raw.is_empty() && self.inflate_step()? {
                return Ok(true);
            }
            let Some(chunk) = self
                .stream
                .read_chunk(READ_CHUNK, true)
                .await
                .map_err(FrameError::Lost)?
            else {
                return Ok(false);
            };
            self.wire_bytes += chunk.bytes.len();
            if self.inflate.is_some() {
                self.raw.extend_from_slice(&chunk.bytes);
            } else {
                self.plain.extend_from_slice(&chunk.bytes);
                return Ok(true);
            }
        }
    }

    /// Inflates some of `raw` into `plain`: whether it produced any bytes.
    fn inflate_step(&mut self) -> Result<bool, FrameError> {
        let Some(inflate) = self.inflate.as_mut() else {
            return Ok(false);
        };
        self.plain.reserve(INFLATE_STEP);
        let before_in = inflate.total_in();
        let before_out = self.plain.len();
        let status = inflate
            .decompress_vec(&self.raw, &mut self.plain, FlushDecompress::Sync)
            .map_err(|e| FrameError::Inflate(e.to_string()))?;
        let used = (inflate.total_in() - before_in) as usize;
        self.raw.drain(..used);
        if status == Status::StreamEnd {
            return Err(FrameError::Inflate("the deflate stream ended".into()));
        }
        Ok(self.plain.len() > before_out)
    }
}
