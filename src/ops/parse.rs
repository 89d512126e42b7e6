//! Parsing of write-request bodies and op lists into [`Op`]s. Strict: unknown ops,
//! missing, extra or mistyped fields are [`OpError::Malformed`]. Never panics.

use serde_json::{Map, Value};

use super::{validate_op, Ack, Op, OpError, PathElem, WriteRequest, DEFAULT_TIMEOUT_MS};

/// Parses a `POST /v1/docs/{id}/ops` body: `{"ops":[...], "ack":..., "timeout_ms":...}`.
///
/// `ack` is `"local"` (the default), `"all"` or a non-negative integer (0 means local);
/// `timeout_ms` a non-negative integer (default [`DEFAULT_TIMEOUT_MS`]). Every problem is
/// an [`OpError::Malformed`] naming the field; this never panics, whatever the bytes.
pub fn parse_write_request(body: &[u8]) -> Result<WriteRequest, OpError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| OpError::Malformed(format!("body is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| {
        OpError::Malformed(format!(
            "body must be a JSON object with an \"ops\" list, not {}",
            kind(&value)
        ))
    })?;
    check_fields(obj, &["ops", "ack", "timeout_ms"], &["ops"], "request body")?;
    let ops = match obj.get("ops") {
        Some(ops) => parse_ops(ops)?,
        None => return Err(OpError::Malformed("missing field \"ops\"".into())),
    };
    let ack = match obj.get("ack") {
        None => Ack::Local,
        Some(v) => parse_ack(v)?,
    };
    let timeout_ms = match obj.get("timeout_ms") {
        None => DEFAULT_TIMEOUT_MS,
        Some(v) => v.as_u64().ok_or_else(|| {
            OpError::Malformed(format!(
                "field \"timeout_ms\" must be a non-negative integer (milliseconds), not {}",
                short(v)
            ))
        })?,
    };
    Ok(WriteRequest {
        ops,
        ack,
        timeout_ms,
    })
}

