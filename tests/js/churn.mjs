// Chat under churn: `concurrency` loops, each making one new official client after
// another (a fresh handshake every time, polling then WebSocket), which joins a room,
// says one message, waits to hear it back from the room, and closes. Runs until stdin
// closes or `max_connections` were made, whichever is first.
// Every 250 ms prints a JSON progress line of running totals; prints a last one with
// "done": true. A failed handshake is a connect_error or no connect within timeout_ms;
// a failed chat is a join not acked true, or its own message not heard within timeout_ms.
// Usage: node churn.mjs '{"url": "...", "concurrency": 6, "max_connections": 3000}'
import { connect, sleep, tlsOptions, withTimeout } from "./common.mjs";

const opt = {
  concurrency: 6, max_connections: 3000, room: "churn", timeout_ms: 15000,
  transport: "default", ...JSON.parse(process.argv[2] || "{}"),
};

const t = {
  handshakes: 0, failed_handshakes: 0, failed_chats: 0, chats: 0, cut: 0,
  // new sessions by the sid's host prefix (its first two characters)
  by_host: {},
  // live connections by host prefix, now
  live: {},
  // messages heard from senders on another host than the hearer's
  cross_host: 0,
  errors: [],
};
let stopping = false;
let seq = 0;

function note(kind, e) {
  t[kind] += 1;
  if (t.errors.length < 20) t.errors.push(`${kind}: ${String(e && e.message || e)}`);
}

async function once() {
  let s;
  let host = null;
  // Counted from the Engine.IO open, not the Socket.IO connect: a session is on its
  // host (and `live`) from then on, so a test that waits for a host's live count to be
  // 0 knows no session there is still finishing its connect.
  const opened = (id) => {
    host = id.slice(0, 2);
    t.by_host[host] = (t.by_host[host] || 0) + 1;
    t.live[host] = (t.live[host] || 0) + 1;
  };
  try {
    s = await connect(opt.url, opt.transport, opt.timeout_ms, tlsOptions(opt), opened);
  } catch (e) {
    t.handshakes += 1;
    note("failed_handshakes", e);
    if (host !== null) t.live[host] -= 1;
    return;
  }
  t.handshakes += 1;
  let closedByUs = false;
  s.on("disconnect", () => { if (!closedByUs) t.cut += 1; });
  try {
    const ok = await s.timeout(opt.timeout_ms).emitWithAck("join", { room: opt.room });
    if (ok !== true) throw new Error(`join answered ${ok}`);
    const text = `m${seq++}`;
    const heard = withTimeout(new Promise((resolve) => {
      s.on("said", (m) => { if (m.text === text) resolve(); });
    }), opt.timeout_ms, `hearing ${text}`);
    s.emit("say", { room: opt.room, text, ts: Date.now(), from: s.io.engine.id });
    await heard;
    t.chats += 1;
    t.cross_host += s.said.filter((m) => m.from && m.from.slice(0, 2) !== host).length;
  } catch (e) {
    note("failed_chats", e);
  } finally {
    closedByUs = true;
    s.close();
    t.live[host] -= 1;
  }
}

async function loop() {
  while (!stopping && t.handshakes < opt.max_connections) await once();
}

process.stdin.on("end", () => { stopping = true; });
process.stdin.resume();
const ticker = setInterval(() => console.log(JSON.stringify(t)), 250);
await Promise.all(Array.from({ length: opt.concurrency }, loop));
clearInterval(ticker);
await sleep(10);
console.log(JSON.stringify({ ...t, done: true }));
process.exit(0);
