//! Tests of the automerge-repo codec: bytes captured from the real JS library, round trips,
//! and malformed input.
//!
//! The `JS` fixtures are WebSocket frames captured in Node.js 20 from
//! `@automerge/automerge-repo` 2.5.6, `@automerge/automerge-repo-network-websocket` 2.5.6
//! and cbor-x 1.6.9: two client `Repo`s with `WebSocketClientAdapter` talking to a server
//! `Repo` with `WebSocketServerAdapter` (remote heads gossiping on), frames recorded on the
//! server's socket. `leave` and the unsupported `join` were encoded with the library's own
//! `cbor.encode`.

use super::*;

/// `join` from a client with storage (client-a).
const JOIN_WITH_STORAGE: &str = concat!(
    "b900046474797065646a6f696e6873656e646572496468636c69656e742d616c706565724d657461",
    "64617461b900026973746f726167654964782465376664616639322d613639382d343765662d6264",
    "36652d6436643838666561646434306b6973457068656d6572616cf47819737570706f7274656450",
    "726f746f636f6c56657273696f6e73816131",
);

/// `join` from a client without storage: `storageId` is undefined (0xf7).
const JOIN_EPHEMERAL: &str = concat!(
    "b900046474797065646a6f696e6873656e646572496468636c69656e742d626c706565724d657461",
    "64617461b900026973746f726167654964f76b6973457068656d6572616cf57819737570706f7274",
    "656450726f746f636f6c56657273696f6e73816131",
);

/// `join` with `peerMetadata: {}` and `supportedProtocolVersions: ["2"]`, encoded with the library's `cbor.encode`.
const JOIN_UNSUPPORTED: &str = concat!(
    "b900046474797065646a6f696e6873656e6465724964687261772d706565726c706565724d657461",
    "64617461b900007819737570706f7274656450726f746f636f6c56657273696f6e73816132",
);

/// `peer` from the JS `WebSocketServerAdapter`.
const PEER: &str = concat!(
    "b90005647479706564706565726873656e64657249646b7365727665722d706565726c706565724d",
    "65746164617461b900026973746f726167654964782461633961313332622d363037352d34643961",
    "2d393763342d3763616538386635333362346b6973457068656d6572616cf47773656c6563746564",
    "50726f746f636f6c56657273696f6e613168746172676574496468636c69656e742d61",
);

/// first `sync` of a client that created a document.
const SYNC: &str = concat!(
    "b9000564747970656473796e636874617267657449646b7365727665722d70656572646461746158",
    "2f42014c93b7cb7acb97f9d18f731865af308d61d2695d1e321f5fb98de6978ef3e1e90001000501",
    "0a07c235000202846a646f63756d656e744964781c32746732734865446656624e3432355339424d",
    "72726b6b36756b59676873656e646572496468636c69656e742d61",
);

/// `request` of a client looking for a document the server lacks.
const REQUEST: &str = concat!(
    "b90005647479706567726571756573746874617267657449646b7365727665722d706565726a646f",
    "63756d656e744964781c32797759736f63634b7968684c443948635741563735694552734a556464",
    "6174614a420000010000000202846873656e646572496468636c69656e742d62",
);

/// `doc-unavailable` from a client asked by the JS server for a document it lacks.
const DOC_UNAVAILABLE_FROM_CLIENT: &str = concat!(
    "b9000464747970656f646f632d756e617661696c61626c656a646f63756d656e744964781c327977",
    "59736f63634b7968684c443948635741563735694552734a556874617267657449646b7365727665",
    "722d706565726873656e646572496468636c69656e742d61",
);

/// `doc-unavailable` from the JS server answering that `request`.
const DOC_UNAVAILABLE_FROM_SERVER: &str = concat!(
    "b9000464747970656f646f632d756e617661696c61626c656a646f63756d656e744964781c327977",
    "59736f63634b7968684c443948635741563735694552734a5568746172676574496468636c69656e",
    "742d626873656e64657249646b7365727665722d70656572",
);

/// second `ephemeral` of a client (`handle.broadcast({hello: "again"})`).
const EPHEMERAL: &str = concat!(
    "b90007647479706569657068656d6572616c6874617267657449646b7365727665722d706565726a",
    "646f63756d656e744964781c32746732734865446656624e3432355339424d72726b6b36756b5967",
    "64646174614fb900016568656c6c6f65616761696e65636f756e74026973657373696f6e49646b62",
    "6b356e6f7734743468636873656e646572496468636c69656e742d62",
);

