// The load generator of the imcluster benchmarks: real clients (the official
// socket.io-client), bounded in count and time, machine-readable output.
//
// Usage: node load.mjs '<json options>'
// Prints JSON lines on stdout:
//   {"mark": "start"|"end", "t": epoch_ms}   measurement window (run.py samples server CPU)
//   {"ready": n, ...}                         (room, hold) clients connected; waiting on stdin
//   {"result": {...}}                         the last line
// Reads lines on stdin: "go" (room sender: start sending), "stop" (room, hold: report and exit).
//
// Modes:
//   handshake  connect `clients` in waves of `wave`, then whoami on each; report success,
//              errors by kind, handshakes/s, pids that served them; recheck all at the end.
//   echo       connect `clients`, then each sends `echo` with an ack in a loop for
//              `duration_s` (after `warmup_s`): acks/s and round-trip percentiles.
//   room       connect `clients`, join `room`; on "go" the sender (sender: true) says
//              `rate` messages a second for `duration_s`; every client counts `said`s
//              and their latency (receipt time - ts) until "stop".
//   hold       connect `clients` and stay idle until "stop".
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const opt = {
  mode: "handshake", url: "http://127.0.0.1:8000", clients: 10, wave: 50, transport: "websocket",
  timeout_ms: 10000, duration_s: 10, warmup_s: 2, payload_bytes: 64, room: "bench",
  sender: false, rate: 50, deflate: true, tag: "",
  ...JSON.parse(process.argv[2] || "{}"),
};
const TRANSPORTS = { polling: ["polling"], websocket: ["websocket"], default: ["polling", "websocket"] };
const transports = TRANSPORTS[opt.transport];
if (!transports) throw new Error(`unknown transport ${opt.transport}`);

const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms, same clock in every process
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const withTimeout = (p, ms, what) => {
  let timer;
  return Promise.race([
    p, new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
};

// ---- errors by kind ---------------------------------------------------------------
const errors = {};
function errorKind(e) {
  let m = String((e && e.message) || e);
  if (m === "operation has timed out") m = "timeout: ack";
  return m.replace(/\d+/g, "N").slice(0, 120);
}
function countError(e) { const k = errorKind(e); errors[k] = (errors[k] || 0) + 1; }

// ---- latency histogram (log buckets, 1% wide; mergeable across processes) ---------------
const LOG_BASE = Math.log(1.01);
class Hist {
  constructor() { this.b = new Map(); this.n = 0; this.max = 0; }
  add(ms) {
    const k = ms <= 0.01 ? 0 : Math.ceil(Math.log(ms / 0.01) / LOG_BASE);
    this.b.set(k, (this.b.get(k) || 0) + 1); this.n++; if (ms > this.max) this.max = ms;
  }
  toJSON() { return { n: this.n, max: this.max, buckets: Object.fromEntries(this.b) }; }
}

// ---- clients -------------------------------------------------------------------------
function connect() {
  const t0 = now();
  const s = io(opt.url, {
    transports, forceNew: true, reconnection: false, timeout: opt.timeout_ms,
    perMessageDeflate: opt.deflate ? { threshold: 1024 } : false,
  });
  s.lostReason = null;
  s.t0 = t0;
  s.on("disconnect", (why) => { s.lostReason = why; });
  return withTimeout(new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  }), opt.timeout_ms, "connect").catch((e) => { s.close(); throw e; });
}

function upgraded(s) {
  const eng = s.io.engine;
  if (opt.transport !== "default" || eng.transport.name === "websocket") return Promise.resolve();
  return withTimeout(new Promise((r) => eng.once("upgrade", r)), opt.timeout_ms, "upgrade");
}

const ack = (s, ev, data) => s.timeout(opt.timeout_ms).emitWithAck(ev, data);

async function connectAll(prepare) {
  const sockets = [];
  for (let i = 0; i < opt.clients; i += opt.wave) {
    const n = Math.min(opt.wave, opt.clients - i);
    const results = await Promise.allSettled(Array.from({ length: n }, async () => {
      const s = await connect();
      try {
        if (prepare) await prepare(s);
      } catch (e) { s.close(); throw e; }
      return s;
    }));
    for (const r of results) {
      if (r.status === "fulfilled") sockets.push(r.value);
      else countError(r.reason);
    }
  }
  return sockets;
}

// Did the WebSocket negotiate permessage-deflate? (ws's `extensions`: what the server accepted)
const deflated = (s) => {
  const ws = s.io.engine && s.io.engine.transport && s.io.engine.transport.ws;
  return Boolean(ws && typeof ws.extensions === "string" && ws.extensions.includes("permessage-deflate"));
};

function countBy(list, f) {
  const o = {};
  for (const x of list) { const k = f(x); o[k] = (o[k] || 0) + 1; }
  return o;
}

function finish(result) {
  out({ result: { mode: opt.mode, tag: opt.tag, transport: opt.transport, clients: opt.clients,
    errors, ...result } });
  // Let stdout drain, then go: some engine timers would keep us alive otherwise.
  setTimeout(() => process.exit(0), 100);
}

const stdinLines = [];
let stdinWaiter = null;
createInterface({ input: process.stdin }).on("line", (l) => {
  stdinLines.push(l.trim());
  if (stdinWaiter) { const w = stdinWaiter; stdinWaiter = null; w(); }
}).on("close", () => {
  stdinLines.push("stop");
  if (stdinWaiter) { const w = stdinWaiter; stdinWaiter = null; w(); }
});
async function waitFor(word) {
  for (;;) {
    const i = stdinLines.indexOf(word);
    if (i >= 0) { stdinLines.splice(i, 1); return; }
    if (stdinLines.includes("stop")) return;
    await new Promise((r) => { stdinWaiter = r; });
  }
}

