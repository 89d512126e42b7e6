//! Property tests of the JSON ops: parsing never panics (arbitrary bytes, arbitrary JSON,
//! valid requests with corrupted bytes, nesting of any depth), whatever parses applies to
//! a document without panicking, and applying random ops to a real Automerge document
//! agrees with a plain in-memory model of the documented semantics (same result, same
//! status, same JSON), while a rolled-back transaction leaves the document exactly as it
//! was. The `ops_parse` fuzz target (`fuzz/`) explores the same inputs for longer.

use std::collections::BTreeMap;

use automerge::Automerge;
use concordant::json::doc_to_json;
use concordant::ops::{
    apply_ops, parse_ops, parse_write_request, Op, PathElem, MAX_COUNTER, MAX_DEPTH,
};
use proptest::prelude::*;
use serde_json::{json, Value};

// ------------------------------------------------------------------ strategies

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-c]{0,3}".prop_map(Value::from),
        "[aé🌍\u{0}\"\\\\]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Random JSON that often looks like an op, to reach deep into the parser.
fn arb_op_like() -> impl Strategy<Value = Value> {
    let names = prop::sample::select(vec![
        "set", "del", "counter", "inc", "push", "insert", "text", "splice", "bad",
    ]);
    let fields = prop::collection::btree_map(
        prop::sample::select(vec![
            "path", "value", "by", "index", "delete", "insert", "x",
        ]),
        prop_oneof![arb_json(), arb_path().prop_map(|p| path_json(&p))],
        0..5,
    );
    (names, fields).prop_map(|(name, fields)| {
        let mut obj: serde_json::Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        obj.insert("op".into(), Value::from(name));
        Value::Object(obj)
    })
}

fn arb_path() -> impl Strategy<Value = Vec<PathElem>> {
    let elem = prop_oneof![
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|k| PathElem::Key(k.into())),
        (0usize..4).prop_map(PathElem::Index),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        9 => prop::collection::vec(elem, 1..4),
    ]
}

fn arb_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -5i64..5,
        1 => prop::sample::select(vec![
            MAX_COUNTER,
            -MAX_COUNTER,
            MAX_COUNTER + 1,
            -MAX_COUNTER - 1,
            i64::MAX,
            i64::MIN,
        ]),
    ]
}

fn arb_text() -> impl Strategy<Value = String> {
    "[xé🌍]{0,3}"
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (arb_path(), arb_json()).prop_map(|(path, value)| Op::Set { path, value }),
        arb_path().prop_map(|path| Op::Del { path }),
        (arb_path(), arb_int()).prop_map(|(path, value)| Op::Counter { path, value }),
        (arb_path(), arb_int()).prop_map(|(path, by)| Op::Inc { path, by }),
        (arb_path(), arb_json()).prop_map(|(path, value)| Op::Push { path, value }),
        (arb_path(), arb_json()).prop_map(|(path, value)| Op::Insert { path, value }),
        (arb_path(), arb_text()).prop_map(|(path, value)| Op::Text { path, value }),
        (arb_path(), 0usize..5, 0usize..4, arb_text()).prop_map(|(path, index, delete, insert)| {
            Op::Splice {
                path,
                index,
                delete,
                insert,
            }
        }),
    ]
}

/// An op whose path is either its own random path, or (`Some((seed, extra))`) a path
/// that exists in the document when the op runs, picked by `seed`, plus `extra`.
fn arb_planned_op() -> impl Strategy<Value = (Op, Option<(usize, Option<PathElem>)>)> {
    let extra = prop_oneof![
        Just(None),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|k| Some(PathElem::Key(k.into()))),
        (0usize..4).prop_map(|i| Some(PathElem::Index(i))),
    ];
    (
        arb_op(),
        prop_oneof![1 => Just(None), 3 => (any::<usize>(), extra).prop_map(Some)],
    )
}

