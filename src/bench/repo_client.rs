//! A small automerge-repo client for the benchmark of `GET /v1/sync`: the network protocol
//! "1" over a WebSocket ([`RepoClient`]), and one document's copy with its Automerge sync
//! state ([`DocCopy`]), used the way automerge-repo 2.5's `DocSynchronizer` uses them.
//!
//! What it does like a real client: `join` (protocol "1") and waits for `peer`; opens a
//! document with `sync` when it has changes of it (a document it made) or `request` when it
//! has none (a document found by id); applies every `sync` it receives and answers at once
//! with whatever `generate_sync_message` gives; after a local change sends a `sync` at once.
//! What it leaves out: the 100 ms throttle of a real client's outgoing sync messages (the
//! benchmark spaces each client's edits further apart), storage, ephemeral messages, and
//! reconnecting (a socket that ends is a failure).

use std::net::SocketAddr;
use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, Change, ChangeHash, ReadDoc, ROOT};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::sync::codec::{self, PeerMetadata, RepoMessage, PROTOCOL_VERSION};

/// One client's WebSocket to a node, past the `join`/`peer` handshake.
pub(crate) struct RepoClient {
    ws: WebSocketStream<TcpStream>,
    /// This client's peer id.
    me: String,
    /// The node's peer id (from `peer`).
    server: String,
}

impl RepoClient {
    /// Connects to `ws://addr/v1/sync` as peer `me` and joins; each step (TCP connect,
    /// WebSocket upgrade, the answer to `join`) within `limit`.
    pub(crate) async fn connect(
        addr: SocketAddr,
        me: String,
        limit: Duration,
    ) -> Result<RepoClient, String> {
        let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("TCP connect to {addr} took over {limit:?}"))?
            .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
        // As the `ws` package of a Node.js client does.
        tcp.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY on the socket to {addr}: {e}"))?;
        let url = format!("ws://{addr}/v1/sync");
        // Small buffers: the clients share this process (and its memory figure) with the
        // nodes, and their messages are small.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let upgrade = tokio_tungstenite::client_async_with_config(&url, tcp, Some(config));
        let (ws, _) = tokio::time::timeout(limit, upgrade)
            .await
            .map_err(|_| format!("WebSocket upgrade at {url} took over {limit:?}"))?
            .map_err(|e| format!("WebSocket upgrade at {url}: {e}"))?;
        let mut client = RepoClient {
            ws,
            me,
            server: String::new(),
        };
        client
            .send(&RepoMessage::Join {
                sender_id: client.me.clone(),
                peer_metadata: Some(PeerMetadata {
                    storage_id: None,
                    is_ephemeral: true,
                }),
                supported_protocol_versions: vec![PROTOCOL_VERSION.to_string()],
            })
            .await?;
        let answer = tokio::time::timeout(limit, client.recv())
            .await
            .map_err(|_| format!("no answer to join from {url} within {limit:?}"))??;
        match answer {
            RepoMessage::Peer {
                sender_id,
                target_id,
                selected_protocol_version,
                ..
            } if target_id == client.me && selected_protocol_version == PROTOCOL_VERSION => {
                client.server = sender_id;
                Ok(client)
            }
            other => Err(format!(
                "{url} answered join with {other:?}, not a peer message for {}",
                client.me
            )),
        }
    }

    /// This client's peer id.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// The node's peer id.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// Sends one protocol message.
    pub(crate) async fn send(&mut self, msg: &RepoMessage) -> Result<(), String> {
        self.ws
            .send(WsMessage::Binary(codec::encode(msg).into()))
            .await
            .map_err(|e| format!("{}: send {}: {e}", self.me, msg.kind()))
    }

    /// The next protocol message from the node. The node's `error` message, a close, a
    /// socket error or bytes that are no protocol message are errors.
    pub(crate) async fn recv(&mut self) -> Result<RepoMessage, String> {
        loop {
            let bytes = match self.ws.next().await {
                None => return Err(format!("{}: the node closed the socket", self.me)),
                Some(Err(e)) => return Err(format!("{}: socket: {e}", self.me)),
                Some(Ok(WsMessage::Binary(bytes))) => bytes,
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(format!(
                        "{}: the node closed the socket ({frame:?})",
                        self.me
                    ))
                }
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(format!("{}: the node sent a text message", self.me))
                }
                Some(Ok(_)) => continue,
            };
            return match codec::decode(&bytes) {
                Ok(RepoMessage::Error { message, .. }) => {
                    Err(format!("{}: the node sent error: {message}", self.me))
                }
                Ok(msg) => Ok(msg),
                Err(e) => Err(format!("{}: malformed message from the node: {e}", self.me)),
            };
        }
    }

    /// Closes the socket (waits at most a second for the node's close).
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// One document as a client holds it: its Automerge copy and the sync state with the node.
pub(crate) struct DocCopy {
    /// The automerge-repo document id.
    pub(crate) id: String,
    /// The client's copy.
    pub(crate) doc: Automerge,
    state: sync::State,
}

