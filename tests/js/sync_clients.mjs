// automerge-repo 2.5.x clients against concordant's `GET /v1/sync` (the automerge-repo network
// protocol "1"), driven by tests/sync_clients.rs; also runnable by hand against any cluster
// and, with SYNC_SKIP_HTTP=1, against tests/js/reference_server.mjs (see reference_check.mjs).
//
// Configuration (environment):
//   CONCORDANT_WS      comma-separated WebSocket URLs, one per node, in node order, e.g.
//                      ws://127.0.0.1:8101/v1/sync?token=T,ws://127.0.0.1:8102/v1/sync?token=T,...
//                      Client A uses the first, client B the second; scenario 4 gives A the
//                      first two and B the third (the second if there are only two).
//   CONCORDANT_HTTP    comma-separated HTTP base URLs of the same nodes (http://127.0.0.1:8101,...)
//   CONCORDANT_TOKEN   the API token (sent as `Authorization: Bearer`), if the cluster has one
//   SYNC_SCENARIOS     comma-separated scenario numbers, or "all" (1-7); default 1,2,3,5,6
//   SYNC_DOC_URL       the document of scenario 8
//   CONCORDANT_NODES   comma-separated node ids in CONCORDANT_HTTP's order (scenario 10)
//   SYNC_LB_CLIENTS    clients of scenario 10 (default 4)
//   CONCORDANT_TOKEN_KEY  the cluster's token-signing private key (certs/tokens.key, PKCS#8
//                      PEM): scenario 9 mints user tokens with it (`jose`), as an app's
//                      backend would
//   SYNC_SKIP_HTTP=1   self-check against a plain automerge-repo server: skips every HTTP API
//                      check and the scenarios that need the HTTP API or a token (2, 6, 7)
//   SYNC_TIMEOUT_MS    bound on each wait (default 20000)
//   SYNC_UNAVAILABLE_MS  bound on find() of an unknown document (default 5000)
//   SYNC_RETRY_MS      reconnect interval given to WebSocketClientAdapter (default 1000; the
//                      library's default is 5000)
//
// Scenarios:
//   1  A (node 1) creates and edits a document; B (node 2) finds it by URL and sees the same
//      content; B's edit reaches A live; concurrent edits merge; node 3's HTTP API shows the
//      merged document.
//   2  A document written only through node 3's HTTP API (`POST /v1/docs/{id}/ops`) is found by
//      A on node 1; a later HTTP write reaches A live.
//   3  find() of a fresh random URL rejects ("unavailable") within SYNC_UNAVAILABLE_MS, and no
//      node shows the document afterwards.
//   4  Failover: A uses nodes 1 and 2 at once, B node 3. Prints READY-TO-KILL (the harness kills
//      node 1 and answers KILLED on stdin); A and B keep editing through the other nodes; prints
//      READY-TO-RESTART (the harness restarts node 1 and answers RESTARTED); A reconnects to
//      node 1 and A, B and every node's HTTP API agree with nothing lost.
//   5  Ephemeral messages (handle.broadcast) from A reach B across nodes, and back, with the
//      sender's peer id.
//   6  The WebSocket upgrade without a token or with a wrong one is answered 401; with the
//      token (query or Authorization header) it is accepted.
//   7  A document made with `POST /v1/docs` (empty, fresh automerge id) is found by A.
//   8  Clients of a document on nodes that do not replicate it (a cluster with `replicas`):
//      SYNC_DOC_URL names a document whose replicas do not include nodes 1 and 2; A (node 1)
//      and B (node 2) find it, edit it together live both ways, and the last node's HTTP API
//      (a replica) shows the merged document.
//   9  User tokens (JWTs minted here with `jose`, EdDSA): alice's token for document A finds
//      and edits A through nodes 1 and 2; her find() of B is unavailable and B's content never
//      reaches her; bob's read-only token receives A's changes live, his own change ends his
//      socket (the server's `error`) and A is unchanged on every node; carol's `create` token
//      makes a document, and after she disconnects her `owner` token opens it on another
//      node (dave's does not); an expired token's upgrade is refused with 401; alice's
//      sockets on every node close within 2 s of her token's revocation at one node.
//   10 Behind a load balancer: CONCORDANT_WS is one URL, the balancer's (docs/haproxy.cfg).
//      SYNC_LB_CLIENTS clients connect through it one after the other (spread over the nodes)
//      and edit one document, each every 150 ms. Prints READY-TO-KILL <node> naming the node
//      of the first client (the harness SIGKILLs it and answers KILLED on stdin) while they
//      keep editing; every client that was on it reconnects through the balancer to another
//      node; then every client and every other node's HTTP API show every edit.
//
// Prints one line per passed scenario ("PASS <n> <what>"); exits 0 only if every requested
// scenario passed; every wait is bounded.

import { isDeepStrictEqual } from "node:util"
import readline from "node:readline"
import {
  Repo,
  generateAutomergeUrl,
  parseAutomergeUrl,
  stringifyAutomergeUrl,
} from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import WebSocket from "ws"
import { SignJWT, importPKCS8 } from "jose"
import { readFileSync } from "node:fs"

