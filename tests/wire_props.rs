//! Property tests of the wire decoder (the inputs of the `wire_decode` fuzz target):
//! arbitrary bytes and corrupted encodings never make it panic and whatever decodes
//! re-encodes to the same message; every valid message round-trips; a frame truncated anywhere, or with a
//! corrupted length prefix, is an error or a request for more bytes, never a message.

use concordant::wire::{
    decode_frame, decode_payload, encode, frame_head, Ack, Bucket, DocChanges, Ephemeral,
    Fingerprints, Forward, ForwardOutcome, ForwardRequest, HandoffDoc, Hello, Message, Reply, Want,
    WireError, HEADER_LEN, MAX_FRAME, MORE, PROTOCOL_VERSION,
};
use proptest::prelude::*;
use serde_bytes::ByteBuf;

// ------------------------------------------------------------------ strategies

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9-]{0,8}", "\\PC{0,6}"]
}

fn arb_bytes() -> impl Strategy<Value = ByteBuf> {
    prop::collection::vec(any::<u8>(), 0..48).prop_map(ByteBuf::from)
}

fn arb_message() -> impl Strategy<Value = Message> {
    let hello = (
        arb_string(),
        arb_string(),
        any::<u8>(),
        prop::collection::vec(arb_string(), 0..3),
    )
        .prop_map(|(cluster, node, version, compression)| {
            Message::Hello(Hello {
                cluster,
                node,
                version,
                compression,
            })
        });
    let doc_changes = (
        arb_string(),
        arb_string(),
        prop::collection::vec(arb_bytes(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(doc, origin, changes, want_ack)| DocChanges {
            doc,
            origin,
            changes,
            want_ack,
        });
    let push = prop::collection::vec(doc_changes, 0..4).prop_map(Message::push);
    let ack = (
        arb_string(),
        arb_string(),
        prop::collection::vec(any::<[u8; 32]>(), 0..4),
    )
        .prop_map(|(doc, by, hashes)| Message::Ack(vec![Ack { doc, by, hashes }]));
    let fingerprints = (
        any::<u8>(),
        prop::collection::vec((any::<u32>(), any::<u64>()), 0..6),
    )
        .prop_map(|(level, nodes)| Message::Fingerprints(Fingerprints { level, nodes }));
    let items = prop::collection::vec(
        (
            any::<u32>(),
            prop::collection::vec((arb_string(), any::<u64>()), 0..4),
        )
            .prop_map(|(bucket, docs)| Bucket { bucket, docs }),
        0..4,
    )
    .prop_map(Message::Items);
    let want = prop::collection::vec(
        (
            arb_string(),
            prop::collection::vec(any::<[u8; 32]>(), 0..3),
            any::<bool>(),
        )
            .prop_map(|(doc, heads, reply)| Want { doc, heads, reply }),
        0..4,
    )
    .prop_map(Message::Want);
    let sync = (arb_string(), arb_bytes()).prop_map(|(doc, data)| Message::Sync { doc, data });
    let ephemeral = (
        (arb_string(), arb_string(), arb_string()),
        arb_string(),
        any::<u64>(),
        arb_bytes(),
    )
        .prop_map(|((doc, origin, sender), session, count, data)| {
            Message::Ephemeral(Ephemeral {
                doc,
                origin,
                sender,
                session,
                count,
                data,
            })
        });
    let forward = (
        (any::<u64>(), arb_string(), arb_string(), any::<u8>()),
        (arb_string(), any::<u16>()),
        prop_oneof![
            arb_string().prop_map(ForwardRequest::Ops),
            (arb_bytes(), 0..4usize, any::<u64>()).prop_map(|(data, k, timeout_ms)| {
                let ack = match k {
                    0 => concordant::ops::Ack::Local,
                    3 => concordant::ops::Ack::All,
                    k => concordant::ops::Ack::Peers(k),
                };
                ForwardRequest::Merge {
                    data,
                    ack,
                    timeout_ms,
                }
            }),
            Just(ForwardRequest::Json),
            Just(ForwardRequest::Save),
        ],
    )
        .prop_map(|((id, origin, target, hops), (doc, partition), request)| {
            Message::Forward(Box::new(Forward {
                id,
                origin,
                target,
                hops,
                doc,
                partition,
                request,
            }))
        });
    let heads = || prop::collection::vec(any::<[u8; 32]>(), 0..3);
    let outcome = prop_oneof![
        (heads(), prop::collection::vec(arb_string(), 0..3))
            .prop_map(|(heads, acked_by)| ForwardOutcome::Written { heads, acked_by }),
        (
            any::<u64>(),
            heads(),
            prop::collection::vec(arb_string(), 0..3)
        )
            .prop_map(|(new_changes, heads, acked_by)| ForwardOutcome::Merged {
                new_changes,
                heads,
                acked_by
            }),
        prop::option::of(arb_string()).prop_map(ForwardOutcome::Json),
        prop::option::of(arb_bytes()).prop_map(ForwardOutcome::Saved),
        (any::<u16>(), arb_string(), heads()).prop_map(|(status, message, heads)| {
            ForwardOutcome::Failed {
                status,
                message,
                heads,
                acked_by: Vec::new(),
            }
        }),
    ];
    let reply = (
        (any::<u64>(), arb_string(), arb_string(), any::<u8>()),
        outcome,
    )
        .prop_map(|((id, origin, by, hops), outcome)| {
            Message::Reply(Box::new(Reply {
                id,
                origin,
                by,
                hops,
                outcome,
            }))
        });
    let offers = || {
        prop::collection::vec(
            (
                arb_string(),
                heads(),
                prop::collection::vec(arb_string(), 0..3),
            )
                .prop_map(|(doc, heads, by)| HandoffDoc { doc, heads, by }),
            0..4,
        )
    };
    let handoff =
        (offers(), any::<bool>()).prop_map(|(docs, leaving)| Message::Handoff { docs, leaving });
    let handed_off = offers().prop_map(Message::HandedOff);
    let follow = (prop::collection::vec(arb_string(), 0..4), any::<bool>())
        .prop_map(|(docs, follow)| Message::Follow { docs, follow });
    let revocations = prop::collection::vec((arb_string(), any::<bool>(), any::<u64>()), 0..4)
        .prop_map(|entries| {
            use concordant::revocations::{Revocations, Revoke};
            let mut set = Revocations::default();
            for (key, by_sub, at) in entries {
                let what = if by_sub {
                    Revoke::Sub(key)
                } else {
                    Revoke::Jti(key)
                };
                let _ = set.revoke(&what, at);
            }
            Message::Revocations(Box::new(set))
        });
    prop_oneof![
        hello,
        push,
        ack,
        fingerprints,
        items,
        want,
        sync,
        ephemeral,
        forward,
        reply,
        handoff,
        handed_off,
        follow,
        revocations
    ]
}

/// Arbitrary bytes, often shaped like a payload (version byte, small variant index) so
/// that the decoder gets past its first checks.
fn arb_payload_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (0u8..20, prop::collection::vec(any::<u8>(), 0..128)).prop_map(|(variant, rest)| {
            let mut p = vec![PROTOCOL_VERSION, variant];
            p.extend(rest);
            p
        }),
    ]
}

