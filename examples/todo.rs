//! A collaborative to-do list shared by three embedded concordant nodes.
//!
//! What it shows:
//! - three `Node`s in one process, linked in a ring over real QUIC with mutual TLS on
//!   127.0.0.1, each with durable storage (redb) in its own temporary directory;
//! - every node adding, renaming and ticking off items at the same time, without locks or
//!   a leader: each write is a local Automerge transaction (`Node::change`) that is
//!   replicated in the background;
//! - two nodes renaming the same item concurrently: both writes are kept in the history and
//!   every replica picks the same winner;
//! - a node stopped, the others working on without it, then the node restarted on the same
//!   port from the same data directory: it reloads its list from disk, writes at once, and
//!   catches up;
//! - the final list, identical on every node.
//!
//! Data model: the document `todos` has one map per item under its root, keyed by an id
//! that is unique per node (`n1-1`, `n2-1`, ...), so concurrent adds never collide:
//! `{ "n1-1": { "title": "buy milk", "done": false }, ... }`.
//!
//! Run it with `cargo run --example todo`; it ends by itself within a few seconds and exits
//! non-zero if the replicas differ. `tests/examples.rs` runs the same `run()`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::transaction::Transactable;
use automerge::{Automerge, AutomergeError, ObjType, ReadDoc, Value, ROOT};
use concordant::certs::in_memory_identities;
use concordant::config::{RingDirection, TopologyKind};
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};

const DOC: &str = "todos";
const IDS: [&str; 3] = ["n1", "n2", "n3"];

/// One item of the list, as read back from a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Todo {
    /// Unique id (`<node>-<n>`).
    pub id: String,
    /// Current title.
    pub title: String,
    /// Ticked off.
    pub done: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Set RUST_LOG=info to watch links come and go.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    run().await.map(|_| ())
}

/// Runs the whole scenario and returns the final list (the same on every node), or an
/// error if the replicas did not end identical.
pub async fn run() -> anyhow::Result<Vec<Todo>> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let identities = in_memory_identities("todo", &IDS)?;
    let ring = Topology::new(
        TopologyKind::Ring(RingDirection::Both),
        IDS.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    );
    // How to start node `i`: same identity, topology and data directory every time.
    let builder = |i: usize| {
        NodeBuilder::new(IDS[i], "todo", identities[i].clone())
            .topology(ring.clone())
            .data_dir(dir.path().join(IDS[i]))
    };

    println!(
        "starting {IDS:?} in a ring over QUIC, data in {}",
        dir.path().display()
    );
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut nodes = Vec::new();
    for i in 0..IDS.len() {
        nodes.push(builder(i).listen(any).start().await?);
    }
    // The nodes bound port 0: tell each one where the others listen.
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                a.set_peer_addr(b.id(), b.peer_addr()).await?;
            }
        }
    }

    println!("\n1. every node adds three items at the same time");
    let mut tasks = Vec::new();
    for node in &nodes {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for n in 1..=3 {
                let id = format!("{}-{n}", node.id());
                let title = format!("task {n} from {}", node.id());
                add(&node, &id, &title).await?;
            }
            anyhow::Ok(())
        }));
    }
    join_all(tasks).await?;
    wait_converged(&nodes).await?;
    print_list(&nodes[0]).await?;

    println!("\n2. concurrent edits: renames and toggles from every node, with one conflict");
    let (n1, n2, n3) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    let t1 = tokio::spawn(async move {
        rename(&n1, "n3-3", "renamed on n1").await?; // conflicts with n2 below
        rename(&n1, "n2-1", "buy oat milk").await?;
        toggle(&n1, "n3-2").await
    });
    let t2 = tokio::spawn(async move {
        rename(&n2, "n3-3", "renamed on n2").await?; // conflicts with n1 above
        rename(&n2, "n3-1", "call the plumber").await?;
        toggle(&n2, "n1-1").await
    });
    let t3 = tokio::spawn(async move {
        rename(&n3, "n1-2", "water the plants").await?;
        toggle(&n3, "n2-2").await
    });
    join_all(vec![t1, t2, t3]).await?;
    wait_converged(&nodes).await?;
    print_list(&nodes[0]).await?;
    // Both renames of n3-3 are kept as a conflict; every replica shows the same winner.
    let titles = nodes[0]
        .with_doc(DOC, |d| {
            let obj = item(d, "n3-3").ok()?;
            let all = d.get_all(&obj, "title").ok()?;
            Some(
                all.iter()
                    .filter_map(|(v, _)| v.as_str().map(String::from))
                    .collect::<Vec<_>>(),
            )
        })
        .await?
        .flatten()
        .unwrap_or_default();
    if titles.len() > 1 {
        println!(
            "   n1 and n2 renamed n3-3 at once: both titles are kept as a conflict {titles:?}"
        );
        println!("   and every replica shows the same winner");
    } else {
        println!("   (one rename of n3-3 reached the other node first: no conflict this time)");
    }

    println!("\n3. stopping n3; n1 and n2 keep working without it");
    let n3_addr = nodes[2].peer_addr();
    nodes[2].shutdown().await?;
    add(&nodes[0], "n1-4", "written while n3 was down").await?;
    toggle(&nodes[1], "n3-1").await?;
    rename(&nodes[1], "n1-1", "buy milk (done)").await?;
    wait_converged(&nodes[..2]).await?;

    println!("\n4. restarting n3 on the same port ({n3_addr}) from its data directory");
    let restart_began = Instant::now();
    let n3 = builder(2).listen(n3_addr).start().await?;
    for other in &nodes[..2] {
        other.set_peer_addr("n3", n3.peer_addr()).await?;
        n3.set_peer_addr(other.id(), other.peer_addr()).await?;
    }
    let on_disk = n3
        .with_doc(DOC, read_todos)
        .await?
        .unwrap_or_default()
        .len();
    println!("   n3 reloaded {on_disk} items from disk and adds one at once");
    add(&n3, "n3-4", "written right after the restart").await?;
    nodes[2] = n3;
    wait_converged(&nodes).await?;
    println!(
        "   n3 caught up: all three replicas identical {} ms after the restart began",
        restart_began.elapsed().as_millis()
    );

    println!("\n5. final list on every node");
    let mut lists = Vec::new();
    for node in &nodes {
        let list = node.with_doc(DOC, read_todos).await?.unwrap_or_default();
        println!("   {}: {} items", node.id(), list.len());
        lists.push(list);
    }
    for node in &nodes {
        node.shutdown().await?;
    }
    if lists.windows(2).any(|w| w[0] != w[1]) {
        bail!("replicas differ: {lists:#?}");
    }
    print_todos(&lists[0]);
    println!("\nconverged: the list is identical on n1, n2 and n3");
    Ok(lists.swap_remove(0))
}