// ---------------------------------------------------------------------------------------------
// configuration

const list = name =>
  (process.env[name] ?? "")
    .split(",")
    .map(s => s.trim())
    .filter(Boolean)

const WS = list("CONCORDANT_WS")
const HTTP = list("CONCORDANT_HTTP")
const TOKEN = process.env.CONCORDANT_TOKEN || undefined
const SKIP_HTTP = ["1", "true", "yes"].includes(process.env.SYNC_SKIP_HTTP ?? "")
const TIMEOUT = Number(process.env.SYNC_TIMEOUT_MS ?? 20000)
const UNAVAILABLE_BOUND = Number(process.env.SYNC_UNAVAILABLE_MS ?? 5000)
const RETRY_MS = Number(process.env.SYNC_RETRY_MS ?? 1000)
const ALL = [1, 2, 3, 4, 5, 6, 7]
const NEEDS_HTTP = new Set([2, 6, 7, 8, 9, 10])
const DOC_URL = process.env.SYNC_DOC_URL
const TOKEN_KEY = process.env.CONCORDANT_TOKEN_KEY
const NODES = list("CONCORDANT_NODES")
const LB_CLIENTS = Number(process.env.SYNC_LB_CLIENTS ?? 4)

function scenarios() {
  const raw = process.env.SYNC_SCENARIOS ?? "1,2,3,5,6"
  if (raw.trim() === "all") return ALL
  const out = raw.split(",").map(s => Number(s.trim()))
  for (const n of out) {
    if (!ALL.includes(n) && ![8, 9, 10].includes(n)) fatal(`SYNC_SCENARIOS=${raw}: unknown scenario ${n}`)
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// helpers

const log = msg => console.error(`[sync_clients ${new Date().toISOString().slice(11, 23)}] ${msg}`)

function fatal(msg) {
  console.error(`FAIL: ${msg}`)
  process.exit(1)
}

class Failure extends Error {}

const sleep = ms => new Promise(r => setTimeout(r, ms))

/** Resolves with `promise`, or rejects with a Failure naming `what` after `ms`. */
function within(ms, what, promise) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Polls `check` (sync or async, truthy = done) every 50 ms; fails after `ms` with `what`
 * and the last value of `describe()`. */
async function waitUntil(what, check, { ms = TIMEOUT, describe } = {}) {
  const start = Date.now()
  let lastError
  for (;;) {
    try {
      const v = await check()
      if (v) return v
      lastError = undefined
    } catch (e) {
      lastError = e
    }
    if (Date.now() - start > ms) {
      let extra = ""
      if (describe) {
        try {
          extra = `; last seen: ${await describe()}`
        } catch (e) {
          extra = `; (describe failed: ${e})`
        }
      }
      if (lastError) extra += `; last error: ${lastError}`
      throw new Failure(`timed out after ${ms} ms waiting until ${what}${extra}`)
    }
    await sleep(50)
  }
}

/** A handle's document as plain JSON. */
const json = handle => JSON.parse(JSON.stringify(handle.doc()))
const show = v => JSON.stringify(v)

function authHeaders(extra = {}) {
  return TOKEN ? { Authorization: `Bearer ${TOKEN}`, ...extra } : extra
}

/** GET /v1/docs/{id} at node `i`: `{status, body}` (body parsed if JSON). */
async function httpGetDoc(i, documentId) {
  const res = await fetch(`${HTTP[i]}/v1/docs/${documentId}`, {
    headers: authHeaders(),
    signal: AbortSignal.timeout(5000),
  })
  const text = await res.text()
  let body = text
  try {
    body = JSON.parse(text)
  } catch {
    // keep the text
  }
  return { status: res.status, body }
}

async function httpPostOps(i, documentId, ops) {
  const res = await fetch(`${HTTP[i]}/v1/docs/${documentId}/ops`, {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ops }),
    signal: AbortSignal.timeout(10000),
  })
  const text = await res.text()
  if (res.status !== 200) {
    throw new Failure(`POST ${HTTP[i]}/v1/docs/${documentId}/ops answered ${res.status}: ${text}`)
  }
  return JSON.parse(text)
}

/** Waits until node `i`'s HTTP API shows `documentId` equal to `expected()`. */
async function waitHttpEquals(i, documentId, expected, what) {
  let last
  await waitUntil(
    `node ${i + 1}'s HTTP API shows ${what}`,
    async () => {
      last = await httpGetDoc(i, documentId)
      return last.status === 200 && isDeepStrictEqual(last.body, expected())
    },
    { describe: () => `HTTP ${last?.status} ${show(last?.body)}; expected ${show(expected())}` }
  )
}

const repos = new Set()

/** An in-memory Repo connected to `urls` (one WebSocketClientAdapter each, reconnecting
 * `retryMs` after losing its server). */
function makeRepo(name, urls, retryMs = RETRY_MS) {
  const repo = new Repo({
    storage: undefined,
    network: urls.map(url => new WebSocketClientAdapter(url, retryMs)),
  })
  repo.name = name
  repos.add(repo)
  return repo
}

