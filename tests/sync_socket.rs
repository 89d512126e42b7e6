//! `GET /v1/sync` at the socket level, with a raw WebSocket client (the real JavaScript
//! clients are in `sync_clients.rs`): the token, the handshake, bad input answered with
//! `error` and a close of that socket only, the client limit, a client joining again.

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use concordant::api::{self, ApiOptions};
use concordant::certs::in_memory_identities;
use concordant::config::TopologyKind;
use concordant::sync::codec::RepoMessage;
use concordant::sync::SyncOptions;
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{self, Message};

#[path = "common/repo_socket.rs"]
mod repo_socket;
use repo_socket::{join, next, open, send, Socket};

const TOKEN: &str = "s3cret";
/// One node with its API on 127.0.0.1:0; returns the node and the API's address.
async fn node(max_clients: usize) -> (Node, String) {
    node_with(max_clients, None).await
}

/// [`node`], verifying user tokens with `verifier`.
async fn node_with(
    max_clients: usize,
    verifier: Option<std::sync::Arc<concordant::tokens::Verifier>>,
) -> (Node, String) {
    let identities = in_memory_identities("synctest", &["n1"]).unwrap();
    let topology = Topology::new(TopologyKind::Mesh, vec!["n1".into()], Vec::new());
    let node = NodeBuilder::new("n1", "synctest", identities.into_iter().next().unwrap())
        .topology(topology)
        .start()
        .await
        .unwrap();
    let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut options = ApiOptions::new(Some(TOKEN.into()));
    options.verifier = verifier;
    options.sync = SyncOptions {
        max_clients,
        ..SyncOptions::default()
    };
    let serving = node.clone();
    tokio::spawn(async move {
        api::serve_with(serving, listener, options, std::future::pending())
            .await
            .unwrap();
    });
    (node, addr)
}

/// Opens a socket and joins as `peer`; returns the socket and the server's peer id.
async fn joined(addr: &str, peer: &str) -> (Socket, String) {
    joined_with(addr, peer, TOKEN).await
}

/// [`joined`] with `token`.
async fn joined_with(addr: &str, peer: &str, token: &str) -> (Socket, String) {
    let mut socket = open(addr, &format!("?token={token}")).await.unwrap();
    send(&mut socket, &join(peer, &["1"])).await;
    match next(&mut socket).await {
        Some(RepoMessage::Peer {
            sender_id,
            target_id,
            peer_metadata,
            selected_protocol_version,
        }) => {
            assert_eq!(target_id, peer);
            assert_eq!(selected_protocol_version, "1");
            assert!(peer_metadata.storage_id.is_some() && !peer_metadata.is_ephemeral);
            (socket, sender_id)
        }
        other => panic!("expected peer, got {other:?}"),
    }
}