/// `op` with its path replaced.
fn with_path(op: &Op, new: Vec<PathElem>) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Set { path, .. }
        | Op::Del { path }
        | Op::Counter { path, .. }
        | Op::Inc { path, .. }
        | Op::Push { path, .. }
        | Op::Insert { path, .. }
        | Op::Text { path, .. }
        | Op::Splice { path, .. } => *path = new,
    }
    op
}

fn path_json(path: &[PathElem]) -> Value {
    concordant::ops::path_to_json(path)
}

// ------------------------------------------------------------------ the model

/// The documented semantics on plain values.
#[derive(Clone, Debug)]
enum M {
    Map(BTreeMap<String, M>),
    List(Vec<M>),
    Text(Vec<char>),
    Counter(i64),
    Scalar(Value),
}

impl M {
    fn from_json(v: &Value) -> M {
        match v {
            Value::Object(m) => M::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), M::from_json(v)))
                    .collect(),
            ),
            Value::Array(a) => M::List(a.iter().map(M::from_json).collect()),
            v => M::Scalar(v.clone()),
        }
    }

    /// Every path that exists in the value, the root's `[]` included.
    fn paths(&self, prefix: &mut Vec<PathElem>, out: &mut Vec<Vec<PathElem>>) {
        out.push(prefix.clone());
        match self {
            M::Map(m) => {
                for (k, v) in m {
                    prefix.push(PathElem::Key(k.clone()));
                    v.paths(prefix, out);
                    prefix.pop();
                }
            }
            M::List(l) => {
                for (i, v) in l.iter().enumerate() {
                    prefix.push(PathElem::Index(i));
                    v.paths(prefix, out);
                    prefix.pop();
                }
            }
            _ => {}
        }
    }

    fn to_json(&self) -> Value {
        match self {
            M::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            M::List(l) => Value::Array(l.iter().map(M::to_json).collect()),
            M::Text(t) => Value::String(t.iter().collect()),
            M::Counter(c) => json!(c),
            M::Scalar(v) => v.clone(),
        }
    }

    /// The child at one path element, if this is a map or list that has it.
    fn child(&mut self, elem: &PathElem) -> Result<&mut M, u16> {
        match (self, elem) {
            (M::Map(m), PathElem::Key(k)) => m.get_mut(k).ok_or(409u16),
            (M::List(l), PathElem::Index(i)) => l.get_mut(*i).ok_or(409u16),
            _ => Err(409),
        }
    }

    fn resolve(&mut self, path: &[PathElem]) -> Result<&mut M, u16> {
        let mut here = self;
        for elem in path {
            here = here.child(elem)?;
        }
        Ok(here)
    }

    /// Puts at an existing map key or list element (set, counter, text).
    fn put(&mut self, path: &[PathElem], value: M) -> Result<(), u16> {
        let (last, parent) = path.split_last().ok_or(400u16)?;
        match (self.resolve(parent)?, last) {
            (M::Map(m), PathElem::Key(k)) => {
                m.insert(k.clone(), value);
                Ok(())
            }
            (M::List(l), PathElem::Index(i)) if *i < l.len() => {
                l[*i] = value;
                Ok(())
            }
            _ => Err(409),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), u16> {
        let path = op.path();
        // What needs no document: 400.
        let needs_path = !matches!(op, Op::Set { .. });
        if needs_path && path.is_empty() {
            return Err(400);
        }
        if let Op::Set { value, .. } = op {
            if path.is_empty() && !value.is_object() {
                return Err(400);
            }
        }
        if matches!(op, Op::Insert { .. }) && !matches!(path.last(), Some(PathElem::Index(_))) {
            return Err(400);
        }
        if let Op::Counter { value: n, .. } | Op::Inc { by: n, .. } = op {
            if !(-MAX_COUNTER..=MAX_COUNTER).contains(n) {
                return Err(400);
            }
        }
        match op {
            Op::Set { value, .. } if path.is_empty() => {
                let (Value::Object(obj), M::Map(root)) = (value, self) else {
                    return Err(400);
                };
                for (k, v) in obj {
                    root.insert(k.clone(), M::from_json(v));
                }
                Ok(())
            }
            Op::Set { value, .. } => self.put(path, M::from_json(value)),
            Op::Counter { value, .. } => self.put(path, M::Counter(*value)),
            Op::Text { value, .. } => self.put(path, M::Text(value.chars().collect())),
            Op::Del { .. } => {
                let (last, parent) = path.split_last().ok_or(400u16)?;
                match (self.resolve(parent)?, last) {
                    (M::Map(m), PathElem::Key(k)) => m.remove(k).map(drop).ok_or(409u16),
                    (M::List(l), PathElem::Index(i)) if *i < l.len() => {
                        l.remove(*i);
                        Ok(())
                    }
                    _ => Err(409),
                }
            }
            Op::Inc { by, .. } => match self.resolve(path)? {
                M::Counter(c) => {
                    *c = c
                        .checked_add(*by)
                        .filter(|n| (-MAX_COUNTER..=MAX_COUNTER).contains(n))
                        .ok_or(409u16)?;
                    Ok(())
                }
                _ => Err(409),
            },
            Op::Push { value, .. } => match self.resolve(path)? {
                M::List(l) => {
                    l.push(M::from_json(value));
                    Ok(())
                }
                _ => Err(409),
            },
            Op::Insert { value, .. } => {
                let (last, parent) = path.split_last().ok_or(400u16)?;
                let PathElem::Index(i) = last else {
                    return Err(400);
                };
                match self.resolve(parent)? {
                    M::List(l) if *i <= l.len() => {
                        l.insert(*i, M::from_json(value));
                        Ok(())
                    }
                    _ => Err(409),
                }
            }
            Op::Splice {
                index,
                delete,
                insert,
                ..
            } => match self.resolve(path)? {
                M::Text(t) if index + delete <= t.len() => {
                    t.splice(*index..index + delete, insert.chars());
                    Ok(())
                }
                _ => Err(409),
            },
        }
    }
}

