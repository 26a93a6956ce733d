// imcluster chat page. State is mirrored on window.chat and on <body> data
// attributes so automated browser tests can read it without scraping.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // Same limits as the server, so a long query string degrades instead of
  // having every join rejected.
  const room = (params.get('room') || '').trim().slice(0, 64) || 'lobby';
  const name = (params.get('name') || '').trim().slice(0, 32) ||
    'guest-' + Math.floor(1000 + Math.random() * 9000);
  const transport = params.get('transport') || 'default';

  // Keyed by sid, not name: two tabs with one name are two members, and a
  // 'leave' must remove exactly the connection that went away. Each entry
  // remembers when it was last heard of: a member whose worker was killed
  // never sends 'leave', so members silent for too long are dropped.
  const members = new Map();
  const HEARTBEAT_MS = 15000;
  const EXPIRE_MS = 40000;

  const chat = window.chat = {
    room, name, messages: [], status: 'connecting', pid: null,
    transport: null, online: [], socket: null,
    send(text) {
      if (!chat.socket || typeof text !== 'string' || !text.trim()) {
        return Promise.resolve(false);
      }
      const msg = { room, text, ts: Date.now() };
      return new Promise((resolve) => chat.socket.emit('say', msg, resolve));
    },
  };

  function banner(text) {
    $('banner').textContent = text;
    $('banner').hidden = false;
  }

  function setStatus(status) {
    chat.status = status;
    document.body.dataset.status = status;
    $('status').textContent = status;
  }

  function setPid(pid) {
    chat.pid = Number.isInteger(pid) ? pid : null;
    document.body.dataset.pid = chat.pid === null ? '' : String(chat.pid);
    $('pid').textContent = chat.pid === null ? '–' : String(chat.pid);
  }

  function setTransport(t) {
    chat.transport = t || null;
    $('transport').textContent = t || '–';
  }

  function renderOnline() {
    const counts = new Map();
    for (const { name: n } of members.values()) counts.set(n, (counts.get(n) || 0) + 1);
    chat.online = [...counts.keys()].sort((a, b) => a.localeCompare(b));
    const list = $('online');
    list.replaceChildren(...chat.online.map((n) => {
      const li = document.createElement('li');
      const c = counts.get(n);
      li.textContent = c > 1 ? `${n} (×${c})` : n;
      li.title = n;
      if (n === name) li.className = 'me';
      return li;
    }));
    $('count').textContent = `(${chat.online.length})`;
  }

  function hhmmss(ts) {
    const d = new Date(Number.isFinite(ts) ? ts : Date.now());
    return [d.getHours(), d.getMinutes(), d.getSeconds()]
      .map((n) => String(n).padStart(2, '0')).join(':');
  }

  function span(cls, text) {
    const el = document.createElement('span');
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function renderMessage(m) {
    const list = $('messages');
    // Only follow new messages if the reader hasn't scrolled up to read.
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const li = document.createElement('li');
    li.className = m.name === name ? 'msg mine' : 'msg';
    li.dataset.text = m.text;
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.append(span('name', m.name), span('time', hhmmss(m.ts)),
      span('via', `via worker ${m.pid}`));
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = m.text;
    li.append(meta, text);
    list.append(li);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  $('room').textContent = room;
  document.title = `#${room} · imcluster chat`;
  setStatus('connecting');
  setPid(null);
  renderOnline();

  $('form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('text');
    if (!input.value.trim()) return;
    chat.send(input.value);
    input.value = '';
  });

  if (typeof io === 'undefined') {
    banner('socket.io client missing: run scripts/setup');
    setStatus('disconnected');
    return;
  }

  const transports = { polling: ['polling'], websocket: ['websocket'] }[transport];
  // Say goodbye when the tab goes away; otherwise a long-polling client
  // lingers in everyone's Online list until the server's ping timeout.
  const opts = { closeOnBeforeunload: true };
  if (transports) opts.transports = transports;
  const socket = chat.socket = io(opts);
  let everConnected = false;

  // The engine is replaced on every reconnect, so hook each new one as it
  // opens (before any upgrade can happen) rather than once at start-up.
  socket.io.on('open', () => {
    const engine = socket.io.engine;
    setTransport(engine.transport.name);
    engine.on('upgrade', (t) => setTransport(t.name));
  });
  socket.io.on('reconnect_attempt', () => setStatus('reconnecting'));
  socket.io.on('reconnect_failed', () => setStatus('disconnected'));

  socket.on('connect', () => {
    everConnected = true;
    setStatus('connected');
    setTransport(socket.io.engine.transport.name);
    // A reconnect is a new sid on a possibly different worker that knows
    // nothing of us: rebuild membership from scratch and ask who serves us.
    members.clear();
    members.set(socket.id, { name, seen: Date.now() });
    renderOnline();
    socket.emit('join', { room, name }, (ok) => {
      if (ok !== true) banner(`could not join room "${room}"`);
    });
    socket.emit('whoami', setPid);
  });

  socket.on('disconnect', () => {
    setStatus(socket.active ? 'reconnecting' : 'disconnected');
    setPid(null);  // the next connection may well be served by another worker
  });

  socket.on('connect_error', () => {
    if (!socket.active) setStatus('disconnected');
    else setStatus(everConnected ? 'reconnecting' : 'connecting');
  });

  // Presence is built only from room broadcasts, so it works no matter which
  // worker serves each member: a newcomer announces 'join', and everyone
  // already there answers once with 'here'.
  socket.on('presence', (p) => {
    if (!p || p.room !== room || typeof p.sid !== 'string') return;
    if (p.event === 'leave') {
      members.delete(p.sid);
    } else if (p.event === 'join' || p.event === 'here') {
      members.set(p.sid, { name: String(p.name), seen: Date.now() });
      if (p.event === 'join' && p.sid !== socket.id) {
        socket.emit('here', { room, name, to_sid: p.sid });
      }
    }
    renderOnline();
  });

  // Heartbeat: say 'here' now and then, and forget members not heard from.
  setInterval(() => {
    if (!socket.connected) return;
    socket.emit('here', { room, name });
    const cutoff = Date.now() - EXPIRE_MS;
    for (const [sid, m] of members) {
      if (sid !== socket.id && m.seen < cutoff) members.delete(sid);
    }
    renderOnline();
  }, HEARTBEAT_MS);

  socket.on('said', (m) => {
    if (!m || m.room !== room || typeof m.text !== 'string') return;
    chat.messages.push(m);
    renderMessage(m);
  });
})();
