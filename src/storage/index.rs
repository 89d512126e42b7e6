//! One row of the per-document index (the `docs` table of [`super::RedbStore`]) and its
//! byte encoding.
//!
//! Owns the row layout; must not touch redb or checksums (the caller seals the bytes with
//! [`super::checksum::seal_index`]). Pure functions over bytes, so a damaged row is an
//! error, never a panic.
//!
//! Encoding (all integers unsigned LEB128):
//! `next_seq`, `log_len`, then `0` (heads unknown) or `1`, the number of heads and each
//! head's 32 bytes. Nothing may follow. A one-head row of a short log is 36 bytes plus its checksum.

/// A document's entry in the index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct IndexRow {
    /// Sequence number of the next change appended to the document's log.
    pub next_seq: u64,
    /// Changes in the log (appended since the last compaction, plus its `keep` list).
    pub log_len: u64,
    /// The document's heads after everything stored; `None` if not known (a store migrated
    /// from format 1, or a document only ever compacted there).
    pub heads: Option<Vec<[u8; 32]>>,
}

/// A decoded row borrowing its heads from the stored bytes (no allocation: the index is
/// scanned whole at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowRef<'a> {
    /// See [`IndexRow::next_seq`].
    pub next_seq: u64,
    /// See [`IndexRow::log_len`].
    pub log_len: u64,
    /// See [`IndexRow::heads`].
    pub heads: Option<&'a [[u8; 32]]>,
}

impl RowRef<'_> {
    /// An owned copy.
    pub fn to_row(self) -> IndexRow {
        IndexRow {
            next_seq: self.next_seq,
            log_len: self.log_len,
            heads: self.heads.map(<[[u8; 32]]>::to_vec),
        }
    }
}

impl IndexRow {
    /// The row's bytes (without checksum).
    pub fn encode(&self) -> Vec<u8> {
        let heads = self.heads.as_deref();
        let mut out = Vec::with_capacity(24 + heads.map_or(0, |h| h.len() * 32));
        put_varint(&mut out, self.next_seq);
        put_varint(&mut out, self.log_len);
        match heads {
            None => out.push(0),
            Some(heads) => {
                out.push(1);
                put_varint(&mut out, heads.len() as u64);
                for head in heads {
                    out.extend_from_slice(head);
                }
            }
        }
        out
    }
}

/// Decodes a row; the error says what is malformed.
pub(super) fn decode(bytes: &[u8]) -> Result<RowRef<'_>, &'static str> {
    let mut rest = bytes;
    let next_seq = take_varint(&mut rest).ok_or("bad next_seq")?;
    let log_len = take_varint(&mut rest).ok_or("bad log_len")?;
    let (&tag, after) = rest.split_first().ok_or("no heads tag")?;
    rest = after;
    let heads = match tag {
        0 => None,
        1 => {
            let n = take_varint(&mut rest).ok_or("bad number of heads")?;
            let (heads, tail) = rest.as_chunks::<32>();
            if !tail.is_empty() || heads.len() as u64 != n {
                return Err("heads do not fill the row");
            }
            rest = &[];
            Some(heads)
        }
        _ => return Err("unknown heads tag"),
    };
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    if log_len > next_seq {
        return Err("log_len exceeds next_seq");
    }
    Ok(RowRef {
        next_seq,
        log_len,
        heads,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one LEB128 value; `None` if truncated or longer than a u64.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let low = u64::from(b & 0x7F);
        if i == 9 && low > 1 {
            return None;
        }
        v |= low << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<IndexRow> {
        vec![
            IndexRow::default(),
            IndexRow {
                next_seq: 300,
                log_len: 2,
                heads: Some(vec![]),
            },
            IndexRow {
                next_seq: u64::MAX,
                log_len: u64::MAX,
                heads: Some(vec![[7; 32], [0xAB; 32]]),
            },
            IndexRow {
                next_seq: 1,
                log_len: 1,
                heads: Some(vec![[1; 32]]),
            },
        ]
    }

    #[test]
    fn rows_round_trip() {
        for row in rows() {
            let bytes = row.encode();
            assert_eq!(decode(&bytes).map(RowRef::to_row), Ok(row));
        }
        assert_eq!(rows()[3].encode().len(), 36, "one head: 4 bytes + 32");
    }

    #[test]
    fn malformed_rows_are_errors() {
        for row in rows() {
            let bytes = row.encode();
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{row:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).is_err());
        }
        assert_eq!(decode(&[0, 0, 2]), Err("unknown heads tag"));
        assert_eq!(decode(&[1, 2, 0]), Err("log_len exceeds next_seq"));
        // An 11-byte varint, and a 10-byte one that overflows 64 bits.
        assert!(decode(&[[0xFF; 10].as_slice(), &[0x01, 0, 0]].concat()).is_err());
        assert!(decode(&[[0xFF; 9].as_slice(), &[0x02, 0, 0]].concat()).is_err());
        // A count of heads that does not match the bytes.
        assert!(decode(&[0, 0, 1, 2, 5]).is_err());
        let mut one = rows()[3].encode();
        one[3] = 2;
        assert!(decode(&one).is_err());
    }
}
