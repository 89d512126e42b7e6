// A plain automerge-repo sync server (a Repo with NodeWSServerAdapter on a `ws`
// WebSocketServer, in-memory storage) to check sync_clients.mjs against the library itself
// before concordant serves /v1/sync. Used by reference_check.mjs; not by the Rust tests.
//
// Environment: REF_PORT (default 0: any free port), REF_UPSTREAM (optional ws:// URL of another
// reference server to sync with, so two of them act like two nodes of a cluster),
// REF_PEER_ID (default "reference-server-<port>").
// Prints "LISTENING <port>" on stdout once it accepts connections; stops on SIGTERM/SIGINT.

import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter, WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

/** Storage in a Map, so the Repo has a storageId to announce (clients track what a server has
 * by it) without touching the disk. */
class MemoryStorage {
  #data = new Map()
  #key = key => key.join("\u0000")
  async load(key) {
    return this.#data.get(this.#key(key))
  }
  async save(key, data) {
    this.#data.set(this.#key(key), data)
  }
  async remove(key) {
    this.#data.delete(this.#key(key))
  }
  async loadRange(prefix) {
    const p = this.#key(prefix)
    return [...this.#data]
      .filter(([k]) => k === p || k.startsWith(p + "\u0000"))
      .map(([k, data]) => ({ key: k.split("\u0000"), data }))
  }
  async removeRange(prefix) {
    for (const { key } of await this.loadRange(prefix)) this.#data.delete(this.#key(key))
  }
}

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.env.REF_PORT ?? 0) })
await new Promise(resolve => wss.once("listening", resolve))
const { port } = wss.address()
const network = [new NodeWSServerAdapter(wss)]
if (process.env.REF_UPSTREAM) network.push(new WebSocketClientAdapter(process.env.REF_UPSTREAM, 500))
const repo = new Repo({
  network,
  storage: new MemoryStorage(),
  peerId: process.env.REF_PEER_ID ?? `reference-server-${port}`,
  // Announce every document to every peer, so that two reference servers behave like two
  // nodes of one cluster.
  sharePolicy: async () => true,
})
console.log(`LISTENING ${port}`)

const stop = () => {
  // Not repo.shutdown(): its flush() throws on handles that are not ready (e.g. unavailable).
  repo.networkSubsystem.disconnect()
  wss.close()
  setTimeout(() => process.exit(0), 200).unref()
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
