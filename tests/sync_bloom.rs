//! Bloom filters in sync messages from outside (`vendor/automerge/PATCHED.md`, change 4): a
//! filter's parameters come from the sender, so a filter with no bits, no probes or
//! billions of probes is refused when the message is decoded, instead of dividing by zero
//! or allocating a probe list of its size when the node answers.

#[path = "common/bomb.rs"]
mod bomb;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use bomb::uleb;

/// A V1 sync message with no heads, no need, one `have` (no last sync, this filter) and no
/// changes.
fn message_with_bloom(entries: u64, bits_per_entry: u64, probes: u64, bits: &[u8]) -> Vec<u8> {
    let mut bloom = Vec::new();
    uleb(&mut bloom, entries);
    uleb(&mut bloom, bits_per_entry);
    uleb(&mut bloom, probes);
    bloom.extend(bits);
    let mut msg = vec![0x42, 0, 0, 1, 0];
    uleb(&mut msg, bloom.len() as u64);
    msg.extend(bloom);
    msg.push(0);
    msg
}

/// A document with a change, answering the decoded message as a node does.
fn answer(data: &[u8]) -> Result<(), String> {
    let msg = sync::Message::decode(data).map_err(|e| e.to_string())?;
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "k", 1).unwrap();
    tx.commit();
    let mut state = sync::State::new();
    doc.receive_sync_message(&mut state, msg)
        .map_err(|e| e.to_string())?;
    let _ = doc.generate_sync_message(&mut state);
    Ok(())
}

#[test]
fn a_well_formed_filter_is_used() {
    // 1 entry, 10 bits per entry, 7 probes: 2 bytes of bits.
    assert_eq!(answer(&message_with_bloom(1, 10, 7, &[0, 0])), Ok(()));
}

#[test]
fn a_filter_without_bits_is_refused() {
    let refused = answer(&message_with_bloom(1, 0, 7, &[]));
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn a_filter_without_probes_or_with_too_many_is_refused() {
    for probes in [0, 1_000, u32::MAX as u64] {
        let refused = answer(&message_with_bloom(1, 10, probes, &[0, 0]));
        assert!(refused.is_err(), "{probes} probes: {refused:?}");
    }
}
