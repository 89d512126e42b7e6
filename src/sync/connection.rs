//! One automerge-repo client's WebSocket: the `join` → `peer` handshake, then the client's
//! `request`/`sync`/`ephemeral` messages to the node and the node's messages to the client,
//! until either side ends it.
//!
//! Bad input (a text frame, CBOR that is not a protocol message, a message before `join`,
//! an unsupported protocol version, a document id concordant cannot hold, sync data over a
//! limit of [`crate::limits`] or that the core refuses) answers `error` and closes this
//! socket only. The client's messages are read at the pace it takes the node's
//! ([`super::pace`]). A client that falls too far behind (its queue past
//! `sync_client_queue_bytes`, see [`crate::node::client_queue`]), or whose socket takes no
//! write within `sync_client_write_timeout_ms`, is disconnected at once: this task ends,
//! the socket closes, its place and its queue are released. It syncs again when it
//! reconnects.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use tokio::sync::watch;

use super::codec::{self, PeerMetadata, RepoMessage, PROTOCOL_VERSION as PROTOCOL};
use super::pace::Pace;
use super::{Place, Server, SyncCounters};
use crate::core::ClientMsg;
use crate::node::client_queue::ClientReceiver;
use crate::node::{ClientEvent, Node};
use crate::tokens::Access;
use crate::wire::Ephemeral;

/// How long a client may take to send `join` after the upgrade.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the connection ends.
enum End {
    /// The client closed it, or the socket failed.
    Gone,
    /// The client sent something wrong: tell it.
    Error(String),
}

/// Serves one upgraded socket until it ends, or until `stopping` becomes true (the API
/// server shuts down). `place` is the client's place on the node, taken before the upgrade.
pub(crate) async fn serve(
    mut socket: WebSocket,
    node: Node,
    server: Arc<Server>,
    place: Place,
    mut stopping: watch::Receiver<bool>,
    access: Access,
) {
    let client_peer = match handshake(&mut socket, &server).await {
        Ok(peer) => peer,
        Err(End::Gone) => return,
        Err(End::Error(why)) => {
            fail(&mut socket, &server, None, &why).await;
            return;
        }
    };
    let Ok((client, events)) = node.client_open().await else {
        return;
    };
    let (ticket, replaced) = server.joined(&client_peer);
    let end = tokio::select! {
        end = run(&mut socket, &node, &server, &access, client, &client_peer, events, replaced) => end,
        _ = stopping.wait_for(|s| *s) => End::Gone,
    };
    let _ = node.client_close(client).await;
    server.left(&client_peer, ticket);
    if let End::Error(why) = end {
        fail(&mut socket, &server, Some(&client_peer), &why).await;
    }
    drop(place);
}

/// Waits for `join` and answers `peer`; returns the client's peer id.
async fn handshake(socket: &mut WebSocket, server: &Server) -> Result<String, End> {
    let first = tokio::time::timeout(JOIN_TIMEOUT, next_message(socket, &server.counters))
        .await
        .map_err(|_| End::Error("no join message within 10 s".into()))??;
    let RepoMessage::Join {
        sender_id,
        supported_protocol_versions,
        ..
    } = first
    else {
        return Err(End::Error("the first message must be join".into()));
    };
    if !supported_protocol_versions.iter().any(|v| v == PROTOCOL) {
        return Err(End::Error(format!(
            "unsupported protocol versions {supported_protocol_versions:?}; this server speaks \"{PROTOCOL}\""
        )));
    }
    let peer = RepoMessage::Peer {
        sender_id: server.peer_id.clone(),
        target_id: sender_id.clone(),
        peer_metadata: PeerMetadata {
            storage_id: Some(server.storage_id.clone()),
            is_ephemeral: false,
        },
        selected_protocol_version: PROTOCOL.to_string(),
    };
    send(socket, server, &peer).await?;
    Ok(sender_id)
}

