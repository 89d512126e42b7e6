//! concordant: a multi-master replication engine for Automerge documents.
//!
//! Every node accepts writes; nodes gossip Automerge changes over QUIC with mutual TLS
//! along a topology (mesh, ring or any graph of links) and converge.
//!
//! # Layout
//! - [`config`]: topology file → validated [`Config`].
//! - [`topology`]: pure graph logic: neighbours, ring failover, forwarding targets.
//! - [`placement`]: pure placement of documents on R of N nodes (`replicas`): partitions,
//!   rendezvous placement for a mesh, token-ordered windows for a ring; the topology carries
//!   it ([`topology::Topology::with_replicas`]).
//! - [`certs`]: cluster CA and node certificates (generation and loading).
//! - [`init`]: `concordant init`, writing a new cluster directory.
//! - [`core`]: the sans-IO replication core (no tokio, sockets, files or clocks): push and
//!   forwarding, a bounded cache of documents over the store (documents it lacks are asked
//!   for as effects, never read by the core; its bytes are the memory documents hold, as
//!   `core::footprint` estimates it), documents lent out for heavy work on other threads
//!   (`core::lend`), a client's data applied to a copy of its document with Automerge's
//!   panics caught (`core::untrusted`), the reconciliation tree of (document, heads)
//!   fingerprints (compared per partition two nodes share), bulk repair, acknowledgements,
//!   the handoff of documents stored where they are not replicated (hinted writes,
//!   partitions moved away: `core/replica/handoff.rs`), follows of documents whose clients
//!   are on a node that does not replicate them (`core/replica/follow.rs`), and the timers
//!   it asks to be woken for (`poll_timeout`).
//! - [`wire`]: the peer protocol: versioned messages, framing, limits.
//! - [`wire_limits`]: the protocol's size limits (frame, message, batch budget), a leaf that
//!   the configuration checks `[tuning]` against without depending on the protocol.
//! - [`limits`]: limits checked on what clients send before the core sees it (the inflate
//!   budget of Automerge data from outside, the caps on one change, the rows of a saved
//!   document) and the count of refusals by limit.
//! - [`doc_id`]: what a document id is, for the HTTP API, the peers and `/v1/sync` alike.
//! - `fnv`: FNV-1a 64, the one hash whose values nodes compare (heads digests, the
//!   membership digest, the reconciliation tree); its values never change.
//! - `files`: files replaced whole, atomically and durably (the topology file, certificates
//!   and keys, a node's stored topology), with owner-only access for secrets.
//! - `panics`: the message of a caught panic (the driver, the storage thread, the store).
//! - [`transport`]: QUIC endpoint, mutual TLS, connections and reconnects.
//! - [`storage`]: durable store (redb) with a per-document index of heads, read per
//!   document or a page of the index at a time from any thread, and an in-memory store for
//!   tests and simulation.
//! - [`ops`] and [`json`]: the JSON operations of the HTTP API and documents as JSON.
//! - [`demo`]: `concordant demo`, a local cluster showing failure and catch-up.
//! - [`node`]: the driver joining core, transport and storage; the embeddable [`Node`];
//!   the reader threads that read and decode documents for the core (`node/read_pool.rs`)
//!   and run heavy work on lent documents (`node/driver/lending.rs`);
//!   what a node does when its storage fails or falls behind (`node/driver/storage.rs`);
//!   its document listing, paged from the store off the driver (`node/listing.rs`); reads
//!   and writes of documents it does not replicate, forwarded to a replica over the peer
//!   links (`node/forward.rs`, routed by `node/driver/forward.rs`).
//! - [`local`]: a local cluster of N nodes in one process (demo, bench, experiments),
//!   optionally with every link through the relays of [`netem`].
//! - [`netem`]: a network emulator on loopback: UDP relays per directed pair of nodes that
//!   delay, drop, duplicate and reorder datagrams or cut links (the chaos tests, and
//!   `concordant bench --link-delay-ms`).
//! - [`membership`]: the live topology every node holds and gossips (a state-based CRDT:
//!   nodes added and removed while the cluster runs, links, ring order, version, digest).
//! - `bench`: `concordant bench`, the convergence benchmark (feature `cli`, on by
//!   default; `--no-default-features` builds the embeddable library alone).
//! - [`api`]: the HTTP API of a node (axum): JSON endpoints, the paged and streamed
//!   document listing (`api/listing.rs`), change events, metrics, and the live cluster
//!   page at `/` (`api/ui/page.html`).
//! - [`serve`]: nodes with their HTTP APIs run as one process does, until a stop or a
//!   node's failure (`concordant node`, `concordant up`).
//! - [`cluster`]: the cluster view behind that page and `GET /v1/cluster`: what each node
//!   tells about itself, its events, and the assembled picture (nodes, links, healing).
//! - [`sync`]: automerge-repo clients over WebSocket (`GET /v1/sync`): the protocol's
//!   messages, document ids and one client connection.
//! - [`backup`]: `concordant backup` and `restore`: every document of a node into one file
//!   (`backup/format.rs`), and merged back.
//! - [`history`]: a document as it was, and its changes with their origin node.
//! - [`tokens`]: per-user access tokens (JWT, EdDSA): claims, verifying, minting, keys;
//!   [`revocations`]: the revoked ones, as cluster data every node holds; [`owners`]: the
//!   owner records of documents users created.
//! - [`client`]: an HTTP client for the API and the command line's client commands; the
//!   cluster status table of `concordant status`, which compares nodes by their
//!   fingerprints (`client/status.rs`).
//! - [`admin`]: `add-node`, `remove-node` and `topology`: growing and shrinking a running
//!   cluster.
#![deny(missing_docs)]

pub use config::Config;
pub use node::{Error, Node, NodeBuilder};

pub mod admin;
pub mod api;
pub mod backup;
#[cfg(feature = "cli")]
pub mod bench;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod config;
pub mod core;
pub mod demo;
pub mod doc_id;
mod files;
mod fnv;
pub mod history;
pub mod init;
pub mod json;
pub mod limits;
pub mod local;
pub mod membership;
pub mod netem;
pub mod node;
pub mod ops;
pub mod owners;
mod panics;
pub mod placement;
pub mod revocations;
pub mod serve;
pub mod storage;
pub mod sync;
pub mod tokens;
pub mod topology;
pub mod transport;
pub mod wire;
pub mod wire_limits;
