// Session hand-over seen from the official socket.io-client (tests/test_handover.py).
// Usage: node handover.mjs '{"url": "...", "clients": 100, "transports": ["websocket"]}'
// N clients (reconnection on, as a real app has it; "transports": ["polling"] for
// long-polling, null for the default: polling, then the upgrade) join a room, then each
// echoes with an ack in a loop and now and then says something to the room, until
// stdin closes (the test runs `imcluster reload` meanwhile). First line printed:
// {"ready": true, "pids": [...]} once every client is connected and in the room.
// "rooms": [[...], ...] has client k join rooms[k % rooms.length] instead, and
// "say_to": [...] has it say to that list of rooms at once (the app's `say_many`).
// "pause_ms": how long each client waits between two echoes (default 10).
// Last line: what each client saw (failed or wrong acks, disconnect and connect events,
// Engine.IO sids changed, room messages duplicated or missing) and the pids serving them.
import { io } from "socket.io-client";
import { sleep } from "./common.mjs";

const opt = {
  clients: 100, room: "handover", ack_timeout_ms: 10000, say_every: 10, deliver_ms: 5000,
  pause_ms: 10,
  transports: ["websocket"], ...JSON.parse(process.argv[2] || "{}"),
};
const transports = opt.transports ? { transports: opt.transports } : {};

const clients = [];
const stats = {
  acks: 0, failed_acks: 0, wrong_acks: 0, disconnects: 0, reconnects: 0, sid_changed: 0,
  said_sent: 0, said_duplicates: 0, said_missing: 0,
};
for (let i = 0; i < opt.clients; i++) {
  const s = io(opt.url, { ...transports, forceNew: true, reconnection: true });
  s.heard = new Set();
  s.dups = [];
  s.on("said", (m) => {
    if (s.heard.has(m.text)) {
      stats.said_duplicates++;
      s.dups.push(m.text);
    } else s.heard.add(m.text);
  });
  s.on("disconnect", () => { stats.disconnects++; });
  s.io.on("reconnect", () => { stats.reconnects++; });
  clients.push(s);
}
await Promise.all(clients.map((s) => new Promise((resolve, reject) => {
  s.once("connect", resolve);
  s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
})));
const firstSid = clients.map((s) => s.io.engine.id);
const roomSets = opt.rooms || [[opt.room]];
for (const [k, s] of clients.entries()) {
  for (const room of roomSets[k % roomSets.length]) {
    if ((await s.timeout(opt.ack_timeout_ms).emitWithAck("join", { room })) !== true) {
      throw new Error("join refused");
    }
  }
}
const whoami = () => Promise.all(clients.map((s) => s.timeout(opt.ack_timeout_ms)
  .emitWithAck("whoami").catch(() => null)));
const before = await whoami();
console.log(JSON.stringify({ ready: true, pids: [...new Set(before)] }));

let running = true;
process.stdin.on("end", () => { running = false; });
process.stdin.resume();

const sent = [];
async function talk(s, k) {
  let n = 0;
  while (running) {
    n++;
    const payload = { k, n };
    try {
      const ack = await s.timeout(opt.ack_timeout_ms).emitWithAck("echo", payload);
      stats.acks++;
      if (ack?.k !== k || ack?.n !== n) stats.wrong_acks++;
    } catch {
      stats.failed_acks++;
      console.error(`failed ack: client ${k} (sid ${s.io.engine.id}), echo ${n}`);
    }
    if (n % opt.say_every === 0) {
      const text = `${k}:${n}`;
      if (opt.say_to) s.emit("say_many", { rooms: opt.say_to, text, ts: 0 });
      else s.emit("say", { room: opt.room, text, ts: 0 });
      sent.push(text);
    }
    await sleep(opt.pause_ms);
  }
}
await Promise.all(clients.map((s, k) => talk(s, k)));
stats.said_sent = sent.length;

// Room messages: every client should hear every one, once.
const deadline = Date.now() + opt.deliver_ms;
const missing = () => clients.reduce((m, s) => m + sent.filter((t) => !s.heard.has(t)).length, 0);
while (missing() && Date.now() < deadline) await sleep(50);
stats.said_missing = missing();
stats.sid_changed = clients.filter((s, i) => s.io.engine.id !== firstSid[i]).length;
stats.transports = {};
for (const s of clients) {
  const t = s.io.engine.transport.name;
  stats.transports[t] = (stats.transports[t] || 0) + 1;
}
const after = await whoami();
// On stderr, for a diagnosis: which clients heard what twice, and on which workers.
const dupClients = clients.map((s, k) => ({ k, before: before[k], after: after[k],
  n: s.dups.length, first: s.dups.slice(0, 5) })).filter((d) => d.n);
if (dupClients.length) console.error(`duplicates by client: ${JSON.stringify(dupClients)}`);
console.log(JSON.stringify({ ...stats, pids_before: [...new Set(before)],
  pids_after: [...new Set(after)] }));
for (const s of clients) s.close();
process.exit(0);