/// Relays messages both ways until the connection ends (or, with a user token, until the
/// token expires or is revoked).
#[allow(clippy::too_many_arguments)]
async fn run(
    socket: &mut WebSocket,
    node: &Node,
    server: &Server,
    access: &Access,
    client: u64,
    peer: &str,
    mut events: ClientReceiver,
    mut replaced: tokio::sync::oneshot::Receiver<()>,
) -> End {
    let mut pace = Pace::new(&server.options);
    let expires = access.user().map(|user| expiry(user.exp));
    let mut revocations = node.watch_revocations();
    // Documents a user token reaches beyond those it names (see `admit`).
    let mut reached = HashSet::new();
    loop {
        let read = pace.may_read(events.queued());
        let held = pace.held_by_requests();
        tokio::select! {
            incoming = next_message(socket, &server.counters), if read => {
                let msg = match incoming {
                    Ok(msg) => check_data(server, msg).await,
                    Err(end) => Err(end),
                };
                let msg = match msg {
                    Ok(msg) => admit(node, access, &mut reached, msg).await,
                    Err(end) => Err(end),
                };
                let msg = match msg {
                    Ok(Admitted::Pass(msg)) => msg,
                    Ok(Admitted::Drop) => continue,
                    Ok(Admitted::Unavailable(document_id)) => {
                        server.counters.auth_refused.count("forbidden");
                        let answer = RepoMessage::DocUnavailable {
                            sender_id: server.peer_id.clone(),
                            target_id: peer.to_string(),
                            document_id,
                        };
                        if let Err(end) = send(socket, server, &answer).await {
                            return end;
                        }
                        continue;
                    }
                    Err(end) => return end,
                };
                if let RepoMessage::Request { document_id, .. } = &msg {
                    pace.requested(document_id);
                }
                if let Err(end) = from_client(node, client, peer, msg).await {
                    return end;
                }
            }
            event = events.recv() => match event {
                // Nothing of a document outside the token's scope reaches the client.
                Some(ClientEvent::Msg(msg))
                    if !access.may_read(doc_of(&msg)) && !reached.contains(doc_of(&msg)) => {}
                Some(ClientEvent::Msg(msg)) => {
                    pace.sending(&msg);
                    let out = to_client(server, peer, msg);
                    let sent = tokio::select! {
                        sent = send(socket, server, &out) => sent,
                        () = events.given_up() => Err(End::Gone),
                    };
                    if let Err(end) = sent {
                        return end;
                    }
                }
                Some(ClientEvent::Close(why)) => return End::Error(why),
                // Given up by the node (too far behind) or the node stopped.
                None => return End::Gone,
            },
            () = tokio::time::sleep_until(pace.stalls_at()), if held => pace.stalled(),
            _ = &mut replaced => return End::Gone,
            () = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)),
                if expires.is_some() =>
            {
                server.counters.auth_refused.count("expired");
                return End::Error("the token expired".into());
            }
            changed = revocations.changed(), if access.user().is_some() => {
                let revoked = access.user().is_some_and(|user| node.revokes(user));
                if changed.is_err() {
                    return End::Gone;
                }
                if revoked {
                    server.counters.auth_refused.count("revoked");
                    return End::Error("the token was revoked".into());
                }
            }
        }
    }
}

