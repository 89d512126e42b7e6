//! Real `@automerge/automerge-repo` 2.5 clients (Node.js, `tests/js/sync_clients.mjs`) against
//! `GET /v1/sync` of a three-node mesh of `concordant node` processes with an API token:
//!
//! - two clients on different nodes share a document found by URL, see each other's edits
//!   live, and the third node's HTTP API shows the merged document; a document written only
//!   through the HTTP API is found by a client; `find()` of an unknown document is rejected as
//!   unavailable within seconds; ephemeral messages cross nodes; upgrades without the token or
//!   with a wrong one are answered 401;
//! - a client connected to two nodes keeps working while one of them is SIGKILLed and catches
//!   up with it when it is restarted: every client and every node end with every edit;
//! - a document made by `POST /v1/docs` is found by a client;
//! - user tokens minted with `jose` reach only their documents, on every node: read-only
//!   tokens cannot change them, documents users create are theirs on any node, expired
//!   tokens are refused and revoked ones' sockets close on every node;
//! - in a cluster whose documents are each on one node (`replicas = 1`), clients on the two
//!   nodes that do not hold a document edit it together.
//!
//! The scenarios live in the script (one `PASS <n> ...` line each); this file starts the
//! cluster, hands the script the nodes' URLs and token, and kills and restarts a node when the
//! script says `READY-TO-KILL` / `READY-TO-RESTART` (answering `KILLED` / `RESTARTED` on its
//! stdin). The script needs `tests/js/node_modules` (`npm ci` in `tests/js`) and `node` 18+.

mod common;

use std::time::Instant;

use common::js::{client_env, diagnostics, require_js, start_mesh, Script, SCRIPT_TIMEOUT};
use common::procs::access::{linked_peers, links_up};
use common::procs::{ProcCluster, POLL, WAIT};

/// Runs the script with `scenarios` to its end (no harness signals expected) and asserts it
/// passed every one.
async fn run_scenarios(scenarios: &str) {
    require_js();
    let mut cluster = start_mesh().await;
    let mut script = Script::start(client_env(&cluster, scenarios));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while let Some(line) = script.next_line(deadline).await {
        assert!(
            !line.starts_with("READY-TO-"),
            "unexpected harness request {line:?}"
        );
    }
    let status = script.wait(deadline).await;
    if !status.success() {
        panic!(
            "sync_clients.mjs (scenarios {scenarios}) failed with {status}:\n{}\n{}",
            script.output(),
            diagnostics(&mut cluster).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automerge_repo_clients_share_documents_through_any_node() {
    run_scenarios("1,2,3,5,6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_made_by_post_v1_docs_is_found_by_a_client() {
    run_scenarios("7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tokens_reach_only_their_documents_on_every_node() {
    run_scenarios("9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rides_through_a_node_killed_and_restarted() {
    require_js();
    let mut cluster = start_mesh().await;
    let mut script = Script::start(client_env(&cluster, "4"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let (mut killed, mut restarted) = (false, false);
    while let Some(line) = script.next_line(deadline).await {
        match line.trim() {
            "READY-TO-KILL" => {
                cluster.kill(0).await;
                killed = true;
                script.send("KILLED");
            }
            "READY-TO-RESTART" => {
                assert!(killed, "READY-TO-RESTART before READY-TO-KILL");
                cluster.restart(0).await;
                restarted = true;
                script.send("RESTARTED");
            }
            _ => {}
        }
    }
    let status = script.wait(deadline).await;
    if !status.success() || !killed || !restarted {
        panic!(
            "sync_clients.mjs (scenario 4) failed with {status} (node killed: {killed}, \
             restarted: {restarted}):\n{}\n{}",
            script.output(),
            diagnostics(&mut cluster).await
        );
    }
    // The script saw every node's JSON agree; the heads must agree too.
    if let Err(states) = cluster.wait_converged(WAIT).await {
        panic!(
            "the nodes do not converge after the script passed: {states:?}\n{}",
            diagnostics(&mut cluster).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_that_do_not_replicate_a_document_edit_it_together() {
    require_js();
    let mut cluster = ProcCluster::start_with(3, "mesh", Some(1)).await;
    let start = Instant::now();
    for i in 0..cluster.len() {
        while !cluster
            .access(i)
            .status()
            .await
            .is_ok_and(|s| links_up(&s) && linked_peers(&s).len() == 2)
        {
            assert!(
                start.elapsed() < WAIT,
                "the mesh is not linked within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    // A document made through node 1; its one replica is whichever node placement says.
    let common::procs::access::Access::Client(client) = cluster.access(0) else {
        panic!("node 1 is reached directly")
    };
    let made = client
        .json(hyper::Method::POST, "/v1/docs", None)
        .await
        .expect("POST /v1/docs");
    let (id, url) = (
        made["id"].as_str().expect("an id").to_string(),
        made["url"].as_str().expect("a url").to_string(),
    );
    let topology = cluster.config.topology();
    let replica = topology.replicas_of(&id)[0].to_string();
    let order: Vec<usize> = (0..3)
        .filter(|&i| cluster.id(i) != replica)
        .chain((0..3).filter(|&i| cluster.id(i) == replica))
        .collect();
    let mut env = client_env(&cluster, "8");
    for (key, value) in env.iter_mut() {
        if key == "CONCORDANT_WS" || key == "CONCORDANT_HTTP" {
            let urls: Vec<&str> = value.split(',').collect();
            *value = order.iter().map(|&i| urls[i]).collect::<Vec<_>>().join(",");
        }
    }
    env.push(("SYNC_DOC_URL".into(), url));
    let mut script = Script::start(env);
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while let Some(line) = script.next_line(deadline).await {
        assert!(
            !line.starts_with("READY-TO-"),
            "unexpected request {line:?}"
        );
    }
    let status = script.wait(deadline).await;
    if !status.success() {
        panic!(
            "sync_clients.mjs (scenario 8, replica {replica}) failed with {status}:\n{}\n{}",
            script.output(),
            diagnostics(&mut cluster).await
        );
    }
}
