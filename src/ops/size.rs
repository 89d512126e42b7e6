//! The size of the change a list of [`Op`]s makes, as the change caps of
//! [`crate::limits::ChangeLimits`] count it, measured from the ops alone (one walk over
//! them, no document): the ops Automerge will create, an estimate of the encoded bytes, and
//! the largest value.

use serde_json::Value;

use super::{Op, OpError, PathElem};
use crate::limits::{ChangeRefused, ChangeSize};

/// The estimated encoded bytes of one op besides its strings (action, object, key and
/// predecessor columns).
pub const OP_OVERHEAD: usize = 16;

/// The size of the one change that applying `ops` makes. Ops count as Automerge creates
/// them: one per map, list and scalar of a JSON value (the root of a `set` with an empty
/// path is not one), one for a `text` object plus one per character of its text, one per
/// character a `splice` deletes or inserts, one per `del`, `counter` and `inc`. Characters
/// are Unicode code points, the documents' text encoding. Bytes are the bytes of every
/// string and key written plus [`OP_OVERHEAD`] per op.
pub fn change_size(ops: &[Op]) -> ChangeSize {
    let mut size = Walk::default();
    for op in ops {
        size.op(op);
    }
    ChangeSize {
        ops: size.ops,
        exact: true,
        bytes: size
            .strings
            .saturating_add(size.ops.saturating_mul(OP_OVERHEAD)),
        largest_value: size.largest,
        preds: 0,
    }
}

/// Refuses a transaction whose pending ops are over `max_ops` (`[tuning] max_change_ops`):
/// the node's own check of what [`super::apply_ops`] made, after the API checked the ops
/// with [`change_size`]. The caller rolls the transaction back.
pub fn check_pending_ops(pending: usize, max_ops: usize) -> Result<(), OpError> {
    if pending <= max_ops {
        return Ok(());
    }
    let refused = ChangeRefused::ChangeOps {
        ops: pending,
        exact: true,
        limit: max_ops,
    };
    Err(OpError::TooLarge(refused.to_string()))
}

/// Counts of the walk so far.
#[derive(Default)]
struct Walk {
    ops: usize,
    strings: usize,
    largest: usize,
}

impl Walk {
    fn op(&mut self, op: &Op) {
        match op {
            Op::Set { path, value } if path.is_empty() => {
                if let Value::Object(map) = value {
                    for (key, child) in map {
                        self.string(key.len());
                        self.value(child);
                    }
                }
            }
            Op::Set { path, value } => {
                self.slot(path);
                self.value(value);
            }
            Op::Push { value, .. } | Op::Insert { value, .. } => self.value(value),
            Op::Del { path } | Op::Counter { path, .. } | Op::Inc { path, .. } => {
                self.slot(path);
                self.ops = self.ops.saturating_add(1);
            }
            Op::Text { path, value } => {
                self.slot(path);
                self.string(value.len());
                self.ops = self
                    .ops
                    .saturating_add(1)
                    .saturating_add(value.chars().count());
            }
            Op::Splice { delete, insert, .. } => {
                self.string(insert.len());
                self.ops = self
                    .ops
                    .saturating_add(*delete)
                    .saturating_add(insert.chars().count());
            }
        }
    }

    /// The key an op writes, when the last element of its path is one.
    fn slot(&mut self, path: &[PathElem]) {
        if let Some(PathElem::Key(key)) = path.last() {
            self.string(key.len());
        }
    }

