//! Checksums sealing each value stored by [`super::RedbStore`] together with its key.
//!
//! redb checks its own page checksums only when it repairs a file after an unclean
//! shutdown, so a damaged value or key in a cleanly closed file would otherwise be read back
//! silently (a change moved to another document, or garbled bytes). Every stored value is
//! therefore `value ++ crc32(key, value)` (little-endian), checked on load. Must not touch
//! redb or the file: pure functions over bytes.

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) lookup tables for "slicing by 8":
/// `TABLES[0]` is the classic byte-at-a-time table, `TABLES[k]` advances a byte by `k` more
/// zero bytes, so eight bytes are folded in per step (the whole index is checksummed at
/// start-up; one table costs ~4x the time).
const TABLES: [[u32; 256]; 8] = make_tables();

const fn make_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
}

/// CRC-32 of the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    !parts.iter().fold(!0u32, |crc, part| crc_update(crc, part))
}

/// Feeds `bytes` into a running (inverted) CRC-32 state.
fn crc_update(mut crc: u32, bytes: &[u8]) -> u32 {
    let t = &TABLES;
    let (words, rest) = bytes.as_chunks::<8>();
    for w in words {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ crc;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &byte in rest {
        crc = t[0][((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
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
    let parts: [&[u8]; 4] = [
        INDEX_TAG,
        &(doc.len() as u64).to_le_bytes(),
        doc.as_bytes(),
        value,
    ];
    // Entries are short: checksummed in one piece they take the 8-byte path throughout.
    let mut buf = [0u8; 256];
    let mut len = 0;
    for part in parts {
        match buf.get_mut(len..len + part.len()) {
            Some(slot) => slot.copy_from_slice(part),
            None => return crc32(&parts).to_le_bytes(),
        }
        len += part.len();
    }
    (!crc_update(!0, &buf[..len])).to_le_bytes()
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
    fn slicing_by_8_equals_byte_at_a_time() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + i / 5) as u8).collect();
        for len in 0..data.len() {
            let mut slow = !0u32;
            for &byte in &data[..len] {
                slow = TABLES[0][((slow ^ u32::from(byte)) & 0xFF) as usize] ^ (slow >> 8);
            }
            assert_eq!(crc_update(!0, &data[..len]), slow, "length {len}");
            // Split anywhere: the same result.
            let (a, b) = data[..len].split_at(len / 3);
            assert_eq!(crc32(&[a, b]), !slow);
        }
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
        // Also past the stack buffer's size.
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
