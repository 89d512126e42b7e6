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

/// Appends `v` as signed LEB128.
pub fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// An uncompressed change chunk (type 1, valid checksum) whose run-length encoded columns
/// declare `ops` ops, each a put of null at key "k" of the root map with `preds` predecessors,
/// in about a hundred bytes whatever the counts.
pub fn rle_ops_change(ops: u64, preds: u64) -> Vec<u8> {
    use sha2::Digest;
    let n = ops as i64;
    let run = |count: i64, value: &[u8]| {
        let mut col = Vec::new();
        sleb(&mut col, count);
        col.extend_from_slice(value);
        col
    };
    let nulls = |count: u64| {
        let mut col = vec![0];
        uleb(&mut col, count);
        col
    };
    let mut pred_group = Vec::new();
    uleb(&mut pred_group, preds);
    let mut bools = Vec::new();
    uleb(&mut bools, ops);
    let total_preds = (ops * preds) as i64;
    // (spec, data): spec = column id << 4 | type, in ascending order.
    let columns: Vec<(u64, Vec<u8>)> = vec![
        (1, nulls(ops)),               // obj actor: the root
        (2, nulls(ops)),               // obj counter
        (17, nulls(ops)),              // key actor
        (19, nulls(ops)),              // key counter (delta)
        (21, run(n, &[1, b'k'])),      // key string "k"
        (52, bools),                   // insert: all false
        (66, run(n, &[1])),            // action 1: put
        (86, run(n, &[0])),            // value metadata: null
        (112, run(n, &pred_group)),    // pred group: `preds` each
        (113, run(total_preds, &[0])), // pred actor 0
        (115, run(total_preds, &[0])), // pred counter delta 0
    ];
    let mut body = Vec::new();
    uleb(&mut body, 0); // no dependencies
    uleb(&mut body, 16);
    body.extend([7u8; 16]); // the actor
    uleb(&mut body, 1); // seq
    uleb(&mut body, 1); // start op
    sleb(&mut body, 0); // time
    uleb(&mut body, 0); // no message
    uleb(&mut body, 0); // no other actors
    uleb(&mut body, columns.len() as u64);
    for (spec, data) in &columns {
        uleb(&mut body, *spec);
        uleb(&mut body, data.len() as u64);
    }
    for (_, data) in &columns {
        body.extend(data);
    }
    let mut hashed = vec![1u8];
    uleb(&mut hashed, body.len() as u64);
    hashed.extend(&body);
    let hash = sha2::Sha256::digest(&hashed);
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83];
    chunk.extend(&hash[..4]);
    chunk.extend(hashed);
    chunk
}