/// Adds item `id` (a new map under the root).
async fn add(node: &Node, id: &str, title: &str) -> anyhow::Result<()> {
    let (id, title) = (id.to_string(), title.to_string());
    node.change(DOC, move |tx| {
        let item = tx.put_object(ROOT, id.as_str(), ObjType::Map)?;
        tx.put(&item, "title", title)?;
        tx.put(&item, "done", false)?;
        Ok::<_, AutomergeError>(())
    })
    .await?;
    Ok(())
}

/// Sets the title of item `id`.
async fn rename(node: &Node, id: &str, title: &str) -> anyhow::Result<()> {
    let (id, title) = (id.to_string(), title.to_string());
    node.change(DOC, move |tx| {
        let item = item(tx, &id)?;
        tx.put(&item, "title", title)
    })
    .await?;
    Ok(())
}

/// Flips the done flag of item `id`.
async fn toggle(node: &Node, id: &str) -> anyhow::Result<()> {
    let id = id.to_string();
    node.change(DOC, move |tx| {
        let item = item(tx, &id)?;
        let done = tx.get(&item, "done")?.and_then(|(v, _)| v.as_bool());
        tx.put(&item, "done", done != Some(true))
    })
    .await?;
    Ok(())
}

/// The object id of item `id`, or an error (which aborts the change) if it is missing.
fn item(doc: &impl ReadDoc, id: &str) -> Result<automerge::ObjId, AutomergeError> {
    match doc.get(ROOT, id)? {
        Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
        _ => Err(AutomergeError::InvalidObjId(id.to_string())),
    }
}

/// Every item of a replica, in id order.
fn read_todos(doc: &Automerge) -> Vec<Todo> {
    let mut out = Vec::new();
    for id in doc.keys(ROOT) {
        let Ok(obj) = item(doc, &id) else { continue };
        let field = |name: &str| doc.get(&obj, name).ok().flatten().map(|(v, _)| v);
        let title = field("title").and_then(|v| v.as_str().map(String::from));
        let done = field("done").and_then(|v| v.as_bool());
        let (title, done) = (title.unwrap_or_default(), done.unwrap_or(false));
        out.push(Todo { id, title, done });
    }
    out
}

async fn print_list(node: &Node) -> anyhow::Result<()> {
    print_todos(&node.with_doc(DOC, read_todos).await?.unwrap_or_default());
    Ok(())
}

fn print_todos(list: &[Todo]) {
    for t in list {
        println!(
            "   [{}] {:<5} {}",
            if t.done { "x" } else { " " },
            t.id,
            t.title
        );
    }
}

/// Waits (at most 10 s) until every node has the same heads; returns how long it took.
async fn wait_converged(nodes: &[Node]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let mut heads = Vec::new();
        for node in nodes {
            heads.push(node.with_doc(DOC, |d| d.get_heads()).await?);
        }
        if heads[0].is_some() && heads.windows(2).all(|w| w[0] == w[1]) {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("replicas did not converge within 10 s")
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for task in tasks {
        task.await??;
    }
    Ok(())
}