/// When a token that expires at `exp` (seconds since the Unix epoch) stops being accepted
/// (the clock skew allowed included).
fn expiry(exp: u64) -> tokio::time::Instant {
    let now = crate::tokens::unix_now();
    let left = exp
        .saturating_add(crate::tokens::LEEWAY_S)
        .saturating_sub(now)
        .min(MAX_TOKEN_LIFE_S);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// A token valid for longer than this (100 years) is treated as valid for this long.
const MAX_TOKEN_LIFE_S: u64 = 100 * 365 * 86_400;

/// What becomes of a client's message under its token.
enum Admitted {
    /// Handed to the node.
    Pass(RepoMessage),
    /// A request or sync for a document outside the token's scope: answered
    /// `doc-unavailable`, as for a document nobody has.
    Unavailable(String),
    /// An ephemeral message for a document outside the scope: dropped.
    Drop,
}

/// Checks a client's message against its access. A user token reaches the documents it
/// names, and with `owner` those its user created, with `create` the ones it makes (a
/// document nobody has, recorded as its user's: see [`crate::owners`]); those it reaches
/// so are kept in `reached`. Other documents are unavailable. Changes sent with a
/// read-only token, and owner records in any user's changes, end the connection with an
/// error (nothing of them is applied anywhere).
async fn admit(
    node: &Node,
    access: &Access,
    reached: &mut HashSet<String>,
    msg: RepoMessage,
) -> Result<Admitted, End> {
    let Access::User(user) = access else {
        return Ok(Admitted::Pass(msg));
    };
    let readable = |doc: &str, reached: &HashSet<String>| user.names(doc) || reached.contains(doc);
    match &msg {
        RepoMessage::Request {
            document_id, data, ..
        }
        | RepoMessage::Sync {
            document_id, data, ..
        } if crate::doc_id::is_valid_doc_id(document_id) => {
            if !readable(document_id, reached) {
                // A client makes a document by syncing it; a request asks for one it lacks.
                let making = matches!(msg, RepoMessage::Sync { .. });
                if !reach(node, user, document_id, making).await {
                    return Ok(Admitted::Unavailable(document_id.clone()));
                }
                reached.insert(document_id.clone());
            }
            // Data that does not decode is refused as carrying changes and records.
            let message = automerge::sync::Message::decode(data).ok();
            let carries_changes = message.as_ref().is_none_or(|m| !m.changes.is_empty());
            if !user.writes() && carries_changes {
                return Err(End::Error(format!(
                    "this token is read-only: the changes to document {document_id} were refused"
                )));
            }
            let known = match message
                .as_ref()
                .and_then(crate::owners::named_in_sync_message)
            {
                Some(named) => node.knows_owners(document_id, &named).await,
                None => false,
            };
            if !known {
                return Err(End::Error(format!(
                    "document {document_id}: owner records are written by the cluster, not by \
                     users (or the sync message does not decode)"
                )));
            }
            Ok(Admitted::Pass(msg))
        }
        RepoMessage::Ephemeral { document_id, .. } if !readable(document_id, reached) => {
            Ok(Admitted::Drop)
        }
        _ => Ok(Admitted::Pass(msg)),
    }
}

/// Whether `user` reaches `doc` though its token does not name it: as its creator (its
/// owner records name the user, with `owner`), or as the one who makes it now (`making`:
/// nobody has it, with `create`: its owner record is written first).
async fn reach(node: &Node, user: &crate::tokens::UserToken, doc: &str, making: bool) -> bool {
    if !(user.owner || user.create) {
        return false;
    }
    match node.owners(doc).await {
        Ok(Some(owners)) => user.owner && owners.contains(&user.sub),
        Ok(None) if user.create && making => node.record_owner(doc, &user.sub).await.is_ok(),
        _ => false,
    }
}

/// The document a node's message for the client is about.
fn doc_of(msg: &ClientMsg) -> &str {
    match msg {
        ClientMsg::Sync { doc, .. } | ClientMsg::Unavailable { doc } => doc,
        ClientMsg::Ephemeral(e) => &e.doc,
    }
}

/// Hands one client message to the node.
async fn from_client(node: &Node, client: u64, peer: &str, msg: RepoMessage) -> Result<(), End> {
    match msg {
        RepoMessage::Request {
            document_id, data, ..
        } => sync(node, client, document_id, data, true).await,
        RepoMessage::Sync {
            document_id, data, ..
        } => sync(node, client, document_id, data, false).await,
        // A client relays the ephemeral messages it receives to its other peers: one coming
        // back from another sender was relayed here already.
        RepoMessage::Ephemeral { sender_id, .. } if sender_id != peer => Ok(()),
        RepoMessage::Ephemeral {
            count,
            session_id,
            document_id,
            data,
            ..
        } => {
            check_doc(&document_id)?;
            let e = Ephemeral {
                doc: document_id,
                origin: String::new(),
                sender: peer.to_string(),
                session: session_id,
                count,
                data: data.into(),
            };
            node.client_ephemeral(client, e)
                .await
                .map_err(|_| End::Gone)
        }
        RepoMessage::Join { .. } => Err(End::Error("join sent twice".into())),
        RepoMessage::Leave { .. } => Err(End::Gone),
        // `peer`, `doc-unavailable`, `error` and the remote-heads messages are meant for
        // clients; a server has nothing to do with them.
        _ => Ok(()),
    }
}

async fn sync(
    node: &Node,
    client: u64,
    doc: String,
    data: Vec<u8>,
    request: bool,
) -> Result<(), End> {
    check_doc(&doc)?;
    if data.is_empty() {
        return Err(End::Error("sync data is empty".into()));
    }
    node.client_sync(client, doc, data, request)
        .await
        .map_err(|_| End::Gone)
}

/// The protocol message for a message of the node.
fn to_client(server: &Server, peer: &str, msg: ClientMsg) -> RepoMessage {
    match msg {
        ClientMsg::Sync { doc, data } => RepoMessage::Sync {
            sender_id: server.peer_id.clone(),
            target_id: peer.to_string(),
            document_id: doc,
            data,
        },
        ClientMsg::Unavailable { doc } => RepoMessage::DocUnavailable {
            sender_id: server.peer_id.clone(),
            target_id: peer.to_string(),
            document_id: doc,
        },
        ClientMsg::Ephemeral(e) => RepoMessage::Ephemeral {
            sender_id: e.sender,
            target_id: peer.to_string(),
            count: e.count,
            session_id: e.session,
            document_id: e.doc,
            data: e.data.into_vec(),
        },
    }
}

fn check_doc(id: &str) -> Result<(), End> {
    if crate::doc_id::is_valid_doc_id(id) {
        Ok(())
    } else {
        Err(End::Error(format!(
            "document id {id:?} is not a valid document id"
        )))
    }
}

/// The next protocol message; pings and pongs are skipped (the socket answers pings).
async fn next_message(socket: &mut WebSocket, counters: &SyncCounters) -> Result<RepoMessage, End> {
    loop {
        let bytes = match socket.recv().await {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return Err(End::Gone),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Text(_))) => {
                return Err(End::Error(
                    "text messages are not part of the protocol".into(),
                ))
            }
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
        };
        SyncCounters::add(&counters.messages_in, 1);
        SyncCounters::add(&counters.bytes_in, bytes.len());
        return codec::decode(&bytes).map_err(|e| End::Error(format!("malformed message: {e}")));
    }
}