async function closeRepo(repo) {
  if (!repos.has(repo)) return
  repos.delete(repo)
  try {
    await within(5000, `${repo.name}.shutdown()`, repo.shutdown())
  } catch (e) {
    log(`closing ${repo.name}: ${e.message}`)
  }
}

/** Waits until `repo` has at least `n` server peers (their `peer` answers arrived). */
async function connected(repo, n = 1) {
  await waitUntil(`${repo.name} is connected to ${n} server(s) (got their "peer" message)`, () => repo.peers.length >= n, {
    describe: () => `peers ${show(repo.peers)}`,
  })
}

const sameHeads = (a, b) => !!a && !!b && a.length === b.length && [...a].sort().join() === [...b].sort().join()

/** Waits until every server peer of `repo` reported `handle`'s current heads in a sync message
 * (it has everything this client wrote). Needs the peers' storageId (sent in `peerMetadata`). */
async function serverHas(repo, handle) {
  for (const peer of repo.peers) {
    const storageId = repo.getStorageIdOfPeer(peer)
    if (!storageId) {
      throw new Failure(
        `${repo.name}: server peer ${peer} sent no storageId in its peerMetadata ` +
          `(clients track what a server has by it)`
      )
    }
    await waitUntil(
      `server ${peer} acknowledged ${repo.name}'s heads of ${handle.documentId}`,
      () => sameHeads(handle.getSyncInfo(storageId)?.lastHeads, handle.heads()),
      { describe: () => `theirs ${show(handle.getSyncInfo(storageId)?.lastHeads)}, ours ${show(handle.heads())}` }
    )
  }
}

/** Waits until `handle`'s JSON satisfies `pred`. */
async function waitDoc(handle, what, pred) {
  await waitUntil(what, () => handle.isReady() && pred(json(handle)), {
    describe: () => (handle.isReady() ? show(json(handle)) : `handle ${handle.state}`),
  })
}

/** Resolves with the first `change` event of `handle` whose doc satisfies `pred`. */
function nextChange(handle, what, pred) {
  let listener
  const p = new Promise(resolve => {
    listener = ev => {
      const doc = JSON.parse(JSON.stringify(ev.doc))
      if (pred(doc)) resolve(doc)
    }
    handle.on("change", listener)
  })
  return within(TIMEOUT, `a live "change" event on ${what}`, p).finally(() => handle.off("change", listener))
}

/** `repo.find(url)` bounded by TIMEOUT. */
function find(repo, url) {
  return within(TIMEOUT, `${repo.name}.find(${url})`, repo.find(url))
}

/** A fresh automerge-repo document id (bs58check of 16 random bytes). */
const freshId = () => parseAutomergeUrl(generateAutomergeUrl()).documentId

// ---------------------------------------------------------------------------------------------
// stdin lines from the harness (scenario 4)

let stdinLines
function stdinLine(expected, ms) {
  if (!stdinLines) {
    const queue = []
    const waiters = []
    let ended = false
    const rl = readline.createInterface({ input: process.stdin })
    rl.on("line", line => {
      const w = waiters.shift()
      if (w) w.resolve(line.trim())
      else queue.push(line.trim())
    })
    rl.on("close", () => {
      ended = true
      for (const w of waiters.splice(0)) w.reject(new Failure("stdin closed"))
    })
    stdinLines = {
      rl,
      next: () =>
        queue.length
          ? Promise.resolve(queue.shift())
          : ended
            ? Promise.reject(new Failure("stdin closed"))
            : new Promise((resolve, reject) => waiters.push({ resolve, reject })),
    }
  }
  return within(ms, `the line ${expected} on stdin from the harness`, stdinLines.next()).then(line => {
    if (line !== expected) throw new Failure(`expected ${expected} on stdin, got ${show(line)}`)
  })
}

function closeStdin() {
  if (stdinLines) {
    stdinLines.rl.close()
    process.stdin.destroy()
  }
}

// ---------------------------------------------------------------------------------------------
// scenarios

async function scenario1() {
  const A = makeRepo("A", [WS[0]])
  const B = makeRepo("B", [WS[1 % WS.length]])
  try {
    await Promise.all([connected(A), connected(B)])
    const a = A.create({ title: "made by A", items: ["a0"], n: 1 })
    a.change(d => {
      d.items.push("a1")
      d.n = 2
      d.nested = { by: "A" }
    })
    await serverHas(A, a)
    log(`1: A created ${a.url}`)

    const b = await find(B, a.url)
    await waitDoc(b, "B sees A's document", doc => isDeepStrictEqual(doc, json(a)))

    // B's edit reaches A as a live change event.
    const seen = nextChange(a, "A's handle with B's edit", doc => doc.fromB === "hello")
    b.change(d => {
      d.fromB = "hello"
      d.items.push("b1")
    })
    await seen

    // Concurrent edits on both sides merge the same way everywhere.
    a.change(d => {
      d.concurrentA = 1
      d.items.push("a2")
    })
    b.change(d => {
      d.concurrentB = 2
      d.items.push("b2")
    })
    const merged = doc =>
      doc.concurrentA === 1 && doc.concurrentB === 2 && doc.items.includes("a2") && doc.items.includes("b2")
    await waitDoc(a, "A has both concurrent edits", merged)
    await waitDoc(b, "B has both concurrent edits", merged)
    await waitUntil("A and B agree", () => isDeepStrictEqual(json(a), json(b)), {
      describe: () => `A ${show(json(a))} B ${show(json(b))}`,
    })
    if (!SKIP_HTTP) {
      await waitHttpEquals(HTTP.length - 1, a.documentId, () => json(a), "the merged document")
    }
    return `A (node 1) and B (node 2) share ${a.documentId}: found by URL, live edits both ways, merged` +
      (SKIP_HTTP ? "" : `; node ${HTTP.length}'s HTTP API agrees`)
  } finally {
    await closeRepo(A)
    await closeRepo(B)
  }
}

