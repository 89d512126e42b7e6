//! Golden bytes of every peer message kind in every protocol version this release speaks
//! (`tests/fixtures/wire/v<version>/<kind>.bin`, each one whole framed message): encoding
//! the same messages must give exactly these bytes, and decoding these bytes the same
//! messages. An encoding that changes fails here until the change gets a new version.
//!
//! Version 5's files were written by release 0.1.0 itself (`v5/generate.rs` says how) and
//! are never rewritten. The current version's are written by this test when
//! `CONCORDANT_BLESS_WIRE=1` is set and a file is missing or differs: only for an additive
//! change (see the module docs of `concordant::wire`), or together with a version bump.

use std::path::{Path, PathBuf};

use concordant::cluster::{Event, NodeView, PeerView};
use concordant::config::Config;
use concordant::membership::Membership;
use concordant::revocations::{Revocations, Revoke};
use concordant::wire::{
    self, Ack, Bucket, DocChanges, Ephemeral, Fingerprints, Forward, ForwardOutcome,
    ForwardRequest, HandoffDoc, Hello, Message, Reply, Want, HEADER_LEN,
};
use serde_bytes::ByteBuf;

/// The topology of the sample membership state (as in `v5/generate.rs`).
const TOPOLOGY: &str = r#"
cluster = "golden"
topology = "mesh"

[[node]]
id = "n1"
peer = "127.0.0.1:7001"
api = "127.0.0.1:8001"

[[node]]
id = "n2"
peer = "127.0.0.1:7002"
api = "127.0.0.1:8002"

[[node]]
id = "n3"
peer = "127.0.0.1:7003"
api = "127.0.0.1:8003"
"#;

fn dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/wire/v{version}"))
}

/// One message of every kind of `version` (the same values `v5/generate.rs` wrote).
fn samples(version: u8) -> Vec<Message> {
    let config = Config::parse(TOPOLOGY, Path::new("/golden/cluster.toml")).expect("config");
    let mut membership = Membership::from_config(&config);
    membership.propose_remove("n1", "n3").expect("removal");
    let view = NodeView {
        id: "n2".into(),
        started_ms: 1_700_000_000_000,
        docs: 5,
        writes_total: 9,
        writes_per_s: 1.5,
        pending_writes: 0,
        sync_clients: 2,
        // What a node of release 0.1.0 is taken to have.
        partitions: 1024,
        partitions_in: 0,
        partitions_out: 0,
        hints: 0,
        peers: vec![PeerView {
            id: "n1".into(),
            connected: true,
            linked: true,
            healed: false,
            lag_changes: 1,
            lag_bytes: 100,
            lag_oldest_ms: 5,
            divergent: Some(0),
        }],
        events: vec![Event {
            at_ms: 1_700_000_000_001,
            node: "n2".into(),
            kind: "started".into(),
            text: "node started".into(),
        }],
    };
    let mut out = vec![
        Message::Hello(Hello {
            cluster: "golden".into(),
            node: "n1".into(),
            version,
            compression: vec![wire::DEFLATE.into()],
        }),
        Message::Push {
            groups: vec![DocChanges {
                doc: "d1".into(),
                origin: "n2".into(),
                changes: vec![ByteBuf::from(vec![1, 2, 3]), ByteBuf::from(vec![])],
                want_ack: true,
            }],
            // Version 5's push has no receipt nor fingerprints (they follow as messages of
            // their own).
            receipt: (version > 5).then_some((10, 2000)),
            fingerprints: if version > 5 {
                vec![Fingerprints {
                    level: 2,
                    nodes: vec![(17, 7)],
                }]
            } else {
                Vec::new()
            },
        },
        Message::Ack(vec![Ack {
            doc: "d1".into(),
            by: "n3".into(),
            hashes: vec![[7; 32]],
        }]),
        Message::Fingerprints(Fingerprints {
            level: 1,
            nodes: vec![(3, 42), (15, u64::MAX)],
        }),
        Message::Items(vec![Bucket {
            bucket: 7,
            docs: vec![("x".into(), 42)],
        }]),
        Message::Want(vec![Want {
            doc: "x".into(),
            heads: vec![[9; 32]],
            reply: true,
        }]),
        Message::Sync {
            doc: "d1".into(),
            data: ByteBuf::from(vec![0x42; 10]),
        },
        Message::Ephemeral(Ephemeral {
            doc: "d1".into(),
            origin: "n1".into(),
            sender: "peer-a".into(),
            session: "s1".into(),
            count: 3,
            data: ByteBuf::from(vec![1, 2]),
        }),
        Message::Topology(Box::new(membership)),
        Message::Receipt {
            changes: 10,
            bytes: 2000,
        },
        Message::ClusterAsk {
            asker: "n1".into(),
            id: 7,
        },
        Message::ClusterTell {
            asker: "n1".into(),
            id: 7,
            view: Box::new(view),
        },
    ];
    if version == wire::PROTOCOL_VERSION {
        out.extend(newer_kinds());
    }
    out
}

