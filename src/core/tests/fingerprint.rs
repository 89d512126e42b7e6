//! The replica's fingerprint ([`Replica::fingerprint`]): the same on replicas that hold the
//! same documents at the same heads, however they got them, and different otherwise.

use super::*;

fn saved(r: &mut Replica, doc: &str) -> Vec<u8> {
    r.load(doc).unwrap().expect("the document").save()
}

#[test]
fn the_fingerprint_follows_the_documents_and_their_heads() {
    let mut a = replica("a");
    let empty = a.fingerprint();
    assert_eq!(replica("b").fingerprint(), empty);
    let docs = ["x", "y", "z"];
    for doc in docs {
        put(&mut a, 0, doc, "k", 1, false);
    }
    assert_ne!(a.fingerprint(), empty);
    let copies: Vec<Vec<u8>> = docs.iter().map(|d| saved(&mut a, d)).collect();

    // The same documents, merged in the other order: the same fingerprint.
    let mut b = replica("b");
    for (doc, data) in docs.iter().zip(&copies).rev() {
        b.merge(0, doc, data).unwrap();
    }
    assert_eq!(b.fingerprint(), a.fingerprint());

    // A document less.
    let mut c = replica("c");
    for (doc, data) in docs.iter().zip(&copies).take(2) {
        c.merge(0, doc, data).unwrap();
    }
    assert_ne!(c.fingerprint(), a.fingerprint());

    // Other heads of one document, until the other side has them too.
    put(&mut b, 1, "y", "k", 2, false);
    assert_ne!(b.fingerprint(), a.fingerprint());
    let newer = saved(&mut b, "y");
    a.merge(2, "y", &newer).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());

    // A document more.
    put(&mut a, 3, "w", "k", 1, false);
    assert_ne!(a.fingerprint(), b.fingerprint());
}