/// `error` from the JS server refusing protocol version "2".
const ERROR: &str = concat!(
    "b900046474797065656572726f726873656e64657249646b7365727665722d70656572676d657373",
    "616765781c756e737570706f727465642070726f746f636f6c2076657273696f6e68746172676574",
    "4964687261772d70656572",
);

/// `remote-subscription-change` with `remove: undefined`.
const REMOTE_SUBSCRIPTION_CHANGE: &str = concat!(
    "b900056474797065781a72656d6f74652d737562736372697074696f6e2d6368616e676568746172",
    "67657449646b7365727665722d706565726361646481782465376664616639322d613639382d3437",
    "65662d626436652d6436643838666561646434306672656d6f7665f76873656e646572496468636c",
    "69656e742d62",
);

/// `remote-heads-changed` (its `timestamp` is a float64).
const REMOTE_HEADS_CHANGED: &str = concat!(
    "b9000564747970657472656d6f74652d68656164732d6368616e6765646874617267657449646b73",
    "65727665722d706565726a646f63756d656e744964781c32746732734865446656624e3432355339",
    "424d72726b6b36756b5967686e65774865616473b90001782465376664616639322d613639382d34",
    "3765662d626436652d643664383866656164643430b900026568656164738178316533716f6f7a45",
    "34454d4a71465337673944587a676a674a72673256327975516b5153375a5333446f48634a447132",
    "6b6a6974696d657374616d70fb427a22c0e132c0006873656e646572496468636c69656e742d61",
);

/// `leave` (no 2.5.6 WebSocket peer sends it), encoded with the library's `cbor.encode`.
const LEAVE: &str = "b900026474797065656c656176656873656e646572496468636c69656e742d61";

const ALL_JS: [&str; 13] = [
    JOIN_WITH_STORAGE,
    JOIN_EPHEMERAL,
    JOIN_UNSUPPORTED,
    PEER,
    SYNC,
    REQUEST,
    DOC_UNAVAILABLE_FROM_CLIENT,
    DOC_UNAVAILABLE_FROM_SERVER,
    EPHEMERAL,
    ERROR,
    REMOTE_SUBSCRIPTION_CHANGE,
    REMOTE_HEADS_CHANGED,
    LEAVE,
];

const STORAGE_A: &str = "e7fdaf92-a698-47ef-bd6e-d6d88feadd40";
const DOC: &str = "2tg2sHeDfVbN425S9BMrrkk6ukYg";
const MISSING_DOC: &str = "2ywYsoccKyhhLD9HcWAV75iERsJU";

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("test hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn js(fixture: &str) -> RepoMessage {
    match decode(&unhex(fixture)) {
        Ok(message) => message,
        Err(e) => panic!("JS fixture does not decode: {e}"),
    }
}

fn err(bytes: &[u8]) -> CodecError {
    match decode(bytes) {
        Ok(message) => panic!("expected an error, decoded {message:?}"),
        Err(e) => e,
    }
}

fn text(s: &str) -> String {
    s.to_string()
}

// ---- bytes from the JS library ----

#[test]
fn js_join_with_storage() {
    assert_eq!(
        js(JOIN_WITH_STORAGE),
        RepoMessage::Join {
            sender_id: text("client-a"),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(text(STORAGE_A)),
                is_ephemeral: false,
            }),
            supported_protocol_versions: vec![text("1")],
        }
    );
}

#[test]
fn js_join_with_undefined_storage_id() {
    assert_eq!(
        js(JOIN_EPHEMERAL),
        RepoMessage::Join {
            sender_id: text("client-b"),
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
            }),
            supported_protocol_versions: vec![text("1")],
        }
    );
}

#[test]
fn js_join_with_empty_metadata_and_another_version() {
    assert_eq!(
        js(JOIN_UNSUPPORTED),
        RepoMessage::Join {
            sender_id: text("raw-peer"),
            peer_metadata: Some(PeerMetadata::default()),
            supported_protocol_versions: vec![text("2")],
        }
    );
}