async function scenario2() {
  const id = freshId()
  const third = HTTP.length - 1
  const written = await httpPostOps(third, id, [{ op: "set", path: ["title"], value: "from http" }])
  log(`2: wrote ${id} at node ${third + 1}: ${show(written)}`)
  const A = makeRepo("A", [WS[0]])
  try {
    await connected(A)
    const a = await find(A, stringifyAutomergeUrl({ documentId: id }))
    await waitDoc(a, `A sees title "from http"`, doc => doc.title === "from http")
    const live = nextChange(a, "A's handle with a later HTTP write", doc => doc.more === 42)
    await httpPostOps(third, id, [{ op: "set", path: ["more"], value: 42 }])
    await live
    return `a document written only through node ${third + 1}'s HTTP API is found by A on node 1; later HTTP writes reach A live`
  } finally {
    await closeRepo(A)
  }
}

async function scenario3() {
  const A = makeRepo("A", [WS[0]])
  try {
    await connected(A)
    const url = generateAutomergeUrl()
    const start = Date.now()
    let outcome
    try {
      const h = await within(UNAVAILABLE_BOUND, `find(${url}) of a document nobody has to reject`, A.find(url))
      outcome = { resolved: h.state }
    } catch (e) {
      if (e instanceof Failure) throw e
      outcome = { rejected: e.message }
    }
    const took = Date.now() - start
    if (!outcome.rejected) throw new Failure(`find of an unknown document resolved (handle ${outcome.resolved})`)
    if (!/unavailable/i.test(outcome.rejected)) {
      throw new Failure(`find of an unknown document rejected with ${show(outcome.rejected)}, not "unavailable"`)
    }
    if (!SKIP_HTTP) {
      const { documentId } = parseAutomergeUrl(url)
      for (let i = 0; i < HTTP.length; i++) {
        const { status, body } = await httpGetDoc(i, documentId)
        if (status !== 404) {
          throw new Failure(`after an unavailable find, node ${i + 1} answers ${status} ${show(body)} for it, not 404`)
        }
      }
    }
    return `find() of an unknown document rejected as unavailable after ${took} ms` +
      (SKIP_HTTP ? "" : "; no node shows it")
  } finally {
    await closeRepo(A)
  }
}

async function scenario4() {
  if (WS.length < 2) throw new Failure("scenario 4 needs at least two WebSocket URLs")
  const A = makeRepo("A", [WS[0], WS[1]])
  const B = makeRepo("B", [WS[Math.min(2, WS.length - 1)]])
  const expected = []
  const edit = async (handle, who, k) => {
    const entry = `${who}${k}`
    handle.change(d => {
      d.log.push(entry)
    })
    expected.push(entry)
    await sleep(150) // further apart than the client's 100 ms sync throttle
  }
  const hasAll = doc => Array.isArray(doc.log) && expected.every(e => doc.log.includes(e))
  const missing = doc => show(expected.filter(e => !(doc.log ?? []).includes(e)))
  try {
    await Promise.all([connected(A, 2), connected(B)])
    const a = A.create({ log: [] })
    for (let k = 0; k < 5; k++) await edit(a, "a-before-", k)
    await serverHas(A, a)
    const b = await find(B, a.url)
    await waitDoc(b, "B has A's edits before the kill", hasAll)
    if (!SKIP_HTTP) {
      for (let i = 0; i < HTTP.length; i++) await waitHttpEquals(i, a.documentId, () => json(a), "the document before the kill")
    }
    const peersBefore = [...A.peers]
    log(`4: A connected to ${show(peersBefore)}; asking the harness to kill node 1`)

    console.log("READY-TO-KILL")
    await stdinLine("KILLED", 60000)
    await waitUntil("A notices node 1 is gone (one server peer left)", () => A.peers.length === 1, {
      describe: () => `A's peers ${show(A.peers)}`,
    })

    for (let k = 0; k < 10; k++) {
      await edit(a, "a-during-", k)
      if (k % 3 === 0) await edit(b, "b-during-", k)
    }
    await waitDoc(b, "B has every edit made while node 1 is down (through node 2)", hasAll)
    await waitDoc(a, "A has every edit made while node 1 is down", hasAll)
    if (!SKIP_HTTP) {
      for (let i = 1; i < HTTP.length; i++) {
        await waitHttpEquals(i, a.documentId, () => json(a), "every edit made while node 1 is down")
      }
    }

    console.log("READY-TO-RESTART")
    await stdinLine("RESTARTED", 60000)
    for (let k = 0; k < 5; k++) await edit(a, "a-after-", k)
    await waitUntil(
      `A reconnects to node 1 (retry interval ${RETRY_MS} ms)`,
      () => A.peers.length === 2,
      { describe: () => `A's peers ${show(A.peers)}` }
    )
    await edit(b, "b-after-", 0)
    await waitDoc(a, "A has every edit after the restart", hasAll)
    await waitDoc(b, "B has every edit after the restart", hasAll)
    await waitUntil("A and B agree", () => isDeepStrictEqual(json(a), json(b)), {
      describe: () => `A ${show(json(a))} B ${show(json(b))}`,
    })
    if (!SKIP_HTTP) {
      for (let i = 0; i < HTTP.length; i++) {
        await waitHttpEquals(i, a.documentId, () => json(a), `all ${expected.length} edits (missing ${missing(json(a))})`)
      }
    }
    return `node 1 killed and restarted under A: ${expected.length} edits, none lost; A, B` +
      (SKIP_HTTP ? "" : " and every node's HTTP API") + " agree"
  } finally {
    closeStdin()
    await closeRepo(A)
    await closeRepo(B)
  }
}

