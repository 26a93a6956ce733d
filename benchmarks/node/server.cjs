// Contender (d): Node's own answer to "several processes, one port".
// socket.io 4 on node:cluster, @socket.io/sticky in the primary (routes each
// connection by sid, least-connection for new ones) and
// @socket.io/cluster-adapter for broadcasts between workers. The app is the
// bench contract of imcluster/examples/bench.py, written in JS.
//
// Usage: node server.cjs --port PORT [--workers N] [--host 127.0.0.1]
"use strict";
const cluster = require("node:cluster");
const http = require("node:http");
const { Server } = require("socket.io");
const { setupMaster, setupWorker } = require("@socket.io/sticky");
const { createAdapter, setupPrimary } = require("@socket.io/cluster-adapter");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const port = Number(arg("port", "8000"));
const host = arg("host", "127.0.0.1");
const workers = Number(arg("workers", "2"));

if (cluster.isPrimary) {
  const httpServer = http.createServer();
  setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
  setupPrimary();
  cluster.setupPrimary({ serialization: "advanced" });
  httpServer.listen({ port, host, backlog: 4096 });
  for (let i = 0; i < workers; i++) cluster.fork();
  let ready = 0;
  cluster.on("message", (w, m) => {
    if (m && m.type === "bench:ready" && ++ready === workers) {
      console.log(JSON.stringify({ listening: `http://${host}:${port}`, workers }));
    }
  });
  cluster.on("exit", (w, code, sig) => {
    console.error(`worker ${w.process.pid} exited (${sig || code})`);
  });
  const stop = () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  io.adapter(createAdapter());
  setupWorker(io);

  const last = (args) => (typeof args[args.length - 1] === "function" ? args[args.length - 1] : null);
  io.on("connection", (socket) => {
    socket.on("echo", (...args) => {
      const ack = last(args);
      if (ack) ack(args.length > 1 ? args[0] : null);
    });
    socket.on("join", (...args) => {
      const ack = last(args);
      const data = args[0];
      const room = data && typeof data === "object" ? data.room : null;
      if (typeof room !== "string" || !room) return ack && ack(false);
      socket.join(room);
      if (ack) ack(true);
    });
    socket.on("say", (...args) => {
      const ack = last(args);
      const data = args[0];
      const room = data && typeof data === "object" ? data.room : null;
      if (typeof room !== "string" || !room) return ack && ack(false);
      io.to(room).emit("said", data);
      if (ack) ack(true);
    });
    socket.on("whoami", (...args) => {
      const ack = last(args);
      if (ack) ack(process.pid);
    });
  });
  process.send({ type: "bench:ready" });
}
