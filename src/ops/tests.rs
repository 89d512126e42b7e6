//! Unit tests of parsing and applying ops against real Automerge documents.

use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc};
use serde_json::{json, Value};

use super::*;
use crate::json::doc_to_json;

/// Applies a JSON op list as one transaction: commits on success, rolls back on error
/// (and then checks that the document is unchanged).
fn run(doc: &mut Automerge, ops: Value) -> Result<(), OpError> {
    let ops = parse_ops(&ops)?;
    let heads = doc.get_heads();
    let before = doc_to_json(doc);
    let saved = doc.save();
    let mut tx = doc.transaction();
    match apply_ops(&mut tx, &ops) {
        Ok(()) => {
            tx.commit();
            Ok(())
        }
        Err(e) => {
            tx.rollback();
            assert_eq!(doc.get_heads(), heads, "heads changed by a refused request");
            assert_eq!(
                doc_to_json(doc),
                before,
                "content changed by a refused request"
            );
            assert_eq!(
                doc.save(),
                saved,
                "saved bytes changed by a refused request"
            );
            Err(e)
        }
    }
}

fn doc(ops: Value) -> Automerge {
    let mut doc = Automerge::new();
    run(&mut doc, ops).expect("setup ops apply");
    doc
}

fn status(doc: &mut Automerge, ops: Value) -> u16 {
    run(doc, ops).expect_err("ops must be refused").status()
}

fn base() -> Automerge {
    doc(json!([
        {"op": "set", "path": ["m"], "value": {"k": 1, "inner": {"x": "y"}}},
        {"op": "set", "path": ["l"], "value": [10, 20, 30]},
        {"op": "text", "path": ["t"], "value": "héllo"},
        {"op": "counter", "path": ["c"], "value": 5},
        {"op": "set", "path": ["s"], "value": "plain string"},
    ]))
}

// ---------------------------------------------------------------- parsing

#[test]
fn parses_every_op() {
    let ops = parse_ops(&json!([
        {"op": "set", "path": ["a", 0], "value": {"x": [1]}},
        {"op": "del", "path": ["a"]},
        {"op": "counter", "path": ["c"], "value": -3},
        {"op": "inc", "path": ["c"], "by": 2},
        {"op": "push", "path": ["l"], "value": null},
        {"op": "insert", "path": ["l", 2], "value": "v"},
        {"op": "text", "path": ["t"], "value": "abc"},
        {"op": "splice", "path": ["t"], "index": 1, "delete": 1, "insert": "Z"},
    ]))
    .unwrap();
    let key = |k: &str| PathElem::Key(k.into());
    assert_eq!(
        ops,
        vec![
            Op::Set {
                path: vec![key("a"), PathElem::Index(0)],
                value: json!({"x": [1]})
            },
            Op::Del {
                path: vec![key("a")]
            },
            Op::Counter {
                path: vec![key("c")],
                value: -3
            },
            Op::Inc {
                path: vec![key("c")],
                by: 2
            },
            Op::Push {
                path: vec![key("l")],
                value: Value::Null
            },
            Op::Insert {
                path: vec![key("l"), PathElem::Index(2)],
                value: json!("v")
            },
            Op::Text {
                path: vec![key("t")],
                value: "abc".into()
            },
            Op::Splice {
                path: vec![key("t")],
                index: 1,
                delete: 1,
                insert: "Z".into()
            },
        ]
    );
    for op in &ops {
        assert_eq!(parse_ops(&json!([op.to_json()])).unwrap(), vec![op.clone()]);
    }
}

