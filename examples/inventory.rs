//! Stock counters kept by four shops that keep selling through a network partition.
//!
//! What it shows:
//! - Automerge counters: every sale is `increment(product, -qty)`, an operation that merges
//!   by adding up, so concurrent sales at different shops never overwrite each other. (A
//!   read-modify-write `put(product, stock - qty)` would lose every sale made concurrently
//!   elsewhere: the last writer would win.)
//! - four embedded `Node`s in a mesh over real QUIC with mutual TLS on 127.0.0.1;
//! - a shop cut off from the others while it goes on selling. The public API has no "cut
//!   this link" call, so the example builds the partition from how nodes find each other:
//!   each node binds port 0 and learns its peers' addresses only through
//!   `Node::set_peer_addr`. `lille` is never told the others' addresses and nobody is told
//!   its address, so it runs alone; healing is telling them. Before the partition every
//!   shop loads the same catalogue, an Automerge file made once and merged into each
//!   node with `Node::merge` (as if shipped with the app);
//! - after healing, every count is exact: the initial stock minus every sale made at every
//!   shop, connected or not, plus the one delivery. (Counters set no floor: two shops
//!   selling the last unit on both sides of a partition take the count below zero, and
//!   noticing that is the application's job.)
//!
//! Run it with `cargo run --example inventory`; it ends by itself within seconds and exits
//! non-zero if any count is wrong or the replicas differ. `tests/examples.rs` runs the
//! same `run()`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, AutomergeError, ReadDoc, ScalarValue, ROOT};
use concordant::certs::in_memory_identities;
use concordant::config::TopologyKind;
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};

const DOC: &str = "stock";
const SHOPS: [&str; 4] = ["paris", "lyon", "nice", "lille"];
/// The shop that is cut off (index into `SHOPS`).
const CUT_OFF: usize = 3;
const PRODUCTS: [(&str, i64); 4] = [
    ("apples", 500),
    ("pears", 400),
    ("plums", 300),
    ("figs", 200),
];
const SALES_PER_SHOP: usize = 40;
/// A delivery received at lyon while lille is cut off.
const DELIVERY: (&str, i64) = ("pears", 60);

/// One product after healing: the expected count and the count at each shop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// Product name.
    pub product: String,
    /// Initial stock minus all sales plus deliveries.
    pub expected: i64,
    /// The counter's value at each shop, in `SHOPS` order.
    pub at_shops: Vec<i64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    run().await.map(|_| ())
}

/// The `k`-th sale of shop `shop`: which product and how many (a fixed, varied pattern).
fn sale(shop: usize, k: usize) -> (&'static str, i64) {
    let product = PRODUCTS[(k + shop) % PRODUCTS.len()].0;
    let qty = 1 + ((k * 7 + shop * 3) % 4) as i64;
    (product, qty)
}