/// Parses a non-empty JSON list of ops. Errors name the op by its position (`ops[2]`).
pub fn parse_ops(value: &Value) -> Result<Vec<Op>, OpError> {
    let items = value.as_array().ok_or_else(|| {
        OpError::Malformed(format!("\"ops\" must be a list, not {}", kind(value)))
    })?;
    if items.is_empty() {
        return Err(OpError::Malformed(
            "\"ops\" is empty: a write needs at least one op".into(),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_op(item).map_err(|e| e.context(&format!("ops[{i}]"))))
        .collect()
}

fn parse_ack(v: &Value) -> Result<Ack, OpError> {
    match v {
        Value::String(s) if s == "local" => Ok(Ack::Local),
        Value::String(s) if s == "all" => Ok(Ack::All),
        Value::Number(n) => match n.as_u64().map(usize::try_from) {
            Some(Ok(0)) => Ok(Ack::Local),
            Some(Ok(k)) => Ok(Ack::Peers(k)),
            _ => Err(bad_ack(v)),
        },
        _ => Err(bad_ack(v)),
    }
}

fn bad_ack(v: &Value) -> OpError {
    OpError::Malformed(format!(
        "field \"ack\" must be \"local\", \"all\" or a non-negative integer, not {}",
        short(v)
    ))
}

/// Parses one op object and checks it with [`validate_op`].
fn parse_op(item: &Value) -> Result<Op, OpError> {
    let obj = item.as_object().ok_or_else(|| {
        OpError::Malformed(format!("an op must be a JSON object, not {}", kind(item)))
    })?;
    let name = match obj.get("op") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => {
            return Err(OpError::Malformed(format!(
                "field \"op\" must be a string, not {}",
                kind(v)
            )))
        }
        None => return Err(OpError::Malformed("missing field \"op\"".into())),
    };
    let op = match name {
        "set" => {
            fields(obj, &["path", "value"], name)?;
            Op::Set {
                path: path(obj)?,
                value: field(obj, "value")?.clone(),
            }
        }
        "del" => {
            fields(obj, &["path"], name)?;
            Op::Del { path: path(obj)? }
        }
        "counter" => {
            fields(obj, &["path", "value"], name)?;
            Op::Counter {
                path: path(obj)?,
                value: int(obj, "value")?,
            }
        }
        "inc" => {
            fields(obj, &["path", "by"], name)?;
            Op::Inc {
                path: path(obj)?,
                by: int(obj, "by")?,
            }
        }
        "push" => {
            fields(obj, &["path", "value"], name)?;
            Op::Push {
                path: path(obj)?,
                value: field(obj, "value")?.clone(),
            }
        }
        "insert" => {
            fields(obj, &["path", "value"], name)?;
            Op::Insert {
                path: path(obj)?,
                value: field(obj, "value")?.clone(),
            }
        }
        "text" => {
            fields(obj, &["path", "value"], name)?;
            Op::Text {
                path: path(obj)?,
                value: string(obj, "value")?,
            }
        }
        "splice" => {
            fields(obj, &["path", "index", "delete", "insert"], name)?;
            Op::Splice {
                path: path(obj)?,
                index: index(obj, "index")?,
                delete: index(obj, "delete")?,
                insert: string(obj, "insert")?,
            }
        }
        other => {
            return Err(OpError::Malformed(format!(
                "unknown op {} (expected set, del, counter, inc, push, insert, text or \
                 splice)",
                short(&Value::from(other))
            )))
        }
    };
    validate_op(&op).map_err(|e| e.context(&format!("op \"{name}\"")))?;
    Ok(op)
}

/// Checks that an op object has exactly `"op"` and `wanted`.
fn fields(obj: &Map<String, Value>, wanted: &[&str], op: &str) -> Result<(), OpError> {
    let mut allowed = vec!["op"];
    allowed.extend_from_slice(wanted);
    check_fields(obj, &allowed, wanted, &format!("op \"{op}\""))
}

/// Refuses fields outside `allowed` and missing fields of `required`.
fn check_fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    required: &[&str],
    what: &str,
) -> Result<(), OpError> {
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(OpError::Malformed(format!(
            "{what}: unknown field {} (allowed: {})",
            short(&Value::from(extra.as_str())),
            allowed.join(", ")
        )));
    }
    if let Some(missing) = required.iter().find(|k| !obj.contains_key(**k)) {
        return Err(OpError::Malformed(format!(
            "{what}: missing field \"{missing}\""
        )));
    }
    Ok(())
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, OpError> {
    obj.get(name)
        .ok_or_else(|| OpError::Malformed(format!("missing field \"{name}\"")))
}

fn int(obj: &Map<String, Value>, name: &str) -> Result<i64, OpError> {
    let v = field(obj, name)?;
    v.as_i64().ok_or_else(|| {
        OpError::Malformed(format!(
            "field \"{name}\" must be an integer within 64-bit signed range, not {}",
            short(v)
        ))
    })
}

fn index(obj: &Map<String, Value>, name: &str) -> Result<usize, OpError> {
    as_index(field(obj, name)?).ok_or_else(|| {
        OpError::Malformed(format!("field \"{name}\" must be a non-negative integer"))
    })
}

fn string(obj: &Map<String, Value>, name: &str) -> Result<String, OpError> {
    match field(obj, name)? {
        Value::String(s) => Ok(s.clone()),
        v => Err(OpError::Malformed(format!(
            "field \"{name}\" must be a string, not {}",
            kind(v)
        ))),
    }
}

fn as_index(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

fn path(obj: &Map<String, Value>) -> Result<Vec<PathElem>, OpError> {
    let items = match field(obj, "path")? {
        Value::Array(items) => items,
        v => {
            return Err(OpError::Malformed(format!(
                "field \"path\" must be a list of keys and indexes, not {}",
                kind(v)
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(PathElem::Key(s.clone())),
            v => as_index(v).map(PathElem::Index).ok_or_else(|| {
                OpError::Malformed(format!(
                    "path[{i}] must be a string key or a non-negative integer index, not {}",
                    short(v)
                ))
            }),
        })
        .collect()
}

/// A short name of a JSON value's type, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value's JSON text for messages, cut to a few dozen characters.
fn short(v: &Value) -> String {
    const MAX: usize = 60;
    let text = v.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}