#[test]
fn parses_request_defaults_and_ack() {
    let ops = r#"[{"op":"del","path":["a"]}]"#;
    let req = parse_write_request(format!(r#"{{"ops":{ops}}}"#).as_bytes()).unwrap();
    assert_eq!(req.ack, Ack::Local);
    assert_eq!(req.timeout_ms, DEFAULT_TIMEOUT_MS);
    for (ack, want) in [
        (r#""local""#, Ack::Local),
        (r#""all""#, Ack::All),
        ("0", Ack::Local),
        ("1", Ack::Peers(1)),
        ("7", Ack::Peers(7)),
    ] {
        let body = format!(r#"{{"ops":{ops},"ack":{ack},"timeout_ms":12}}"#);
        let req = parse_write_request(body.as_bytes()).unwrap();
        assert_eq!((req.ack, req.timeout_ms), (want, 12), "ack {ack}");
        assert_eq!(
            parse_write_request(req.to_json().to_string().as_bytes()).unwrap(),
            req
        );
    }
}

#[test]
fn malformed_requests_are_400() {
    let op = r#"{"op":"del","path":["a"]}"#;
    let bodies = [
        "".to_string(),
        "{".to_string(),
        "\u{0}\u{ff}".to_string(),
        "[]".to_string(),
        "null".to_string(),
        "{}".to_string(),
        r#"{"ops":[]}"#.to_string(),
        r#"{"ops":{}}"#.to_string(),
        format!(r#"{{"ops":[{op}],"extra":1}}"#),
        format!(r#"{{"ops":[{op}],"ack":"some"}}"#),
        format!(r#"{{"ops":[{op}],"ack":-1}}"#),
        format!(r#"{{"ops":[{op}],"ack":1.5}}"#),
        format!(r#"{{"ops":[{op}],"ack":null}}"#),
        format!(r#"{{"ops":[{op}],"timeout_ms":-1}}"#),
        format!(r#"{{"ops":[{op}],"timeout_ms":"5"}}"#),
    ];
    for body in bodies {
        let err = parse_write_request(body.as_bytes()).expect_err(&body);
        assert_eq!(err.status(), 400, "{body}: {err}");
    }
}

#[test]
fn malformed_ops_are_400() {
    let deep_path: Vec<Value> = (0..=MAX_DEPTH).map(|_| json!("k")).collect();
    let mut deep_value = json!(1);
    for _ in 0..MAX_DEPTH {
        deep_value = json!([deep_value]);
    }
    let cases = [
        json!(["set"]),
        json!([{"path": ["a"], "value": 1}]),
        json!([{"op": 5, "path": ["a"]}]),
        json!([{"op": "frobnicate", "path": ["a"]}]),
        json!([{"op": "set", "path": ["a"]}]),
        json!([{"op": "set", "value": 1}]),
        json!([{"op": "set", "path": ["a"], "value": 1, "by": 2}]),
        json!([{"op": "set", "path": "a", "value": 1}]),
        json!([{"op": "set", "path": [-1], "value": 1}]),
        json!([{"op": "set", "path": [1.5], "value": 1}]),
        json!([{"op": "set", "path": [true], "value": 1}]),
        json!([{"op": "set", "path": [], "value": 1}]),
        json!([{"op": "set", "path": [], "value": [1]}]),
        json!([{"op": "del", "path": []}]),
        json!([{"op": "counter", "path": ["c"], "value": 1.5}]),
        json!([{"op": "counter", "path": ["c"], "value": u64::MAX}]),
        json!([{"op": "counter", "path": ["c"], "value": MAX_COUNTER + 1}]),
        json!([{"op": "inc", "path": ["c"], "by": -MAX_COUNTER - 1}]),
        json!([{"op": "inc", "path": ["c"], "by": i64::MIN}]),
        json!([{"op": "counter", "path": [], "value": 1}]),
        json!([{"op": "inc", "path": ["c"], "by": "1"}]),
        json!([{"op": "inc", "path": ["c"]}]),
        json!([{"op": "push", "path": [], "value": 1}]),
        json!([{"op": "insert", "path": ["l"], "value": 1}]),
        json!([{"op": "insert", "path": [], "value": 1}]),
        json!([{"op": "text", "path": ["t"], "value": 5}]),
        json!([{"op": "splice", "path": ["t"], "index": -1, "delete": 0, "insert": ""}]),
        json!([{"op": "splice", "path": ["t"], "index": 0, "insert": ""}]),
        json!([{"op": "splice", "path": ["t"], "index": 0, "delete": 0, "insert": 1}]),
        json!([{"op": "splice", "path": [], "index": 0, "delete": 0, "insert": ""}]),
        json!([{"op": "del", "path": deep_path}]),
        json!([{"op": "set", "path": ["a"], "value": deep_value}]),
        json!([{"op": "push", "path": ["a"], "value": deep_value[0]}]),
    ];
    for ops in cases {
        let err = parse_ops(&ops).expect_err(&ops.to_string());
        assert_eq!(err.status(), 400, "{ops}: {err}");
        // apply_ops refuses directly-built invalid ops as well, changing nothing.
    }
    let ok_deep = json!([{"op": "set", "path": ["a"], "value": deep_value[0]}]);
    assert!(
        parse_ops(&ok_deep).is_ok(),
        "exactly MAX_DEPTH levels is allowed"
    );
}

#[test]
fn apply_refuses_invalid_built_ops_as_400() {
    let mut d = base();
    let mut tx = d.transaction();
    let op = Op::Set {
        path: vec![],
        value: json!(3),
    };
    let err = apply_ops(&mut tx, &[op]).unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    let op = Op::Insert {
        path: vec![PathElem::Key("l".into())],
        value: json!(3),
    };
    assert_eq!(apply_ops(&mut tx, &[op]).unwrap_err().status(), 400);
    tx.rollback();
}

#[test]
fn errors_name_the_op_and_the_place() {
    let err = parse_ops(&json!([{"op": "del", "path": ["a"]}, {"op": "nope"}])).unwrap_err();
    assert!(err.to_string().contains("ops[1]"), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let mut d = base();
    let err = run(
        &mut d,
        json!([{"op": "del", "path": ["l"]}, {"op": "set", "path": ["m", "zz", "q"], "value": 1}]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ops[1]") && msg.contains(r#"at ["m","zz"]: no key "zz""#),
        "{msg}"
    );
}

// ---------------------------------------------------------------- applying

#[test]
fn set_on_maps_and_lists_with_every_json_type() {
    let mut d = base();
    run(
        &mut d,
        json!([
            {"op": "set", "path": ["m", "k"], "value": 2},
            {"op": "set", "path": ["m", "new"], "value": {
                "int": -7, "big": u64::MAX, "float": 1.5, "whole_float": 2.0, "bool": true,
                "null": null, "str": "s", "list": [1, [2, {"deep": []}]], "empty": {}
            }},
            {"op": "set", "path": ["l", 1], "value": {"was": 20}},
            {"op": "set", "path": ["m", "inner", "x"], "value": "z"},
        ]),
    )
    .unwrap();
    assert_eq!(
        doc_to_json(&d),
        json!({
            "m": {"k": 2, "inner": {"x": "z"}, "new": {
                "int": -7, "big": u64::MAX, "float": 1.5, "whole_float": 2.0, "bool": true,
                "null": null, "str": "s", "list": [1, [2, {"deep": []}]], "empty": {}
            }},
            "l": [10, {"was": 20}, 30],
            "t": "héllo",
            "c": 5,
            "s": "plain string",
        })
    );
    // JSON strings are string scalars, not text objects.
    let (v, _) = d.get(automerge::ROOT, "s").unwrap().unwrap();
    assert!(matches!(v, automerge::Value::Scalar(_)));
}

#[test]
fn set_at_root_sets_every_key_and_keeps_others() {
    let mut d = base();
    run(
        &mut d,
        json!([{"op": "set", "path": [], "value": {"c": 1, "n": [1]}}]),
    )
    .unwrap();
    let j = doc_to_json(&d);
    assert_eq!(
        (&j["c"], &j["n"], &j["s"]),
        (&json!(1), &json!([1]), &json!("plain string"))
    );
}

#[test]
fn del_on_maps_and_lists() {
    let mut d = base();
    run(
        &mut d,
        json!([
            {"op": "del", "path": ["m", "inner"]},
            {"op": "del", "path": ["l", 0]},
            {"op": "del", "path": ["t"]},
            {"op": "del", "path": ["c"]},
        ]),
    )
    .unwrap();
    assert_eq!(
        doc_to_json(&d),
        json!({"m": {"k": 1}, "l": [20, 30], "s": "plain string"})
    );
}

#[test]
fn counters_in_maps_and_lists() {
    let mut d = base();
    run(
        &mut d,
        json!([
            {"op": "inc", "path": ["c"], "by": 10},
            {"op": "inc", "path": ["c"], "by": -3},
            {"op": "push", "path": ["l"], "value": 0},
            {"op": "counter", "path": ["l", 3], "value": -1},
            {"op": "inc", "path": ["l", 3], "by": 2},
            {"op": "counter", "path": ["m", "k"], "value": 100},
        ]),
    )
    .unwrap();
    let j = doc_to_json(&d);
    assert_eq!(
        (&j["c"], &j["l"], &j["m"]["k"]),
        (&json!(12), &json!([10, 20, 30, 1]), &json!(100))
    );
    // The counter range is ±MAX_COUNTER, both ends included.
    run(
        &mut d,
        json!([{"op": "inc", "path": ["c"], "by": MAX_COUNTER - 12}]),
    )
    .unwrap();
    assert_eq!(doc_to_json(&d)["c"], json!(MAX_COUNTER));
    run(
        &mut d,
        json!([{"op": "inc", "path": ["c"], "by": -MAX_COUNTER}]),
    )
    .unwrap();
    run(
        &mut d,
        json!([{"op": "inc", "path": ["c"], "by": -MAX_COUNTER}]),
    )
    .unwrap();
    assert_eq!(doc_to_json(&d)["c"], json!(-MAX_COUNTER));
    run(
        &mut d,
        json!([{"op": "inc", "path": ["c"], "by": MAX_COUNTER + 12}]),
    )
    .unwrap_err();
    run(
        &mut d,
        json!([{"op": "inc", "path": ["c"], "by": MAX_COUNTER}]),
    )
    .unwrap();
    run(&mut d, json!([{"op": "inc", "path": ["c"], "by": 12}])).unwrap();
    // Two transactions increment the same counter: both count.
    run(&mut d, json!([{"op": "inc", "path": ["c"], "by": 1}])).unwrap();
    assert_eq!(doc_to_json(&d)["c"], json!(13));
}

#[test]
fn push_and_insert() {
    let mut d = base();
    run(
        &mut d,
        json!([
            {"op": "push", "path": ["l"], "value": {"p": [1]}},
            {"op": "insert", "path": ["l", 0], "value": "first"},
            {"op": "insert", "path": ["l", 2], "value": "mid"},
            {"op": "insert", "path": ["l", 6], "value": "end"},
            {"op": "set", "path": ["m", "nl"], "value": []},
            {"op": "push", "path": ["m", "nl"], "value": 1},
            {"op": "insert", "path": ["m", "nl", 0], "value": 0},
            {"op": "push", "path": ["l", 5, "p"], "value": 2},
        ]),
    )
    .unwrap();
    let j = doc_to_json(&d);
    assert_eq!(
        j["l"],
        json!(["first", 10, "mid", 20, 30, {"p": [1, 2]}, "end"])
    );
    assert_eq!(j["m"]["nl"], json!([0, 1]));
}

#[test]
fn text_and_splice_count_code_points() {
    let mut d = base();
    assert_eq!(d.text_encoding(), automerge::TextEncoding::UnicodeCodePoint);
    run(
        &mut d,
        json!([
            // "héllo": é is one code point (two UTF-8 bytes).
            {"op": "splice", "path": ["t"], "index": 1, "delete": 1, "insert": "E"},
            {"op": "splice", "path": ["t"], "index": 5, "delete": 0, "insert": " 🌍!"},
            {"op": "splice", "path": ["t"], "index": 0, "delete": 1, "insert": ""},
            {"op": "push", "path": ["l"], "value": 0},
            {"op": "text", "path": ["l", 3], "value": ""},
            {"op": "splice", "path": ["l", 3], "index": 0, "delete": 0, "insert": "in list"},
        ]),
    )
    .unwrap();
    let j = doc_to_json(&d);
    assert_eq!(j["t"], json!("Ello 🌍!"));
    assert_eq!(j["l"][3], json!("in list"));
    // The emoji is one unit: deleting the last two units removes "🌍!".
    run(
        &mut d,
        json!([{"op": "splice", "path": ["t"], "index": 5, "delete": 2, "insert": ""}]),
    )
    .unwrap();
    assert_eq!(doc_to_json(&d)["t"], json!("Ello "));
}

#[test]
fn deep_nested_paths() {
    let mut d = Automerge::new();
    run(
        &mut d,
        json!([{"op": "set", "path": ["a"], "value": {"b": [{"c": {"d": []}}]}}]),
    )
    .unwrap();
    run(
        &mut d,
        json!([
            {"op": "push", "path": ["a", "b", 0, "c", "d"], "value": "x"},
            {"op": "counter", "path": ["a", "b", 0, "n"], "value": 1},
            {"op": "inc", "path": ["a", "b", 0, "n"], "by": 1},
            {"op": "text", "path": ["a", "b", 0, "c", "t"], "value": "ab"},
            {"op": "splice", "path": ["a", "b", 0, "c", "t"], "index": 2, "delete": 0, "insert": "c"},
        ]),
    )
    .unwrap();
    assert_eq!(
        doc_to_json(&d),
        json!({"a": {"b": [{"c": {"d": ["x"], "t": "abc"}, "n": 2}]}})
    );
}

#[test]
fn conflicts_with_the_document_are_409() {
    let cases = [
        // through a missing key, a scalar, a text, a counter
        json!([{"op": "set", "path": ["nope", "x"], "value": 1}]),
        json!([{"op": "set", "path": ["s", "x"], "value": 1}]),
        json!([{"op": "set", "path": ["t", 0], "value": 1}]),
        json!([{"op": "set", "path": ["t", "k"], "value": 1}]),
        json!([{"op": "set", "path": ["c", "k"], "value": 1}]),
        // key on a list, index on a map, index out of range
        json!([{"op": "set", "path": ["l", "k"], "value": 1}]),
        json!([{"op": "set", "path": ["m", 0], "value": 1}]),
        json!([{"op": "set", "path": [0], "value": 1}]),
        json!([{"op": "set", "path": ["l", 3], "value": 1}]),
        json!([{"op": "set", "path": ["l", 9, "k"], "value": 1}]),
        json!([{"op": "counter", "path": ["l", 3], "value": 1}]),
        json!([{"op": "text", "path": ["l", 3], "value": "x"}]),
        // del of a missing key or element
        json!([{"op": "del", "path": ["nope"]}]),
        json!([{"op": "del", "path": ["m", "nope"]}]),
        json!([{"op": "del", "path": ["l", 3]}]),
        json!([{"op": "del", "path": ["t", 0]}]),
        // inc of a missing value, a non-counter, an overflow
        json!([{"op": "inc", "path": ["nope"], "by": 1}]),
        json!([{"op": "inc", "path": ["s"], "by": 1}]),
        json!([{"op": "inc", "path": ["m", "k"], "by": 1}]),
        json!([{"op": "inc", "path": ["m"], "by": 1}]),
        json!([{"op": "inc", "path": ["l", 5], "by": 1}]),
        json!([{"op": "inc", "path": ["c"], "by": MAX_COUNTER}]),
        json!([{"op": "inc", "path": ["c"], "by": 1}, {"op": "inc", "path": ["c"], "by": MAX_COUNTER - 5}]),
        // push / insert on a non-list or out of range
        json!([{"op": "push", "path": ["m"], "value": 1}]),
        json!([{"op": "push", "path": ["t"], "value": 1}]),
        json!([{"op": "push", "path": ["s"], "value": 1}]),
        json!([{"op": "push", "path": ["nope"], "value": 1}]),
        json!([{"op": "insert", "path": ["l", 4], "value": 1}]),
        json!([{"op": "insert", "path": ["m", 0], "value": 1}]),
        json!([{"op": "insert", "path": ["t", 0], "value": 1}]),
        // splice on a non-text or out of range
        json!([{"op": "splice", "path": ["s"], "index": 0, "delete": 0, "insert": "x"}]),
        json!([{"op": "splice", "path": ["l"], "index": 0, "delete": 0, "insert": "x"}]),
        json!([{"op": "splice", "path": ["nope"], "index": 0, "delete": 0, "insert": "x"}]),
        json!([{"op": "splice", "path": ["t"], "index": 6, "delete": 0, "insert": "x"}]),
        json!([{"op": "splice", "path": ["t"], "index": 3, "delete": 3, "insert": ""}]),
        json!([{"op": "splice", "path": ["t"], "index": 1, "delete": usize::MAX, "insert": ""}]),
    ];
    for ops in cases {
        let mut d = base();
        assert_eq!(status(&mut d, ops.clone()), 409, "{ops}");
    }
    assert_eq!(OpError::Automerge("x".into()).status(), 409);
}

#[test]
fn a_refused_request_changes_nothing() {
    let mut d = base();
    let heads = d.get_heads();
    let before = doc_to_json(&d);
    let ops = parse_ops(&json!([
        {"op": "set", "path": ["m", "k"], "value": {"big": [1, 2, 3]}},
        {"op": "push", "path": ["l"], "value": "x"},
        {"op": "inc", "path": ["c"], "by": 5},
        {"op": "splice", "path": ["t"], "index": 0, "delete": 2, "insert": "J"},
        {"op": "del", "path": ["s"]},
        {"op": "text", "path": ["new"], "value": "t"},
        {"op": "del", "path": ["l", 99]},
    ]))
    .unwrap();
    let mut tx = d.transaction();
    let err = apply_ops(&mut tx, &ops).unwrap_err();
    assert_eq!(err.status(), 409);
    assert!(err.to_string().contains("ops[6]"), "{err}");
    assert!(
        tx.pending_ops() > 0,
        "the earlier ops were applied to the transaction"
    );
    tx.rollback();
    assert_eq!(d.get_heads(), heads);
    assert_eq!(doc_to_json(&d), before);
    // The document still takes writes afterwards.
    run(&mut d, json!([{"op": "inc", "path": ["c"], "by": 1}])).unwrap();
    assert_ne!(d.get_heads(), heads);
    assert_eq!(doc_to_json(&d)["c"], json!(6));
}

#[test]
fn ops_work_inside_an_autocommit_document_too() {
    let mut d = automerge::AutoCommit::new();
    let ops = parse_ops(&json!([{"op": "set", "path": ["a"], "value": [1]}])).unwrap();
    apply_ops(&mut d, &ops).unwrap();
    assert_eq!(doc_to_json(&d), json!({"a": [1]}));
}

#[test]
fn rollback_after_merges_and_conflicts_restores_everything() {
    let mut a = base();
    let mut b = Automerge::new();
    b.merge(&mut a).unwrap();
    run(
        &mut a,
        json!([{"op": "set", "path": ["m", "k"], "value": "a"}]),
    )
    .unwrap();
    run(&mut b, json!([{"op": "set", "path": ["m", "k"], "value": "b"}, {"op": "inc", "path": ["c"], "by": 2}]))
        .unwrap();
    a.merge(&mut b).unwrap();
    let (_, m) = a.get(automerge::ROOT, "m").unwrap().unwrap();
    assert_eq!(a.get_all(&m, "k").unwrap().len(), 2, "a real conflict");
    let heads = a.get_heads();
    let saved = a.save();
    // `run` checks heads, JSON and saved bytes after the rollback.
    let err = run(
        &mut a,
        json!([
            {"op": "set", "path": ["m", "k"], "value": "again"},
            {"op": "inc", "path": ["c"], "by": 1},
            {"op": "splice", "path": ["t"], "index": 99, "delete": 0, "insert": ""},
        ]),
    )
    .unwrap_err();
    assert_eq!(err.status(), 409);
    assert_eq!((a.get_heads(), a.save()), (heads, saved));
    b.merge(&mut a).unwrap();
    assert_eq!(doc_to_json(&a), doc_to_json(&b));
    assert_eq!(doc_to_json(&a)["c"], json!(7));
}