#[test]
fn js_peer() {
    assert_eq!(
        js(PEER),
        RepoMessage::Peer {
            sender_id: text("server-peer"),
            target_id: text("client-a"),
            peer_metadata: PeerMetadata {
                storage_id: Some(text("ac9a132b-6075-4d9a-97c4-7cae88f533b4")),
                is_ephemeral: false,
            },
            selected_protocol_version: text(PROTOCOL_VERSION),
        }
    );
}

#[test]
fn js_sync() {
    assert_eq!(
        js(SYNC),
        RepoMessage::Sync {
            sender_id: text("client-a"),
            target_id: text("server-peer"),
            document_id: text(DOC),
            data: unhex(concat!(
                "42014c93b7cb7acb97f9d18f731865af308d61d2695d1e321f5fb98de6978ef3e1e9",
                "00010005010a07c23500020284"
            )),
        }
    );
    assert!(super::super::doc_id::is_document_id(DOC));
}

#[test]
fn js_request() {
    assert_eq!(
        js(REQUEST),
        RepoMessage::Request {
            sender_id: text("client-b"),
            target_id: text("server-peer"),
            document_id: text(MISSING_DOC),
            data: unhex("42000001000000020284"),
        }
    );
}

#[test]
fn js_doc_unavailable() {
    assert_eq!(
        js(DOC_UNAVAILABLE_FROM_CLIENT),
        RepoMessage::DocUnavailable {
            sender_id: text("client-a"),
            target_id: text("server-peer"),
            document_id: text(MISSING_DOC),
        }
    );
    assert_eq!(
        js(DOC_UNAVAILABLE_FROM_SERVER),
        RepoMessage::DocUnavailable {
            sender_id: text("server-peer"),
            target_id: text("client-b"),
            document_id: text(MISSING_DOC),
        }
    );
}

#[test]
fn js_ephemeral() {
    assert_eq!(
        js(EPHEMERAL),
        RepoMessage::Ephemeral {
            sender_id: text("client-b"),
            target_id: text("server-peer"),
            count: 2,
            session_id: text("bk5now4t4hc"),
            document_id: text(DOC),
            // cbor-x's encoding of {hello: "again"}.
            data: unhex("b900016568656c6c6f65616761696e"),
        }
    );
}

#[test]
fn js_error() {
    assert_eq!(
        js(ERROR),
        RepoMessage::Error {
            sender_id: Some(text("server-peer")),
            target_id: Some(text("raw-peer")),
            message: text("unsupported protocol version"),
        }
    );
}

#[test]
fn js_remote_heads_messages_are_other() {
    assert_eq!(
        js(REMOTE_SUBSCRIPTION_CHANGE),
        RepoMessage::Other {
            kind: text("remote-subscription-change")
        }
    );
    assert_eq!(
        js(REMOTE_HEADS_CHANGED),
        RepoMessage::Other {
            kind: text("remote-heads-changed")
        }
    );
}

#[test]
fn js_leave() {
    assert_eq!(
        js(LEAVE),
        RepoMessage::Leave {
            sender_id: text("client-a")
        }
    );
}

#[test]
fn js_fixtures_reencode_to_the_same_message() {
    for fixture in ALL_JS {
        let message = js(fixture);
        if matches!(message, RepoMessage::Other { .. }) {
            continue;
        }
        assert_eq!(decode(&encode(&message)).ok(), Some(message));
    }
}

// ---- encoding ----

