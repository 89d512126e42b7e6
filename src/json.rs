//! Automerge documents as plain JSON (`GET /v1/docs/{id}`).
//!
//! Owns the mapping from Automerge values to JSON. Must not touch documents (read only),
//! storage or the network.
//!
//! Mapping: maps (and tables) → objects, lists → arrays, text → string (block markers
//! show as U+FFFC), counters → their current value, `Int`/`Uint`/`F64` → numbers
//! (non-finite floats → null), timestamps → numbers (milliseconds since the Unix epoch),
//! bytes → a lowercase hex string, booleans and null → the same, values of a type unknown
//! to this automerge version → null. Where concurrent writes conflict, the winning value
//! (the one `ReadDoc::get` returns, the same on every replica) is shown.
//!
//! Objects nested deeper than [`MAX_JSON_DEPTH`] levels (the root map counts as 1) are
//! shown as null, so the output stays parseable by common JSON parsers (serde_json stops
//! at 128 levels) and rendering never exhausts the stack. Documents written through the
//! JSON ops never nest that deep ([`crate::ops::MAX_DEPTH`]); only merged binary data can.

use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, ScalarValueRef, ValueRef, ROOT};
use serde_json::{Map, Number, Value};

/// The deepest nesting shown by [`doc_to_json`]; deeper objects are shown as null.
pub const MAX_JSON_DEPTH: usize = crate::ops::MAX_DEPTH;

/// The whole document as JSON (its root map as an object).
pub fn doc_to_json<R: ReadDoc>(doc: &R) -> Value {
    object_json(doc, &ROOT, ObjType::Map, 1)
}

/// One object of the document as JSON, shown as if it were at nesting level 1, or `None`
/// if `obj` is not an object of `doc`.
pub fn object_to_json<R: ReadDoc>(doc: &R, obj: &ObjId) -> Option<Value> {
    let typ = doc.object_type(obj).ok()?;
    Some(object_json(doc, obj, typ, 1))
}

/// An owned Automerge scalar as JSON.
pub fn scalar_to_json(value: &ScalarValue) -> Value {
    match value {
        ScalarValue::Bytes(b) => Value::String(hex::encode(b)),
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => float(*f),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Value::from(*t),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Value::Null,
    }
}