async function scenario5() {
  const A = makeRepo("A", [WS[0]])
  const B = makeRepo("B", [WS[1 % WS.length]])
  try {
    await Promise.all([connected(A), connected(B)])
    const a = A.create({ topic: "presence" })
    await serverHas(A, a)
    const b = await find(B, a.url)
    await waitDoc(b, "B has the document", doc => doc.topic === "presence")

    // Ephemeral messages carry no delivery guarantee, so each side repeats its message (as
    // presence heartbeats do) until the other side got one.
    const exchange = async (from, fromRepo, to, toRepo, tag) => {
      let got
      const listener = ev => {
        if (ev.message?.tag === tag) got = ev
      }
      to.on("ephemeral-message", listener)
      let seq = 0
      try {
        await waitUntil(`${toRepo.name} gets ${fromRepo.name}'s ephemeral message ${tag}`, () => {
          if (got) return true
          from.broadcast({ tag, seq: seq++, from: fromRepo.name })
          return false
        }, { ms: TIMEOUT })
      } finally {
        to.off("ephemeral-message", listener)
      }
      if (got.senderId !== fromRepo.peerId) {
        throw new Failure(`${toRepo.name} got ${tag} with senderId ${got.senderId}, not ${fromRepo.name}'s peer id ${fromRepo.peerId}`)
      }
      if (got.message.from !== fromRepo.name) throw new Failure(`${tag} arrived altered: ${show(got.message)}`)
      return seq
    }
    const sentAB = await exchange(a, A, b, B, "a-to-b")
    const sentBA = await exchange(b, B, a, A, "b-to-a")
    return `ephemeral messages cross nodes both ways with the sender's peer id (${sentAB} and ${sentBA} sent until one arrived)`
  } finally {
    await closeRepo(A)
    await closeRepo(B)
  }
}

/** Opens a raw WebSocket: `{status}` of the refused upgrade, or `{open: true}`. */
function rawUpgrade(url, headers = {}) {
  return within(5000, `the upgrade of ${url} to be answered`, new Promise(resolve => {
    let done = false
    const ws = new WebSocket(url, { headers })
    const finish = result => {
      if (done) return
      done = true
      resolve(result)
    }
    ws.on("unexpected-response", (req, res) => {
      res.resume()
      finish({ status: res.statusCode })
      req.destroy()
    })
    ws.on("open", () => {
      finish({ open: true })
      ws.close()
    })
    ws.on("error", e => finish({ error: e.message }))
  }))
}

async function scenario6() {
  if (!TOKEN) throw new Failure("scenario 6 needs CONCORDANT_TOKEN (a cluster with an API token)")
  const results = []
  for (let i = 0; i < WS.length; i++) {
    const withToken = new URL(WS[i])
    withToken.searchParams.set("token", TOKEN)
    const none = new URL(withToken)
    none.searchParams.delete("token")
    const wrong = new URL(withToken)
    wrong.searchParams.set("token", `${TOKEN}x`)
    const cases = [
      ["no token", none.href, {}, r => r.status === 401],
      ["a wrong token", wrong.href, {}, r => r.status === 401],
      ["a wrong token in the header", none.href, { Authorization: `Bearer wrong${TOKEN}` }, r => r.status === 401],
      ["the token in the query", withToken.href, {}, r => r.open === true],
      ["the token in the header", none.href, { Authorization: `Bearer ${TOKEN}` }, r => r.open === true],
    ]
    for (const [what, url, headers, ok] of cases) {
      const r = await rawUpgrade(url, headers)
      if (!ok(r)) throw new Failure(`node ${i + 1}: upgrade with ${what} (${url}) gave ${show(r)}`)
    }
    results.push(i + 1)
  }
  return `nodes ${results.join(",")}: upgrade without or with a wrong token refused with 401, with the token (query or header) accepted`
}

