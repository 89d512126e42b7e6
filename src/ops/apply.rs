//! Applying parsed [`Op`]s to an Automerge transaction. Every op is checked against the
//! document before Automerge is called, so user mistakes are [`OpError::Path`] with a
//! message saying where; committing or rolling back is the caller's.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ScalarValue, Value as AmValue, ROOT};
use serde_json::Value;

use super::{validate_op, Op, OpError, PathDisplay, PathElem, MAX_COUNTER};

/// Applies `ops` in order to `tx`. On the first failing op, returns its error (naming the
/// op by position, name and path); ops applied before it stay in `tx`, so the caller must
/// then roll the transaction back to leave the document unchanged.
///
/// Ops that [`super::parse_ops`] would refuse are refused here too, as
/// [`OpError::Malformed`].
pub fn apply_ops<T: Transactable>(tx: &mut T, ops: &[Op]) -> Result<(), OpError> {
    for (i, op) in ops.iter().enumerate() {
        validate_op(op)
            .and_then(|()| apply_op(tx, op))
            .map_err(|e| {
                e.context(&format!(
                    "ops[{i}] ({} at {})",
                    op.name(),
                    PathDisplay(op.path())
                ))
            })?;
    }
    Ok(())
}

fn apply_op<T: Transactable>(tx: &mut T, op: &Op) -> Result<(), OpError> {
    match op {
        Op::Set { path, value } => match path.split_last() {
            None => set_root(tx, value),
            Some((last, parent)) => {
                let (obj, slot) = put_slot(tx, parent, last)?;
                put_value(tx, &obj, &slot, value)
            }
        },
        Op::Counter { path, value } => {
            let (last, parent) = split(path)?;
            let (obj, slot) = put_slot(tx, parent, last)?;
            put_scalar(tx, &obj, &slot, ScalarValue::counter(*value))
        }
        Op::Text { path, value } => {
            let (last, parent) = split(path)?;
            let (obj, slot) = put_slot(tx, parent, last)?;
            let text = put_object(tx, &obj, &slot, ObjType::Text)?;
            if !value.is_empty() {
                tx.splice_text(&text, 0, 0, value).map_err(am)?;
            }
            Ok(())
        }
        Op::Del { path } => {
            let (last, parent) = split(path)?;
            let (obj, typ) = resolve(tx, parent)?;
            match (typ, last) {
                (ObjType::Map | ObjType::Table, PathElem::Key(k)) => {
                    if tx.get(&obj, k.as_str()).map_err(am)?.is_none() {
                        return Err(OpError::Path(format!("no key {k:?} to delete")));
                    }
                    tx.delete(&obj, k.as_str()).map_err(am)
                }
                (ObjType::List, PathElem::Index(i)) => {
                    check_index(*i, tx.length(&obj), false)?;
                    tx.delete(&obj, *i).map_err(am)
                }
                _ => Err(mismatch(typ, last)),
            }
        }
        Op::Inc { path, by } => {
            let (last, parent) = split(path)?;
            let (obj, typ) = resolve(tx, parent)?;
            let (found, _) = lookup(tx, &obj, typ, last)?
                .ok_or_else(|| OpError::Path(format!("no {} to increment", describe(last))))?;
            let current = match found {
                AmValue::Scalar(s) => match s.as_ref() {
                    ScalarValue::Counter(c) => i64::from(c),
                    other => {
                        return Err(OpError::Path(format!(
                            "not a counter but {}",
                            scalar_kind(other)
                        )))
                    }
                },
                AmValue::Object(t) => {
                    return Err(OpError::Path(format!("not a counter but a {t}")))
                }
            };
            match current.checked_add(*by) {
                Some(next) if next.unsigned_abs() <= MAX_COUNTER.unsigned_abs() => {}
                _ => {
                    return Err(OpError::Path(format!(
                        "counter {current} + {by} would leave the range ±{MAX_COUNTER}"
                    )))
                }
            }
            match last {
                PathElem::Key(k) => tx.increment(&obj, k.as_str(), *by),
                PathElem::Index(i) => tx.increment(&obj, *i, *by),
            }
            .map_err(am)
        }
        Op::Push { path, value } => {
            let obj = resolve_typed(tx, path, ObjType::List)?;
            let len = tx.length(&obj);
            put_value(tx, &obj, &Slot::Insert(len), value)
        }
        Op::Insert { path, value } => {
            let (last, parent) = split(path)?;
            let obj = resolve_typed(tx, parent, ObjType::List)?;
            let PathElem::Index(i) = last else {
                return Err(OpError::Malformed(
                    "insert needs a path ending with a list index".into(),
                ));
            };
            check_index(*i, tx.length(&obj), true)?;
            put_value(tx, &obj, &Slot::Insert(*i), value)
        }
        Op::Splice {
            path,
            index,
            delete,
            insert,
        } => {
            let obj = resolve_typed(tx, path, ObjType::Text)?;
            let len = tx.length(&obj);
            match index.checked_add(*delete) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(OpError::Path(format!(
                        "splice of {delete} characters at {index} is out of range (text length \
                         {len})"
                    )))
                }
            }
            // Fits: `delete <= len`, and a text's length fits in an isize.
            let delete = isize::try_from(*delete)
                .map_err(|_| OpError::Path(format!("delete count {delete} is too large")))?;
            tx.splice_text(&obj, *index, delete, insert).map_err(am)
        }
    }
}

