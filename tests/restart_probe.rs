use concordant::core::{CoreConfig, Flood, Replica, StoredIndex};
use concordant::storage::{RedbStore, Store};
use std::time::Instant;
#[test]
#[ignore]
fn probe() {
    let dir = std::env::var("PROBE_DIR").unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let store = RedbStore::open(std::path::Path::new(&dir)).unwrap();
        let open = t.elapsed();
        let t = Instant::now();
        let mut n = 0usize;
        store
            .scan_index(&mut |_doc, heads| {
                if heads.is_some() {
                    n += 1
                }
            })
            .unwrap();
        let scan_only = t.elapsed();
        let t = Instant::now();
        let mut index = StoredIndex::new();
        store
            .scan_index(&mut |doc, heads| {
                if let Some(h) = heads {
                    index.add(doc, h)
                }
            })
            .unwrap();
        let scan_add = t.elapsed();
        let t = Instant::now();
        let mut r = Replica::new("n1", [1; 16], Box::new(Flood), CoreConfig::default());
        r.set_store(index);
        let set = t.elapsed();
        println!(
            "{n} docs: open {open:?} scan {scan_only:?} scan+add {scan_add:?} set_store {set:?}"
        );
        drop(r);
        drop(store);
    }
}
