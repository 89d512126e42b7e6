//! Checksums sealing each value stored by [`super::RedbStore`] together with its key.
//!
//! redb checks its own page checksums only when it repairs a file after an unclean
//! shutdown, so a damaged value or key in a cleanly closed file would otherwise be read back
//! silently (a change moved to another document, or garbled bytes). Every stored value is
//! therefore `value ++ crc32(key, value)` (little-endian), checked on load. Must not touch
//! redb or the file: pure functions over bytes.

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320, as `crc32fast` computes it) of the
/// concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// Key of a snapshot entry, as checksummed.
pub(super) fn snapshot_key(doc: &str) -> [Vec<u8>; 2] {
    [b"snapshot".to_vec(), length_prefixed(doc)]
}

/// Key of a log entry, as checksummed.
pub(super) fn log_key(doc: &str, seq: u64) -> [Vec<u8>; 3] {
    [
        b"log".to_vec(),
        length_prefixed(doc),
        seq.to_le_bytes().to_vec(),
    ]
}

/// Key of an index (`docs` table) entry, as checksummed.
#[cfg(test)]
pub(super) fn index_key(doc: &str) -> [Vec<u8>; 2] {
    [INDEX_TAG.to_vec(), length_prefixed(doc)]
}

const INDEX_TAG: &[u8] = b"index";

/// Checksum of an index entry: the same as [`seal`] with `index_key(doc)` computes, without
/// allocating (the index is scanned whole at start-up).
fn index_crc(doc: &str, value: &[u8]) -> [u8; 4] {
    let len = (doc.len() as u64).to_le_bytes();
    crc32(&[INDEX_TAG, &len, doc.as_bytes(), value]).to_le_bytes()
}

/// `value` of document `doc`'s index entry followed by its checksum.
pub(super) fn seal_index(doc: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&index_crc(doc, value));
    out
}

/// The value inside document `doc`'s sealed index entry; `None` if it is damaged.
pub(super) fn unseal_index<'a>(doc: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
    let split = sealed.len().checked_sub(4)?;
    let (value, sum) = sealed.split_at(split);
    (index_crc(doc, value) == sum).then_some(value)
}

fn length_prefixed(doc: &str) -> Vec<u8> {
    let mut out = (doc.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(doc.as_bytes());
    out
}

/// `value` followed by the checksum of `key` and `value`.
pub(super) fn seal(key: &[Vec<u8>], value: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
    parts.push(value);
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&crc32(&parts).to_le_bytes());
    out
}

/// The value inside `sealed` if its checksum matches `key`; `None` if it is damaged.
pub(super) fn unseal<'a>(key: &[Vec<u8>], sealed: &'a [u8]) -> Option<&'a [u8]> {
    let split = sealed.len().checked_sub(4)?;
    let (value, sum) = sealed.split_at(split);
    let mut parts: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
    parts.push(value);
    (crc32(&parts).to_le_bytes() == sum).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }

    #[test]
    fn damage_to_value_or_key_is_detected() {
        let key = log_key("doc", 7);
        let sealed = seal(&key, b"hello");
        assert_eq!(unseal(&key, &sealed), Some(&b"hello"[..]));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(unseal(&key, &bad), None, "flip at {i}");
        }
        assert_eq!(unseal(&log_key("doc", 8), &sealed), None);
        assert_eq!(unseal(&log_key("dod", 7), &sealed), None);
        assert_eq!(unseal(&snapshot_key("doc"), &sealed), None);
        assert_eq!(unseal(&key, &sealed[..3]), None);
    }

    #[test]
    fn index_sealing_is_the_generic_scheme_without_allocations() {
        let sealed = seal_index("doc-1", b"row");
        assert_eq!(sealed, seal(&index_key("doc-1"), b"row"));
        let long = "d".repeat(300);
        assert_eq!(seal_index(&long, b"row"), seal(&index_key(&long), b"row"));
        assert_eq!(seal_index("x", &[5; 300]), seal(&index_key("x"), &[5; 300]));
        assert_eq!(unseal_index("doc-1", &sealed), Some(&b"row"[..]));
        assert_eq!(unseal_index("doc-2", &sealed), None);
        assert_eq!(unseal(&snapshot_key("doc-1"), &sealed), None);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x04;
            assert_eq!(unseal_index("doc-1", &bad), None, "flip at {i}");
        }
        assert_eq!(unseal_index("doc-1", &sealed[..3]), None);
    }
}
