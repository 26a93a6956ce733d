// Drives an imcluster with the official socket.io-client; prints one JSON result line.
// Usage: node clients.mjs '{"url": "...", "clients": 30, "transport": "default", ...}'
//   mode "room": connect, whoami (before and after any upgrade), join, one say, count deliveries.
//   mode "hold": connect and stay connected; print {"held": n} then wait for stdin to close.
//   "ca_file": a PEM file to trust for https:// and wss:// (common.mjs tlsOptions).
import { connect as connectTo, sleep, tlsOptions, upgraded as upgradedTo, withTimeout } from "./common.mjs";

const opt = {
  clients: 30, transport: "default", room: "r", mode: "room", wave: 10, timeout_ms: 20000,
  ...JSON.parse(process.argv[2] || "{}"),
};
const errors = [];
const connect = () => connectTo(opt.url, opt.transport, opt.timeout_ms, tlsOptions(opt));

const upgraded = (s) => upgradedTo(s, opt.transport, 10000);

async function one() {
  const s = await connect();
  const before = await s.timeout(opt.timeout_ms).emitWithAck("whoami");
  await upgraded(s);
  const after = await s.timeout(opt.timeout_ms).emitWithAck("whoami");
  if (opt.mode === "room") {
    const ok = await s.timeout(opt.timeout_ms).emitWithAck("join", { room: opt.room });
    if (ok !== true) throw new Error(`join answered ${ok}`);
  }
  s.before = before; s.after = after;
  return s;
}

const sockets = [];
for (let i = 0; i < opt.clients; i += opt.wave) {
  const n = Math.min(opt.wave, opt.clients - i);
  const results = await Promise.allSettled(Array.from({ length: n }, one));
  for (const r of results) {
    if (r.status === "fulfilled") sockets.push(r.value);
    else errors.push(String(r.reason && r.reason.message || r.reason));
  }
}

const pids = {};
for (const s of sockets) pids[s.after] = (pids[s.after] || 0) + 1;
const result = {
  clients: opt.clients, connected: sockets.length, errors, pids,
  stable: sockets.filter((s) => s.before === s.after).length,
  transports: sockets.reduce((a, s) => {
    const t = s.io.engine.transport.name; a[t] = (a[t] || 0) + 1; return a;
  }, {}),
};

if (opt.mode === "room" && sockets.length) {
  const text = `hello-${Date.now()}`;
  sockets[0].emit("say", { room: opt.room, text, ts: Date.now() });
  const deadline = Date.now() + opt.timeout_ms;
  const got = () => sockets.filter((s) => s.said.some((m) => m.text === text)).length;
  while (got() < sockets.length && Date.now() < deadline) await sleep(50);
  result.received = got();
  result.duplicates = sockets.filter((s) => s.said.filter((m) => m.text === text).length > 1).length;
  for (const s of sockets) s.close();
  console.log(JSON.stringify(result));
  process.exit(0);
} else {
  result.held = sockets.length;
  console.log(JSON.stringify(result));
  process.stdin.resume();
  process.stdin.on("end", () => { for (const s of sockets) s.close(); process.exit(0); });
}
