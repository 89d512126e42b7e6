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

/// A run-length encoded column of `count` copies of one encoded value (empty for none).
pub fn rle_run(count: u64, value: &[u8]) -> Vec<u8> {
    let mut col = Vec::new();
    if count > 0 {
        sleb(&mut col, count as i64);
        col.extend_from_slice(value);
    }
    col
}

/// A run-length encoded column of `count` nulls.
pub fn rle_nulls(count: u64) -> Vec<u8> {
    let mut col = vec![0];
    uleb(&mut col, count);
    col
}

/// `v` as unsigned LEB128.
pub fn uleb_bytes(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    uleb(&mut out, v);
    out
}

/// `v` as signed LEB128 (the run-length counts of Automerge's columns are signed).
pub fn sleb_bytes(v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    sleb(&mut out, v);
    out
}

/// An uncompressed change chunk (type 1, valid checksum) whose run-length encoded columns
/// declare `ops` ops, each a put of null at key "k" of the root map with `preds` predecessors,
/// in about a hundred bytes whatever the counts.
pub fn rle_ops_change(ops: u64, preds: u64) -> Vec<u8> {
    let pred_group = uleb_bytes(preds);
    let bools = uleb_bytes(ops);
    let total_preds = ops * preds;
    // (spec, data): spec = column id << 4 | type, in ascending order.
    let columns: Vec<(u64, Vec<u8>)> = vec![
        (1, rle_nulls(ops)),               // obj actor: the root
        (2, rle_nulls(ops)),               // obj counter
        (17, rle_nulls(ops)),              // key actor
        (19, rle_nulls(ops)),              // key counter (delta)
        (21, rle_run(ops, &[1, b'k'])),    // key string "k"
        (52, bools),                       // insert: all false
        (66, rle_run(ops, &[1])),          // action 1: put
        (86, rle_run(ops, &[0])),          // value metadata: null
        (112, rle_run(ops, &pred_group)),  // pred group: `preds` each
        (113, rle_run(total_preds, &[0])), // pred actor 0
        (115, rle_run(total_preds, &[0])), // pred counter delta 0
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
    sealed(1, &body)
}

/// The rows a hand-made document chunk declares ([`rle_ops_document`]).
#[derive(Debug, Clone, Copy)]
pub struct DocRows {
    /// Its ops, each a put of null at key "k" of the root map.
    pub ops: u64,
    /// The successors of each op.
    pub succs_each: u64,
    /// Its changes, all by one actor.
    pub changes: u64,
    /// The dependencies of each change.
    pub deps_each: u64,
}

/// A document chunk (type 0, valid checksum) whose run-length encoded columns declare the
/// given rows, in under 200 bytes whatever the counts. Its heads are made up, so it
/// parses but does not load.
pub fn rle_ops_document(rows: DocRows) -> Vec<u8> {
    let DocRows {
        ops,
        succs_each,
        changes,
        deps_each,
    } = rows;
    // (spec, data): spec = column id << 4 | type, in ascending order.
    let change_columns: Vec<(u64, Vec<u8>)> = vec![
        (1, rle_run(changes, &[0])),                    // actor 0
        (3, rle_run(changes, &[1])),                    // seq: delta 1
        (19, rle_run(changes, &[1])),                   // max op: delta 1
        (64, rle_run(changes, &uleb_bytes(deps_each))), // deps group
        (67, rle_run(changes * deps_each, &[0])),       // deps: delta 0
    ];
    let op_columns: Vec<(u64, Vec<u8>)> = vec![
        (1, rle_nulls(ops)),                          // obj actor: the root
        (2, rle_nulls(ops)),                          // obj counter
        (17, rle_nulls(ops)),                         // key actor
        (19, rle_nulls(ops)),                         // key counter (delta)
        (21, rle_run(ops, &[1, b'k'])),               // key string "k"
        (33, rle_run(ops, &[0])),                     // id actor 0
        (35, rle_run(ops, &[1])),                     // id counter: delta 1
        (52, uleb_bytes(ops)),                        // insert: all false
        (66, rle_run(ops, &[1])),                     // action 1: put
        (86, rle_run(ops, &[0])),                     // value metadata: null
        (128, rle_run(ops, &uleb_bytes(succs_each))), // succ group
        (129, rle_run(ops * succs_each, &[0])),       // succ actor 0
        (131, rle_run(ops * succs_each, &[0])),       // succ counter: delta 0
    ];
    let mut body = Vec::new();
    uleb(&mut body, 1); // one actor
    uleb(&mut body, 16);
    body.extend([7u8; 16]);
    uleb(&mut body, 1); // one head, made up
    body.extend([9u8; 32]);
    for columns in [&change_columns, &op_columns] {
        uleb(&mut body, columns.len() as u64);
        for (spec, data) in columns.iter() {
            uleb(&mut body, *spec);
            uleb(&mut body, data.len() as u64);
        }
    }
    for columns in [&change_columns, &op_columns] {
        for (_, data) in columns.iter() {
            body.extend(data);
        }
    }
    uleb(&mut body, 0); // the head's index
    sealed(0, &body)
}

/// A chunk of type `chunk_type` around `body`: the magic bytes, the checksum (the first 4
/// bytes of the SHA-256 of the type, length and body), the type, the length, the body.
fn sealed(chunk_type: u8, body: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut hashed = vec![chunk_type];
    uleb(&mut hashed, body.len() as u64);
    hashed.extend(body);
    let hash = sha2::Sha256::digest(&hashed);
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83];
    chunk.extend(&hash[..4]);
    chunk.extend(hashed);
    chunk
}
