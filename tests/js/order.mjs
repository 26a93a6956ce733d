// Per-sender message order across workers, observed with the official socket.io-client,
// which hands a connection's events to the app one at a time, in the order received.
// Usage: node order.mjs '{"url": "...", "workers": 3, "scenario": "burst", ...}'
//   scenario "burst": one sender per worker fires `messages` says without waiting;
//     every member must hear each sender's messages in order, each exactly once.
//   scenario "conversation": the senders take turns (`lines` in all); each speaks only once
//     it has heard the line before, so every member must hear exactly the lines in order.
// Prints one JSON line: what was connected, and every violation found, counted.
import { connect, sleep, withTimeout } from "./common.mjs";

const opt = {
  workers: 3, scenario: "burst", messages: 300, lines: 60, room: "order",
  members: { websocket: 6, polling: 6, default: 6 }, timeout_ms: 20000, deliver_ms: 60000,
  ...JSON.parse(process.argv[2] || "{}"),
};
const ask = (s, ev, data) => s.timeout(opt.timeout_ms).emitWithAck(ev, data);

// One sender on every worker: connect until each worker's pid has one; spares are closed.
const senders = new Map();
for (let tries = 0; senders.size < opt.workers && tries < 10 * opt.workers; tries++) {
  const s = await connect(opt.url, "websocket", opt.timeout_ms);
  const pid = await ask(s, "whoami");
  if (senders.has(pid)) s.close(); else senders.set(pid, s);
}
const talkers = [...senders.values()];
const members = [];
for (const [transport, n] of Object.entries(opt.members)) {
  for (let i = 0; i < n; i++) members.push(await connect(opt.url, transport, opt.timeout_ms));
}
const everyone = [...talkers, ...members];
for (const s of everyone) {
  const ok = await ask(s, "join", { room: opt.room });
  if (ok !== true) throw new Error(`join answered ${ok}`);
}

const sent = [];
const heard = (s, text) => s.said.some((m) => m.text === text);
if (opt.scenario === "burst") {
  talkers.forEach((s, k) => {
    for (let i = 0; i < opt.messages; i++) {
      s.emit("say", { room: opt.room, text: `${k}:${i}` });
      sent.push(`${k}:${i}`);
    }
  });
} else {
  for (let i = 0; i < opt.lines; i++) {
    const s = talkers[i % talkers.length];
    const last = sent[sent.length - 1];
    if (last !== undefined) {
      await withTimeout((async () => { while (!heard(s, last)) await sleep(5); })(),
        opt.timeout_ms, `the next speaker to hear ${last}`);
    }
    const text = `line ${i}`;
    if ((await ask(s, "say", { room: opt.room, text })) !== true) throw new Error("say refused");
    sent.push(text);
  }
}

const deadline = Date.now() + opt.deliver_ms;
while (everyone.some((s) => s.said.length < sent.length) && Date.now() < deadline) await sleep(50);

// Violations, counted over every member: a message heard before an earlier one of the
// same sender (swap), never heard (lost), heard twice (duplicate).
let swaps = 0; let lost = 0; let duplicates = 0; let misordered = 0;
const dupDetail = []; // which members heard something twice, and where: to find who repeats
const sender = (t) => (opt.scenario === "burst" ? t.split(":")[0] : "all");
for (const s of everyone) {
  const texts = s.said.map((m) => m.text);
  const seen = new Set();
  const lastIndex = new Map();
  const rank = new Map(sent.map((t, i) => [t, i]));
  const dups = [];
  texts.forEach((t, i) => { if (seen.has(t)) dups.push([i, t]); else seen.add(t); });
  if (dups.length) {
    dupDetail.push({ id: s.id, eio: s.io.engine.id, asked: s.asked ?? "sender",
      now: s.io.engine.transport.name,
      heard: texts.length, duplicates: dups.length, first: dups.slice(0, 5),
      firstHeardAt: dups.slice(0, 5).map(([, t]) => texts.indexOf(t)) });
  }
  seen.clear();
  for (const t of texts) {
    if (seen.has(t)) { duplicates++; continue; }
    seen.add(t);
    const k = sender(t);
    if (lastIndex.has(k) && rank.get(t) < lastIndex.get(k)) swaps++;
    lastIndex.set(k, Math.max(lastIndex.get(k) ?? -1, rank.get(t)));
  }
  lost += sent.filter((t) => !seen.has(t)).length;
  if (opt.scenario === "conversation" && texts.join("\n") !== sent.join("\n")) misordered++;
}
const transports = {};
for (const s of members) {
  const t = s.io.engine.transport.name; transports[t] = (transports[t] || 0) + 1;
}
console.log(JSON.stringify({
  workers: [...senders.keys()], members: everyone.length, transports, sent: sent.length,
  deliveries: everyone.reduce((a, s) => a + s.said.length, 0), swaps, lost, duplicates,
  misordered, dup_detail: dupDetail,
}));
for (const s of everyone) s.close();
process.exit(0);