impl DocCopy {
    /// A document this client makes (`Repo.create()`): one change that puts `key`.
    pub(crate) fn created(id: String, key: &str) -> DocCopy {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, key, 0_i64)
            .expect("a put into the root of a new document");
        tx.commit();
        DocCopy {
            id,
            doc,
            state: sync::State::new(),
        }
    }

    /// A document this client looks for by id (`Repo.find()`): nothing of it yet.
    pub(crate) fn wanted(id: String) -> DocCopy {
        DocCopy {
            id,
            doc: Automerge::new(),
            state: sync::State::new(),
        }
    }

    /// The first message about the document: `sync` if this client has changes of it,
    /// else `request`.
    pub(crate) fn opening(&mut self, client: &RepoClient) -> Result<RepoMessage, String> {
        // A fresh sync state always has a message (it has not responded yet).
        let data = self
            .doc
            .generate_sync_message(&mut self.state)
            .ok_or_else(|| format!("document {}: no opening sync message", self.id))?
            .encode();
        let (sender_id, target_id, document_id) = (
            client.me().to_string(),
            client.server().to_string(),
            self.id.clone(),
        );
        Ok(if self.doc.get_heads().is_empty() {
            RepoMessage::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
        } else {
            RepoMessage::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            }
        })
    }

    /// The next `sync` message for the node, if Automerge has one.
    pub(crate) fn outgoing(&mut self, client: &RepoClient) -> Option<RepoMessage> {
        let msg = self.doc.generate_sync_message(&mut self.state)?;
        Some(RepoMessage::Sync {
            sender_id: client.me().to_string(),
            target_id: client.server().to_string(),
            document_id: self.id.clone(),
            data: msg.encode(),
        })
    }

    /// Applies a received sync message; returns the changes it made applicable (none if
    /// the heads did not move).
    pub(crate) fn receive(&mut self, data: &[u8]) -> Result<Vec<Change>, String> {
        let msg = sync::Message::decode(data)
            .map_err(|e| format!("document {}: bad sync message: {e}", self.id))?;
        let before: Vec<ChangeHash> = self.doc.get_heads();
        // The changes the message carries (cheaper than asking Automerge afterwards), unless
        // it carries a whole document, or Automerge holds changes back for a missing
        // dependency: this message may bring the dependency, and they apply with it. (The
        // node skips a change the client's Bloom filter wrongly claims, and sends it when
        // the client then asks for it, after its dependents.)
        let queued = !self.doc.get_missing_deps(&[]).is_empty();
        let offered: Option<Vec<Change>> = msg
            .changes
            .iter()
            .map(|chunk| Change::from_bytes(chunk.to_vec()).ok())
            .collect::<Option<Vec<Change>>>()
            .filter(|_| !queued)
            .map(|all| {
                all.into_iter()
                    .filter(|c| self.doc.get_change_meta_by_hash(&c.hash()).is_none())
                    .collect()
            });
        self.doc
            .receive_sync_message(&mut self.state, msg)
            .map_err(|e| format!("document {}: sync message refused: {e}", self.id))?;
        if self.doc.get_heads() == before {
            return Ok(Vec::new());
        }
        match offered {
            Some(offered)
                if offered
                    .iter()
                    .all(|c| self.doc.get_change_meta_by_hash(&c.hash()).is_some()) =>
            {
                Ok(offered)
            }
            _ => Ok(self.doc.get_changes(&before)),
        }
    }

    /// Makes one change: puts `value` under `key`, with `message` as the change's message.
    pub(crate) fn edit(&mut self, key: &str, value: i64, message: String) {
        let mut tx = self.doc.transaction();
        tx.put(ROOT, key, value)
            .expect("a put into the root of a document");
        tx.commit_with(CommitOptions::default().with_message(message));
    }

    /// True once the node and this client have the same non-empty heads, as far as the
    /// node's last message says.
    pub(crate) fn synced(&self) -> bool {
        let heads = self.doc.get_heads();
        !heads.is_empty() && self.state.their_heads.as_ref() == Some(&heads)
    }
}