/// Sends one message; a socket that does not take it within the write timeout ends the
/// connection (logged here, once per client: the connection ends).
async fn send(socket: &mut WebSocket, server: &Server, msg: &RepoMessage) -> Result<(), End> {
    let bytes = codec::encode(msg);
    let counters = &server.counters;
    SyncCounters::add(&counters.messages_out, 1);
    SyncCounters::add(&counters.bytes_out, bytes.len());
    let timeout = server.options.write_timeout;
    match tokio::time::timeout(timeout, socket.send(WsMessage::Binary(bytes.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => {
            SyncCounters::add(&counters.write_timeouts, 1);
            tracing::warn!(
                "a sync client's socket took no write for {timeout:?} \
                 (tuning.sync_client_write_timeout_ms): disconnected"
            );
            Err(End::Gone)
        }
    }
}

/// Refuses a `request` or `sync` whose Automerge data inflates past its budget or holds a
/// change over a cap ([`crate::limits`]), before the node sees it; the check runs off the
/// async workers.
async fn check_data(server: &Server, msg: RepoMessage) -> Result<RepoMessage, End> {
    if !matches!(msg, RepoMessage::Request { .. } | RepoMessage::Sync { .. }) {
        return Ok(msg);
    }
    let limit = server.options.data_limits;
    let (msg, checked) = tokio::task::spawn_blocking(move || {
        let checked = match &msg {
            RepoMessage::Request { data, .. } | RepoMessage::Sync { data, .. } => {
                limit.check_sync(data)
            }
            _ => Ok(()),
        };
        (msg, checked)
    })
    .await
    .map_err(|e| End::Error(format!("checking the sync data failed: {e}")))?;
    checked.map_err(|refused| {
        if refused.is_size() {
            server.counters.limits.refused(refused.label());
        }
        End::Error(format!("sync message refused: {refused}"))
    })?;
    Ok(msg)
}

/// Tells the client what was wrong, then closes the socket.
async fn fail(socket: &mut WebSocket, server: &Server, peer: Option<&str>, why: &str) {
    // Automerge's own line about refused data is at debug level: one line per client here.
    tracing::warn!(client = peer.unwrap_or("?"), "closing a sync client: {why}");
    server
        .counters
        .errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let error = RepoMessage::Error {
        sender_id: Some(server.peer_id.clone()),
        target_id: peer.map(str::to_string),
        message: why.to_string(),
    };
    if send(socket, server, &error).await.is_ok() {
        let close = socket.send(WsMessage::Close(None));
        let _ = tokio::time::timeout(server.options.write_timeout, close).await;
    }
}
