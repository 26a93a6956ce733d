// Connection state recovery with the official socket.io-client, across a worker's death.
// Usage: node recovery.mjs '{"url": "...", "clients": 30, "messages": 200, "rate": 40,
//                            "kill_after": 60}'
// 1. `clients` members connect (reconnection on, fast delays, auth {recovery: true}; half
//    WebSocket only, half polling then WebSocket: `member_transports`, taken in turn),
//    ask whoami and join the room; the worker
//    holding most of them is the victim; a sender connects until it is on another worker.
// 2. Prints {"victim": pid, "sender": pid, "counts": {pid: members}, "pids": [...]}.
// 3. The sender says `messages` sequence numbers at `rate` per second; after `kill_after`
//    it prints {"kill": true} (the test kills the victim then) and goes on. With
//    `hold_after`, after that many it prints {"held": true} and waits for a line on stdin;
//    then the members that are away reconnect at once, and once all are back it prints
//    {"reconnected": true, "workers": [pid per member]} and goes on (the victim's members
//    are back once they connected `victim_connects` times: 1 when sessions are handed
//    over, not dropped), with "victim": the worker holding most members now, and
//    "sender": the sender's worker, never that victim when `kill2_after` is set (the
//    sender is replaced if the reload moved it there). With `kill2_after`, after that
//    many it prints {"kill2": true} (the test kills that victim then) and goes on.
// 4. Once every member holds every number (or `deliver_ms` passed), prints the result:
//    per member its worker, what it heard (in order), whether it reconnected and recovered,
//    and with `state` what the app's `state` event answers (tests/apps/recovery_app.py);
//    with `sender_acks`, the numbers whose `say` the server acknowledged ("acked").
import { io } from "socket.io-client";
import { sleep, withTimeout, TRANSPORTS } from "./common.mjs";

const opt = {
  clients: 30, messages: 200, rate: 40, kill_after: 60, room: "recovery",
  timeout_ms: 20000, deliver_ms: 60000, recovery: true, reconnect_ms: 100, hold_after: 0,
  victim_connects: 2, kill2_after: 0, member_transports: ["default", "websocket"],
  ...JSON.parse(process.argv[2] || "{}"),
};

function member(transport) {
  const s = io(opt.url, {
    transports: TRANSPORTS[transport], forceNew: true, timeout: opt.timeout_ms,
    reconnection: true, reconnectionDelay: opt.reconnect_ms,
    reconnectionDelayMax: Math.max(500, opt.reconnect_ms),
    randomizationFactor: opt.reconnect_ms > 100 ? 0 : 0.5,
    auth: opt.recovery ? { recovery: true } : {},
  });
  s.heard = [];
  s.connects = 0;
  s.recoveredOnce = false;
  s.pids = [];  // the pid of the server's CONNECT, per connect (undefined: none)
  s.on("said", (m) => s.heard.push(m.seq));
  s.on("connect", () => {
    s.connects += 1;
    s.pids.push(s._pid);
    if (s.recovered) s.recoveredOnce = true;
  });
  return withTimeout(new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  }), opt.timeout_ms, "connect");
}

const ask = (s, ev, data) => s.timeout(opt.timeout_ms).emitWithAck(ev, data);

const members = [];
for (let i = 0; i < opt.clients; i++) {
  members.push(await member(opt.member_transports[i % opt.member_transports.length]));
}
const counts = {};
for (const s of members) {
  s.worker = await ask(s, "whoami");
  counts[s.worker] = (counts[s.worker] || 0) + 1;
  if ((await ask(s, "join", { room: opt.room })) !== true) throw new Error("join refused");
}
const most = (c) => Number(Object.entries(c).sort((a, b) => b[1] - a[1])[0][0]);
const victim = most(counts);

async function senderOff(worker) {
  // A sender that reconnects keeps what it emits while away and sends it, in order, then.
  for (let tries = 0; tries < 30; tries++) {
    const s = io(opt.url, { transports: ["websocket"], forceNew: true,
                            reconnection: !!opt.sender_reconnects, reconnectionDelay: 100 });
    await withTimeout(new Promise((r) => s.once("connect", r)), opt.timeout_ms, "sender");
    const pid = await ask(s, "whoami");
    if (pid !== worker) { s.worker = pid; return s; }
    s.close();
  }
  throw new Error(`no sender off worker ${worker}`);
}
let sender = await senderOff(victim);
console.log(JSON.stringify({ victim, sender: sender.worker, counts,
                             pids: members.map((s) => s._pid ?? null) }));

const acked = [];
for (let seq = 0; seq < opt.messages; seq++) {
  if (opt.sender_acks) {
    // Which numbers the server took in (acked): one emitted as the sender's own
    // worker drains may be lost before anyone hears it (an emit is at most once).
    sender.timeout(opt.timeout_ms).emit("say", { room: opt.room, seq }, (err) => {
      if (!err) acked.push(seq);
    });
  } else {
    sender.emit("say", { room: opt.room, seq });
  }
  if (seq + 1 === opt.kill_after) console.log(JSON.stringify({ kill: true }));
  if (seq + 1 === opt.hold_after) {
    // Quiet until the test says go (it adds a worker meanwhile); then the members
    // that are away come back at once, not at their (long) reconnection delay, and
    // each says which worker holds it now.
    console.log(JSON.stringify({ held: true }));
    await new Promise((r) => process.stdin.once("data", r));
    for (const s of members) if (!s.connected) s.io.open();
    const back = (s) => s.connects >= (s.worker === victim ? opt.victim_connects : 1);
    while (!members.every((s) => s.connected && back(s))) {
      await sleep(50);
    }
    const now = await Promise.all(members.map((s) => ask(s, "whoami")));
    // The next victim (with kill2_after) holds most members now; the sender, which
    // the reload moved too, must not be on it: what it says as its worker dies
    // would be lost before anyone heard it (an emit without an ack is at most once).
    const next = {};
    for (const w of now) next[w] = (next[w] || 0) + 1;
    const victim2 = most(next);
    sender.worker = await ask(sender, "whoami");
    if (opt.kill2_after && sender.worker === victim2) {
      const old = sender;
      sender = await senderOff(victim2);
      old.close();
    }
    console.log(JSON.stringify({ reconnected: true, workers: now, victim: victim2,
                                 sender: sender.worker }));
  }
  if (seq + 1 === opt.kill2_after) console.log(JSON.stringify({ kill2: true }));
  await sleep(1000 / opt.rate);
}
const all = () => members.every((s) => s.heard.length >= opt.messages
                                       - (opt.sender_acks ? opt.messages - acked.length : 0));
const deadline = Date.now() + opt.deliver_ms;
while (!all() && Date.now() < deadline) await sleep(50);
await sleep(300);  // anything heard twice would arrive now, after the last number
const states = opt.state ? await Promise.all(members.map((s) => ask(s, "state"))) : [];
console.log(JSON.stringify({
  messages: opt.messages, acked: opt.sender_acks ? acked.sort((a, b) => a - b) : null,
  members: members.map((s, i) => ({
    worker: s.worker, heard: s.heard, connects: s.connects, recovered: s.recoveredOnce,
    pids: s.pids.map((p) => p ?? null), id: s.id, state: states[i] ?? null,
  })),
}));
for (const s of [...members, sender]) s.close();
process.exit(0);
