//! Reasoning about a document's history from its heads and change graph alone, without
//! loading it into Automerge: what lets a replica store changes of a document that is not
//! in memory, and answer a peer from the stored log.
//!
//! Both functions are conservative: where the answer cannot be known from what they are
//! given they return `None`, and the caller loads the document.

use std::collections::{HashMap, HashSet};

use automerge::{Change, ChangeHash};

/// Changes appended to a document whose heads are `base`: the new heads and which of the
/// changes are new, if they extend the history directly. That holds when every change's
/// dependencies are among `base` or the other changes, and a change without dependencies
/// comes only into an empty document. A change already in the document then cannot pass:
/// it would be an ancestor of a head, and the heads' descendants are not in the document.
pub(crate) fn fast_forward(
    base: &[ChangeHash],
    changes: &[Change],
) -> Option<(Vec<ChangeHash>, Vec<usize>)> {
    let known: HashSet<ChangeHash> = base.iter().copied().collect();
    let mut fresh = Vec::new();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    for (i, c) in changes.iter().enumerate() {
        if !known.contains(&c.hash()) && seen.insert(c.hash()) {
            fresh.push(i);
        }
    }
    let mut deps: HashSet<ChangeHash> = HashSet::new();
    for &i in &fresh {
        let c = &changes[i];
        if c.deps().is_empty() && !base.is_empty() {
            return None;
        }
        for d in c.deps() {
            if !known.contains(d) && !seen.contains(d) {
                return None;
            }
            deps.insert(*d);
        }
    }
    let mut heads: Vec<ChangeHash> = base
        .iter()
        .copied()
        .chain(fresh.iter().map(|&i| changes[i].hash()))
        .filter(|h| !deps.contains(h))
        .collect();
    heads.sort_unstable();
    heads.dedup();
    Some((heads, fresh))
}

/// The changes of a document with heads `heads` that are not ancestors of `after` (what
/// Automerge's `get_changes(after)` gives), found in `log` alone, dependencies first; `None`
/// if the walk back from `heads` reaches a change that is neither in `log` nor in `after`
/// (it is in the document's snapshot).
pub(crate) fn changes_after<'a>(
    log: &'a [Change],
    heads: &[ChangeHash],
    after: &[ChangeHash],
) -> Option<Vec<&'a Change>> {
    let by_hash: HashMap<ChangeHash, &Change> = log.iter().map(|c| (c.hash(), c)).collect();
    let stop: HashSet<ChangeHash> = after.iter().copied().collect();
    let mut out = Vec::new();
    let mut visited: HashSet<ChangeHash> = HashSet::new();
    // Iterative post-order walk: a change is emitted after its dependencies.
    let mut stack: Vec<(ChangeHash, bool)> = heads.iter().map(|h| (*h, false)).collect();
    while let Some((hash, expanded)) = stack.pop() {
        if expanded {
            out.push(*by_hash.get(&hash)?);
            continue;
        }
        if stop.contains(&hash) || !visited.insert(hash) {
            continue;
        }
        let change = by_hash.get(&hash)?;
        stack.push((hash, true));
        for d in change.deps() {
            if !visited.contains(d) && !stop.contains(d) {
                stack.push((*d, false));
            }
        }
    }
    // A change reachable from `after` is not "after" it: only possible if `after` names
    // changes of the log whose ancestors the walk also reached by another path.
    let below = ancestors(&by_hash, after);
    out.retain(|c| !below.contains(&c.hash()));
    Some(out)
}

/// Every change of the log reachable from `from` (included).
fn ancestors(by_hash: &HashMap<ChangeHash, &Change>, from: &[ChangeHash]) -> HashSet<ChangeHash> {
    let mut seen = HashSet::new();
    let mut stack: Vec<ChangeHash> = from.to_vec();
    while let Some(h) = stack.pop() {
        if !seen.insert(h) {
            continue;
        }
        if let Some(c) = by_hash.get(&h) {
            stack.extend(c.deps().iter().copied());
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    /// A document with `n` changes in a line, and its changes.
    fn line(n: usize) -> (AutoCommit, Vec<Change>) {
        let mut doc = AutoCommit::new();
        for i in 0..n {
            doc.put(ROOT, "k", i as i64).unwrap();
            doc.commit();
        }
        let changes = doc.get_changes(&[]);
        (doc, changes)
    }

    #[test]
    fn appending_new_changes_moves_the_heads() {
        let (_, c) = line(3);
        let (heads, fresh) = fast_forward(&[c[0].hash()], &c[1..]).unwrap();
        assert_eq!(heads, vec![c[2].hash()]);
        assert_eq!(fresh, vec![0, 1]);
        // Into an empty document, from the root.
        let (heads, _) = fast_forward(&[], &c).unwrap();
        assert_eq!(heads, vec![c[2].hash()]);
        // Out of order within the batch is fine.
        let rev: Vec<Change> = c.iter().rev().cloned().collect();
        assert_eq!(fast_forward(&[], &rev).unwrap().0, vec![c[2].hash()]);
    }

    #[test]
    fn old_changes_and_gaps_need_the_document() {
        let (_, c) = line(3);
        // Already in the document, below the head.
        assert!(fast_forward(&[c[2].hash()], &c[1..2]).is_none());
        assert!(fast_forward(&[c[2].hash()], &c[..1]).is_none());
        // A dependency missing.
        assert!(fast_forward(&[c[0].hash()], &c[2..]).is_none());
        // The head itself again: nothing new, heads unchanged.
        let (heads, fresh) = fast_forward(&[c[2].hash()], &c[2..]).unwrap();
        assert_eq!((heads, fresh.len()), (vec![c[2].hash()], 0));
    }

    #[test]
    fn concurrent_changes_on_one_head_make_two_heads() {
        let (mut a, c) = line(1);
        let mut b = a.fork();
        a.put(ROOT, "a", 1).unwrap();
        a.commit();
        b.put(ROOT, "b", 1).unwrap();
        b.commit();
        let ca = a.get_last_local_change().unwrap().clone();
        let cb = b.get_last_local_change().unwrap().clone();
        let (heads, _) = fast_forward(&[c[0].hash()], &[ca.clone(), cb.clone()]).unwrap();
        let mut expect = vec![ca.hash(), cb.hash()];
        expect.sort_unstable();
        assert_eq!(heads, expect);
    }

    #[test]
    fn changes_after_matches_automerge() {
        let (doc, c) = line(5);
        let heads = vec![c[4].hash()];
        for k in 0..5 {
            let mine: Vec<ChangeHash> = changes_after(&c, &heads, &[c[k].hash()])
                .unwrap()
                .iter()
                .map(|c| c.hash())
                .collect();
            let theirs: Vec<ChangeHash> = doc
                .clone()
                .get_changes(&[c[k].hash()])
                .iter()
                .map(|c| c.hash())
                .collect();
            assert_eq!(mine, theirs, "after change {k}");
        }
        assert_eq!(changes_after(&c, &heads, &[]).unwrap().len(), 5);
        // Part of the history is not in the log (a snapshot holds it): unknown.
        assert!(changes_after(&c[3..], &heads, &[c[0].hash()]).is_none());
        assert_eq!(
            changes_after(&c[3..], &heads, &[c[2].hash()])
                .unwrap()
                .len(),
            2
        );
    }
}