async function scenario7() {
  const first = HTTP.length - 1
  const res = await fetch(`${HTTP[first]}/v1/docs`, {
    method: "POST",
    headers: authHeaders(),
    signal: AbortSignal.timeout(10000),
  })
  const text = await res.text()
  if (!res.ok) throw new Failure(`POST /v1/docs answered ${res.status}: ${text}`)
  const made = JSON.parse(text)
  if (made.url !== `automerge:${made.id}`) throw new Failure(`POST /v1/docs answered ${text}`)
  parseAutomergeUrl(made.url) // throws on an invalid automerge id
  const A = makeRepo("A", [WS[0]])
  try {
    await connected(A)
    const a = await find(A, made.url)
    a.change(d => {
      d.touched = true
    })
    if (!SKIP_HTTP) await waitHttpEquals(first, made.id, () => json(a), "A's edit of the created document")
    return `a document made by POST /v1/docs on node ${first + 1} (${made.id}) is found and edited by A on node 1`
  } finally {
    await closeRepo(A)
  }
}

/** A user token signed with the cluster's token key (what an app's backend does). */
async function mint(claims, expires = "1h") {
  const key = await importPKCS8(readFileSync(TOKEN_KEY, "utf8"), "EdDSA")
  return new SignJWT(claims).setProtectedHeader({ alg: "EdDSA" }).setIssuedAt().setExpirationTime(expires).sign(key)
}

/** Node `i`'s sync URL with `token` in place of the admin token. */
function wsWith(i, token) {
  const url = new URL(WS[i])
  url.searchParams.set("token", token)
  return url.href
}

/** Resolves when `repo`'s adapter number `k` loses its server (the socket closed). */
function disconnected(repo, k = 0) {
  const adapter = repo.networkSubsystem.adapters[k]
  return new Promise(resolve => adapter.once("peer-disconnected", () => resolve(Date.now())))
}

async function scenario9() {
  // A user's repo on node i; it does not reconnect within the scenario (a refused or
  // revoked token's reconnection would be answered 401, which the adapter throws).
  const user = (name, i, token) => makeRepo(name, [wsWith(i, token)], 600_000)
  if (!TOKEN_KEY) throw new Failure("scenario 9 needs CONCORDANT_TOKEN_KEY (the cluster's tokens.key)")
  if (WS.length < 3) throw new Failure("scenario 9 needs three nodes")
  const [idA, idB] = [freshId(), freshId()]
  await httpPostOps(0, idA, [{ op: "set", path: ["title"], value: "A" }])
  await httpPostOps(0, idB, [{ op: "set", path: ["secret"], value: "B" }])
  const urlA = stringifyAutomergeUrl({ documentId: idA })
  const urlB = stringifyAutomergeUrl({ documentId: idB })
  const alice = await mint({ sub: "alice", jti: "alice-1", docs: [idA], rights: "write" })
  const bob = await mint({ sub: "bob", docs: [idA], rights: "read" })
  const A1 = user("alice@1", 0, alice)
  const A2 = user("alice@2", 1, alice)
  const B3 = user("bob@3", 2, bob)
  try {
    await connected(A1)
    await connected(A2)
    const a1 = await find(A1, urlA)
    const a2 = await find(A2, urlA)
    await waitDoc(a2, "alice sees A on node 2", d => d.title === "A")
    const seen = nextChange(a2, "A at alice@2", d => d.by === "alice@1")
    a1.change(d => {
      d.by = "alice@1"
    })
    await seen
    await waitHttpEquals(2, idA, () => ({ title: "A", by: "alice@1" }), "alice's edit of A")
    // B is not hers: unavailable, and nothing of it reaches her.
    const started = Date.now()
    let refused
    try {
      await within(UNAVAILABLE_BOUND, "find() of B to reject", A1.find(urlB))
    } catch (e) {
      refused = e
    }
    if (!refused || refused instanceof Failure) {
      throw new Failure(`alice's find() of B ${refused ? refused.message : "resolved"}; expected unavailable`)
    }
    const b = A1.handles[idB]
    if (b?.isReady() && json(b).secret) throw new Failure("B's content reached alice")
    log(`find(B) with alice's token rejected after ${Date.now() - started} ms: ${refused.message}`)

    // bob reads A live; his own change is refused.
    await connected(B3)
    const b3 = await find(B3, urlA)
    await waitDoc(b3, "bob sees A", d => d.by === "alice@1")
    const live = nextChange(b3, "A at bob@3", d => d.again === true)
    a1.change(d => {
      d.again = true
    })
    await live
    const lost = disconnected(B3)
    b3.change(d => {
      d.bob = "was here"
    })
    await within(TIMEOUT, "the server to end bob's socket after his change", lost)
    await sleep(500)
    for (let i = 0; i < 3; i++) {
      const { status, body } = await httpGetDoc(i, idA)
      if (status !== 200 || "bob" in body) throw new Failure(`node ${i + 1} shows A as ${status} ${show(body)}`)
    }
    await closeRepo(B3)

    // carol makes a document, and opens it again elsewhere as its owner.
    const carolMaker = await mint({ sub: "carol", create: true, rights: "write" })
    const C1 = user("carol@1", 0, carolMaker)
    await connected(C1)
    const made = C1.create({ title: "carol's" })
    await serverHas(C1, made)
    await closeRepo(C1)
    const carolOwner = await mint({ sub: "carol", owner: true, rights: "write" })
    const C2 = user("carol@2", 1, carolOwner)
    await connected(C2)
    const again = await find(C2, made.url)
    await waitDoc(again, "carol's document on node 2", d => d.title === "carol's")
    const daveOwner = await mint({ sub: "dave", owner: true, rights: "write" })
    const D3 = user("dave@3", 2, daveOwner)
    await connected(D3)
    let daveRefused = false
    try {
      await within(UNAVAILABLE_BOUND, "dave's find() to reject", D3.find(made.url))
    } catch (e) {
      daveRefused = !(e instanceof Failure)
    }
    if (!daveRefused) throw new Failure("dave's owner token opened carol's document")

    // An expired token is refused at the upgrade.
    const expired = await mint({ sub: "alice", docs: [idA] }, Math.floor(Date.now() / 1000) - 600)
    const r = await rawUpgrade(wsWith(0, expired))
    if (r.status !== 401) throw new Failure(`the upgrade with an expired token gave ${show(r)}`)

    // Revoked at node 1: alice's sockets on every node close within 2 s.
    const A3 = user("alice@3", 2, alice)
    await connected(A3)
    const closed = [disconnected(A1), disconnected(A2), disconnected(A3)]
    const res = await fetch(`${HTTP[0]}/v1/revocations`, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ jti: "alice-1" }),
      signal: AbortSignal.timeout(5000),
    })
    if (res.status !== 200) throw new Failure(`POST /v1/revocations answered ${res.status}: ${await res.text()}`)
    const revokedAt = Date.now()
    const at = await within(2000, "alice's sockets on every node to close after the revocation", Promise.all(closed))
    const slowest = Math.max(...at) - revokedAt
    return (
      `alice edits A through nodes 1 and 2, B unavailable to her; bob's read-only token gets A live, ` +
      `his change refused; carol's document reopened by her owner token on node 2 (not dave's); ` +
      `expired token refused; revocation closed alice's sockets on 3 nodes in ${slowest} ms`
    )
  } finally {
    for (const repo of [...repos]) await closeRepo(repo)
  }
}