/// Whether an op passes the checks that need no document.
fn well_formed(op: &Op) -> bool {
    let mut scratch = M::Map(BTreeMap::new());
    scratch.apply(op) != Err(400)
}

/// A starting document with maps, lists, text and counters where random paths
/// (keys a, b, c and indexes 0 to 3) often lead somewhere.
fn setup_ops() -> Value {
    json!([
        {"op": "set", "path": [], "value": {
            "a": {"a": [1, {"a": 1}], "b": {"c": {}}, "c": 1},
            "b": [[0, 1], {"a": [], "b": 2}, 3],
            "c": "str",
        }},
        {"op": "counter", "path": ["a", "c"], "value": 1},
        {"op": "text", "path": ["a", "b", "a"], "value": "tëxt"},
        {"op": "text", "path": ["b", 2], "value": "ab"},
        {"op": "counter", "path": ["b", 0, 1], "value": -2},
    ])
}

/// One corruption of a request body: overwrite, insert or delete a byte somewhere.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    // JSON punctuation and digits more often than other bytes, to keep it near-JSON.
    let byte = prop_oneof![
        prop::sample::select(b"{}[],:\"0123456789-.eE \\".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
    ]
}

fn mutate(body: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Overwrite(i, b) if !body.is_empty() => {
            let i = i.index(body.len());
            body[i] = *b;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(body.len() + 1);
            body.insert(i, *b);
        }
        Mutation::Delete(i) if !body.is_empty() => {
            body.remove(i.index(body.len()));
        }
        _ => {}
    }
}

/// Applies parsed ops to an empty document and to the [`setup_ops`] document: each
/// attempt succeeds or is refused as not fitting the document (409), never a panic.
fn applies_without_panic(ops: &[Op]) -> Result<(), TestCaseError> {
    let setup = parse_ops(&setup_ops()).unwrap();
    for start in [&[][..], &setup[..]] {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        apply_ops(&mut tx, start).unwrap();
        tx.commit();
        let mut tx = doc.transaction();
        match apply_ops(&mut tx, ops) {
            Ok(()) => {
                tx.commit();
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 409, "{}", e);
                tx.rollback();
            }
        }
        // What was written reads back.
        let _ = doc_to_json(&doc);
    }
    Ok(())
}