/// Where a value goes: a map key, a list element to overwrite, or a list position to
/// insert at.
enum Slot {
    Key(String),
    Put(usize),
    Insert(usize),
}

/// Sets every key of an object value on the root map.
fn set_root<T: Transactable>(tx: &mut T, value: &Value) -> Result<(), OpError> {
    let Value::Object(map) = value else {
        return Err(OpError::Malformed(
            "set with an empty path needs an object value (the root is a map)".into(),
        ));
    };
    for (k, v) in map {
        put_value(tx, &ROOT, &Slot::Key(k.clone()), v)?;
    }
    Ok(())
}

/// The object and slot that a put-like op (`set`, `counter`, `text`) writes to.
fn put_slot<T: Transactable>(
    tx: &T,
    parent: &[PathElem],
    last: &PathElem,
) -> Result<(ObjId, Slot), OpError> {
    let (obj, typ) = resolve(tx, parent)?;
    let slot = match (typ, last) {
        (ObjType::Map | ObjType::Table, PathElem::Key(k)) => Slot::Key(k.clone()),
        (ObjType::List, PathElem::Index(i)) => {
            check_index(*i, tx.length(&obj), false)?;
            Slot::Put(*i)
        }
        _ => return Err(mismatch(typ, last)),
    };
    Ok((obj, slot))
}

/// Writes a JSON value into a slot: objects and arrays become new maps and lists.
/// Recursion is bounded by the depth check of [`validate_op`].
fn put_value<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    slot: &Slot,
    value: &Value,
) -> Result<(), OpError> {
    match value {
        Value::Object(map) => {
            let child = put_object(tx, obj, slot, ObjType::Map)?;
            for (k, v) in map {
                put_value(tx, &child, &Slot::Key(k.clone()), v)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let child = put_object(tx, obj, slot, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                put_value(tx, &child, &Slot::Insert(i), v)?;
            }
            Ok(())
        }
        scalar => put_scalar(tx, obj, slot, json_scalar(scalar)),
    }
}

fn put_object<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    slot: &Slot,
    typ: ObjType,
) -> Result<ObjId, OpError> {
    match slot {
        Slot::Key(k) => tx.put_object(obj, k.as_str(), typ),
        Slot::Put(i) => tx.put_object(obj, *i, typ),
        Slot::Insert(i) => tx.insert_object(obj, *i, typ),
    }
    .map_err(am)
}

fn put_scalar<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    slot: &Slot,
    value: ScalarValue,
) -> Result<(), OpError> {
    match slot {
        Slot::Key(k) => tx.put(obj, k.as_str(), value),
        Slot::Put(i) => tx.put(obj, *i, value),
        Slot::Insert(i) => tx.insert(obj, *i, value),
    }
    .map_err(am)
}

/// A JSON scalar as an Automerge scalar: integers → `Int` (`Uint` above `i64::MAX`),
/// other numbers → `F64`, strings → `Str`. Containers are never passed here.
fn json_scalar(value: &Value) -> ScalarValue {
    match value {
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                // Without serde_json's `arbitrary_precision`, every other number is an f64.
                n.as_f64().map_or(ScalarValue::Null, ScalarValue::F64)
            }
        }
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Null | Value::Array(_) | Value::Object(_) => ScalarValue::Null,
    }
}