// ---- modes -------------------------------------------------------------------------------
async function handshake() {
  const t0 = now();
  out({ mark: "start", t: t0 });
  const connectMs = new Hist();
  const sockets = await connectAll(async (s) => {
    await upgraded(s);
    s.pid = await ack(s, "whoami");
    connectMs.add(now() - s.t0);
  });
  const t1 = now();
  out({ mark: "end", t: t1 });
  // Still there a moment later, on the same process?
  await sleep(1000);
  const recheck = await Promise.allSettled(sockets.map(async (s) => {
    if (!s.connected) throw new Error(`lost after connect: ${s.lostReason}`);
    const pid = await ack(s, "whoami");
    if (pid !== s.pid) throw new Error("lost after connect: another process answered");
  }));
  const lateErrors = {};
  for (const r of recheck) {
    if (r.status === "rejected") { const k = errorKind(r.reason); lateErrors[k] = (lateErrors[k] || 0) + 1; }
  }
  const result = {
    attempted: opt.clients, ok: sockets.length, success_rate: sockets.length / opt.clients,
    elapsed_s: (t1 - t0) / 1000, handshakes_per_s: sockets.length / ((t1 - t0) / 1000),
    pids: countBy(sockets, (s) => s.pid),
    transports: countBy(sockets, (s) => s.io.engine.transport.name),
    alive_at_end: recheck.filter((r) => r.status === "fulfilled").length,
    late_errors: lateErrors, connect_ms: connectMs.toJSON(),
  };
  for (const s of sockets) s.close();
  finish(result);
}

async function echo() {
  const sockets = await connectAll(null);
  const pad = "x".repeat(opt.payload_bytes);
  const hist = new Hist();
  let acks = 0;
  const tStart = now() + opt.warmup_s * 1000;
  const tEnd = tStart + opt.duration_s * 1000;
  let started = false;
  setTimeout(() => { started = true; out({ mark: "start", t: now() }); }, opt.warmup_s * 1000);
  setTimeout(() => out({ mark: "end", t: now() }), (opt.warmup_s + opt.duration_s) * 1000);
  let seq = 0;
  await Promise.all(sockets.map(async (s) => {
    while (now() < tEnd && s.connected) {
      const t = now();
      try {
        await ack(s, "echo", { seq: seq++, ts: t, pad });
      } catch (e) { countError(e); continue; }
      const t2 = now();
      if (started && t >= tStart && t2 <= tEnd) { acks++; hist.add(t2 - t); }
    }
  }));
  const lost = sockets.filter((s) => !s.connected).length;
  for (const s of sockets) s.close();
  finish({ connected: sockets.length, lost, acks, duration_s: opt.duration_s,
    acks_per_s: acks / opt.duration_s, rtt: hist.toJSON() });
}

async function room() {
  const sockets = await connectAll(async (s) => {
    if ((await ack(s, "join", { room: opt.room })) !== true) throw new Error("join refused");
  });
  const hist = new Hist();
  const perTick = new Map(); // receipt time (10 ms ticks) -> deliveries
  let delivered = 0, duplicates = 0, foreign = 0;
  for (const s of sockets) {
    s.seen = new Set();
    s.on("said", (m) => {
      const t = now();
      if (!m || m.tag !== opt.tag) { foreign++; return; }
      if (s.seen.has(m.seq)) { duplicates++; return; }
      s.seen.add(m.seq);
      delivered++;
      hist.add(t - m.ts);
      const k = Math.floor(t / 10);
      perTick.set(k, (perTick.get(k) || 0) + 1);
    });
  }
  out({ ready: sockets.length });
  const deflateNegotiated = sockets.filter(deflated).length;
  let sent = 0, sendErrors = 0, tStart = null, tEnd = null;
  if (opt.sender && sockets.length) {
    await waitFor("go");
    const s = sockets[0];
    const interval = 1000 / opt.rate;
    tStart = now();
    out({ mark: "start", t: tStart });
    const total = Math.round(opt.rate * opt.duration_s);
    for (let i = 0; i < total; i++) {
      const due = tStart + i * interval;
      const wait = due - now();
      if (wait > 0) await sleep(wait);
      if (!s.connected) { sendErrors++; continue; }
      s.emit("say", { room: opt.room, text: `m${i}`, seq: i, ts: now(), tag: opt.tag });
      sent++;
    }
    tEnd = now();
    out({ mark: "end", t: tEnd, sent });
  }
  await waitFor("stop");
  const lost = sockets.filter((s) => !s.connected).length;
  for (const s of sockets) s.close();
  finish({ connected: sockets.length, lost, sender: opt.sender, sent, send_errors: sendErrors,
    t_start: tStart, t_end: tEnd, deflate_negotiated: deflateNegotiated, delivered, duplicates, foreign, latency: hist.toJSON(),
    per_tick: Object.fromEntries(perTick) });
}

async function hold() {
  const t0 = now();
  const sockets = await connectAll(null);
  const t1 = now();
  out({ ready: sockets.length, elapsed_s: (t1 - t0) / 1000, errors,
    deflate_negotiated: sockets.filter(deflated).length });
  await waitFor("stop");
  const alive = sockets.filter((s) => s.connected).length;
  for (const s of sockets) s.close();
  finish({ connected: sockets.length, alive_at_end: alive, connect_s: (t1 - t0) / 1000,
    connects_per_s: sockets.length / ((t1 - t0) / 1000) });
}

const modes = { handshake, echo, room, hold };
if (!modes[opt.mode]) throw new Error(`unknown mode ${opt.mode}`);
// A hard bound on our own life, whatever happens to the server.
setTimeout(() => { countError(new Error("load generator: overall deadline")); finish({ deadline: true }); },
  (opt.deadline_s || 600) * 1000).unref();
await modes[opt.mode]();
