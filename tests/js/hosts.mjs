// Several hosts behind HAProxy: N official clients connect, ask `whoami` before and
// after any upgrade, and report per client its Engine.IO and namespace sids, the two
// pids that answered, and the cookies its jar holds (withCredentials: the client keeps
// every Set-Cookie it is sent, as a browser would). Prints one JSON line.
// Usage: node hosts.mjs '{"url": "...", "clients": 300, "transport": "polling"}'
// ("ca_file": a PEM file to trust for https:// and wss://, as in common.mjs)
import { connect as connectTo, tlsOptions, upgraded as upgradedTo } from "./common.mjs";

const opt = {
  clients: 30, transport: "default", wave: 20, timeout_ms: 30000,
  ...JSON.parse(process.argv[2] || "{}"),
};

const connect = () => connectTo(opt.url, opt.transport, opt.timeout_ms,
                                 { withCredentials: true, ...tlsOptions(opt) });
const upgraded = (s) => upgradedTo(s, opt.transport, 15000);

const open = [];  // every client stays connected until all have answered

async function one() {
  const s = await connect();
  open.push(s);
  const before = await s.timeout(opt.timeout_ms).emitWithAck("whoami");
  await upgraded(s);
  const after = await s.timeout(opt.timeout_ms).emitWithAck("whoami");
  // engine.io-client 6.x keeps its jar in a private field (_cookieJar._cookies, a Map).
  const jar = s.io.engine._cookieJar;
  return {
    eio: s.io.engine.id, nsp: s.id, before, after, transport: s.io.engine.transport.name,
    // https:// and wss:// (engine.io-client's `secure`, from the URL's scheme)
    secure: s.io.engine.secure,
    cookies: jar ? [...jar._cookies.keys()] : null,
  };
}

const results = [];
const errors = [];
for (let i = 0; i < opt.clients; i += opt.wave) {
  const n = Math.min(opt.wave, opt.clients - i);
  for (const r of await Promise.allSettled(Array.from({ length: n }, one))) {
    if (r.status === "fulfilled") results.push(r.value);
    else errors.push(String(r.reason && r.reason.message || r.reason));
  }
}
for (const s of open) s.close();
console.log(JSON.stringify({ clients: opt.clients, results, errors }));
process.exit(0);
