// Helpers shared by the JS drivers of the tests (clients.mjs, hosts.mjs, order.mjs, ...).
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

export const TRANSPORTS = {
  polling: ["polling"], websocket: ["websocket"], default: ["polling", "websocket"],
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const withTimeout = (p, ms, what) =>
  Promise.race([p, sleep(ms).then(() => { throw new Error(`timeout: ${what}`); })]);

// TLS options for https:// and wss:// from a driver's options: `ca_file`, a PEM file of
// the certificate(s) to trust (a test's self-signed one); engine.io-client hands `ca` to
// both its polling requests and its WebSocket. Verification stays on.
export const tlsOptions = (opt) => (opt.ca_file ? { ca: readFileSync(opt.ca_file) } : {});

// One official socket.io-client connection (no reconnection); `said` records what it hears.
// `opened(engineId)`, if given, is called when the Engine.IO session opens (before the
// Socket.IO CONNECT is answered).
export function connect(url, transport, timeoutMs, extra = {}, opened = null) {
  const s = io(url, {
    transports: TRANSPORTS[transport], forceNew: true, reconnection: false, timeout: timeoutMs,
    ...extra,
  });
  if (opened) s.io.once("open", () => opened(s.io.engine.id));
  s.said = [];
  s.on("said", (m) => s.said.push(m));
  return withTimeout(new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  }), timeoutMs, "connect").catch((e) => { s.close(); throw e; });
}

// Resolves once a "default" client (polling first) has upgraded to WebSocket; at once for
// any other transport or a client already upgraded.
export function upgraded(s, transport, timeoutMs) {
  const eng = s.io.engine;
  if (transport !== "default" || eng.transport.name === "websocket") return Promise.resolve();
  return withTimeout(new Promise((r) => eng.once("upgrade", r)), timeoutMs, "upgrade");
}