    /// A JSON value: one op per node, its strings and keys. Recursion is bounded by the
    /// depth check of parsing ([`super::MAX_DEPTH`]).
    fn value(&mut self, value: &Value) {
        self.ops = self.ops.saturating_add(1);
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    self.string(key.len());
                    self.value(child);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.value(item)),
            Value::String(s) => self.string(s.len()),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn string(&mut self, bytes: usize) {
        self.strings = self.strings.saturating_add(bytes);
        self.largest = self.largest.max(bytes);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::limits::{ChangeLimits, CHANGE_BYTES, CHANGE_OPS, OP_BYTES};
    use crate::ops::parse_ops;

    fn size(ops: Value) -> ChangeSize {
        change_size(&parse_ops(&ops).unwrap())
    }

    /// The ops Automerge creates for `ops` on a document with a text "abc" at "t".
    fn automerge_ops(ops: Value) -> usize {
        use automerge::transaction::Transactable;
        let mut doc = automerge::Automerge::new();
        let mut tx = doc.transaction();
        let text = tx
            .put_object(automerge::ROOT, "t", automerge::ObjType::Text)
            .unwrap();
        tx.splice_text(&text, 0, 0, "abc").unwrap();
        tx.put_object(automerge::ROOT, "l", automerge::ObjType::List)
            .unwrap();
        tx.put(automerge::ROOT, "c", automerge::ScalarValue::counter(1))
            .unwrap();
        tx.commit();
        let mut tx = doc.transaction();
        crate::ops::apply_ops(&mut tx, &parse_ops(&ops).unwrap()).unwrap();
        tx.pending_ops()
    }

    #[test]
    fn ops_count_as_automerge_creates_them() {
        for ops in [
            json!([{"op": "text", "path": ["x"], "value": "héllo ✓"}]),
            json!([{"op": "splice", "path": ["t"], "index": 1, "delete": 2, "insert": "xyz✓"}]),
            json!([{"op": "set", "path": ["m"], "value": {"a": [1, "b", {"c": null}], "d": {}}}]),
            json!([{"op": "set", "path": [], "value": {"a": [1, 2], "b": "x"}}]),
            json!([{"op": "push", "path": ["l"], "value": [true, [false]]}]),
            json!([{"op": "insert", "path": ["l", 0], "value": {"k": 1.5}}]),
            json!([{"op": "del", "path": ["t"]}, {"op": "inc", "path": ["c"], "by": 2},
                   {"op": "counter", "path": ["d"], "value": 3}]),
        ] {
            assert_eq!(size(ops.clone()).ops, automerge_ops(ops.clone()), "{ops}");
        }
    }

    #[test]
    fn bytes_are_strings_and_keys_plus_the_overhead() {
        let s = size(json!([{"op": "set", "path": ["key"], "value": {"ab": "cdef"}}]));
        assert_eq!((s.ops, s.largest_value), (2, 4));
        assert_eq!(s.bytes, 3 + 2 + 4 + 2 * OP_OVERHEAD);
        let t = size(json!([{"op": "text", "path": ["t"], "value": "✓✓"}]));
        assert_eq!(
            (t.ops, t.largest_value, t.bytes),
            (3, 6, 1 + 6 + 3 * OP_OVERHEAD)
        );
    }

    #[test]
    fn pending_ops_pass_at_the_cap_and_are_refused_one_over() {
        assert_eq!(check_pending_ops(10, 10), Ok(()));
        let refused = check_pending_ops(11, 10).unwrap_err();
        assert_eq!(refused.status(), 413);
        assert!(
            refused.to_string().starts_with(
                "one change has 11 ops, over this node's limit of 10 ([tuning] max_change_ops)"
            ),
            "{refused}"
        );
    }

    #[test]
    fn each_cap_passes_at_its_figure_and_refuses_one_over() {
        let caps = ChangeLimits {
            max_op_bytes: 5,
            max_ops: 6,
            max_bytes: 6 + 6 * OP_OVERHEAD,
        };
        let check = |ops: Value| caps.check(&size(ops), true).err().map(|e| e.label());
        // A text of 5 characters: 6 ops, 5 + 1 bytes of strings.
        assert_eq!(
            check(json!([{"op": "text", "path": ["t"], "value": "abcde"}])),
            None
        );
        assert_eq!(
            check(json!([{"op": "text", "path": ["t"], "value": "abcdef"}])),
            Some(OP_BYTES)
        );
        assert_eq!(
            check(json!([{"op": "text", "path": ["t"], "value": "abcd"},
                         {"op": "del", "path": ["u"]}, {"op": "del", "path": ["v"]}])),
            Some(CHANGE_OPS)
        );
        assert_eq!(
            check(json!([{"op": "text", "path": ["tt"], "value": "abcde"}])),
            Some(CHANGE_BYTES)
        );
        assert_eq!(
            check(json!([{"op": "splice", "path": ["t"], "index": 0, "delete": 7, "insert": ""}])),
            Some(CHANGE_OPS)
        );
    }
}