/// Runs the scenario; returns every product's counts, or an error if any count is wrong.
pub async fn run() -> anyhow::Result<Vec<Count>> {
    let identities = in_memory_identities("inventory", &SHOPS)?;
    let mesh = Topology::new(
        TopologyKind::Mesh,
        SHOPS.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
    );
    let mut nodes = Vec::new();
    for (i, shop) in SHOPS.iter().enumerate() {
        let node = NodeBuilder::new(shop, "inventory", identities[i].clone())
            .topology(mesh.clone())
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .start()
            .await?;
        nodes.push(node);
    }

    // The catalogue: one counter per product, made once and loaded by every shop.
    let mut catalogue = AutoCommit::new();
    for (product, stock) in PRODUCTS {
        catalogue.put(ROOT, product, ScalarValue::counter(stock))?;
    }
    let catalogue = catalogue.save();
    for node in &nodes {
        node.merge(DOC, catalogue.clone()).await?;
    }
    println!("every shop loaded the catalogue: {PRODUCTS:?}");

    // Link every shop but lille: only they learn each other's addresses.
    let connected: Vec<Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != CUT_OFF)
        .map(|(_, n)| n.clone())
        .collect();
    link(&connected).await?;
    let cut_off = nodes[CUT_OFF].clone();
    println!(
        "{} is cut off: it knows no peer address and no peer knows its address",
        cut_off.id()
    );

    println!("\n1. every shop makes {SALES_PER_SHOP} sales at the same time; lyon gets a delivery");
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..SALES_PER_SHOP {
                let (product, qty) = sale(i, k);
                node.change(DOC, move |tx| tx.increment(ROOT, product, -qty))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let (product, qty) = DELIVERY;
    nodes[1]
        .change(DOC, move |tx| tx.increment(ROOT, product, qty))
        .await?;
    for task in tasks {
        task.await??;
    }
    wait_converged(&connected).await?;
    let connected_peers = cut_off.status().await?.connected_peers().len();
    println!("   paris, lyon and nice agree; lille is connected to {connected_peers} peers");
    println!("   paris sees {:?}", stock(&nodes[0]).await?);
    println!("   lille sees {:?}", stock(&cut_off).await?);

    println!("\n2. healing: lille and the others learn each other's addresses");
    let healed = Instant::now();
    link(&nodes).await?;
    wait_converged(&nodes).await?;
    println!(
        "   all four shops identical {} ms later",
        healed.elapsed().as_millis()
    );

    println!("\n3. final stock (expected = initial - every sale + delivery)");
    let mut expected: BTreeMap<&str, i64> = PRODUCTS.into_iter().collect();
    for shop in 0..SHOPS.len() {
        for k in 0..SALES_PER_SHOP {
            let (product, qty) = sale(shop, k);
            *expected.entry(product).or_default() -= qty;
        }
    }
    *expected.entry(DELIVERY.0).or_default() += DELIVERY.1;

    let mut at_shops = Vec::new();
    for node in &nodes {
        at_shops.push(stock(node).await?);
    }
    for node in &nodes {
        node.shutdown().await?;
    }
    let names: Vec<String> = SHOPS.iter().map(|s| format!("{s:>6}")).collect();
    println!("   {:<8} {:>8} {}", "product", "expected", names.concat());
    let mut counts = Vec::new();
    let mut exact = true;
    for (product, want) in expected {
        let got: Vec<i64> = at_shops
            .iter()
            .map(|s| s.get(product).copied().unwrap_or(i64::MIN))
            .collect();
        let ok = got.iter().all(|g| *g == want);
        exact &= ok;
        let shown: Vec<String> = got.iter().map(|g| format!("{g:>6}")).collect();
        println!(
            "   {product:<8} {want:>8} {}  {}",
            shown.concat(),
            if ok { "ok" } else { "WRONG" }
        );
        counts.push(Count {
            product: product.to_string(),
            expected: want,
            at_shops: got,
        });
    }
    if !exact {
        bail!("some counts differ from the expected value");
    }
    println!("\nexact: no sale was lost, on any shop");
    Ok(counts)
}

/// Tells every node of `nodes` where the others listen.
async fn link(nodes: &[Node]) -> anyhow::Result<()> {
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                a.set_peer_addr(b.id(), b.peer_addr()).await?;
            }
        }
    }
    Ok(())
}

/// The stock of every product as one shop sees it.
async fn stock(node: &Node) -> anyhow::Result<BTreeMap<String, i64>> {
    let read = |d: &Automerge| -> Result<BTreeMap<String, i64>, AutomergeError> {
        let mut out = BTreeMap::new();
        for product in d.keys(ROOT) {
            if let Some(n) = d.get(ROOT, product.as_str())?.and_then(|(v, _)| v.as_i64()) {
                out.insert(product, n);
            }
        }
        Ok(out)
    };
    Ok(node
        .with_doc(DOC, read)
        .await?
        .transpose()?
        .unwrap_or_default())
}

/// Waits (at most 10 s) until every node has the same heads.
async fn wait_converged(nodes: &[Node]) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let mut heads = Vec::new();
        for node in nodes {
            heads.push(node.with_doc(DOC, |d| d.get_heads()).await?);
        }
        if heads.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("replicas did not converge within 10 s")
}