/// Expects an `error` message, then the close.
async fn expect_error(socket: &mut Socket, contains: &str) {
    match next(socket).await {
        Some(RepoMessage::Error { message, .. }) => {
            assert!(message.contains(contains), "{message:?} lacks {contains:?}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(next(socket).await.is_none(), "closed after the error");
}

/// Syncs a new document with one change through `socket` until the server has it.
async fn sync_doc(socket: &mut Socket, me: &str, server: &str, doc: &str) -> Automerge {
    let mut mine = Automerge::new();
    let mut tx = mine.transaction();
    tx.put(ROOT, "k", 1).unwrap();
    tx.commit();
    let mut state = sync::State::new();
    for _ in 0..10 {
        if let Some(m) = mine.generate_sync_message(&mut state) {
            send(
                socket,
                &RepoMessage::Sync {
                    sender_id: me.into(),
                    target_id: server.into(),
                    document_id: doc.into(),
                    data: m.encode(),
                },
            )
            .await;
        }
        match next(socket).await {
            Some(RepoMessage::Sync { data, .. }) => {
                let m = sync::Message::decode(&data).unwrap();
                mine.receive_sync_message(&mut state, m).unwrap();
                if state.shared_heads == mine.get_heads() {
                    return mine;
                }
            }
            other => panic!("expected sync, got {other:?}"),
        }
    }
    panic!("the server never had the document");
}

#[tokio::test]
async fn the_token_is_needed_before_any_upgrade() {
    let (_node, addr) = node(100).await;
    for query in ["", "?token=wrong"] {
        match open(&addr, query).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
            other => panic!("{query:?}: expected 401, got {other:?}"),
        }
    }
    // A plain GET (no upgrade) is a JSON error, not a crash.
    let client =
        concordant::client::Client::new(&format!("http://{addr}"), Some(TOKEN.into())).unwrap();
    let answer = client
        .request(hyper::Method::GET, "/v1/sync", None)
        .await
        .unwrap();
    assert!(
        answer.status >= 400 && answer.status < 500,
        "{}",
        answer.status
    );
    assert!(answer.json().unwrap()["error"].is_string());
}

#[tokio::test]
async fn bad_input_closes_only_that_socket() {
    let (node, addr) = node(100).await;
    let (mut good, server) = joined(&addr, "good").await;

    let (mut bad, _) = joined(&addr, "bad-cbor").await;
    bad.send(Message::Binary(vec![0xa1, 0x61].into()))
        .await
        .unwrap();
    expect_error(&mut bad, "malformed").await;

    let (mut text, _) = joined(&addr, "text").await;
    text.send(Message::Text("hello".into())).await.unwrap();
    expect_error(&mut text, "text").await;

    let mut early = open(&addr, &format!("?token={TOKEN}")).await.unwrap();
    send(
        &mut early,
        &RepoMessage::Sync {
            sender_id: "early".into(),
            target_id: server.clone(),
            document_id: "doc".into(),
            data: vec![0x42],
        },
    )
    .await;
    expect_error(&mut early, "join").await;

    let mut old = open(&addr, &format!("?token={TOKEN}")).await.unwrap();
    send(&mut old, &join("old", &["0"])).await;
    expect_error(&mut old, "unsupported").await;

    let (mut garbage, _) = joined(&addr, "garbage-sync").await;
    send(
        &mut garbage,
        &RepoMessage::Sync {
            sender_id: "garbage-sync".into(),
            target_id: server.clone(),
            document_id: "garbage".into(),
            data: vec![0x42, 0xff, 0xff, 0xff],
        },
    )
    .await;
    expect_error(&mut garbage, "bad sync message").await;
    assert!(
        node.json("garbage").await.unwrap().is_none(),
        "nothing created"
    );

    // The first client was never disturbed.
    let doc = sync_doc(&mut good, "good", &server, "doc").await;
    let stored = node.with_doc("doc", |d| d.get_heads()).await.unwrap();
    assert_eq!(stored, Some(doc.get_heads()));
    let status = node.status().await.unwrap();
    assert_eq!(status.sync_clients, 1, "the bad ones are gone");
}

#[tokio::test]
async fn the_client_limit_and_a_second_join_of_one_peer() {
    let (_node, addr) = node(2).await;
    let (mut first, _) = joined(&addr, "same").await;
    let (_second, _) = joined(&addr, "other").await;
    match open(&addr, &format!("?token={TOKEN}")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    drop(_second);
    // A place frees once the server sees the socket go.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(s) = open(&addr, &format!("?token={TOKEN}")).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = again.expect("a place freed");
    // The same peer joining again replaces its earlier socket.
    send(&mut again, &join("same", &["1"])).await;
    assert!(matches!(
        next(&mut again).await,
        Some(RepoMessage::Peer { .. })
    ));
    assert!(
        next(&mut first).await.is_none(),
        "the earlier socket is closed"
    );
}

/// A user token over `/v1/sync`: its document syncs; another is unavailable (as one nobody
/// has); a read-only token receives the document but its changes are refused with an
/// error and change nothing; a socket closes when its token expires.
#[tokio::test]
async fn a_user_token_reaches_only_its_documents_over_sync() {
    use concordant::tokens::{self, Rights, UserToken, Verifier};
    let (private, public) = tokens::generate_key_pair().unwrap();
    let verifier = std::sync::Arc::new(Verifier::from_pem(public.as_bytes()).unwrap());
    let (node, addr) = node_with(100, Some(verifier)).await;
    node.change("doc-b", |tx| tx.put(ROOT, "secret", "b"))
        .await
        .unwrap();
    let now = tokens::unix_now();
    let mint = |sub: &str, rights: Rights, exp: u64| {
        let token = UserToken {
            sub: sub.into(),
            exp,
            iat: None,
            jti: None,
            docs: ["doc-a".to_string()].into_iter().collect(),
            owner: false,
            rights,
            create: false,
        };
        tokens::mint(private.as_bytes(), &token, now).unwrap()
    };
    let alice = mint("alice", Rights::Write, now + 3600);
    let (mut socket, server) = joined_with(&addr, "alice", &alice).await;
    sync_doc(&mut socket, "alice", &server, "doc-a").await;
    let request = |doc: &str, from: &str| RepoMessage::Request {
        sender_id: from.into(),
        target_id: server.clone(),
        document_id: doc.into(),
        data: Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode(),
    };
    send(&mut socket, &request("doc-b", "alice")).await;
    match next(&mut socket).await {
        Some(RepoMessage::DocUnavailable { document_id, .. }) => assert_eq!(document_id, "doc-b"),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }

    // A read-only token: doc-a comes, a change to it is refused.
    let bob = mint("bob", Rights::Read, now + 3600);
    let (mut socket, _) = joined_with(&addr, "bob", &bob).await;
    send(&mut socket, &request("doc-a", "bob")).await;
    match next(&mut socket).await {
        Some(RepoMessage::Sync { document_id, .. }) => assert_eq!(document_id, "doc-a"),
        other => panic!("expected doc-a's content, got {other:?}"),
    }
    let mut mine = Automerge::new();
    let mut tx = mine.transaction();
    tx.put(ROOT, "bob", 1).unwrap();
    tx.commit();
    let change = mine.generate_sync_message(&mut sync::State::new()).unwrap();
    let mut with_changes = change.clone();
    with_changes.changes = mine.save().into();
    send(
        &mut socket,
        &RepoMessage::Sync {
            sender_id: "bob".into(),
            target_id: server.clone(),
            document_id: "doc-a".into(),
            data: with_changes.encode(),
        },
    )
    .await;
    expect_error(&mut socket, "read-only").await;
    let json = node.json("doc-a").await.unwrap().unwrap();
    assert_eq!(
        json,
        serde_json::json!({"k": 1}),
        "bob's change was not applied"
    );

    // A token with `create` makes a document by syncing it (a request for one nobody has
    // makes none); with `owner` its user opens it again later; another user does not.
    let maker = UserToken {
        create: true,
        docs: Default::default(),
        ..tokens::Verifier::from_pem(public.as_bytes())
            .unwrap()
            .verify(&alice, now)
            .unwrap()
    };
    let maker = tokens::mint(private.as_bytes(), &maker, now).unwrap();
    let (mut socket, _) = joined_with(&addr, "maker", &maker).await;
    send(&mut socket, &request("doc-ghost", "maker")).await;
    match next(&mut socket).await {
        Some(RepoMessage::DocUnavailable { document_id, .. }) => {
            assert_eq!(document_id, "doc-ghost")
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    assert_eq!(
        node.json("doc-ghost").await.unwrap(),
        None,
        "a request makes nothing"
    );
    sync_doc(&mut socket, "maker", &server, "doc-new").await;
    assert_eq!(
        node.owners("doc-new").await.unwrap(),
        Some(["alice".to_string()].into_iter().collect())
    );
    drop(socket);
    let owner_of = |sub: &str| {
        let token = UserToken {
            sub: sub.into(),
            exp: now + 3600,
            iat: None,
            jti: None,
            docs: Default::default(),
            owner: true,
            rights: Rights::Read,
            create: false,
        };
        tokens::mint(private.as_bytes(), &token, now).unwrap()
    };
    let (mut socket, _) = joined_with(&addr, "alice-again", &owner_of("alice")).await;
    send(&mut socket, &request("doc-new", "alice-again")).await;
    match next(&mut socket).await {
        Some(RepoMessage::Sync { document_id, .. }) => assert_eq!(document_id, "doc-new"),
        other => panic!("expected doc-new's content, got {other:?}"),
    }
    let (mut socket, _) = joined_with(&addr, "dave", &owner_of("dave")).await;
    send(&mut socket, &request("doc-new", "dave")).await;
    match next(&mut socket).await {
        Some(RepoMessage::DocUnavailable { .. }) => {}
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    // Owner records from users are refused.
    let (mut socket, _) = joined_with(&addr, "alice-forger", &alice).await;
    let mut forged = Automerge::new();
    forged
        .load_incremental(&concordant::owners::record("alice", 1))
        .unwrap();
    let mut message = forged
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    message.changes = forged.save().into();
    send(
        &mut socket,
        &RepoMessage::Sync {
            sender_id: "alice-forger".into(),
            target_id: server.clone(),
            document_id: "doc-a".into(),
            data: message.encode(),
        },
    )
    .await;
    expect_error(&mut socket, "owner records").await;

    // A revoked token's socket closes.
    let (mut socket, _) = joined_with(&addr, "alice", &alice).await;
    node.revoke(concordant::revocations::Revoke::Sub("alice".into()))
        .await
        .unwrap();
    expect_error(&mut socket, "revoked").await;

    // A token about to expire: the socket closes when it does.
    let short = mint("carol", Rights::Write, now + 2 - tokens::LEEWAY_S);
    let (mut socket, _) = joined_with(&addr, "carol", &short).await;
    expect_error(&mut socket, "expired").await;
}