/// A `set` of `value` at `["a"]` whose value is `depth` nested lists (or maps) around 1.
fn nested_set_body(depth: usize, maps: bool) -> String {
    let (open, close) = if maps { (r#"{"k":"#, "}") } else { ("[", "]") };
    format!(
        r#"{{"ops":[{{"op":"set","path":["a"],"value":{}1{}}}]}}"#,
        open.repeat(depth),
        close.repeat(depth)
    )
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_write_request_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_write_request(&body) {
            prop_assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn parse_never_panics_on_json(
        ops in prop_oneof![arb_json(), prop::collection::vec(arb_op_like(), 0..4).prop_map(Value::Array)],
        ack in arb_json(),
        timeout in arb_json(),
    ) {
        let _ = parse_ops(&ops);
        for body in [json!({"ops": ops}), json!({"ops": ops, "ack": ack, "timeout_ms": timeout}), ops.clone()] {
            match parse_write_request(body.to_string().as_bytes()) {
                Ok(req) => {
                    // What parses prints back to the same request.
                    let again = parse_write_request(req.to_json().to_string().as_bytes());
                    prop_assert_eq!(again, Ok(req));
                }
                Err(e) => prop_assert_eq!(e.status(), 400),
            }
        }
    }

    #[test]
    fn corrupted_requests_never_panic(
        ops in prop::collection::vec(arb_op(), 1..4),
        mutations in prop::collection::vec(arb_mutation(), 1..5),
    ) {
        let mut body = json!({"ops": Value::Array(ops.iter().map(Op::to_json).collect())})
            .to_string()
            .into_bytes();
        for m in &mutations {
            mutate(&mut body, m);
        }
        match parse_write_request(&body) {
            Ok(req) => applies_without_panic(&req.ops)?,
            Err(e) => prop_assert_eq!(e.status(), 400),
        }
    }

    #[test]
    fn whatever_parses_applies_without_panic(
        ops in prop::collection::vec(prop_oneof![arb_op_like(), arb_op().prop_map(|op| op.to_json())], 1..5),
    ) {
        if let Ok(parsed) = parse_ops(&Value::Array(ops)) {
            applies_without_panic(&parsed)?;
        }
    }

    #[test]
    fn nesting_of_any_depth_is_refused_or_applied(depth in prop_oneof![0usize..4096, 90usize..110], maps in any::<bool>()) {
        // The path ["a"] takes one level below the root; the value gets the rest.
        let fits = depth < MAX_DEPTH;
        match parse_write_request(nested_set_body(depth, maps).as_bytes()) {
            Ok(req) => {
                prop_assert!(fits, "depth {} parsed", depth);
                let mut doc = Automerge::new();
                let mut tx = doc.transaction();
                apply_ops(&mut tx, &req.ops).unwrap();
                tx.commit();
            }
            Err(e) => {
                prop_assert!(!fits, "depth {}: {}", depth, e);
                prop_assert_eq!(e.status(), 400);
            }
        }
    }

    #[test]
    fn ops_to_json_parse_back(ops in prop::collection::vec(arb_op(), 1..5)) {
        let text = Value::Array(ops.iter().map(Op::to_json).collect());
        match parse_ops(&text) {
            Ok(parsed) => {
                prop_assert!(ops.iter().all(well_formed));
                prop_assert_eq!(parsed, ops);
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400);
                prop_assert!(!ops.iter().all(well_formed), "{}", e);
            }
        }
    }

    #[test]
    fn apply_agrees_with_the_model_and_rollback_restores(
        requests in prop::collection::vec(
            (prop::collection::vec(arb_planned_op(), 1..4), any::<bool>()),
            1..16,
        )
    ) {
        let mut doc = Automerge::new();
        let mut model = M::Map(BTreeMap::new());
        let setup = parse_ops(&setup_ops()).unwrap();
        let mut tx = doc.transaction();
        apply_ops(&mut tx, &setup).unwrap();
        tx.commit();
        for op in &setup {
            model.apply(op).unwrap();
        }
        for (plans, commit) in requests {
            let mut scratch = model.clone();
            let mut ops = Vec::new();
            for (op, plan) in plans {
                let op = match plan {
                    None => op,
                    Some((seed, extra)) => {
                        let mut paths = Vec::new();
                        scratch.paths(&mut Vec::new(), &mut paths);
                        // Mostly aim inc, splice, push and insert at a target of their type.
                        let fits = |p: &Vec<PathElem>| {
                            let target = scratch.clone().resolve(p).map(|m| m.clone());
                            match (&op, target) {
                                (Op::Inc { .. }, Ok(M::Counter(_))) => true,
                                (Op::Splice { .. }, Ok(M::Text(_))) => true,
                                (Op::Push { .. } | Op::Insert { .. }, Ok(M::List(_))) => true,
                                (Op::Inc { .. } | Op::Splice { .. } | Op::Push { .. } | Op::Insert { .. }, _) => false,
                                _ => true,
                            }
                        };
                        let fitting: Vec<_> = paths.iter().filter(|p| fits(p)).cloned().collect();
                        if !fitting.is_empty() && seed % 4 != 0 {
                            paths = fitting;
                        }
                        let mut path = paths[seed % paths.len()].clone();
                        let target = scratch.clone().resolve(&path).map(|m| m.clone());
                        match (&op, target) {
                            (Op::Inc { .. } | Op::Push { .. }, _) => {}
                            (Op::Insert { .. }, Ok(M::List(l))) => {
                                path.push(PathElem::Index(seed % (l.len() + 2)));
                            }
                            (Op::Splice { path: _, index, delete, insert }, Ok(M::Text(t)))
                                if seed % 3 != 0 =>
                            {
                                // Mostly in range.
                                let index = index % (t.len() + 1);
                                let delete = delete % (t.len() - index + 1);
                                let insert = insert.clone();
                                ops.push(Op::Splice { path, index, delete, insert });
                                let _ = scratch.apply(ops.last().unwrap());
                                continue;
                            }
                            _ => path.extend(extra),
                        }
                        with_path(&op, path)
                    }
                };
                // Later ops see the effect of earlier ones when picking paths.
                let _ = scratch.apply(&op);
                ops.push(op);
            }
            let heads = doc.get_heads();
            let before = doc_to_json(&doc);
            let saved = doc.save();
            let mut next = model.clone();
            let want = ops.iter().try_for_each(|op| next.apply(op));
            let mut tx = doc.transaction();
            let got = apply_ops(&mut tx, &ops);
            prop_assert_eq!(got.clone().map_err(|e| e.status()), want, "{:?} on {}", ops, before);
            if got.is_ok() && commit {
                tx.commit();
                model = next;
                prop_assert_eq!(doc_to_json(&doc), model.to_json());
            } else {
                tx.rollback();
                prop_assert_eq!(doc.get_heads(), heads);
                prop_assert_eq!(doc_to_json(&doc), before);
                prop_assert_eq!(doc.save(), saved);
            }
        }
        // The document survives a save/load round trip with the same content.
        let loaded = Automerge::load(&doc.save()).unwrap();
        prop_assert_eq!(doc_to_json(&loaded), model.to_json());
    }
}

/// The fuzz target's seed inputs (`fuzz/seeds/ops_parse`) stay valid requests that apply
/// to an empty document.
#[test]
fn fuzz_seeds_parse_and_apply() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/ops_parse");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let req = parse_write_request(&body).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        apply_ops(&mut tx, &req.ops).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        tx.commit();
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} seeds in {}", dir.display());
}
