//! Decompression bombs for the tests of bounded inflation (`tests/inflate_limit.rs`,
//! `tests/hostile.rs`), included with `#[path]`: a compressed Automerge change chunk whose
//! deflate data inflates far beyond its size; and the LEB128 of Automerge's formats.
#![allow(dead_code)]

use std::io::Write;

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// A compressed change chunk (type 2) whose deflate data inflates to `n` zero bytes; about
/// a thousandth of that in size.
pub fn change_chunk_bomb(n: usize) -> Vec<u8> {
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; MIB];
    for _ in 0..n / MIB {
        deflate.write_all(&zeros).unwrap();
    }
    deflate.write_all(&zeros[..n % MIB]).unwrap();
    let data = deflate.finish().unwrap();
    // Magic bytes, a checksum (checked only after parsing), the chunk type, the length.
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    uleb(&mut chunk, data.len() as u64);
    chunk.extend(data);
    chunk
}

/// Appends `v` as unsigned LEB128.
pub fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
