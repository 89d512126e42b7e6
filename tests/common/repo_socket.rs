//! A raw automerge-repo WebSocket client for the tests of `GET /v1/sync`: open, send and
//! receive protocol messages, with every wait bounded. Included by path
//! (`#[path = "common/repo_socket.rs"]`) from the tests that need no other helper.
#![allow(dead_code)]

use std::time::Duration;

use concordant::sync::codec::{self, PeerMetadata, RepoMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// Bound on a connection or an answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// A client's socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://{addr}/v1/sync{query}`.
pub async fn open(addr: &str, query: &str) -> Result<Socket, tungstenite::Error> {
    let url = format!("ws://{addr}/v1/sync{query}");
    let (socket, _) = tokio::time::timeout(ANSWER_WAIT, connect_async(url))
        .await
        .expect("connect in time")?;
    Ok(socket)
}

/// Sends one protocol message.
pub async fn send(socket: &mut Socket, msg: &RepoMessage) {
    socket
        .send(Message::Binary(codec::encode(msg).into()))
        .await
        .expect("send");
}

/// The next protocol message, or `None` once the server closed the socket.
pub async fn next(socket: &mut Socket) -> Option<RepoMessage> {
    loop {
        let frame = tokio::time::timeout(ANSWER_WAIT, socket.next())
            .await
            .expect("an answer in time");
        match frame {
            Some(Ok(Message::Binary(bytes))) => return Some(codec::decode(&bytes).expect("cbor")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A `join` of an ephemeral client `peer` offering these protocol versions.
pub fn join(peer: &str, versions: &[&str]) -> RepoMessage {
    RepoMessage::Join {
        sender_id: peer.into(),
        peer_metadata: Some(PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
        }),
        supported_protocol_versions: versions.iter().map(|v| v.to_string()).collect(),
    }
}