/// A borrowed Automerge scalar (as iterators yield them) as JSON.
pub fn scalar_ref_to_json(value: &ScalarValueRef<'_>) -> Value {
    match value {
        ScalarValueRef::Bytes(b) => Value::String(hex::encode(b)),
        ScalarValueRef::Str(s) => Value::String(s.to_string()),
        ScalarValueRef::Int(i) => Value::from(*i),
        ScalarValueRef::Uint(u) => Value::from(*u),
        ScalarValueRef::F64(f) => float(*f),
        ScalarValueRef::Counter(c) => Value::from(*c),
        ScalarValueRef::Timestamp(t) => Value::from(*t),
        ScalarValueRef::Boolean(b) => Value::Bool(*b),
        ScalarValueRef::Unknown { .. } | ScalarValueRef::Null => Value::Null,
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// An object at nesting level `depth` (root = 1) as JSON.
fn object_json<R: ReadDoc>(doc: &R, obj: &ObjId, typ: ObjType, depth: usize) -> Value {
    if depth > MAX_JSON_DEPTH {
        return Value::Null;
    }
    match typ {
        ObjType::Map | ObjType::Table => {
            let mut map = Map::new();
            for item in doc.map_range(obj, ..) {
                let value = match &item.value {
                    ValueRef::Object(t) => object_json(doc, &item.id(), *t, depth + 1),
                    ValueRef::Scalar(s) => scalar_ref_to_json(s),
                };
                map.insert(item.key.into_owned(), value);
            }
            Value::Object(map)
        }
        ObjType::List => Value::Array(
            doc.list_range(obj, ..)
                .map(|item| match &item.value {
                    ValueRef::Object(t) => object_json(doc, &item.id(), *t, depth + 1),
                    ValueRef::Scalar(s) => scalar_ref_to_json(s),
                })
                .collect(),
        ),
        // `text` fails only for an id that is not a text object of `doc`, which the caller
        // has just read from `doc`.
        ObjType::Text => doc.text(obj).map_or(Value::Null, Value::String),
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ScalarValue, ROOT};
    use serde_json::json;

    use super::*;

    #[test]
    fn every_scalar_type() {
        let mut d = AutoCommit::new();
        d.put(ROOT, "bytes", ScalarValue::Bytes(vec![0, 15, 255]))
            .unwrap();
        d.put(ROOT, "str", "s").unwrap();
        d.put(ROOT, "int", -3i64).unwrap();
        d.put(ROOT, "uint", u64::MAX).unwrap();
        d.put(ROOT, "f64", 0.5f64).unwrap();
        d.put(ROOT, "nan", f64::NAN).unwrap();
        d.put(ROOT, "inf", f64::INFINITY).unwrap();
        d.put(ROOT, "counter", ScalarValue::counter(4)).unwrap();
        d.increment(ROOT, "counter", 3).unwrap();
        d.put(ROOT, "ts", ScalarValue::Timestamp(1_700_000_000_000))
            .unwrap();
        d.put(ROOT, "bool", false).unwrap();
        d.put(ROOT, "null", ()).unwrap();
        let unknown = ScalarValue::Unknown {
            type_code: 12,
            bytes: vec![1],
        };
        d.put(ROOT, "unknown", unknown.clone()).unwrap();
        let want = json!({
            "bytes": "000fff", "str": "s", "int": -3, "uint": u64::MAX, "f64": 0.5,
            "nan": null, "inf": null, "counter": 7, "ts": 1_700_000_000_000i64,
            "bool": false, "null": null, "unknown": null,
        });
        assert_eq!(doc_to_json(&d), want);
        // The owned-scalar helper agrees with the document walk.
        for (key, value) in want.as_object().unwrap() {
            let (v, _) = d.get(ROOT, key.as_str()).unwrap().unwrap();
            let automerge::Value::Scalar(s) = v else {
                panic!("{key} is a scalar")
            };
            assert_eq!(&scalar_to_json(&s), value, "{key}");
        }
    }

    #[test]
    fn objects_lists_and_text() {
        let mut d = AutoCommit::new();
        let list = d.put_object(ROOT, "list", ObjType::List).unwrap();
        d.insert(&list, 0, 1i64).unwrap();
        let inner = d.insert_object(&list, 1, ObjType::Map).unwrap();
        d.put(&inner, "k", "v").unwrap();
        let text = d.insert_object(&list, 2, ObjType::Text).unwrap();
        d.splice_text(&text, 0, 0, "héllo").unwrap();
        d.put_object(ROOT, "table", ObjType::Table).unwrap();
        d.put_object(ROOT, "empty", ObjType::Map).unwrap();
        assert_eq!(
            doc_to_json(&d),
            json!({"list": [1, {"k": "v"}, "héllo"], "table": {}, "empty": {}})
        );
        assert_eq!(object_to_json(&d, &inner), Some(json!({"k": "v"})));
        assert_eq!(object_to_json(&d, &text), Some(json!("héllo")));
        assert_eq!(doc_to_json(&AutoCommit::new()), json!({}));
    }

    #[test]
    fn conflicts_show_the_winner_everywhere() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(vec![1]));
        let mut b = AutoCommit::new().with_actor(ActorId::from(vec![2]));
        a.put(ROOT, "k", "from a").unwrap();
        b.put_object(ROOT, "k", ObjType::List).unwrap();
        a.merge(&mut b).unwrap();
        b.merge(&mut a).unwrap();
        assert_eq!(a.get_all(ROOT, "k").unwrap().len(), 2, "a real conflict");
        let shown = doc_to_json(&a);
        assert_eq!(shown, doc_to_json(&b));
        let winner = match a.get(ROOT, "k").unwrap().unwrap().0 {
            automerge::Value::Object(_) => json!([]),
            automerge::Value::Scalar(s) => scalar_to_json(&s),
        };
        assert_eq!(shown["k"], winner);
    }

    #[test]
    fn nesting_beyond_the_limit_shows_null() {
        let mut d = AutoCommit::new();
        let mut obj = ROOT;
        for _ in 0..MAX_JSON_DEPTH + 5 {
            obj = d.put_object(&obj, "n", ObjType::Map).unwrap();
        }
        let shown = doc_to_json(&d);
        let mut v = &shown;
        let mut levels = 0;
        while let Some(next) = v.get("n") {
            v = next;
            levels += 1;
        }
        // The root is level 1; the object at level MAX_JSON_DEPTH + 1 shows as null.
        assert_eq!(levels, MAX_JSON_DEPTH);
        assert_eq!(v, &Value::Null);
        let text = serde_json::to_string(&shown).unwrap();
        assert!(
            serde_json::from_str::<Value>(&text).is_ok(),
            "output parses back"
        );
    }
}
