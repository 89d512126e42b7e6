//! The QUIC transport over real sockets on 127.0.0.1 (port 0): handshake, refusals, bad
//! input, reconnects, duplicate connections, backpressure. Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use concordant::certs::{in_memory_identities, node_dns_name, TlsIdentity};
use concordant::transport::tls::{client_config, Timing};
use concordant::transport::{
    code, SendError, Transport, TransportConfig, TransportError, TransportEvent, TransportStats,
};
use concordant::wire::{self, Hello, Message, PROTOCOL_VERSION};
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const CLUSTER: &str = "test";

struct Node {
    id: String,
    t: Transport,
    rx: mpsc::Receiver<TransportEvent>,
}

fn config(cluster: &str, id: &str, identity: TlsIdentity, members: &[&str]) -> TransportConfig {
    let mut cfg = TransportConfig::new(
        cluster,
        id,
        "127.0.0.1:0".parse().unwrap(),
        identity,
        members.iter().map(|m| m.to_string()).collect(),
    );
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_millis(400);
    cfg
}

/// Logs go to the test's captured output; set RUST_LOG (e.g. `concordant=debug`) to see them.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A loopback address with a free port (reserved, then freed): nothing listens there.
fn free_addr() -> std::net::SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start_cfg(cfg: TransportConfig, events: usize) -> Node {
    init_tracing();
    let (tx, rx) = mpsc::channel(events);
    let id = cfg.node.clone();
    let t = Transport::bind(cfg, tx).await.unwrap();
    Node { id, t, rx }
}

async fn start(id: &str, identity: &TlsIdentity, members: &[&str]) -> Node {
    start_cfg(config(CLUSTER, id, identity.clone(), members), 1024).await
}

fn msg(i: u32) -> Message {
    Message::Sync {
        doc: format!("doc{i}"),
        data: ByteBuf::from(i.to_be_bytes().to_vec()),
    }
}

fn seq(m: &Message) -> u32 {
    match m {
        Message::Sync { data, .. } => u32::from_be_bytes(data[..4].try_into().unwrap()),
        other => panic!("unexpected message {other:?}"),
    }
}

/// Waits for an event matching `pred`; returns it with the events skipped before it.
async fn expect(
    node: &mut Node,
    what: &str,
    pred: impl Fn(&TransportEvent) -> bool,
) -> (TransportEvent, Vec<TransportEvent>) {
    expect_within(node, what, WAIT, pred).await
}

/// [`expect`], waiting up to `within`.
async fn expect_within(
    node: &mut Node,
    what: &str,
    within: Duration,
    pred: impl Fn(&TransportEvent) -> bool,
) -> (TransportEvent, Vec<TransportEvent>) {
    let deadline = Instant::now() + within;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, node.rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return (ev, skipped),
            Ok(Some(ev)) => skipped.push(ev),
            Ok(None) => panic!("{}: event channel closed waiting for {what}", node.id),
            Err(_) => panic!("{}: timed out waiting for {what}; saw {skipped:?}", node.id),
        }
    }
}

async fn expect_up(node: &mut Node, peer: &str) -> Vec<TransportEvent> {
    let want = TransportEvent::Up(peer.to_string());
    expect(node, &format!("Up({peer})"), |e| *e == want).await.1
}

async fn expect_down(node: &mut Node, peer: &str) -> Vec<TransportEvent> {
    let want = TransportEvent::Down(peer.to_string());
    expect(node, &format!("Down({peer})"), |e| *e == want)
        .await
        .1
}

/// Every event arriving within `dur`.
async fn collect_for(node: &mut Node, dur: Duration) -> Vec<TransportEvent> {
    let deadline = Instant::now() + dur;
    let mut out = Vec::new();
    while let Ok(Some(ev)) = timeout(
        deadline.saturating_duration_since(Instant::now()),
        node.rx.recv(),
    )
    .await
    {
        out.push(ev);
    }
    out
}

