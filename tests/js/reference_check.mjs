// Self-check of sync_clients.mjs against plain automerge-repo servers (reference_server.mjs),
// so the scenarios are known to be right independently of concordant:
//   - scenarios 1, 3 and 5 with both clients on one reference server;
//   - scenario 4 (failover) with two reference servers, the second syncing with the first:
//     A uses both, B the second; the first is SIGKILLed and restarted (empty: it is in memory)
//     on the script's signals, as tests/sync_clients.rs does with a concordant node.
// The HTTP API and token checks cannot run there (SYNC_SKIP_HTTP=1).
// Run: (cd tests/js && npm ci && node reference_check.mjs); exits 0 if everything passed.

import { spawn } from "node:child_process"
import readline from "node:readline"
import { fileURLToPath } from "node:url"
import path from "node:path"

const here = path.dirname(fileURLToPath(import.meta.url))
const children = new Set()

function startServer(env = {}) {
  const child = spawn(process.execPath, [path.join(here, "reference_server.mjs")], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  })
  children.add(child)
  child.on("exit", () => children.delete(child))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("reference server did not start within 10 s")), 10000)
    readline.createInterface({ input: child.stdout }).on("line", line => {
      const m = /^LISTENING (\d+)$/.exec(line)
      if (m) {
        clearTimeout(timer)
        resolve({ child, port: Number(m[1]), url: `ws://127.0.0.1:${m[1]}` })
      }
    })
    child.on("exit", code => reject(new Error(`reference server exited with ${code}`)))
  })
}

function stop(child, signal = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise(resolve => {
    child.once("exit", resolve)
    child.kill(signal)
  })
}

/** Runs sync_clients.mjs with `env`; `onLine(line, stdin)` sees each stdout line. */
function runClients(env, onLine = () => {}) {
  const child = spawn(process.execPath, [path.join(here, "sync_clients.mjs")], {
    env: { ...process.env, SYNC_SKIP_HTTP: "1", ...env },
    stdio: ["pipe", "pipe", "inherit"],
  })
  children.add(child)
  readline.createInterface({ input: child.stdout }).on("line", line => {
    console.log(`  | ${line}`)
    Promise.resolve(onLine(line, child.stdin)).catch(e => {
      console.error(`harness: ${e.message}`)
      child.kill("SIGKILL")
    })
  })
  const timer = setTimeout(() => {
    console.error("sync_clients.mjs did not end within 180 s")
    child.kill("SIGKILL")
  }, 180000)
  return new Promise(resolve =>
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      resolve(code ?? signal)
    })
  )
}

let failed = 0
try {
  console.log("== scenarios 1, 3, 5: both clients on one reference server")
  const one = await startServer()
  const code = await runClients({
    CONCORDANT_WS: [one.url, one.url, one.url].join(","),
    SYNC_SCENARIOS: "1,3,5",
  })
  console.log(`   exit ${code}`)
  if (code !== 0) failed++
  await stop(one.child)

  console.log("== scenario 4: failover between two reference servers")
  let s1 = await startServer({ REF_PEER_ID: "ref-s1" })
  const s2 = await startServer({ REF_UPSTREAM: s1.url, REF_PEER_ID: "ref-s2" })
  const code4 = await runClients(
    { CONCORDANT_WS: [s1.url, s2.url, s2.url].join(","), SYNC_SCENARIOS: "4" },
    async (line, stdin) => {
      if (line === "READY-TO-KILL") {
        await stop(s1.child, "SIGKILL")
        stdin.write("KILLED\n")
      } else if (line === "READY-TO-RESTART") {
        s1 = await startServer({ REF_PORT: String(s1.port), REF_PEER_ID: "ref-s1" })
        stdin.write("RESTARTED\n")
      }
    }
  )
  console.log(`   exit ${code4}`)
  if (code4 !== 0) failed++
  await stop(s1.child)
  await stop(s2.child)
} catch (e) {
  console.error(e)
  failed++
} finally {
  for (const child of children) child.kill("SIGKILL")
}
console.log(failed ? `reference check: ${failed} run(s) failed` : "reference check: all passed")
process.exitCode = failed ? 1 : 0
