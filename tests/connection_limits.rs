//! Connections held open by a client that sends nothing (issue 26, item 4): a
//! `concordant node` process started with a soft file limit of 1,024 faces 1,100 idle
//! sockets (half of them with half a request line). It keeps answering `GET /v1/health` on
//! new connections, never holds more descriptors than its limit allows, closes the idle
//! sockets after the header timeout, and counts its refusals in
//! `concordant_limits_refused_total{limit}`.
//!
//! Also in-process: the cap on `watch` streams answers 503 with `Retry-After` and frees
//! its place when a stream ends.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::metrics_text::{metrics, refused, sample};
use common::procs::{ChildGuard, ProcCluster, POLL, WAIT};
use concordant::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The node's soft file limit.
const FILE_LIMIT: u64 = 1024;
/// Idle sockets opened against it.
const IDLE: usize = 1100;
/// The node's `api_header_timeout_ms` in this test.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Raises this process's soft file limit so that it can hold the idle sockets.
fn raise_own_file_limit(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < want) {
        assert!(
            limit.maximum.is_none_or(|m| m >= want),
            "this test needs a hard file limit of at least {want}: {limit:?}"
        );
        limit.current = Some(want);
        setrlimit(Resource::Nofile, limit).expect("raise the soft file limit");
    }
}

/// Starts node n1 of `cluster` with a soft file limit of [`FILE_LIMIT`].
async fn start_limited(cluster: &ProcCluster) -> ChildGuard {
    let log = cluster.dir.path().join("n1.log");
    let mut child = ChildGuard::node_with(&cluster.config_path, "n1", log, None, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only an async-signal-safe system call runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                use rustix::process::{getrlimit, setrlimit, Resource};
                let mut limit = getrlimit(Resource::Nofile);
                limit.current = Some(FILE_LIMIT);
                setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)
            });
        }
    });
    child.wait_log("running; stop with").await;
    child
}

