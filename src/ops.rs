//! The JSON operations of the HTTP API (`POST /v1/docs/{id}/ops`): their types, parsing
//! of a request body, measuring the change they make, and applying them to an Automerge
//! transaction.
//!
//! Owns: [`Op`], [`PathElem`], [`Ack`], [`WriteRequest`], [`OpError`], [`parse_write_request`],
//! [`parse_ops`], [`change_size`], [`apply_ops`]. Must not touch: storage, the network, the
//! replication core, or committing / rolling back transactions (the caller applies all ops
//! of one request inside one transaction, and rolls it back when [`apply_ops`] fails, so a
//! refused request changes nothing).
//!
//! # Semantics
//! A `path` is a list of map keys (JSON strings) and list indexes (non-negative JSON
//! integers) from the root map. Every element but the last must name an existing map or
//! list (no auto-creation); a text object is not a container for paths.
//! - `set`: the last path element names the slot: a map key (created or overwritten) or a
//!   list index (must be `< len`; overwrites that element). With an empty path the value
//!   must be an object and each of its keys is set on the root (other root keys stay).
//! - `del`: removes an existing map key or list element.
//! - `counter`: puts a new counter with the initial value at the slot (like `set`).
//! - `inc`: increments the existing counter at the path (409 if it is not a counter, or
//!   if the new value would leave ±[`MAX_COUNTER`]). Initial values and increments
//!   beyond ±[`MAX_COUNTER`] are malformed (400).
//! - `push`: the path names a list; appends the value.
//! - `insert`: the path's last element is an index `0..=len` into the list named by the
//!   rest of the path; inserts the value there.
//! - `text`: puts a new text object with the given content at the slot (like `set`).
//! - `splice`: the path names a text object; deletes `delete` characters at `index` and
//!   inserts `insert` there; `index + delete` must be `<= len`. Indexes count in the
//!   document's text encoding, which for automerge 0.12 built without its `utf8-indexing`
//!   / `utf16-indexing` features (as here) is Unicode code points (Rust `char`s).
//!
//! JSON values become: objects → maps, arrays → lists, strings → string scalars (not text
//! objects; use `text`), integers → `Int` (or `Uint` above `i64::MAX`), other numbers →
//! `F64`, booleans and null → the same scalars.
//!
//! Documents written through these ops nest at most [`MAX_DEPTH`] levels deep (counting
//! the root map as 1), so their JSON form stays parseable by common JSON parsers; deeper
//! paths or values are refused as malformed.
//!
//! # Errors
//! [`OpError::Malformed`] (HTTP 400) for anything wrong with the request itself, found
//! without looking at the document. [`OpError::Path`] (409) when the request does not fit
//! the document: a path through a missing key or a non-container, an index out of range,
//! a target of the wrong type. [`OpError::Automerge`] (409 too) when Automerge itself
//! refuses an op that passed these checks (for example on objects of a type this version
//! does not know): the request is well-formed but cannot apply to this document's state,
//! and, as for every error, the caller rolls the transaction back. [`OpError::TooLarge`]
//! (413) when the change is over a cap on one change ([`change_size`] measures the ops
//! before they are applied, [`check_pending_ops`] what a transaction holds after).

use std::fmt;

use serde_json::{json, Value};

mod apply;
mod parse;
mod size;
#[cfg(test)]
mod tests;

pub use apply::apply_ops;
pub use parse::{parse_ops, parse_write_request};
pub use size::{change_size, check_pending_ops, OP_OVERHEAD};

/// The default write-concern timeout, in milliseconds, when a request gives no `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// The deepest nesting of a document written through ops (the root map counts as 1).
pub const MAX_DEPTH: usize = 100;

/// The largest magnitude of a counter's initial value, of an increment, and of a
/// counter's value after an `inc`: 2^53 - 1, the integers JavaScript represents exactly.
/// Automerge sums increments in plain `i64` arithmetic, which would overflow (a panic in
/// debug builds, a wrong value in release builds) if these were unbounded.
pub const MAX_COUNTER: i64 = (1 << 53) - 1;

/// One element of a path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathElem {
    /// A map key (a JSON string in the request).
    Key(String),
    /// A list index (a non-negative JSON integer in the request).
    Index(usize),
}