/// Splits a path into its last element and the rest; empty paths are malformed.
fn split(path: &[PathElem]) -> Result<(&PathElem, &[PathElem]), OpError> {
    path.split_last().ok_or_else(|| {
        OpError::Malformed("empty path: the root itself cannot be the target".into())
    })
}

/// Walks `path` from the root; every element must name an existing map, list or text
/// (text only as the last element, since nothing can be addressed inside it).
fn resolve<T: Transactable>(tx: &T, path: &[PathElem]) -> Result<(ObjId, ObjType), OpError> {
    let mut obj = ROOT;
    let mut typ = ObjType::Map;
    for (depth, elem) in path.iter().enumerate() {
        let here = PathDisplay(&path[..=depth]);
        match lookup(tx, &obj, typ, elem).map_err(|e| e.context(&format!("at {here}")))? {
            Some((AmValue::Object(t), id)) => {
                obj = id;
                typ = t;
            }
            Some((AmValue::Scalar(s), _)) => {
                return Err(OpError::Path(format!(
                    "at {here}: {}, not a map, list or text",
                    scalar_kind(&s)
                )))
            }
            None => {
                return Err(OpError::Path(format!(
                    "at {here}: no {} there",
                    describe(elem)
                )))
            }
        }
    }
    Ok((obj, typ))
}

/// Like [`resolve`], and the object must be of type `want`.
fn resolve_typed<T: Transactable>(
    tx: &T,
    path: &[PathElem],
    want: ObjType,
) -> Result<ObjId, OpError> {
    let (obj, typ) = resolve(tx, path)?;
    if typ == want || (want == ObjType::Map && typ == ObjType::Table) {
        Ok(obj)
    } else {
        Err(OpError::Path(format!(
            "at {}: a {typ}, not a {want}",
            PathDisplay(path)
        )))
    }
}

/// The value at one path element of an object, checking that the element fits it.
fn lookup<'a, T: Transactable>(
    tx: &'a T,
    obj: &ObjId,
    typ: ObjType,
    elem: &PathElem,
) -> Result<Option<(AmValue<'a>, ObjId)>, OpError> {
    match (typ, elem) {
        (ObjType::Map | ObjType::Table, PathElem::Key(k)) => tx.get(obj, k.as_str()).map_err(am),
        (ObjType::List, PathElem::Index(i)) => {
            check_index(*i, tx.length(obj), false)?;
            tx.get(obj, *i).map_err(am)
        }
        _ => Err(mismatch(typ, elem)),
    }
}

/// Fails unless `index < len` (or `index <= len` when inserting).
fn check_index(index: usize, len: usize, inserting: bool) -> Result<(), OpError> {
    if index < len || (inserting && index == len) {
        Ok(())
    } else {
        Err(OpError::Path(format!(
            "index {index} is out of range (list length {len})"
        )))
    }
}

fn describe(elem: &PathElem) -> String {
    match elem {
        PathElem::Key(k) => format!("key {k:?}"),
        PathElem::Index(i) => format!("element {i}"),
    }
}

/// The error for a path element that does not fit the object's type.
fn mismatch(typ: ObjType, elem: &PathElem) -> OpError {
    OpError::Path(match typ {
        ObjType::Text => format!(
            "{} inside a text: a text is edited with splice, not addressed by path",
            describe(elem)
        ),
        _ => format!("{} cannot address a {typ}", describe(elem)),
    })
}

/// A scalar's type for messages (never its content, which may be long).
fn scalar_kind(s: &ScalarValue) -> &'static str {
    match s {
        ScalarValue::Bytes(_) => "a byte string",
        ScalarValue::Str(_) => "a string",
        ScalarValue::Int(_) | ScalarValue::Uint(_) | ScalarValue::F64(_) => "a number",
        ScalarValue::Counter(_) => "a counter",
        ScalarValue::Timestamp(_) => "a timestamp",
        ScalarValue::Boolean(_) => "a boolean",
        ScalarValue::Null => "null",
        ScalarValue::Unknown { .. } => "a value of unknown type",
    }
}

fn am(e: AutomergeError) -> OpError {
    OpError::Automerge(e.to_string())
}
