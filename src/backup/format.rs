//! The backup file: every document of a node, one record each, checked end to end.
//!
//! ```text
//! "CONCORDANT-BACKUP\n" 0x01                      header, version 1
//! 'D' id_len:u16 id data_len:u64 data crc:u32     one per document (big-endian lengths;
//!                                                 crc32 of id and data)
//! 'E' count:u64 crc:u32                           the end: records written, crc32 of all
//!                                                 the records' crcs
//! ```
//!
//! `data` is the document in Automerge's save format. A reader takes records one at a time
//! (constant memory beyond the largest document) and refuses, naming the byte offset, a
//! file that is not a backup, of another version, cut short, with a bad checksum, a wrong
//! count, or bytes after the end.
//!
//! Owns the byte format; no HTTP, no node.

use std::io::{self, Read, Write};

/// The header's magic.
const MAGIC: &[u8] = b"CONCORDANT-BACKUP\n";
/// The format version written and read.
const VERSION: u8 = 1;
/// The longest document id (as the API allows).
const MAX_ID: usize = crate::doc_id::MAX_DOC_ID;
/// The largest document a backup holds (as the API's largest body).
pub const MAX_DATA: u64 = 1 << 32;

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The bytes are not a backup this version reads.
    #[error("at byte {offset}: {what}")]
    Bad {
        /// Where.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// Writes a backup: [`Writer::doc`] per document, then [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    count: u64,
    crcs: crc32fast::Hasher,
}

impl<W: Write> Writer<W> {
    /// Starts a backup on `out` (writes the header).
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        Ok(Writer {
            out,
            count: 0,
            crcs: crc32fast::Hasher::new(),
        })
    }

    /// Writes one document.
    pub fn doc(&mut self, id: &str, data: &[u8]) -> io::Result<()> {
        let id_len = u16::try_from(id.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_ID)
            .ok_or_else(|| io::Error::other(format!("document id {id:?} is too long")))?;
        let data_len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if data_len > MAX_DATA {
            return Err(io::Error::other(format!("document {id:?} is over 4 GiB")));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(id.as_bytes());
        crc.update(data);
        let crc = crc.finalize();
        self.out.write_all(b"D")?;
        self.out.write_all(&id_len.to_be_bytes())?;
        self.out.write_all(id.as_bytes())?;
        self.out.write_all(&data_len.to_be_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&crc.to_be_bytes())?;
        self.crcs.update(&crc.to_be_bytes());
        self.count += 1;
        Ok(())
    }

    /// Writes the end; returns the output and the number of documents.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(b"E")?;
        self.out.write_all(&self.count.to_be_bytes())?;
        self.out.write_all(&self.crcs.finalize().to_be_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.count))
    }
}

/// Reads a backup record by record ([`Reader::next_doc`] until `None`, which comes only
/// after a valid end).
pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    count: u64,
    crcs: crc32fast::Hasher,
    ended: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<Self, FormatError> {
        let mut reader = Reader {
            input,
            offset: 0,
            count: 0,
            crcs: crc32fast::Hasher::new(),
            ended: false,
        };
        let magic = reader.bytes(MAGIC.len(), "the header")?;
        if magic != MAGIC {
            return Err(reader.bad(0, "not a concordant backup file"));
        }
        let version = reader.bytes(1, "the version")?[0];
        if version != VERSION {
            return Err(reader.bad(
                MAGIC.len() as u64,
                format!("backup format version {version}; this release reads version {VERSION}"),
            ));
        }
        Ok(reader)
    }

    /// The next document, `None` after the end (checked: the count and the checksum of the
    /// records, and nothing after it).
    pub fn next_doc(&mut self) -> Result<Option<(String, Vec<u8>)>, FormatError> {
        if self.ended {
            return Ok(None);
        }
        let start = self.offset;
        match self.bytes(1, "a record or the end")?[0] {
            b'D' => {
                let id_len = u16::from_be_bytes(self.array("the id's length")?);
                if usize::from(id_len) > MAX_ID || id_len == 0 {
                    return Err(self.bad(start, format!("a document id of {id_len} bytes")));
                }
                let id = self.bytes(usize::from(id_len), "the document id")?;
                let id = String::from_utf8(id)
                    .ok()
                    .filter(|id| crate::doc_id::is_valid_doc_id(id))
                    .ok_or_else(|| self.bad(start, "an invalid document id"))?;
                let data_len = u64::from_be_bytes(self.array("the document's length")?);
                if data_len > MAX_DATA {
                    return Err(self.bad(start, format!("document {id:?} of {data_len} bytes")));
                }
                let data = self.bytes(data_len as usize, "the document")?;
                let crc = u32::from_be_bytes(self.array("the record's checksum")?);
                let mut check = crc32fast::Hasher::new();
                check.update(id.as_bytes());
                check.update(&data);
                if check.finalize() != crc {
                    return Err(self.bad(start, format!("document {id:?}: checksum mismatch")));
                }
                self.crcs.update(&crc.to_be_bytes());
                self.count += 1;
                Ok(Some((id, data)))
            }
            b'E' => {
                let count = u64::from_be_bytes(self.array("the document count")?);
                let crc = u32::from_be_bytes(self.array("the checksum")?);
                if count != self.count {
                    return Err(self.bad(
                        start,
                        format!(
                            "the end says {count} documents, the file holds {}",
                            self.count
                        ),
                    ));
                }
                if crc != self.crcs.clone().finalize() {
                    return Err(self.bad(start, "the records' checksum does not match"));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(self.bad(self.offset, "bytes after the end"));
                }
                self.ended = true;
                Ok(None)
            }
            other => Err(self.bad(start, format!("unknown record kind {other:#04x}"))),
        }
    }

    /// Documents read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        self.fill(&mut out, what)?;
        Ok(out)
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        let got = (&mut self.input).take(n as u64).read_to_end(&mut out)?;
        if got < n {
            return Err(self.bad(
                self.offset + got as u64,
                format!("the file ends in {what} (cut short?)"),
            ));
        }
        self.offset += n as u64;
        Ok(out)
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
        let bytes = self.bytes(buf.len(), what)?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn bad(&self, offset: u64, what: impl Into<String>) -> FormatError {
        FormatError::Bad {
            offset,
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(docs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).expect("header");
        for (id, data) in docs {
            w.doc(id, data).expect("written");
        }
        w.finish().expect("end").0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, FormatError> {
        let mut r = Reader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(doc) = r.next_doc()? {
            out.push(doc);
        }
        Ok(out)
    }

    #[test]
    fn a_backup_reads_back_and_any_cut_or_flipped_byte_is_refused() {
        let docs: [(&str, &[u8]); 3] = [("a", b"first"), ("doc-b", b""), ("c.c", &[7; 300])];
        let bytes = backup(&docs);
        let back = read_all(&bytes).expect("valid");
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], ("c.c".to_string(), vec![7; 300]));
        assert!(read_all(&backup(&[])).expect("empty").is_empty());
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(read_all(&flipped).is_err(), "flipped byte {at}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = read_all(&longer).unwrap_err().to_string();
        assert!(e.contains("after the end"), "{e}");
        let e = read_all(b"hello").unwrap_err().to_string();
        assert!(
            e.contains("not a concordant backup") || e.contains("cut short"),
            "{e}"
        );
    }
}