/// Each of these was checked in Node.js: `cbor.decode` of automerge-repo 2.5.6 (cbor-x
/// 1.6.9) gives the object in the comment.
#[test]
fn encoding_is_what_cbor_x_decodes() {
    let cases = [
        // {type: "peer", senderId: "server", targetId: "client-a",
        //  peerMetadata: {storageId: "s1", isEphemeral: false}, selectedProtocolVersion: "1"}
        (
            RepoMessage::Peer {
                sender_id: text("server"),
                target_id: text("client-a"),
                peer_metadata: PeerMetadata {
                    storage_id: Some(text("s1")),
                    is_ephemeral: false,
                },
                selected_protocol_version: text("1"),
            },
            PEER_ENCODED,
        ),
        // {type: "sync", senderId: "server", targetId: "client-a",
        //  documentId: "2tg2sHeDfVbN425S9BMrrkk6ukYg", data: Uint8Array [0x42, 0x00, 0x01]}
        (
            RepoMessage::Sync {
                sender_id: text("server"),
                target_id: text("client-a"),
                document_id: text(DOC),
                data: vec![0x42, 0x00, 0x01],
            },
            SYNC_ENCODED,
        ),
        // {type: "ephemeral", senderId: "a", targetId: "b", count: 4294967296,
        //  sessionId: "s", documentId: "2tg2sHeDfVbN425S9BMrrkk6ukYg", data: Uint8Array [1]}
        // (count a plain number, not a BigInt)
        (
            RepoMessage::Ephemeral {
                sender_id: text("a"),
                target_id: text("b"),
                count: 1 << 32,
                session_id: text("s"),
                document_id: text(DOC),
                data: vec![1],
            },
            EPHEMERAL_ENCODED,
        ),
        // {type: "error", message: "bad"}
        (
            RepoMessage::Error {
                sender_id: None,
                target_id: None,
                message: text("bad"),
            },
            ERROR_ENCODED,
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(hex(&encode(&message)), expected, "{message:?}");
    }
}

const PEER_ENCODED: &str = concat!(
    "a5647479706564706565726873656e64657249646673657276657268746172676574496468636c69",
    "656e742d616c706565724d65746164617461a26973746f7261676549646273316b6973457068656d",
    "6572616cf47773656c656374656450726f746f636f6c56657273696f6e6131",
);
const SYNC_ENCODED: &str = concat!(
    "a564747970656473796e636873656e64657249646673657276657268746172676574496468636c69",
    "656e742d616a646f63756d656e744964781c32746732734865446656624e3432355339424d72726b",
    "6b36756b5967646461746143420001",
);
const EPHEMERAL_ENCODED: &str = concat!(
    "a7647479706569657068656d6572616c6873656e6465724964616168746172676574496461626563",
    "6f756e74fb41f00000000000006973657373696f6e496461736a646f63756d656e744964781c3274",
    "6732734865446656624e3432355339424d72726b6b36756b596764646174614101",
);
const ERROR_ENCODED: &str = "a26474797065656572726f72676d65737361676563626164";

#[test]
fn encoding_omits_absent_optional_fields() {
    let join = encode(&RepoMessage::Join {
        sender_id: text("c"),
        peer_metadata: None,
        supported_protocol_versions: vec![text("1")],
    });
    // {type: "join", senderId: "c", supportedProtocolVersions: ["1"]}
    assert_eq!(
        hex(&join),
        concat!(
            "a36474797065646a6f696e6873656e646572496461637819737570706f72746564",
            "50726f746f636f6c56657273696f6e73816131"
        )
    );
    let peer = encode(&RepoMessage::Peer {
        sender_id: text("s"),
        target_id: text("c"),
        peer_metadata: PeerMetadata::default(),
        selected_protocol_version: text("1"),
    });
    let metadata_without_storage = "6c706565724d65746164617461a16b6973457068656d6572616cf4";
    assert!(hex(&peer).contains(metadata_without_storage));
    assert!(!hex(&peer).contains(&hex(b"storageId")));
}

#[test]
fn every_variant_round_trips() {
    let metadata = PeerMetadata {
        storage_id: Some(text(STORAGE_A)),
        is_ephemeral: true,
    };
    let mut messages = vec![
        RepoMessage::Join {
            sender_id: text("c"),
            peer_metadata: Some(metadata.clone()),
            supported_protocol_versions: vec![text("1"), text("2")],
        },
        RepoMessage::Join {
            sender_id: text("c"),
            peer_metadata: None,
            supported_protocol_versions: vec![],
        },
        RepoMessage::Peer {
            sender_id: text("s"),
            target_id: text("c"),
            peer_metadata: metadata,
            selected_protocol_version: text("1"),
        },
        RepoMessage::Request {
            sender_id: text("c"),
            target_id: text("s"),
            document_id: text(MISSING_DOC),
            data: vec![0x42; 300],
        },
        RepoMessage::Sync {
            sender_id: text("s"),
            target_id: text("c"),
            document_id: text(DOC),
            data: vec![7; 70_000],
        },
        RepoMessage::DocUnavailable {
            sender_id: text("s"),
            target_id: text("c"),
            document_id: text(DOC),
        },
        RepoMessage::Error {
            sender_id: Some(text("s")),
            target_id: Some(text("c")),
            message: text("unsupported protocol version"),
        },
        RepoMessage::Error {
            sender_id: None,
            target_id: None,
            message: String::new(),
        },
        RepoMessage::Leave {
            sender_id: text("\u{1F980} non-ASCII peer"),
        },
    ];
    let counts = [
        0,
        23,
        24,
        255,
        256,
        u64::from(u32::MAX),
        1 << 32,
        MAX_SAFE_INTEGER,
        MAX_SAFE_INTEGER + 1,
        u64::MAX,
    ];
    for count in counts {
        messages.push(RepoMessage::Ephemeral {
            sender_id: text("c"),
            target_id: text("s"),
            count,
            session_id: text("session"),
            document_id: text(DOC),
            data: vec![0xa0],
        });
    }
    for message in messages {
        let bytes = encode(&message);
        match decode(&bytes) {
            Ok(decoded) => assert_eq!(decoded, message),
            Err(e) => panic!("{message:?} does not round trip: {e}"),
        }
    }
}

#[test]
fn other_encodes_to_its_type_alone() {
    let bytes = encode(&RepoMessage::Other {
        kind: text("remote-heads-changed"),
    });
    // A bare {type} has no sender, so it does not decode: it is for receiving only.
    assert!(matches!(
        decode(&bytes),
        Err(CodecError::MissingField {
            field: "senderId",
            ..
        })
    ));
}

// ---- decoding leniency that real peers need ----

/// Builds a CBOR map from pre-encoded keys and values.
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(&mut out, MAJOR_MAP, entries.len() as u64);
    for (key, value) in entries {
        write_text(&mut out, key);
        out.extend_from_slice(value);
    }
    out
}

