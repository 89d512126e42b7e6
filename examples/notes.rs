//! A shared note: one Automerge Text edited at the same time by three embedded nodes.
//!
//! What it shows:
//! - an Automerge `Text` object replicated by concordant: alice, bob and carol (three
//!   `Node`s in a mesh over real QUIC with mutual TLS on 127.0.0.1) each make a burst of
//!   edits at random places: inserting words (alice inserts colours, bob animals, carol
//!   fruits) and deleting words, while the others' edits stream in;
//! - every edit is a local transaction (`splice_text`) applied at once; positions are
//!   resolved inside the transaction against the text as this node sees it then;
//! - Automerge merges the concurrent edits character by character: a word inserted
//!   concurrently inside a deleted range survives, two inserts at the same place both stay,
//!   and every replica ends with the same text, printed at the end.
//!
//! The edits come from `rand`'s `StdRng` seeded per node, so a seed gives the same edit
//! plan (the interleaving with the network still varies). Run it with
//! `cargo run --example notes [-- SEED]`; it ends by itself within seconds and exits
//! non-zero if the replicas differ. `tests/examples.rs` runs the same `run()`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, Value, ROOT};
use concordant::certs::in_memory_identities;
use concordant::config::TopologyKind;
use concordant::topology::Topology;
use concordant::{Node, NodeBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DOC: &str = "note";
const EDITORS: [&str; 3] = ["alice", "bob", "carol"];
const WORDS: [&[&str]; 3] = [
    &["red", "green", "blue", "amber", "violet"],
    &["otter", "heron", "lynx", "badger", "wren"],
    &["fig", "quince", "plum", "lime", "cherry"],
];
const START: &str = "the note begins here and everyone edits it at once";

/// One planned edit: where (as a fraction of the text, resolved when applied) and what.
#[derive(Debug, Clone)]
enum Edit {
    /// Insert a word at the word boundary nearest `at`.
    Insert { at: f64, word: &'static str },
    /// Delete the word starting at the boundary nearest `at`.
    Delete { at: f64 },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let seed = match std::env::args().nth(1) {
        Some(s) => s.parse().context("the seed must be a number")?,
        None => 42,
    };
    run(seed, 30).await.map(|_| ())
}

/// Runs the scenario with `edits` edits per node; returns the merged text (the same on every
/// node), or an error if the replicas differ.
pub async fn run(seed: u64, edits: usize) -> anyhow::Result<String> {
    let identities = in_memory_identities("notes", &EDITORS)?;
    let ids = EDITORS.iter().map(|s| s.to_string()).collect();
    let mesh = Topology::new(TopologyKind::Mesh, ids, Vec::new());
    let mut nodes = Vec::new();
    for (i, id) in EDITORS.iter().enumerate() {
        let node = NodeBuilder::new(id, "notes", identities[i].clone())
            .topology(mesh.clone())
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .start()
            .await?;
        nodes.push(node);
    }
    // Each node bound port 0: tell each one where the others listen.
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                a.set_peer_addr(b.id(), b.peer_addr()).await?;
            }
        }
    }

    // alice creates the text; the others start editing once they have it.
    nodes[0]
        .change(DOC, |tx| {
            let text = tx.put_object(ROOT, "text", ObjType::Text)?;
            tx.splice_text(&text, 0, 0, START)
        })
        .await?;
    wait_converged(&nodes).await?;
    println!("start: {START:?}");

    println!("\nalice, bob and carol each make {edits} edits at once (seed {seed})");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        let plan: Vec<Edit> = (0..edits).map(|_| plan_edit(&mut rng, WORDS[i])).collect();
        let pauses: Vec<u64> = (0..edits).map(|_| rng.random_range(0..3)).collect();
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for (edit, pause) in plan.into_iter().zip(pauses) {
                node.change(DOC, move |tx| apply(tx, &edit)).await?;
                // Let the others' edits arrive in between, as with people typing.
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let edited = started.elapsed();
    wait_converged(&nodes).await?;
    println!(
        "edits done in {} ms; replicas identical {} ms later",
        edited.as_millis(),
        (started.elapsed() - edited).as_millis()
    );

    // A change with several parents was made on a text that had just merged edits the
    // author had not seen when making its own previous edit: proof the edits interleaved.
    let merges = nodes[0]
        .with_doc(DOC, |d| {
            d.get_changes(&[])
                .iter()
                .filter(|c| c.deps().len() > 1)
                .count()
        })
        .await?
        .unwrap_or(0);
    println!(
        "{merges} of the {} edits were made on a text that had just merged concurrent edits",
        edits * EDITORS.len()
    );

    let mut texts = Vec::new();
    for node in &nodes {
        let text = node
            .with_doc(DOC, |d| text_obj(d).and_then(|t| d.text(&t)))
            .await?
            .transpose()?
            .unwrap_or_default();
        println!("{:>5}: {} characters", node.id(), text.len());
        texts.push(text);
    }
    for node in &nodes {
        node.shutdown().await?;
    }
    if texts.windows(2).any(|w| w[0] != w[1]) {
        bail!("replicas differ:\n{}", texts.join("\n"));
    }
    println!(
        "\nmerged text, identical on alice, bob and carol:\n{}",
        texts[0]
    );
    Ok(texts.swap_remove(0))
}

/// A random edit: mostly inserts, so the note grows.
fn plan_edit(rng: &mut StdRng, words: &[&'static str]) -> Edit {
    let at = rng.random::<f64>();
    if rng.random_bool(0.65) {
        Edit::Insert {
            at,
            word: words[rng.random_range(0..words.len())],
        }
    } else {
        Edit::Delete { at }
    }
}

/// Applies `edit` to the text as this node sees it now. Word boundaries are the positions
/// of spaces and the end of the text; the note is ASCII, so bytes are characters.
fn apply(tx: &mut impl Transactable, edit: &Edit) -> Result<(), AutomergeError> {
    let text = text_obj(tx)?;
    let current = tx.text(&text)?;
    let mut bounds: Vec<usize> = current
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b' ')
        .map(|(i, _)| i)
        .collect();
    bounds.push(current.len());
    let pick = |at: f64| bounds[((at * bounds.len() as f64) as usize).min(bounds.len() - 1)];
    match edit {
        Edit::Insert { at, word } => tx.splice_text(&text, pick(*at), 0, &format!(" {word}")),
        Edit::Delete { at } => {
            // Delete from a space up to (not including) the next one: " word".
            let from = pick(*at);
            let len = current[from..]
                .bytes()
                .skip(1)
                .position(|b| b == b' ')
                .map_or(current.len() - from, |p| p + 1);
            tx.splice_text(&text, from, len as isize, "")
        }
    }
}

/// The id of the note's Text object.
fn text_obj(doc: &impl ReadDoc) -> Result<ObjId, AutomergeError> {
    match doc.get(ROOT, "text")? {
        Some((Value::Object(ObjType::Text), id)) => Ok(id),
        _ => Err(AutomergeError::InvalidObjId("text".into())),
    }
}

/// Waits (at most 10 s) until every node has the same, non-empty heads.
async fn wait_converged(nodes: &[Node]) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let mut heads = Vec::new();
        for node in nodes {
            heads.push(node.with_doc(DOC, |d| d.get_heads()).await?);
        }
        if heads[0].is_some() && heads.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("replicas did not converge within 10 s")
}
