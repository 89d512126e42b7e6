//! Runs the example apps' own code: `run()` of the to-do list, inventory and notes examples,
//! and the replicated key-value service's `serve` on two in-process nodes spoken to over
//! TCP. Every network address is 127.0.0.1 with port 0; every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concordant::certs::in_memory_identities;
use concordant::config::TopologyKind;
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

// Each example is compiled here as a module; its `main` is unused.
#[allow(dead_code)]
#[path = "../examples/todo.rs"]
mod todo;

#[allow(dead_code)]
#[path = "../examples/inventory.rs"]
mod inventory;

#[allow(dead_code)]
#[path = "../examples/notes.rs"]
mod notes;

#[allow(dead_code)]
#[path = "../examples/replicated_kv.rs"]
mod replicated_kv;

/// Fails the test instead of hanging if an example gets stuck.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the example did not finish within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todo_list_converges_after_a_restart() {
    let list = bounded(todo::run()).await.expect("todo example failed");
    let ids: Vec<&str> = list.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        ["n1-1", "n1-2", "n1-3", "n1-4", "n2-1", "n2-2", "n2-3", "n3-1", "n3-2", "n3-3", "n3-4"]
    );
    let get = |id: &str| list.iter().find(|t| t.id == id).expect("item");
    // Edits made while n3 was down and right after its restart are everywhere.
    assert_eq!(get("n1-1").title, "buy milk (done)");
    assert!(get("n1-1").done);
    assert!(get("n3-1").done);
    assert_eq!(get("n3-1").title, "call the plumber");
    assert_eq!(get("n3-4").title, "written right after the restart");
    // Concurrent toggles from every node.
    assert!(get("n2-2").done && get("n3-2").done);
    assert!(!get("n1-2").done);
    // The conflicting renames: one of the two won.
    assert!(["renamed on n1", "renamed on n2"].contains(&get("n3-3").title.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_counts_are_exact_after_healing() {
    let counts = bounded(inventory::run())
        .await
        .expect("inventory example failed");
    assert_eq!(counts.len(), 4);
    for c in &counts {
        assert_eq!(c.at_shops.len(), 4);
        assert!(c.at_shops.iter().all(|n| *n == c.expected), "{c:?}");
    }
    // Every sale was a decrement: each product lost stock (pears also got a delivery).
    let apples = counts
        .iter()
        .find(|c| c.product == "apples")
        .expect("apples");
    assert!(apples.expected < 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_merge_to_the_same_text() {
    for seed in [1, 7] {
        let text = bounded(notes::run(seed, 15))
            .await
            .expect("notes example failed");
        assert!(text.starts_with("the"), "{text:?}");
        assert!(text.is_ascii());
        // Edits only insert and delete whole " word"s: no double or trailing spaces.
        assert!(!text.contains("  ") && !text.ends_with(' '), "{text:?}");
    }
}

/// Sends one request line and reads the reply line.
async fn request(stream: &mut BufReader<TcpStream>, line: &str) -> String {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write");
    let mut reply = String::new();
    stream.read_line(&mut reply).await.expect("read");
    reply.trim_end().to_string()
}

/// Repeats `line` on `client` until the reply is `want` (at most 10 s).
async fn eventually(client: &mut BufReader<TcpStream>, line: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = request(client, line).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{line:?} still answers {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn kv_service(node: &Node) -> BufReader<TcpStream> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(replicated_kv::serve(node.clone(), listener));
    BufReader::new(TcpStream::connect(addr).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_kv_serves_and_replicates() {
    let ids = ["n1", "n2"];
    let identities = in_memory_identities("kv", &ids).expect("identities");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mesh = Topology::new(
        TopologyKind::Mesh,
        ids.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    );
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let node = NodeBuilder::new(id, "kv", identities[i].clone())
            .topology(mesh.clone())
            .listen(any)
            .start()
            .await
            .expect("start");
        nodes.push(node);
    }
    nodes[0]
        .set_peer_addr("n2", nodes[1].peer_addr())
        .await
        .expect("addr");
    nodes[1]
        .set_peer_addr("n1", nodes[0].peer_addr())
        .await
        .expect("addr");
    let mut a = kv_service(&nodes[0]).await;
    let mut b = kv_service(&nodes[1]).await;

    bounded(async {
        assert_eq!(request(&mut a, "GET missing").await, "NOT_FOUND");
        assert_eq!(request(&mut a, "PUT greeting hello world").await, "OK");
        assert_eq!(request(&mut a, "put colour blue").await, "OK");
        assert_eq!(request(&mut a, "GET greeting").await, "OK hello world");
        // Written on n1, read on n2.
        eventually(&mut b, "GET greeting", "OK hello world").await;
        eventually(&mut b, "KEYS", "OK colour greeting").await;
        // Deleted on n2, gone on n1.
        assert_eq!(request(&mut b, "DEL colour").await, "OK");
        assert_eq!(request(&mut b, "DEL colour").await, "NOT_FOUND");
        eventually(&mut a, "GET colour", "NOT_FOUND").await;
        assert_eq!(request(&mut a, "KEYS").await, "OK greeting");
        // Bad requests get an error line and the connection stays usable.
        assert!(request(&mut a, "FROB x").await.starts_with("ERR "));
        assert!(request(&mut a, "GET").await.starts_with("ERR "));
        assert!(request(&mut a, "PUT lonely").await.starts_with("ERR "));
        assert_eq!(request(&mut a, "GET greeting").await, "OK hello world");
    })
    .await;

    // A line over the limit is refused and the connection closed.
    let long = "x".repeat(70 * 1024);
    let reply = request(&mut a, &format!("PUT big {long}")).await;
    assert_eq!(reply, "ERR line too long");

    for node in &nodes {
        node.shutdown().await.expect("shutdown");
    }
}