fn t(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_text(&mut out, s);
    out
}

fn b(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(&mut out, MAJOR_BYTES, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

const UNDEFINED: u8 = 0xf7;
const NULL: u8 = 0xf6;

fn sync_with(extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![
        ("type", t("sync")),
        ("senderId", t("c")),
        ("targetId", t("s")),
        ("documentId", t(DOC)),
        ("data", b(&[0x42])),
    ];
    for (key, value) in extra {
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => entries.push((key, value.clone())),
        }
    }
    map(&entries)
}

#[test]
fn null_and_undefined_mean_absent() {
    for absent in [UNDEFINED, NULL] {
        let bytes = map(&[
            ("type", t("join")),
            ("senderId", t("c")),
            ("peerMetadata", vec![absent]),
            ("supportedProtocolVersions", vec![absent]),
        ]);
        assert_eq!(
            decode(&bytes).ok(),
            Some(RepoMessage::Join {
                sender_id: text("c"),
                peer_metadata: None,
                supported_protocol_versions: vec![text(PROTOCOL_VERSION)],
            })
        );
        let error = map(&[
            ("type", t("error")),
            ("senderId", vec![absent]),
            ("message", t("m")),
        ]);
        assert_eq!(
            decode(&error).ok(),
            Some(RepoMessage::Error {
                sender_id: None,
                target_id: None,
                message: text("m"),
            })
        );
        assert!(matches!(
            err(&sync_with(&[("targetId", vec![absent])])),
            CodecError::MissingField {
                field: "targetId",
                ..
            }
        ));
    }
}

#[test]
fn metadata_under_the_readme_key_and_unknown_keys_are_accepted() {
    let bytes = map(&[
        ("type", t("peer")),
        ("senderId", t("s")),
        ("targetId", t("c")),
        ("selectedProtocolVersion", t("1")),
        (
            "metadata",
            map(&[("storageId", t("x")), ("future", t("y"))]),
        ),
        ("someFutureField", vec![0x83, 1, 2, 3]),
    ]);
    assert_eq!(
        decode(&bytes).ok(),
        Some(RepoMessage::Peer {
            sender_id: text("s"),
            target_id: text("c"),
            peer_metadata: PeerMetadata {
                storage_id: Some(text("x")),
                is_ephemeral: false,
            },
            selected_protocol_version: text("1"),
        })
    );
}

#[test]
fn integer_valued_float_counts_are_accepted() {
    let mut float = vec![0xfb];
    float.extend_from_slice(&4294967296f64.to_be_bytes());
    let bytes = map(&[
        ("type", t("ephemeral")),
        ("senderId", t("c")),
        ("targetId", t("s")),
        ("count", float),
        ("sessionId", t("x")),
        ("documentId", t(DOC)),
        ("data", b(&[1])),
    ]);
    assert!(matches!(
        decode(&bytes),
        Ok(RepoMessage::Ephemeral {
            count: 4294967296,
            ..
        })
    ));
}

#[test]
fn unknown_types_with_a_sender_are_other() {
    let bytes = map(&[("type", t("future-thing")), ("senderId", t("c"))]);
    assert_eq!(
        decode(&bytes).ok(),
        Some(RepoMessage::Other {
            kind: text("future-thing")
        })
    );
}

// ---- malformed input ----

#[test]
fn empty_and_truncated_input_is_an_error() {
    assert!(matches!(err(&[]), CodecError::Empty));
    for fixture in ALL_JS {
        let bytes = unhex(fixture);
        for end in 1..bytes.len() {
            match decode(&bytes[..end]) {
                Err(CodecError::Truncated) => {}
                other => panic!("prefix of {end} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = unhex(SYNC);
    bytes.push(0x00);
    assert!(matches!(err(&bytes), CodecError::TrailingBytes(1)));
    let mut twice = unhex(LEAVE);
    twice.extend(unhex(LEAVE));
    assert!(matches!(err(&twice), CodecError::TrailingBytes(n) if n == twice.len() / 2));
}

#[test]
fn values_other_than_a_map_are_an_error() {
    let cases: [(&[u8], &str); 7] = [
        (&[0x80], "array"),
        (&[0x01], "integer"),
        (&[0x20], "integer"),
        (&[0x61, 0x61], "text"),
        (&[0x41, 0x00], "byte string"),
        (&[0xf6], "null or undefined"),
        (&[0xf5], "boolean"),
    ];
    for (bytes, kind) in cases {
        match err(bytes) {
            CodecError::NotAMap(found) => assert_eq!(found, kind),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
}

#[test]
fn missing_type_or_sender_is_an_error() {
    assert!(matches!(
        err(&map(&[("senderId", t("c"))])),
        CodecError::MissingType
    ));
    assert!(matches!(
        err(&map(&[("type", vec![UNDEFINED]), ("senderId", t("c"))])),
        CodecError::MissingType
    ));
    assert!(matches!(
        err(&map(&[("type", vec![0x01]), ("senderId", t("c"))])),
        CodecError::WrongType { field: "type", .. }
    ));
    for kind in [
        "join",
        "peer",
        "request",
        "sync",
        "doc-unavailable",
        "ephemeral",
        "leave",
        "remote-heads-changed",
        "remote-subscription-change",
        "anything",
    ] {
        match err(&map(&[("type", t(kind))])) {
            CodecError::MissingField {
                kind: found,
                field: "senderId",
            } => assert_eq!(found, kind),
            other => panic!("{kind}: {other:?}"),
        }
    }
    assert!(matches!(
        err(&map(&[("type", t("error"))])),
        CodecError::MissingField {
            field: "message",
            ..
        }
    ));
}

#[test]
fn wrong_field_types_are_an_error() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (sync_with(&[("senderId", vec![0x01])]), "senderId"),
        (sync_with(&[("targetId", b(b"s"))]), "targetId"),
        (sync_with(&[("documentId", b(&[0; 16]))]), "documentId"),
        (sync_with(&[("data", t("not bytes"))]), "data"),
        (sync_with(&[("data", vec![0x81, 0x01])]), "data"),
        // data as a tagged Uint8Array (cbor-x with tagUint8Array: true) is not accepted.
        (sync_with(&[("data", vec![0xd8, 0x40, 0x41, 0x01])]), "data"),
    ];
    for (bytes, field) in cases {
        match err(&bytes) {
            CodecError::WrongType { field: found, .. } => assert_eq!(found, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let ephemeral = |count: Vec<u8>| {
        map(&[
            ("type", t("ephemeral")),
            ("senderId", t("c")),
            ("targetId", t("s")),
            ("count", count),
            ("sessionId", t("x")),
            ("documentId", t(DOC)),
            ("data", b(&[1])),
        ])
    };
    let float = |x: f64| {
        let mut out = vec![0xfb];
        out.extend_from_slice(&x.to_be_bytes());
        out
    };
    for count in [
        vec![0x20],
        vec![0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        float(1.5),
        float(-1.0),
        float(f64::NAN),
        float(f64::INFINITY),
        float(1e300),
        t("1"),
    ] {
        assert!(
            matches!(
                err(&ephemeral(count.clone())),
                CodecError::WrongType { field: "count", .. }
            ),
            "{count:?}"
        );
    }
    let join = |metadata: Vec<u8>, versions: Vec<u8>| {
        map(&[
            ("type", t("join")),
            ("senderId", t("c")),
            ("peerMetadata", metadata),
            ("supportedProtocolVersions", versions),
        ])
    };
    let versions = vec![0x81, 0x61, b'1'];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (join(t("x"), versions.clone()), "peerMetadata"),
        (
            join(map(&[("storageId", vec![0x01])]), versions.clone()),
            "peerMetadata.storageId",
        ),
        (
            join(map(&[("isEphemeral", t("true"))]), versions.clone()),
            "peerMetadata.isEphemeral",
        ),
        (join(vec![0xa0], t("1")), "supportedProtocolVersions"),
        (
            join(vec![0xa0], vec![0x81, 0x01]),
            "supportedProtocolVersions",
        ),
    ];
    for (bytes, field) in cases {
        match err(&bytes) {
            CodecError::WrongType { field: found, .. } => assert_eq!(found, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn empty_data_is_an_error() {
    assert!(matches!(
        err(&sync_with(&[("data", b(&[]))])),
        CodecError::EmptyData { .. }
    ));
}

#[test]
fn bad_keys_are_an_error() {
    let mut non_text = Vec::new();
    write_head(&mut non_text, MAJOR_MAP, 2);
    non_text.extend(t("type"));
    non_text.extend(t("leave"));
    non_text.push(0x01);
    non_text.extend(t("c"));
    assert!(matches!(err(&non_text), CodecError::NonTextKey("integer")));
    let duplicate = map(&[
        ("type", t("leave")),
        ("senderId", t("a")),
        ("senderId", t("b")),
    ]);
    assert!(matches!(err(&duplicate), CodecError::DuplicateKey(key) if key == "senderId"));
    let nested = map(&[
        ("type", t("join")),
        ("senderId", t("c")),
        (
            "peerMetadata",
            map(&[("isEphemeral", vec![0xf5]), ("isEphemeral", vec![0xf4])]),
        ),
    ]);
    assert!(matches!(err(&nested), CodecError::DuplicateKey(key) if key == "isEphemeral"));
}

#[test]
fn invalid_cbor_is_an_error() {
    let cases: [&[u8]; 5] = [
        // Reserved additional information 28.
        &[0x1c],
        // A break outside an indefinite-length item.
        &[0xff],
        // Text that is not UTF-8.
        &[0xa1, 0x64, b't', b'y', b'p', b'e', 0x62, 0xc3, 0x28],
        // Unassigned simple value.
        &[0xa1, 0x61, b'x', 0xf0],
        // A tag around a tag around nothing.
        &[0xd8, 0x40, 0xd8, 0x40],
    ];
    for bytes in cases {
        assert!(decode(bytes).is_err(), "{bytes:?}");
    }
}

#[test]
fn huge_declared_lengths_are_an_error_without_allocating() {
    let max = [0xff; 8];
    for major in [MAJOR_BYTES, MAJOR_TEXT, MAJOR_ARRAY, MAJOR_MAP] {
        let mut top = vec![(major << 5) | 27];
        top.extend_from_slice(&max);
        assert!(matches!(err(&top), CodecError::Truncated), "major {major}");
        let mut field = vec![(major << 5) | 27];
        field.extend_from_slice(&max);
        assert!(
            matches!(err(&sync_with(&[("data", field)])), CodecError::Truncated),
            "major {major} as data"
        );
    }
    // A map that claims 2^32 - 1 entries but has one.
    let mut bytes = vec![0xba, 0xff, 0xff, 0xff, 0xff];
    bytes.extend(t("type"));
    bytes.extend(t("leave"));
    assert!(matches!(err(&bytes), CodecError::Truncated));
}

#[test]
fn deep_nesting_is_an_error() {
    for open in [0x81u8, 0xa1, 0x9f, 0xd8] {
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.push(open);
            if open == 0xa1 {
                bytes.push(0x00);
            } else if open == 0xd8 {
                bytes.push(0x40);
            }
        }
        bytes.push(0x00);
        assert!(matches!(err(&bytes), CodecError::TooDeep), "{open:#x}");
    }
    // Deep nesting inside an ignored field of a valid message.
    let mut deep = vec![0x81; MAX_DEPTH];
    deep.push(0x00);
    assert!(matches!(
        err(&sync_with(&[("ignored", deep)])),
        CodecError::TooDeep
    ));
    // Nesting within the limit is fine: the message map plus MAX_DEPTH - 1 arrays.
    let mut shallow = vec![0x81; MAX_DEPTH - 1];
    shallow.push(0x00);
    assert!(decode(&sync_with(&[("ignored", shallow)])).is_ok());
}

#[test]
fn too_many_items_are_an_error() {
    // An ignored field holding a long array of small integers.
    let mut many = vec![0x9a];
    many.extend_from_slice(&(MAX_ITEMS as u32).to_be_bytes());
    many.extend(std::iter::repeat_n(0x00, MAX_ITEMS));
    assert!(matches!(
        err(&sync_with(&[("ignored", many)])),
        CodecError::TooManyItems
    ));
    // The same with an indefinite-length array.
    let mut many = vec![0x9f];
    many.extend(std::iter::repeat_n(0x00, MAX_ITEMS));
    many.push(0xff);
    assert!(matches!(
        err(&sync_with(&[("ignored", many)])),
        CodecError::TooManyItems
    ));
    // A few hundred are fine.
    let mut some = vec![0x99, 0x01, 0x2c];
    some.extend(std::iter::repeat_n(0x00, 300));
    assert!(decode(&sync_with(&[("ignored", some)])).is_ok());
}

#[test]
fn indefinite_lengths_are_valid_cbor() {
    // {_ "type": (_ "le" "ave"), "senderId": "c", "x": [_ 1, h'' ]} with a break for each.
    let mut bytes = vec![0xbf];
    bytes.extend(t("type"));
    bytes.push(0x7f);
    bytes.extend(t("le"));
    bytes.extend(t("ave"));
    bytes.push(0xff);
    bytes.extend(t("senderId"));
    bytes.extend(t("c"));
    bytes.extend(t("x"));
    bytes.extend([0x9f, 0x01, 0x5f, 0x41, 0x00, 0xff, 0xff]);
    bytes.push(0xff);
    assert_eq!(
        decode(&bytes).ok(),
        Some(RepoMessage::Leave {
            sender_id: text("c")
        })
    );
    // Chunks of another type, nested indefinite chunks, and a missing break are not.
    for bad in [
        vec![0x7f, 0x41, 0x00, 0xff],
        vec![0x7f, 0x7f, 0xff, 0xff],
        vec![0xbf, 0x61, b'a', 0x01],
        vec![0x1f],
        vec![0xdf, 0x00],
    ] {
        assert!(decode(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn too_large_input_is_refused_unread() {
    let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        err(&bytes),
        CodecError::TooLarge { len, max } if len == MAX_MESSAGE_BYTES + 1 && max == MAX_MESSAGE_BYTES
    ));
}

#[test]
fn mutated_js_fixtures_never_panic() {
    for fixture in ALL_JS {
        let original = unhex(fixture);
        for i in 0..original.len() {
            for replacement in [
                0x00,
                0xff,
                0xf7,
                0x1b,
                0x5b,
                0x7b,
                0x9f,
                0xbf,
                original[i] ^ 0x01,
                original[i] ^ 0x80,
                original[i].wrapping_add(1),
            ] {
                let mut bytes = original.clone();
                bytes[i] = replacement;
                if let Err(e) = decode(&bytes) {
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}

#[test]
fn random_input_never_panics() {
    // xorshift64*, seeded, so that a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for round in 0..50_000 {
        let len = (next() % 48) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Start most inputs as a small map so that decoding gets past the first byte.
            bytes.insert(0, 0xa0 | (next() % 6) as u8);
        }
        let _ = decode(&bytes);
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let e = err(&sync_with(&[("data", t("x"))]));
    assert_eq!(
        e.to_string(),
        "field `data` should be a byte string, found text"
    );
    let e = err(&map(&[("type", t("sync")), ("senderId", t("c"))]));
    assert_eq!(e.to_string(), "`sync` message lacks `targetId`");
    assert_eq!(
        err(&[0x80]).to_string(),
        "message is a CBOR array, not a map"
    );
}