/// Checks that whatever `decode_payload` accepts encodes again to an equal message.
fn assert_reencodes(msg: &Message) -> Result<(), TestCaseError> {
    let frame = encode(msg).map_err(|e| TestCaseError::fail(format!("re-encode: {e}")))?;
    let again = decode_frame(&frame)
        .map_err(|e| TestCaseError::fail(format!("re-decode: {e}")))?
        .map(|(m, used)| (m, used == frame.len()));
    prop_assert_eq!(again, Some((msg.clone(), true)));
    Ok(())
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in arb_payload_like()) {
        if let Ok(msg) = decode_payload(&bytes) {
            assert_reencodes(&msg)?;
        }
        // The same bytes as a whole frame (true length), and as raw stream bytes.
        let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&bytes);
        match decode_frame(&frame) {
            Ok(Some((msg, used))) => {
                prop_assert_eq!(used, frame.len());
                assert_reencodes(&msg)?;
            }
            Ok(None) => prop_assert!(false, "a complete frame asked for more bytes"),
            Err(_) => {}
        }
        if let Ok(Some((msg, used))) = decode_frame(&bytes) {
            prop_assert!(used <= bytes.len());
            assert_reencodes(&msg)?;
        }
    }

    #[test]
    fn corrupted_payloads_never_panic(
        msg in arb_message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Valid encodings with a few bytes overwritten: often still decodable.
        let frame = encode(&msg).unwrap();
        let mut payload = frame[HEADER_LEN..].to_vec();
        for (at, byte) in &flips {
            let i = at.index(payload.len());
            payload[i] = *byte;
        }
        if let Ok(msg) = decode_payload(&payload) {
            assert_reencodes(&msg)?;
        }
    }

    #[test]
    fn frame_head_accepts_exactly_one_to_max(header in any::<[u8; HEADER_LEN]>()) {
        let raw = u32::from_be_bytes(header);
        let len = (raw & !MORE) as usize;
        match frame_head(header) {
            Ok(h) => prop_assert!(
                h.len == len && h.more == (raw & MORE != 0) && (1..=MAX_FRAME).contains(&len)
            ),
            Err(WireError::Empty) => prop_assert_eq!(len, 0),
            Err(WireError::TooLarge { .. }) => prop_assert!(len > MAX_FRAME),
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn valid_messages_round_trip(msg in arb_message(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let frame = encode(&msg).unwrap();
        prop_assert_eq!(decode_payload(&frame[HEADER_LEN..]).unwrap(), msg.clone());
        // Bytes after the frame (the next frame of the stream) are left alone.
        let mut stream = frame.clone();
        stream.extend_from_slice(&tail);
        prop_assert_eq!(decode_frame(&stream).unwrap(), Some((msg, frame.len())));
    }

    #[test]
    fn truncated_frame_is_incomplete_or_an_error(msg in arb_message(), cut in any::<prop::sample::Index>()) {
        let frame = encode(&msg).unwrap();
        let cut = cut.index(frame.len());
        // A stream cut short asks for more bytes.
        prop_assert!(decode_frame(&frame[..cut]).unwrap().is_none());
        // A payload cut short is an error, never a (different) message.
        let payload = &frame[HEADER_LEN..];
        let cut = cut.min(payload.len() - 1);
        prop_assert!(decode_payload(&payload[..cut]).is_err());
    }

    #[test]
    fn corrupted_length_never_yields_another_message(
        msg in arb_message(),
        len in prop_oneof![any::<u32>(), 0u32..300],
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let frame = encode(&msg).unwrap();
        let true_len = (frame.len() - HEADER_LEN) as u32;
        prop_assume!(len != true_len);
        let mut bad = frame.clone();
        bad[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        // Alone, or followed by more bytes of the stream.
        for extra in [&[][..], &tail[..]] {
            let mut stream = bad.clone();
            stream.extend_from_slice(extra);
            match decode_frame(&stream) {
                // A longer frame takes the bytes after the message for fields a newer peer
                // appended: the same message, never another one.
                Ok(Some((got, _))) => prop_assert!(
                    len > true_len && got == msg,
                    "length {} decoded {:?}",
                    len,
                    got
                ),
                Ok(None) => prop_assert!(len as usize > stream.len() - HEADER_LEN),
                Err(_) => {}
            }
        }
    }
}

/// The fuzz target's seed inputs (`fuzz/seeds/wire_decode`) stay valid: every payload
/// seed decodes and round-trips, and the frame seed decodes whole.
#[test]
fn fuzz_seeds_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/wire_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let msg = if name.starts_with("frame_") {
            let (msg, used) = decode_frame(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "{name}");
            msg
        } else {
            decode_payload(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let frame = encode(&msg).unwrap();
        assert_eq!(decode_payload(&frame[HEADER_LEN..]).unwrap(), msg, "{name}");
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} seeds in {}", dir.display());
}
