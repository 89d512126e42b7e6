// Writes the seed inputs of the fuzz target `automerge_data` (fuzz/README.md): saved
// documents, changes and sync messages made by the JavaScript Automerge, each behind the
// byte that tells the target which kind it is. Run from tests/js:
// `node make_fuzz_seeds.mjs ../../fuzz/seeds/automerge_data`.
import * as A from "@automerge/automerge";
import fs from "fs";
const dir = process.argv[2];
fs.mkdirSync(dir, { recursive: true });
const put = (name, mode, bytes) => fs.writeFileSync(`${dir}/${name}`, Buffer.concat([Buffer.from([mode]), Buffer.from(bytes)]));
let doc = A.from({ title: "hello", list: [1, 2, null, "x"], n: new A.Counter(3) });
doc = A.change(doc, d => { d.text = "some text here"; d.list.push({ a: true }); });
doc = A.change(doc, d => { d.n.increment(2); d.list.deleteAt(0); A.splice(d, ["text"], 2, 3, "XYZ"); });
put("saved", 0, A.save(doc));
put("changes", 0, Buffer.concat(A.getAllChanges(doc).map(c => Buffer.from(c))));
put("one-change", 2, A.getAllChanges(doc)[1]);
let big = A.from({ t: "a".repeat(5000) });
put("saved-compressed", 4, A.save(big));
// sync messages: one side with the doc, the other empty
let s1 = A.initSyncState(), s2 = A.initSyncState();
let other = A.init();
let [s1b, m1] = A.generateSyncMessage(doc, s1);
put("sync-first", 1, m1);
let [other2, s2b] = A.receiveSyncMessage(other, s2, m1);
let [s2c, m2] = A.generateSyncMessage(other2, s2b);
if (m2) put("sync-reply", 3, m2);
let [doc2, s1c] = A.receiveSyncMessage(doc, s1b, m2);
let [s1d, m3] = A.generateSyncMessage(doc2, s1c);
if (m3) put("sync-changes", 5, m3);
console.log(fs.readdirSync(dir));