/// One JSON operation of a write request.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Put a JSON value (maps and lists become Automerge maps and lists) at the path.
    Set {
        /// Where to put it.
        path: Vec<PathElem>,
        /// The value.
        value: Value,
    },
    /// Delete the map key or list element at the path.
    Del {
        /// What to delete.
        path: Vec<PathElem>,
    },
    /// Put a new counter with an initial value at the path.
    Counter {
        /// Where to put it.
        path: Vec<PathElem>,
        /// Its initial value.
        value: i64,
    },
    /// Increment the counter at the path.
    Inc {
        /// The counter.
        path: Vec<PathElem>,
        /// The (possibly negative) increment.
        by: i64,
    },
    /// Append a JSON value to the list at the path.
    Push {
        /// The list.
        path: Vec<PathElem>,
        /// The value.
        value: Value,
    },
    /// Insert a JSON value into a list; the path's last element is the index.
    Insert {
        /// The list's path followed by the index.
        path: Vec<PathElem>,
        /// The value.
        value: Value,
    },
    /// Put a new text object with the given content at the path.
    Text {
        /// Where to put it.
        path: Vec<PathElem>,
        /// Its initial content.
        value: String,
    },
    /// Edit the text object at the path.
    Splice {
        /// The text object.
        path: Vec<PathElem>,
        /// Where the edit starts (in Unicode code points).
        index: usize,
        /// How many characters to delete there.
        delete: usize,
        /// What to insert there.
        insert: String,
    },
}

impl Op {
    /// The op's name as written in requests (`"set"`, `"del"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Set { .. } => "set",
            Op::Del { .. } => "del",
            Op::Counter { .. } => "counter",
            Op::Inc { .. } => "inc",
            Op::Push { .. } => "push",
            Op::Insert { .. } => "insert",
            Op::Text { .. } => "text",
            Op::Splice { .. } => "splice",
        }
    }

    /// The op's path.
    pub fn path(&self) -> &[PathElem] {
        match self {
            Op::Set { path, .. }
            | Op::Del { path }
            | Op::Counter { path, .. }
            | Op::Inc { path, .. }
            | Op::Push { path, .. }
            | Op::Insert { path, .. }
            | Op::Text { path, .. }
            | Op::Splice { path, .. } => path,
        }
    }

    /// The op as request JSON; [`parse_ops`] reads it back to an equal op.
    pub fn to_json(&self) -> Value {
        let path = path_to_json(self.path());
        match self {
            Op::Set { value, .. } => json!({"op": "set", "path": path, "value": value}),
            Op::Del { .. } => json!({"op": "del", "path": path}),
            Op::Counter { value, .. } => json!({"op": "counter", "path": path, "value": value}),
            Op::Inc { by, .. } => json!({"op": "inc", "path": path, "by": by}),
            Op::Push { value, .. } => json!({"op": "push", "path": path, "value": value}),
            Op::Insert { value, .. } => json!({"op": "insert", "path": path, "value": value}),
            Op::Text { value, .. } => json!({"op": "text", "path": path, "value": value}),
            Op::Splice {
                index,
                delete,
                insert,
                ..
            } => json!({"op": "splice", "path": path, "index": index, "delete": delete,
                        "insert": insert}),
        }
    }
}

/// A path as a JSON array (keys as strings, indexes as numbers).
pub fn path_to_json(path: &[PathElem]) -> Value {
    Value::Array(
        path.iter()
            .map(|e| match e {
                PathElem::Key(k) => Value::String(k.clone()),
                PathElem::Index(i) => Value::from(*i),
            })
            .collect(),
    )
}

/// Formats a path for error messages, as its JSON form: `["a",0]`.
pub(crate) struct PathDisplay<'a>(pub(crate) &'a [PathElem]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", path_to_json(self.0))
    }
}

/// The write concern of a request: who must have the change durably before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ack {
    /// Durable on this node (`"local"`, the default, or `0`).
    Local,
    /// Durable on this node and on at least this many peers (an integer `k >= 1`).
    Peers(usize),
    /// Durable on every node of the topology (`"all"`).
    All,
}

/// A parsed `POST /v1/docs/{id}/ops` body.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    /// The ops, applied in order as one atomic change (never empty).
    pub ops: Vec<Op>,
    /// The write concern (`"ack"`, default [`Ack::Local`]).
    pub ack: Ack,
    /// How long to wait for the write concern (`"timeout_ms"`, default
    /// [`DEFAULT_TIMEOUT_MS`]).
    pub timeout_ms: u64,
}

impl WriteRequest {
    /// The request as JSON; [`parse_write_request`] reads it back to an equal request.
    pub fn to_json(&self) -> Value {
        let ack = match self.ack {
            Ack::Local => Value::from("local"),
            Ack::Peers(k) => Value::from(k),
            Ack::All => Value::from("all"),
        };
        let ops: Vec<Value> = self.ops.iter().map(Op::to_json).collect();
        json!({"ops": ops, "ack": ack, "timeout_ms": self.timeout_ms})
    }
}