/// The kinds added after version 5.
fn newer_kinds() -> Vec<Message> {
    let mut revoked = Revocations::default();
    revoked
        .revoke(&Revoke::Jti("t1".into()), 1_700_000_000)
        .expect("revoke");
    revoked
        .revoke(&Revoke::Sub("alice".into()), 1_700_000_001)
        .expect("revoke");
    vec![
        Message::Forward(Box::new(Forward {
            id: 1,
            origin: "n1".into(),
            target: "n2".into(),
            hops: 1,
            doc: "d1".into(),
            partition: 513,
            request: ForwardRequest::Merge {
                data: ByteBuf::from(vec![5; 4]),
                ack: concordant::ops::Ack::All,
                timeout_ms: 2000,
            },
        })),
        Message::Reply(Box::new(Reply {
            id: 1,
            origin: "n1".into(),
            by: "n2".into(),
            hops: 1,
            outcome: ForwardOutcome::Merged {
                new_changes: 1,
                heads: vec![[3; 32]],
                acked_by: vec!["n3".into()],
            },
        })),
        Message::Handoff {
            docs: vec![HandoffDoc {
                doc: "d1".into(),
                heads: vec![[4; 32]],
                by: Vec::new(),
            }],
            leaving: false,
        },
        Message::HandedOff(vec![HandoffDoc {
            doc: "d1".into(),
            heads: vec![[4; 32]],
            by: vec!["n2".into(), "n3".into()],
        }]),
        Message::Follow {
            docs: vec!["d1".into()],
            follow: true,
        },
        Message::Revocations(Box::new(revoked)),
    ]
}

/// Checks every sample of `version` against its file; with `bless`, writes the files that
/// are missing or differ instead of failing.
fn check_version(version: u8, bless: bool) {
    let samples = samples(version);
    let mut failures = Vec::new();
    for msg in &samples {
        let path = dir(version).join(format!("{}.bin", msg.kind()));
        let bytes = wire::encode_as(msg, version).expect("encodable");
        // The kind's index (by which messages are counted) is its byte on the wire.
        assert_eq!(
            usize::from(bytes[HEADER_LEN + 1]),
            msg.kind_index(),
            "{}",
            msg.kind()
        );
        let golden = std::fs::read(&path).unwrap_or_default();
        if golden != bytes {
            if bless {
                std::fs::write(&path, &bytes).expect("write fixture");
                eprintln!("wrote {}", path.display());
                continue;
            }
            failures.push(format!(
                "{}: this build encodes {} bytes {:02x?}, the fixture has {} bytes",
                path.display(),
                bytes.len(),
                &bytes[..bytes.len().min(48)],
                golden.len()
            ));
            continue;
        }
        let payload = &golden[HEADER_LEN..];
        assert_eq!(golden.len(), HEADER_LEN + payload.len());
        match wire::decode_payload_as(payload, version) {
            Ok(back) => assert_eq!(&back, msg, "{} decodes to another message", path.display()),
            Err(e) => failures.push(format!("{}: does not decode: {e}", path.display())),
        }
    }
    // Every fixture is a kind of this version, and every kind has one.
    let mut files: Vec<String> = std::fs::read_dir(dir(version))
        .expect("fixture folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".bin"))
        .collect();
    files.sort();
    let mut kinds: Vec<String> = samples
        .iter()
        .map(|m| format!("{}.bin", m.kind()))
        .collect();
    kinds.sort();
    assert_eq!(files, kinds, "fixtures of version {version}");
    assert!(
        failures.is_empty(),
        "the encoding of protocol version {version} changed:\n{}\nA change older peers of \
         this version cannot read needs a new version; an additive one (a new kind, fields \
         appended at the end of a message) may rewrite the current version's fixtures with \
         CONCORDANT_BLESS_WIRE=1.",
        failures.join("\n")
    );
}

#[test]
fn version_5_is_byte_for_byte_what_release_0_1_0_wrote() {
    check_version(5, false);
}

#[test]
fn the_current_version_is_byte_for_byte_its_fixtures() {
    let bless = std::env::var("CONCORDANT_BLESS_WIRE").is_ok_and(|v| v == "1");
    check_version(wire::PROTOCOL_VERSION, bless);
    assert_eq!(
        samples(wire::PROTOCOL_VERSION).len(),
        usize::from(wire::KINDS),
        "a sample of every kind"
    );
}

#[test]
fn version_5_sends_what_rides_on_a_push_as_messages_after_it() {
    let mut samples = samples(5);
    let Message::Fingerprints(rider) = samples[3].clone() else {
        panic!("the fourth sample is fingerprints");
    };
    let mut push = samples.swap_remove(1);
    let Message::Push {
        receipt,
        fingerprints,
        ..
    } = &mut push
    else {
        panic!("the second sample is a push");
    };
    *receipt = Some((10, 2000));
    *fingerprints = vec![rider];
    let bytes = wire::encode_as(&push, 5).expect("encodable");
    let read = |kind: &str| std::fs::read(dir(5).join(format!("{kind}.bin"))).expect("fixture");
    assert_eq!(
        bytes,
        [read("push"), read("receipt"), read("fingerprints")].concat()
    );
}

#[test]
fn version_5_never_carries_the_newer_kinds() {
    for msg in newer_kinds() {
        assert!(
            matches!(
                wire::encode_as(&msg, 5),
                Err(wire::WireError::NotInVersion { version: 5, .. })
            ),
            "{} encoded in version 5",
            msg.kind()
        );
    }
}