async function scenario8() {
  if (!DOC_URL) throw new Failure("scenario 8 needs SYNC_DOC_URL")
  if (WS.length < 2) throw new Failure("scenario 8 needs two WebSocket URLs")
  const A = makeRepo("A", [WS[0]])
  const B = makeRepo("B", [WS[1]])
  try {
    await Promise.all([connected(A), connected(B)])
    const a = await find(A, DOC_URL)
    const b = await find(B, DOC_URL)
    const seenByB = nextChange(b, "B's handle with A's edit", doc => doc.fromA === 1)
    a.change(d => {
      d.fromA = 1
    })
    await seenByB
    const seenByA = nextChange(a, "A's handle with B's edit", doc => doc.fromB === 2)
    b.change(d => {
      d.fromB = 2
    })
    await seenByA
    a.change(d => {
      d.together = "a"
    })
    b.change(d => {
      d.alsoTogether = "b"
    })
    const merged = doc => doc.together === "a" && doc.alsoTogether === "b"
    await waitDoc(a, "A has both edits", merged)
    await waitDoc(b, "B has both edits", merged)
    await waitUntil("A and B agree", () => isDeepStrictEqual(json(a), json(b)), {
      describe: () => `A ${show(json(a))} B ${show(json(b))}`,
    })
    const last = HTTP.length - 1
    await waitHttpEquals(last, a.documentId, () => json(a), "the merged document at a replica")
    return `A (node 1) and B (node 2), neither a replica of ${a.documentId}, edit it together; node ${last + 1} (a replica) agrees`
  } finally {
    await closeRepo(A)
    await closeRepo(B)
  }
}

/** The node `repo`'s one server peer is (its peer id is `concordant-<cluster>-<node>`). */
function nodeOf(repo) {
  if (repo.peers.length !== 1) return undefined
  return NODES.find(id => repo.peers[0].endsWith(`-${id}`))
}