/// Why a write request was refused. Whatever the error, the caller rolls back the
/// transaction, so the document is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The request itself is wrong (bad JSON, unknown op, missing, extra or mistyped
    /// fields, empty op list, a path or value too deep): HTTP 400.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request does not fit the document (missing key, path through a
    /// non-container, index out of range, wrong target type, a counter leaving
    /// ±[`MAX_COUNTER`]): HTTP 409.
    #[error("cannot apply: {0}")]
    Path(String),
    /// Automerge refused an op that passed every check: HTTP 409.
    #[error("automerge refused the change: {0}")]
    Automerge(String),
    /// The change the ops made is over a cap of [`crate::limits::ChangeLimits`] (the
    /// message says which): HTTP 413.
    #[error("{0}")]
    TooLarge(String),
}

impl OpError {
    /// The HTTP status for this error: 400 for [`OpError::Malformed`], 413 for
    /// [`OpError::TooLarge`], 409 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            OpError::Malformed(_) => 400,
            OpError::TooLarge(_) => 413,
            OpError::Path(_) | OpError::Automerge(_) => 409,
        }
    }

    /// The same error with `context` (which op, where) put before its message.
    pub(crate) fn context(self, context: &str) -> OpError {
        match self {
            OpError::Malformed(m) => OpError::Malformed(format!("{context}: {m}")),
            OpError::Path(m) => OpError::Path(format!("{context}: {m}")),
            OpError::Automerge(m) => OpError::Automerge(format!("{context}: {m}")),
            OpError::TooLarge(m) => OpError::TooLarge(format!("{context}: {m}")),
        }
    }
}

/// Checks what can be checked about an op without a document: paths the op can never
/// use, and the nesting limit [`MAX_DEPTH`]. Shared by parsing and applying.
pub(crate) fn validate_op(op: &Op) -> Result<(), OpError> {
    let path = op.path();
    if path.len() > MAX_DEPTH {
        return Err(OpError::Malformed(format!(
            "path has {} elements, more than the limit of {MAX_DEPTH}",
            path.len()
        )));
    }
    // The deepest a value may nest so that the document stays within MAX_DEPTH.
    let budget = MAX_DEPTH - path.len();
    match op {
        Op::Set { value, .. } => {
            if path.is_empty() && !value.is_object() {
                return Err(OpError::Malformed(
                    "set with an empty path needs an object value (the root is a map)".into(),
                ));
            }
            check_depth(value, budget)
        }
        Op::Push { value, .. } => {
            need_non_empty(path, "the root is a map, not a list")?;
            // The pushed element sits one level below the list.
            match budget.checked_sub(1) {
                Some(b) => check_depth(value, b),
                None => Err(too_deep()),
            }
        }
        Op::Insert { value, .. } => {
            if !matches!(path.last(), Some(PathElem::Index(_))) {
                return Err(OpError::Malformed(
                    "insert needs a path ending with a list index".into(),
                ));
            }
            check_depth(value, budget)
        }
        Op::Counter { value: n, .. } | Op::Inc { by: n, .. } => {
            need_non_empty(path, "the root itself cannot be the target")?;
            if n.unsigned_abs() > MAX_COUNTER.unsigned_abs() {
                return Err(OpError::Malformed(format!(
                    "counter values and increments must be within ±{MAX_COUNTER}, not {n}"
                )));
            }
            Ok(())
        }
        Op::Del { .. } | Op::Text { .. } => {
            need_non_empty(path, "the root itself cannot be the target")
        }
        Op::Splice { .. } => need_non_empty(path, "the root is a map, not a text"),
    }
}

fn need_non_empty(path: &[PathElem], why: &str) -> Result<(), OpError> {
    if path.is_empty() {
        Err(OpError::Malformed(format!("empty path: {why}")))
    } else {
        Ok(())
    }
}

fn too_deep() -> OpError {
    OpError::Malformed(format!(
        "the document would nest deeper than the limit of {MAX_DEPTH} levels"
    ))
}

/// Fails if `value` nests deeper than `budget` containers (scalars have depth 0).
/// Recurses at most `budget + 1` levels, whatever the value.
fn check_depth(value: &Value, budget: usize) -> Result<(), OpError> {
    fn exceeds(value: &Value, budget: usize) -> bool {
        match value {
            Value::Array(items) => budget == 0 || items.iter().any(|v| exceeds(v, budget - 1)),
            Value::Object(map) => budget == 0 || map.values().any(|v| exceeds(v, budget - 1)),
            _ => false,
        }
    }
    if exceeds(value, budget) {
        Err(too_deep())
    } else {
        Ok(())
    }
}