/// Receives `n` messages from `from`, in order of arrival (other events are skipped).
async fn receive(node: &mut Node, from: &str, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let (ev, _) = expect(node, "a message", |e| {
            matches!(e, TransportEvent::Message { .. })
        })
        .await;
        if let TransportEvent::Message { from: f, msg } = ev {
            assert_eq!(f, from);
            out.push(msg);
        }
    }
    out
}

/// Polls the stats until `pred` holds.
async fn wait_stats(t: &Transport, what: &str, pred: impl Fn(&TransportStats) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = t.stats();
        if pred(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn no_link_events(events: &[TransportEvent]) -> bool {
    !events
        .iter()
        .any(|e| matches!(e, TransportEvent::Up(_) | TransportEvent::Message { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_messages_in_order() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    assert_eq!(a.t.send("n2", msg(0)), Err(SendError::NotConnected));
    a.t.connect("n2", b.t.local_addr());
    a.t.connect("n2", b.t.local_addr()); // idempotent
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    assert_eq!(a.t.connected(), vec!["n2".to_string()]);
    assert_eq!(b.t.connected(), vec!["n1".to_string()]);
    for i in 0..200 {
        a.t.send("n2", msg(i)).unwrap();
        b.t.send("n1", msg(1000 + i)).unwrap();
    }
    let at_b: Vec<u32> = receive(&mut b, "n1", 200).await.iter().map(seq).collect();
    let at_a: Vec<u32> = receive(&mut a, "n2", 200).await.iter().map(seq).collect();
    assert_eq!(at_b, (0..200).collect::<Vec<_>>());
    assert_eq!(at_a, (1000..1200).collect::<Vec<_>>());
    wait_stats(&a.t, "counters", |s| s.peers["n2"].messages_sent == 200).await;
    let sa = a.t.stats();
    let sb = b.t.stats();
    assert_eq!(sa.peers["n2"].messages_received, 200);
    assert_eq!(sb.peers["n1"].messages_received, 200);
    assert_eq!(sa.peers["n2"].bytes_sent, sb.peers["n1"].bytes_received);
    assert_eq!(sa.totals.messages_sent, 200);
    assert_eq!((sa.connections, sb.connections), (1, 1));
    assert_eq!(sa.rejected, Default::default());
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_dns_names_work() {
    let ids = in_memory_identities(CLUSTER, &["7", "-x_"]).unwrap();
    let mut a = start("7", &ids[0], &["7", "-x_"]).await;
    let mut b = start("-x_", &ids[1], &["7", "-x_"]).await;
    a.t.connect("-x_", b.t.local_addr());
    expect_up(&mut a, "-x_").await;
    expect_up(&mut b, "7").await;
    b.t.send("7", msg(3)).unwrap();
    assert_eq!(seq(&receive(&mut a, "-x_", 1).await[0]), 3);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_is_redialed_on_the_same_port() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let b = start("n2", &ids[1], &["n1", "n2"]).await;
    let addr = b.t.local_addr();
    a.t.connect("n2", addr);
    expect_up(&mut a, "n2").await;
    b.t.shutdown().await;
    drop(b);
    expect_down(&mut a, "n2").await;
    assert_eq!(a.t.send("n2", msg(1)), Err(SendError::NotConnected));

    // Bind again on the same port (the old socket is released shortly after shutdown).
    let deadline = Instant::now() + WAIT;
    let mut b = loop {
        let mut cfg = config(CLUSTER, "n2", ids[1].clone(), &["n1", "n2"]);
        cfg.listen = addr;
        let (tx, rx) = mpsc::channel(64);
        match Transport::bind(cfg, tx).await {
            Ok(t) => {
                break Node {
                    id: "n2".into(),
                    t,
                    rx,
                }
            }
            Err(TransportError::Bind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    };
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    a.t.send("n2", msg(7)).unwrap();
    assert_eq!(seq(&receive(&mut b, "n1", 1).await[0]), 7);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_a_certificate_from_another_ca_is_refused() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let foreign = in_memory_identities(CLUSTER, &["n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut intruder = start("n2", &foreign[0], &["n1", "n2"]).await;
    intruder.t.connect("n1", a.t.local_addr());
    expect(&mut intruder, "DialFailed", |e| {
        *e == TransportEvent::DialFailed("n1".into())
    })
    .await;
    wait_stats(&a.t, "tls rejection", |s| s.rejected.tls >= 1).await;
    assert!(intruder.t.stats().rejected.tls >= 1);
    assert!(no_link_events(
        &collect_for(&mut a, Duration::from_millis(200)).await
    ));
    assert!(no_link_events(
        &collect_for(&mut intruder, Duration::ZERO).await
    ));
    assert!(a.t.connected().is_empty() && intruder.t.connected().is_empty());
    intruder.t.shutdown().await;
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_is_not_a_member_is_refused() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2", "n3"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut c = start("n3", &ids[2], &["n1", "n3"]).await;
    c.t.connect("n1", a.t.local_addr());
    expect(&mut c, "DialFailed", |e| {
        *e == TransportEvent::DialFailed("n1".into())
    })
    .await;
    wait_stats(&a.t, "unknown_node", |s| s.rejected.unknown_node >= 1).await;
    assert!(no_link_events(
        &collect_for(&mut a, Duration::from_millis(200)).await
    ));
    assert!(no_link_events(&collect_for(&mut c, Duration::ZERO).await));
    // Dialing a non-member is not even attempted.
    a.t.connect("n3", c.t.local_addr());
    assert!(!a.t.stats().peers.contains_key("n3"));
    c.t.shutdown().await;
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_of_another_cluster_is_refused() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut other = start_cfg(config("other", "n2", ids[1].clone(), &["n1", "n2"]), 64).await;
    other.t.connect("n1", a.t.local_addr());
    expect(&mut other, "DialFailed", |e| {
        *e == TransportEvent::DialFailed("n1".into())
    })
    .await;
    wait_stats(&a.t, "wrong_cluster", |s| s.rejected.wrong_cluster >= 1).await;
    assert!(no_link_events(
        &collect_for(&mut a, Duration::from_millis(200)).await
    ));
    assert!(no_link_events(
        &collect_for(&mut other, Duration::ZERO).await
    ));
    other.t.shutdown().await;
    a.t.shutdown().await;
}

/// A raw quinn client presenting `identity`, connected to `addr` (a node `server_id`).
async fn raw_client(
    identity: &TlsIdentity,
    cert_id: &str,
    addr: SocketAddr,
    server_id: &str,
) -> (quinn::Endpoint, quinn::Connection) {
    let timing = Timing {
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(1),
    };
    let cfg = client_config(cert_id, identity, timing).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = timeout(
        WAIT,
        ep.connect_with(cfg, addr, &node_dns_name(server_id))
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    (ep, conn)
}

/// A Hello offering no compression: the raw test peers write plain frames.
fn hello(cluster: &str, node: &str) -> Vec<u8> {
    wire::encode(&Message::Hello(Hello {
        cluster: cluster.into(),
        node: node.into(),
        version: PROTOCOL_VERSION,
        compression: Vec::new(),
    }))
    .unwrap()
}

/// The application close code the node sent, once the connection is closed.
async fn close_code(conn: &quinn::Connection) -> u64 {
    match timeout(WAIT, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("unexpected close {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_claiming_another_id_than_the_certificate_is_refused() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2", "n3"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2", "n3"]).await;
    // A transport refuses to start with a certificate for another id...
    let mismatched = config(CLUSTER, "n3", ids[1].clone(), &["n1", "n3"]);
    let (tx, _rx) = mpsc::channel(1);
    match Transport::bind(mismatched, tx).await {
        Err(TransportError::Config { field, .. }) => assert_eq!(field, "identity"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // ...so the liar is a raw client: certificate of n2, hello claiming n3.
    let (_ep, conn) = raw_client(&ids[1], "n2", a.t.local_addr(), "n1").await;
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&hello(CLUSTER, "n3")).await.unwrap();
    assert_eq!(close_code(&conn).await, code::CERT_MISMATCH.into_inner());
    // The node sent nothing but the close: no stream data reached the client.
    assert_eq!(conn.stats().frame_rx.stream, 0);
    assert_eq!(a.t.stats().rejected.cert_mismatch, 1);
    assert!(no_link_events(
        &collect_for(&mut a, Duration::from_millis(100)).await
    ));
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let garbage: [&[u8]; 3] = [
        &[0, 0, 0, 5, 1, 0xff, 0xff, 0xff, 0xff], // undecodable payload
        &[0x7f, 0xff, 0xff, 0xff],                // length over MAX_FRAME
        &[0, 0, 0, 9, 7, 1, 2, 3, 4, 5, 6, 7, 8], // unknown version byte
    ];
    for (round, bytes) in garbage.iter().enumerate() {
        let (_ep, conn) = raw_client(&ids[1], "n2", a.t.local_addr(), "n1").await;
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(&hello(CLUSTER, "n2")).await.unwrap();
        let recv = timeout(WAIT, conn.accept_uni()).await.unwrap().unwrap();
        let mut recv = recv;
        let mut header = [0u8; 4];
        recv.read_exact(&mut header).await.unwrap();
        let mut payload = vec![0; wire::frame_head(header).unwrap().len];
        recv.read_exact(&mut payload).await.unwrap();
        assert!(
            matches!(wire::decode_payload(&payload).unwrap(), Message::Hello(h) if h.node == "n1")
        );
        expect_up(&mut a, "n2").await;
        // A valid message first, then garbage.
        send.write_all(&wire::encode(&msg(round as u32)).unwrap())
            .await
            .unwrap();
        send.write_all(bytes).await.unwrap();
        assert_eq!(close_code(&conn).await, code::BAD_FRAME.into_inner());
        let skipped = expect_down(&mut a, "n2").await;
        assert_eq!(
            skipped,
            vec![TransportEvent::Message {
                from: "n2".into(),
                msg: msg(round as u32)
            }]
        );
        assert_eq!(a.t.stats().rejected.bad_frame, round as u64 + 1);
    }
    // A second Hello after the handshake is refused too.
    let (_ep, conn) = raw_client(&ids[1], "n2", a.t.local_addr(), "n1").await;
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&hello(CLUSTER, "n2")).await.unwrap();
    expect_up(&mut a, "n2").await;
    send.write_all(&hello(CLUSTER, "n2")).await.unwrap();
    assert_eq!(close_code(&conn).await, code::BAD_HELLO.into_inner());
    expect_down(&mut a, "n2").await;
    assert_eq!(a.t.stats().rejected.bad_hello, 1);

    // The node keeps working with a well-behaved peer.
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    b.t.connect("n1", a.t.local_addr());
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    b.t.send("n1", msg(42)).unwrap();
    assert_eq!(seq(&receive(&mut a, "n2", 1).await[0]), 42);
    b.t.shutdown().await;
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_the_links() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    a.t.connect("n2", b.t.local_addr());
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    let targets = [a.t.local_addr(), b.t.local_addr()];
    let noise = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..3000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 1400) as usize;
            let mut buf: Vec<u8> = (0..len).map(|k| (x >> (k % 56)) as u8).collect();
            if i % 3 == 0 {
                buf[0] = 0xc0 | (buf[0] & 0x0f); // looks like a long header (Initial)
            }
            let _ = sock.send_to(&buf, targets[i as usize % 2]);
        }
    });
    for i in 0..300 {
        a.t.send("n2", msg(i)).unwrap();
        b.t.send("n1", msg(i)).unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let at_b: Vec<u32> = receive(&mut b, "n1", 300).await.iter().map(seq).collect();
    let at_a: Vec<u32> = receive(&mut a, "n2", 300).await.iter().map(seq).collect();
    noise.join().unwrap();
    assert_eq!(at_b, (0..300).collect::<Vec<_>>());
    assert_eq!(at_a, (0..300).collect::<Vec<_>>());
    let later = collect_for(&mut a, Duration::from_millis(100)).await;
    assert!(!later.contains(&TransportEvent::Down("n2".into())));
    assert_eq!(a.t.connected(), vec!["n2".to_string()]);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dialing_ends_with_one_connection() {
    for round in 0..3 {
        let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
        let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
        let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
        a.t.connect("n2", b.t.local_addr());
        b.t.connect("n1", a.t.local_addr());
        // Each side sends as soon as it is up: nothing may be lost while duplicates resolve.
        let mut seen_a = expect_up(&mut a, "n2").await;
        a.t.send("n2", msg(1)).unwrap();
        let mut seen_b = expect_up(&mut b, "n1").await;
        b.t.send("n1", msg(2)).unwrap();
        assert_eq!(seq(&receive(&mut b, "n1", 1).await[0]), 1, "round {round}");
        assert_eq!(seq(&receive(&mut a, "n2", 1).await[0]), 2, "round {round}");
        wait_stats(&a.t, "one connection at n1", |s| s.connections == 1).await;
        wait_stats(&b.t, "one connection at n2", |s| s.connections == 1).await;
        seen_a.extend(collect_for(&mut a, Duration::from_millis(300)).await);
        seen_b.extend(collect_for(&mut b, Duration::from_millis(10)).await);
        for seen in [&seen_a, &seen_b] {
            assert!(
                seen.iter()
                    .all(|e| !matches!(e, TransportEvent::Up(_) | TransportEvent::Down(_))),
                "round {round}: extra link events {seen:?}"
            );
        }
        assert_eq!(a.t.connected(), vec!["n2".to_string()]);
        assert_eq!(b.t.connected(), vec!["n1".to_string()]);
        a.t.shutdown().await;
        b.t.shutdown().await;
    }
}

/// A dial still waiting for its QUIC handshake (as one begun while the peer was down, whose
/// packets QUIC resends ever more rarely) does not hold up the peer's own dial: the smaller
/// id admits the larger's connection at once and abandons its attempt, which so never
/// fails (before, it refused that connection until its attempt ended, a second or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_waiting_for_its_handshake_yields_to_the_peers_connection() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    // n1 dials an address where nothing answers: its attempt waits 1 s for a handshake.
    let dead = free_addr();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    a.t.connect("n2", dead);
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    b.t.connect("n1", a.t.local_addr());
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    assert_eq!(
        a.t.stats().peers["n2"].dial_failures,
        0,
        "n1's attempt ended before the link came up"
    );
    b.t.send("n1", msg(3)).unwrap();
    assert_eq!(seq(&receive(&mut a, "n2", 1).await[0]), 3);
    // The abandoned attempt neither fails nor disturbs the link.
    let seen = collect_for(&mut a, Duration::from_millis(1_500)).await;
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            TransportEvent::Up(_) | TransportEvent::Down(_) | TransportEvent::DialFailed(_)
        )),
        "{seen:?}"
    );
    assert_eq!(a.t.stats().peers["n2"].dial_failures, 0);
    assert_eq!(a.t.connected(), vec!["n2".to_string()]);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_messages_and_keeps_order() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut cfg = config(CLUSTER, "n1", ids[0].clone(), &["n1", "n2"]);
    cfg.send_queue = 1;
    let mut a = start_cfg(cfg, 64).await;
    // n2's owner reads its events only later: its reader stops, flow control fills, n1's
    // writer blocks, and n1's one-message queue fills.
    let mut b = start_cfg(config(CLUSTER, "n2", ids[1].clone(), &["n1", "n2"]), 4).await;
    a.t.connect("n2", b.t.local_addr());
    expect_up(&mut a, "n2").await;
    let big = |i: u32| Message::Sync {
        doc: "big".into(),
        data: ByteBuf::from([i.to_be_bytes().to_vec(), vec![0u8; 1 << 20]].concat()),
    };
    // Send until the queue has been found full ten times in a row, 10 ms apart: by then
    // n1's writer is blocked by flow control (well before 2000 MiB).
    let mut accepted = Vec::new();
    let (mut fulls, mut in_a_row) = (0, 0);
    for i in 0..2000u32 {
        match a.t.send("n2", big(i)) {
            Ok(()) => {
                accepted.push(i);
                in_a_row = 0;
                tokio::task::yield_now().await;
            }
            Err(SendError::Full) => {
                fulls += 1;
                in_a_row += 1;
                if in_a_row == 10 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(in_a_row, 10, "the queue never stayed full");
    let s = a.t.stats();
    assert_eq!(s.peers["n2"].dropped_full, fulls);
    assert_eq!(s.totals.dropped_full, fulls);
    assert!(s.peers["n2"].queue_depth <= 1);
    // Everything accepted arrives, in order.
    expect_up(&mut b, "n1").await;
    let got: Vec<u32> = receive(&mut b, "n1", accepted.len())
        .await
        .iter()
        .map(seq)
        .collect();
    assert_eq!(got, accepted);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_stops_redialing() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    // An inbound link stays when the side that did not dial it disconnects.
    b.t.connect("n1", a.t.local_addr());
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    a.t.disconnect("n2");
    assert!(no_link_events(
        &collect_for(&mut a, Duration::from_millis(200)).await
    ));
    assert_eq!(a.t.connected(), vec!["n2".to_string()]);
    // The dialer disconnecting closes it, and nobody redials.
    b.t.disconnect("n1");
    expect_down(&mut a, "n2").await;
    expect_down(&mut b, "n1").await;
    let after_a = collect_for(&mut a, Duration::from_millis(600)).await;
    let after_b = collect_for(&mut b, Duration::ZERO).await;
    assert!(no_link_events(&after_a), "{after_a:?}");
    assert!(no_link_events(&after_b), "{after_b:?}");
    assert!(a.t.connected().is_empty() && b.t.connected().is_empty());
    assert_eq!(b.t.send("n1", msg(1)), Err(SendError::NotConnected));
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_dead_address_reports_failures_and_connects_later() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    // Dial a free port before anything listens there.
    let addr = free_addr();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    a.t.connect("n2", addr);
    expect(&mut a, "DialFailed", |e| {
        *e == TransportEvent::DialFailed("n2".into())
    })
    .await;
    assert!(a.t.stats().peers["n2"].dial_failures >= 1);
    let mut cfg = config(CLUSTER, "n2", ids[1].clone(), &["n1", "n2"]);
    cfg.listen = addr;
    let mut b = start_cfg(cfg, 64).await;
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    a.t.shutdown().await;
    b.t.shutdown().await;
}

/// The transport's default timings are the `[tuning]` defaults (one list of knobs).
#[test]
fn default_timings_are_the_tuning_defaults() {
    let ids = in_memory_identities(CLUSTER, &["n1"]).unwrap();
    let identity = ids.into_iter().next().unwrap();
    let cfg = TransportConfig::new(
        CLUSTER,
        "n1",
        "127.0.0.1:0".parse().unwrap(),
        identity,
        vec![],
    );
    let t = concordant::config::Tuning::default();
    assert_eq!(cfg.keep_alive, Duration::from_millis(t.keep_alive_ms));
    assert_eq!(cfg.idle_timeout, Duration::from_millis(t.idle_timeout_ms));
    assert_eq!(cfg.reconnect_min, Duration::from_millis(t.reconnect_min_ms));
    assert_eq!(cfg.reconnect_max, Duration::from_millis(t.reconnect_max_ms));
    assert_eq!(cfg.send_queue, t.send_queue);
}

/// A pair of linked transports, compression offered as given.
async fn linked_pair(compress: [bool; 2]) -> (Node, Node) {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut nodes = Vec::new();
    for (i, id) in ["n1", "n2"].iter().enumerate() {
        let mut cfg = config(CLUSTER, id, ids[i].clone(), &["n1", "n2"]);
        cfg.compress = compress[i];
        nodes.push(start_cfg(cfg, 1024).await);
    }
    let mut b = nodes.pop().unwrap();
    let mut a = nodes.pop().unwrap();
    a.t.connect("n2", b.t.local_addr());
    expect_up(&mut a, "n2").await;
    expect_up(&mut b, "n1").await;
    (a, b)
}

/// Sends `n` similar messages from `a` to `b`; returns the bytes their frames take
/// uncompressed and what `a` counted on the stream.
async fn send_similar(a: &mut Node, b: &mut Node, n: u32) -> (u64, u64) {
    let before = a.t.stats().totals.bytes_sent;
    let mut framed = 0;
    for i in 0..n {
        let m = Message::Sync {
            doc: "a-document-with-a-long-name".into(),
            data: ByteBuf::from([i.to_be_bytes().to_vec(), vec![7; 60]].concat()),
        };
        framed += wire::encoded_len(&m) as u64;
        a.t.send("n2", m).unwrap();
        // One at a time: each is its own batch, as with writes at a modest rate.
        let got = receive(b, "n1", 1).await;
        assert_eq!(seq(&got[0]), i);
    }
    (framed, a.t.stats().totals.bytes_sent - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_compressed_when_both_ends_offer_it() {
    let (mut a, mut b) = linked_pair([true, true]).await;
    let (framed, sent) = send_similar(&mut a, &mut b, 200).await;
    // The stream carries much less than the frames: the repeated parts compress.
    assert!(
        sent * 2 < framed,
        "{sent} bytes on the stream for {framed} of frames"
    );
    // Both directions.
    b.t.send("n1", msg(9)).unwrap();
    assert_eq!(seq(&receive(&mut a, "n2", 1).await[0]), 9);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_plain_when_one_end_does_not_offer_compression() {
    for compress in [[true, false], [false, true]] {
        let (mut a, mut b) = linked_pair(compress).await;
        let (framed, sent) = send_similar(&mut a, &mut b, 20).await;
        assert_eq!(sent, framed, "{compress:?}");
        b.t.send("n1", msg(3)).unwrap();
        assert_eq!(seq(&receive(&mut a, "n2", 1).await[0]), 3);
        a.t.shutdown().await;
        b.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_compressed_stream_closes_only_that_connection() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let (_ep, conn) = raw_client(&ids[1], "n2", a.t.local_addr(), "n1").await;
    let mut send = conn.open_uni().await.unwrap();
    let offer = wire::encode(&Message::Hello(Hello {
        cluster: CLUSTER.into(),
        node: "n2".into(),
        version: PROTOCOL_VERSION,
        compression: vec![wire::DEFLATE.into()],
    }))
    .unwrap();
    send.write_all(&offer).await.unwrap();
    expect_up(&mut a, "n2").await;
    // Not a deflate stream (a block type 3 is invalid).
    send.write_all(&[0xff; 64]).await.unwrap();
    assert_eq!(close_code(&conn).await, code::BAD_FRAME.into_inner());
    expect_down(&mut a, "n2").await;
    assert_eq!(a.t.stats().rejected.bad_frame, 1);
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused_by_send_naming_its_document() {
    let (a, b) = linked_pair([true, true]).await;
    // Zeroed memory that is never touched: only its length is looked at.
    let huge = Message::Sync {
        doc: "huge".into(),
        data: ByteBuf::from(vec![0u8; wire::MAX_MESSAGE]),
    };
    match a.t.send("n2", huge) {
        Err(SendError::TooLarge { len, docs }) => {
            assert!(len > wire::MAX_MESSAGE);
            assert_eq!(docs, vec!["huge".to_string()]);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(a.t.stats().totals.queue_depth, 0);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_capped_and_the_node_recovers() {
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    // Connections that finish TLS and then say nothing hold a handshake each until the
    // Hello timeout (2 s).
    let timing = Timing {
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(5),
    };
    let cfg = client_config("n2", &ids[1], timing).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..80 {
        let connecting = ep
            .connect_with(cfg.clone(), a.t.local_addr(), &node_dns_name("n1"))
            .unwrap();
        match timeout(WAIT, connecting).await.unwrap() {
            Ok(conn) => held.push(conn),
            Err(_) => refused += 1,
        }
    }
    assert!(
        held.len() <= 64,
        "{} handshakes admitted at once",
        held.len()
    );
    assert!(refused >= 16, "only {refused} refused");
    assert!(a.t.stats().rejected.busy >= 16);
    // Once they time out, a real peer links up.
    drop(held);
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    b.t.connect("n1", a.t.local_addr());
    expect_up(&mut b, "n1").await;
    expect_up(&mut a, "n2").await;
    b.t.shutdown().await;
    a.t.shutdown().await;
    ep.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_a_frame_crosses_plain_and_compressed_links() {
    for compress in [[true, true], [false, false]] {
        let (a, mut b) = linked_pair(compress).await;
        let big = Message::Sync {
            doc: "big".into(),
            data: ByteBuf::from(
                (0..wire::MAX_FRAME + 1000)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect::<Vec<u8>>(),
            ),
        };
        // Small messages around it: what follows may not refer back past it.
        a.t.send("n2", msg(4)).unwrap();
        assert_eq!(seq(&receive(&mut b, "n1", 1).await[0]), 4);
        a.t.send("n2", big.clone()).unwrap();
        a.t.send("n2", msg(4)).unwrap();
        let got = receive(&mut b, "n1", 2).await;
        assert!(
            got[0] == big,
            "{compress:?}: the large message arrived changed"
        );
        assert_eq!(seq(&got[1]), 4);
        a.t.shutdown().await;
        b.t.shutdown().await;
    }
}

/// Round trips of 2.5 s (1.25 s each way through the relays of `concordant::netem`): the
/// dial that waits 4 s for its handshake gets one, and the Hello exchange after it waits
/// three of the round trips the handshake measured, not the 2 s a fast link gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_with_round_trips_of_two_and_a_half_seconds_comes_up() {
    use concordant::netem::{LinkFaults, Relays};
    let ids = in_memory_identities(CLUSTER, &["n1", "n2"]).unwrap();
    let relays = Relays::bind(2, 25).await.unwrap();
    relays.set_all(LinkFaults::slow(
        Duration::from_millis(1_250),
        Duration::ZERO,
        0.0,
    ));
    let mut a = start("n1", &ids[0], &["n1", "n2"]).await;
    let mut b = start("n2", &ids[1], &["n1", "n2"]).await;
    relays.set_target(0, a.t.local_addr());
    relays.set_target(1, b.t.local_addr());
    a.t.connect("n2", relays.route(0, 1));
    b.t.connect("n1", relays.route(1, 0));
    let slow = Duration::from_secs(60);
    expect_within(&mut a, "Up(n2)", slow, |e| {
        *e == TransportEvent::Up("n2".into())
    })
    .await;
    expect_within(&mut b, "Up(n1)", slow, |e| {
        *e == TransportEvent::Up("n1".into())
    })
    .await;
    let rtt = a.t.stats().peers["n2"]
        .rtt
        .expect("the link's round trip time");
    assert!(rtt >= Duration::from_millis(2_500), "{rtt:?}");
    a.t.send("n2", msg(7)).unwrap();
    assert_eq!(seq(&receive(&mut b, "n1", 1).await[0]), 7);
    a.t.shutdown().await;
    b.t.shutdown().await;
}