async function scenario10() {
  if (WS.length !== 1) throw new Failure("scenario 10 needs one WebSocket URL, the balancer's")
  if (NODES.length !== HTTP.length) throw new Failure("CONCORDANT_NODES must name the nodes of CONCORDANT_HTTP")
  const clients = []
  const handles = []
  const expected = []
  let editing = true
  const loops = []
  try {
    // One after the other, so that the balancer (leastconn) spreads them over the nodes.
    for (let i = 0; i < LB_CLIENTS; i++) {
      const repo = makeRepo(`C${i}`, [WS[0]])
      await connected(repo)
      clients.push(repo)
    }
    const first = clients[0].create({ log: [] })
    await serverHas(clients[0], first)
    handles.push(first)
    for (const repo of clients.slice(1)) {
      const h = await find(repo, first.url)
      await waitDoc(h, `${repo.name} has the document`, doc => Array.isArray(doc.log))
      handles.push(h)
    }
    const before = clients.map(nodeOf)
    log(`10: clients on ${show(before)} through ${WS[0].replace(/\?.*/, "")}`)
    if (before.some(n => !n)) throw new Failure(`a client's server is not one of ${show(NODES)}: ${show(clients.map(r => r.peers))}`)
    if (new Set(before).size < 2) throw new Failure(`the balancer put every client on ${before[0]}`)

    // Every client edits every 150 ms (further apart than the client's 100 ms sync throttle).
    clients.forEach((repo, i) => {
      loops.push(
        (async () => {
          for (let k = 0; editing; k++) {
            const entry = `${repo.name}-${k}`
            handles[i].change(d => {
              d.log.push(entry)
            })
            expected.push(entry)
            await sleep(150)
          }
        })()
      )
    })
    await sleep(1000)
    const victim = before[0]
    const moved = clients.filter((_, i) => before[i] === victim)
    console.log(`READY-TO-KILL ${victim}`)
    await stdinLine("KILLED", 60000)
    const killedAt = Date.now()
    await waitUntil(
      `every client of ${victim} reconnects through the balancer to another node`,
      () => clients.every(repo => nodeOf(repo) && nodeOf(repo) !== victim),
      { describe: () => show(clients.map(r => [r.name, r.peers])) }
    )
    const reconnectMs = Date.now() - killedAt
    await sleep(1000)
    editing = false
    await Promise.all(loops)
    const hasAll = doc => Array.isArray(doc.log) && expected.every(e => doc.log.includes(e))
    const missing = doc => show(expected.filter(e => !(doc.log ?? []).includes(e)))
    for (const h of handles) {
      await waitUntil(`a client has all ${expected.length} edits`, () => hasAll(json(h)), {
        describe: () => `missing ${missing(json(h))}`,
      })
    }
    await waitUntil("every client agrees", () => handles.every(h => isDeepStrictEqual(json(h), json(first))), {
      describe: () => show(handles.map(h => json(h).log.length)),
    })
    for (let i = 0; i < HTTP.length; i++) {
      if (NODES[i] === victim) continue
      await waitHttpEquals(i, first.documentId, () => json(first), `all ${expected.length} edits`)
    }
    const after = clients.map(nodeOf)
    return `${clients.length} clients through the balancer on ${show(before)}; ${victim} killed under ` +
      `them: ${moved.map(r => r.name).join(", ")} reconnected to ${show(after.filter((_, i) => before[i] === victim))} ` +
      `within ${reconnectMs} ms; ${expected.length} edits, none lost; every client and the other ` +
      `nodes' HTTP APIs agree`
  } finally {
    editing = false
    await Promise.allSettled(loops)
    closeStdin()
    for (const repo of clients) await closeRepo(repo)
  }
}

const SCENARIOS = {
  1: scenario1,
  2: scenario2,
  3: scenario3,
  4: scenario4,
  5: scenario5,
  6: scenario6,
  7: scenario7,
  8: scenario8,
  9: scenario9,
  10: scenario10,
}

// ---------------------------------------------------------------------------------------------
// main

// The WebSocketClientAdapter throws from its socket's error listener on anything but
// ECONNREFUSED (e.g. an upgrade answered 401 or 404), which ends up here.
process.on("uncaughtException", e => {
  console.error(`FAIL: uncaught exception (the WebSocketClientAdapter throws when an upgrade is answered with anything but 101): ${e.stack ?? e}`)
  process.exit(1)
})
process.on("unhandledRejection", e => {
  console.error(`FAIL: unhandled rejection: ${e?.stack ?? e}`)
  process.exit(1)
})

async function main() {
  if (WS.length === 0) fatal("CONCORDANT_WS is not set (comma-separated ws://.../v1/sync?token=... URLs)")
  if (!SKIP_HTTP && HTTP.length === 0) fatal("CONCORDANT_HTTP is not set (or set SYNC_SKIP_HTTP=1)")
  const wanted = scenarios()
  let failed = 0
  for (const n of wanted) {
    if (SKIP_HTTP && NEEDS_HTTP.has(n)) {
      console.log(`SKIP ${n} (needs the HTTP API; SYNC_SKIP_HTTP is set)`)
      continue
    }
    const start = Date.now()
    log(`scenario ${n}: start`)
    try {
      const what = await SCENARIOS[n]()
      console.log(`PASS ${n} ${what} (${Date.now() - start} ms)`)
    } catch (e) {
      failed++
      console.log(`FAIL ${n}: ${e instanceof Failure ? e.message : e?.stack ?? e}`)
    }
  }
  for (const repo of [...repos]) await closeRepo(repo)
  closeStdin()
  const code = failed ? 1 : 0
  process.exitCode = code
  if (failed) console.log(`${failed} of ${wanted.length} scenario(s) failed`)
  // Everything is closed, so the process should end by itself; if a timer of the library still
  // holds it, say so and end anyway.
  setTimeout(() => {
    console.error("note: the process did not end by itself within 3 s of closing everything; exiting")
    process.exit(code)
  }, 3000).unref()
}

main().catch(e => fatal(e?.stack ?? e))
