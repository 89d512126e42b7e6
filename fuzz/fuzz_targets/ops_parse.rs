//! Fuzz target `ops_parse`: the HTTP API's JSON ops parser on arbitrary bytes.
//!
//! `parse_write_request` must never panic and refuses only with 400; what parses prints
//! back (`to_json`) to an equal request; its ops apply to an empty Automerge document,
//! then once more to the result, each time committing or refusing with 409, never
//! panicking.

#![no_main]

use automerge::Automerge;
use concordant::json::doc_to_json;
use concordant::ops::{apply_ops, parse_write_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = match parse_write_request(data) {
        Ok(req) => req,
        Err(e) => {
            assert_eq!(e.status(), 400, "{e}");
            return;
        }
    };
    let printed = req.to_json().to_string();
    let again = parse_write_request(printed.as_bytes()).expect("a printed request parses");
    assert_eq!(again, req);
    let mut doc = Automerge::new();
    for _ in 0..2 {
        let mut tx = doc.transaction();
        match apply_ops(&mut tx, &req.ops) {
            Ok(()) => {
                tx.commit();
            }
            Err(e) => {
                assert_eq!(e.status(), 409, "{e}");
                tx.rollback();
            }
        }
        let _ = doc_to_json(&doc);
    }
});
