// Helpers shared by the JS drivers of the tests (clients.mjs, order.mjs).
import { io } from "socket.io-client";

export const TRANSPORTS = {
  polling: ["polling"], websocket: ["websocket"], default: ["polling", "websocket"],
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const withTimeout = (p, ms, what) =>
  Promise.race([p, sleep(ms).then(() => { throw new Error(`timeout: ${what}`); })]);

// One official socket.io-client connection (no reconnection); `said` records what it hears.
export function connect(url, transport, timeoutMs) {
  const s = io(url, {
    transports: TRANSPORTS[transport], forceNew: true, reconnection: false, timeout: timeoutMs,
  });
  s.said = [];
  s.on("said", (m) => s.said.push(m));
  return withTimeout(new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  }), timeoutMs, "connect").catch((e) => { s.close(); throw e; });
}