/// One `GET /v1/health` on a new connection: its status, within `within`.
async fn health(api: &str, within: Duration) -> Result<u16, String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(api).await.map_err(|e| e.to_string())?;
        tcp.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        text.get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_idle_sockets_exceed_the_file_limit() {
    raise_own_file_limit(4 * FILE_LIMIT);
    let cluster = ProcCluster::init(1, "mesh");
    let text = std::fs::read_to_string(&cluster.config_path).expect("cluster.toml");
    // The generated file ends with its [tuning] table.
    let tuned = format!(
        "{text}api_header_timeout_ms = {}\n",
        HEADER_TIMEOUT.as_millis()
    );
    std::fs::write(&cluster.config_path, tuned).expect("write cluster.toml");
    let mut node = start_limited(&cluster).await;
    let client = Client::for_node(&cluster.config, "n1")
        .expect("client")
        .with_timeout(Duration::from_secs(5));
    let api = client.url().trim_start_matches("http://").to_string();
    let start = Instant::now();
    while health(&api, Duration::from_secs(1)).await != Ok(200) {
        assert!(
            start.elapsed() < WAIT,
            "n1 does not answer:\n{}",
            node.log_text()
        );
        tokio::time::sleep(POLL).await;
    }
    let before = metrics(&client).await;
    let cap = sample(&before, "concordant_api_connections_max") as usize;
    assert_eq!(cap, 1024 - 128 - 32, "the cap derived from the file limit");

    // The attack: idle sockets, half of them with half a request line.
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut tcp = TcpStream::connect(&api).await.expect("connect");
        if i % 2 == 1 {
            tcp.write_all(b"GET /v1/do").await.expect("half a line");
        }
        idle.push(tcp);
    }
    let opened = start.elapsed();
    // Connections over the cap and its health reserve are refused at once; those in the
    // reserve within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answered = 0;
    let mut most_fds = 0;
    while start.elapsed() < opened + HEADER_TIMEOUT - Duration::from_millis(1500) {
        let status = health(&api, Duration::from_secs(1)).await;
        assert_eq!(
            status,
            Ok(200),
            "health during the attack ({answered} answered before)"
        );
        answered += 1;
        most_fds = most_fds.max(open_fds(node.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 10, "only {answered} health checks ran");
    assert!(
        most_fds < FILE_LIMIT as usize,
        "the node held {most_fds} descriptors"
    );

    // Every idle socket is closed by the node: after its 503, or at the header timeout.
    let closes = idle.into_iter().map(|mut tcp| async move {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(HEADER_TIMEOUT * 2, tcp.read_to_end(&mut rest)).await;
        (read.is_ok(), rest.starts_with(b"HTTP/1.1 503"))
    });
    let closed = futures_util::future::join_all(closes).await;
    let still_open = closed.iter().filter(|(done, _)| !done).count();
    let answered_503 = closed.iter().filter(|(_, r)| *r).count();
    assert_eq!(still_open, 0, "idle sockets the node kept open");
    assert!(
        answered_503 >= IDLE - cap,
        "only {answered_503} sockets over the cap of {cap} got a 503"
    );

    let after = metrics(&client).await;
    eprintln!(
        "file limit {FILE_LIMIT}: {IDLE} idle sockets, cap {cap}, {answered} health checks \
         answered, at most {most_fds} descriptors held; refused: connections {}, \
         header_timeout {}",
        refused(&after, "connections"),
        refused(&after, "header_timeout")
    );
    assert!(
        refused(&after, "connections") >= (IDLE - cap) as u64,
        "{after}"
    );
    assert!(
        refused(&after, "header_timeout") >= (cap - 64) as u64,
        "{after}"
    );
    assert!(
        sample(&after, "concordant_api_connections") <= 2,
        "connections still counted:\n{after}"
    );
    assert_eq!(health(&api, Duration::from_secs(1)).await, Ok(200));
    assert!(node.exited().is_none(), "n1 exited:\n{}", node.log_text());
}

/// Reads an answer's head from a new connection that asked `GET path`.
async fn head_of(addr: &str, path: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (tcp, String::from_utf8_lossy(&head).to_lowercase())
}

#[tokio::test]
async fn watch_streams_past_the_cap_get_503_with_retry_after() {
    use concordant::api::{self, ApiOptions};
    let identity = concordant::certs::in_memory_identities("watchcap", &["n1"])
        .expect("identity")
        .remove(0);
    let node = concordant::NodeBuilder::new("n1", "watchcap", identity)
        .start()
        .await
        .expect("node");
    // Watching needs a document the node has.
    for doc in ["a", "b", "c"] {
        node.change(doc, |tx| {
            automerge::transaction::Transactable::put(tx, automerge::ROOT, "k", 1)
        })
        .await
        .expect("write");
    }
    let mut options = ApiOptions::new(None);
    options.limits.watch_streams = 2;
    let listener = api::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve_with(node.clone(), listener, options, async {
        let _ = stop_rx.await;
    }));

    let (first, head) = head_of(&addr, "/v1/docs/a/watch").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (_second, head) = head_of(&addr, "/v1/docs/b/watch").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (_, head) = head_of(&addr, "/v1/docs/c/watch").await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    // A stream that ends gives its place back.
    drop(first);
    let start = Instant::now();
    let _third = loop {
        let (third, head) = head_of(&addr, "/v1/docs/c/watch").await;
        if head.starts_with("http/1.1 200") {
            break third;
        }
        assert!(
            start.elapsed() < WAIT,
            "the place was not given back: {head}"
        );
        tokio::time::sleep(POLL).await;
    };
    let client = Client::new(&format!("http://{addr}"), None).expect("client");
    let text = metrics(&client).await;
    assert!(refused(&text, "watch") >= 1, "{text}");
    assert_eq!(sample(&text, "concordant_watch_streams"), 2, "{text}");
    let _ = stop_tx.send(());
    let stopped = tokio::time::timeout(WAIT, server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the API did not stop");
    node.shutdown().await.expect("shutdown");
}
