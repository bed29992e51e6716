// One load generator for both systems, so neither is measured with a handicap:
//   --proto chat  our /ws protocol (docs/protocol.md) over the `ws` package
//   --proto sio   the peer's Socket.IO protocol over socket.io-client 4.8
//
// All users join one room. After everyone joined, a fixed-schedule sender makes a
// round-robin user send at each rate of `--rates r1,r2,...` (msgs/s) for `--warmup` +
// `--duration` seconds, then the
// generator waits up to `--drain` seconds for every delivery. It accounts per message:
// every member must receive every acked message exactly once (lost / duplicated), and for
// `chat` each connection must see seqs strictly increasing (out_of_order).
//
// The measured window starts after the warmup and ends when the last delivery arrived (or
// the drain ran out). Over that window it reads utime+stime of `--pids` (the two server
// processes) from /proc and its own CPU, and divides by the deliveries in the window.
//
// --hold: connect everyone, print {"phase":"connected",...}, keep the connections open
// until SIGTERM/SIGINT or stdin closes, then print the final report (memory runs).
//
// --storm drain|all: the reconnect storm. Connect `--users` (`--concurrency` in flight),
// keep `--storm-senders` users sending `--storm-rate` msg/s in all (from `--storm-lead` s
// before the trigger until `--storm-tail` s after the last client is back), then:
//   drain  (chat only) POST `--drain-url` {"color": `--drain-color`} with the bearer token
//          of $BENCH_ADMIN_TOKEN; every client follows `migrate` as docs/protocol.md says
//          (new connection to `--migrate-url` with since=<last seq>, the old one closed
//          once the new one sent its history);
//   all    every client closes its connection and opens a new one at the same instant
//          (chat: with since=<last seq>).
// A client is back when its new connection delivered `history` (chat) or `connect`
// (Socket.IO). Failed attempts (refused, closed before history, no history within
// `--history-timeout` s) are retried with the web client's backoff (site/app.js: full
// jitter, base 500 ms, cap 15 s); senders resend their unacknowledged messages with the
// same client_id on their new connection (chat; the peer has no idempotency, so it does
// not). Reports the time from the trigger until the last client was back, per-client
// reconnect times, failed attempts, and per client and message whether every acked
// message arrived exactly once; for chat also, per connection, that its frames continue
// `since` without repeat. Everything stops after `--storm-timeout` s.
//
// The last stdout line is the JSON report.
"use strict";

const fs = require("fs");
const { performance } = require("perf_hooks");
const WebSocket = require("ws");
const { io } = require("socket.io-client");

function parseArgs(argv) {
  const a = {
    proto: "chat", urls: [], users: 100, rates: [20], duration: 10, warmup: 2, drain: 10,
    room: "bench", concurrency: 50, pids: [], hold: false, json: "", p99Limit: 250,
    stopOnFail: true, minSteps: 1,
    storm: "", migrateUrl: "", drainUrl: "", drainColor: "blue", stormRate: 5,
    stormSenders: 10, stormTimeout: 180, stormLead: 2, stormTail: 2, historyTimeout: 30,
  };
  const camel = { "migrate-url": "migrateUrl", "drain-url": "drainUrl",
    "drain-color": "drainColor", "storm-rate": "stormRate", "storm-senders": "stormSenders",
    "storm-timeout": "stormTimeout", "storm-lead": "stormLead", "storm-tail": "stormTail",
    "history-timeout": "historyTimeout" };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, "");
    if (k === "hold") { a.hold = true; continue; }
    if (k === "all-rates") { a.stopOnFail = false; continue; }
    const v = argv[++i];
    if (k === "url") a.urls.push(v);
    else if (k === "rates") a.rates = v.split(",").filter(Boolean).map(Number);
    else if (k === "p99-limit") a.p99Limit = Number(v);
    else if (k === "min-steps") a.minSteps = Number(v);
    else if (k === "pids") a.pids = v.split(",").filter(Boolean).map(Number);
    else if (k in camel) a[camel[k]] = typeof a[camel[k]] === "number" ? Number(v) : v;
    else if (["users", "rate", "duration", "warmup", "drain", "concurrency"].includes(k)) a[k] = Number(v);
    else if (k in a) a[k] = v;
    else throw new Error(`unknown option --${k}`);
  }
  if (!a.urls.length) throw new Error("--url is required (repeatable)");
  if (a.storm && !["drain", "all"].includes(a.storm)) throw new Error("--storm: drain or all");
  if (a.storm === "drain" && (a.proto !== "chat" || !a.migrateUrl || !a.drainUrl)) {
    throw new Error("--storm drain needs --proto chat, --migrate-url and --drain-url");
  }
  return a;
}

const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms

// Latency histogram: `perMs` buckets a millisecond (0.1 ms by default) up to `maxMs`
// (60 s); a value above it counts as `maxMs`.
class Hist {
  constructor(maxMs = 60000, perMs = 10) {
    this.perMs = perMs; this.top = maxMs * perMs;
    this.b = new Uint32Array(this.top + 1); this.n = 0;
  }
  add(ms) { let i = Math.round(ms * this.perMs); if (i < 0) i = 0; if (i > this.top) i = this.top; this.b[i]++; this.n++; }
  pct(p) {
    if (!this.n) return null;
    const target = Math.ceil(this.n * p);
    let run = 0;
    for (let i = 0; i < this.b.length; i++) { run += this.b[i]; if (run >= target) return i / this.perMs; }
    return this.top / this.perMs;
  }
  summary() { return { p50: this.pct(0.5), p95: this.pct(0.95), p99: this.pct(0.99), n: this.n }; }
}

function cpuTicks(pid) {
  // [utime, stime] (fields 14, 15), in clock ticks; after the ")" of the comm field.
  const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return [Number(f[11]), Number(f[12])];
}
const CLK_TCK = 100; // Linux USER_HZ

const a = parseArgs(process.argv);
const runId = `${process.pid}-${Date.now()}`;
const MAXMSG = a.storm
  ? Math.ceil(a.stormRate * (a.stormLead + a.stormTimeout + a.stormTail)) + 1000
  : Math.ceil(a.rates.reduce((x, y) => x + y, 0) * (a.warmup + a.duration)) + 1000;
const sentAt = new Float64Array(MAXMSG);
const acked = new Uint8Array(MAXMSG);
const got = new Uint16Array(MAXMSG);
let e2e = new Hist();       // client send -> receive
let fromTs = new Hist();    // server stamp (ts) -> receive
const connectMs = new Hist();
const st = {
  connected: 0, failed: 0, unexpected_closes: 0, sent: 0, acked: 0, errors: {},
  delivered: 0, out_of_order: 0,
};
let windowDeliveries = 0;
let inWindow = false;
let lastDeliveryAt = 0;
const users = [];

function onMessage(u, idx, serverTs, seq) {
  const t = now();
  if (!(idx >= 0 && idx < MAXMSG) || sentAt[idx] === 0) return; // not ours (history)
  if (seq !== undefined) {
    if (seq <= u.lastSeq) st.out_of_order++;
    u.lastSeq = seq;
  }
  got[idx]++;
  st.delivered++;
  if (inWindow) windowDeliveries++;
  lastDeliveryAt = t;
  e2e.add(t - sentAt[idx]);
  if (serverTs) fromTs.add(t - serverTs);
}

function connectChat(i) {
  return new Promise((resolve) => {
    const base = a.urls[i % a.urls.length];
    const url = `${base}?room=${encodeURIComponent(a.room)}&name=u${i}`;
    const u = { i, lastSeq: 0, open: false, send: null };
    const t0 = now();
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let joined = false;
    ws.on("message", (data) => {
      const m = JSON.parse(data.toString());
      switch (m.type) {
        case "message": onMessage(u, Number(m.text.slice(1)), m.ts, m.seq); break;
        case "ack": {
          const idx = Number(m.client_id.slice(m.client_id.lastIndexOf("-") + 1));
          if (!acked[idx]) { acked[idx] = 1; st.acked++; }
          break;
        }
        case "history":
          if (m.messages.length) u.lastSeq = m.messages[m.messages.length - 1].seq;
          if (!joined) {
            joined = true; u.open = true; st.connected++; connectMs.add(now() - t0);
            users.push(u); resolve();
          }
          break;
        case "error": st.errors[m.code] = (st.errors[m.code] || 0) + 1; break;
        default: break;
      }
    });
    ws.on("close", () => { if (u.open && !stopping) st.unexpected_closes++; u.open = false; if (!joined) { st.failed++; resolve(); } });
    ws.on("error", () => {});
    u.send = (idx) => ws.send(JSON.stringify({ type: "send", text: `m${idx}`, client_id: `${runId}-${idx}` }));
    u.close = () => ws.close(1000);
  });
}

function connectSio(i) {
  return new Promise((resolve) => {
    const url = a.urls[i % a.urls.length];
    const u = { i, open: false, send: null };
    const t0 = now();
    const s = io(url, {
      transports: ["websocket"], query: { room: a.room, name: `u${i}` },
      reconnection: false, forceNew: true, timeout: 20000,
    });
    let joined = false;
    s.on("connect", () => {
      if (joined) return;
      joined = true; u.open = true; st.connected++; connectMs.add(now() - t0); users.push(u); resolve();
    });
    s.on("connect_error", () => { if (!joined) { joined = true; st.failed++; resolve(); } });
    s.on("disconnect", () => { if (u.open && !stopping) st.unexpected_closes++; u.open = false; });
    s.on("message", (m) => onMessage(u, Number(m.text.slice(1)), m.ts));
    u.send = (idx) => s.emit("send", { text: `m${idx}`, client_id: `${runId}-${idx}` }, () => {
      if (!acked[idx]) { acked[idx] = 1; st.acked++; }
    });
    u.close = () => s.disconnect();
  });
}

let stopping = false;

async function connectAll() {
  const connect = a.proto === "sio" ? connectSio : connectChat;
  const t0 = now();
  let next = 0;
  async function worker() {
    while (next < a.users) { const i = next++; await connect(i); }
  }
  await Promise.all(Array.from({ length: Math.min(a.concurrency, a.users) }, worker));
  return now() - t0;
}

function snapshotCpu() {
  const servers = a.pids.map((p) => { try { return cpuTicks(p); } catch { return [0, 0]; } });
  return { servers, self: process.cpuUsage(), at: now() };
}

function report(extra) {
  return { proto: a.proto, users: a.users, ...st, connect_ms: connectMs.summary(), ...extra };
}

async function main() {
  const connectWall = await connectAll();
  const base = { connect_wall_ms: Math.round(connectWall) };
  if (a.hold) {
    console.log(JSON.stringify({ phase: "connected", connected: st.connected, failed: st.failed }));
    await new Promise((resolve) => {
      process.on("SIGTERM", resolve); process.on("SIGINT", resolve);
      process.stdin.on("end", resolve); process.stdin.on("close", resolve); process.stdin.resume();
    });
    stopping = true;
    finish(report(base));
    return;
  }
  const live = users.filter((u) => u.open);
  if (!live.length) { finish(report(base), 2); return; }
  const steps = [];
  for (const rate of a.rates) {
    const rep = await runStep(live, rate);
    steps.push(rep);
    const ok = !rep.lost && !rep.unacked && !rep.duplicated && !rep.out_of_order
      && !rep.unexpected_closes
      && rep.latency_ms.p99 !== null && rep.latency_ms.p99 < a.p99Limit;
    rep.sustained = ok;
    process.stderr.write(`${a.proto} rate ${rate}: p99 ${rep.latency_ms.p99} ms, lost ${rep.lost}, cpu/delivery ${rep.server_cpu_us_per_delivery.toFixed(1)} us\n`);
    if (!ok && a.stopOnFail && steps.length >= a.minSteps) break;
  }
  stopping = true;
  finish({ ...base, proto: a.proto, users: a.users, connected: st.connected, failed: st.failed,
    connect_ms: connectMs.summary(), steps });
}

let nextIdx = 0;

async function runStep(live, rate) {
  // Fixed schedule: message k goes out at start + k/rate, whatever the timer jitter.
  e2e = new Hist(); fromTs = new Hist();
  const before = { ...st, errors: { ...st.errors } };
  const first = nextIdx;
  const total = Math.round(rate * (a.warmup + a.duration));
  if (first + total > MAXMSG) throw new Error("message arrays too small");
  const warmupCount = Math.round(rate * a.warmup);
  windowDeliveries = 0;
  const start = now();
  let k = 0; let c0 = null;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((now() - start) * rate / 1000) + 1);
      while (k < due) {
        if (k === warmupCount) { inWindow = true; c0 = snapshotCpu(); }
        const u = live[(first + k) % live.length];
        const idx = first + k;
        if (u.open) { sentAt[idx] = now(); st.sent++; u.send(idx); }
        k++;
      }
      if (k >= total) { resolve(); return; }
      setTimeout(tick, Math.max(0, start + (k * 1000) / rate - now()));
    };
    tick();
  });
  nextIdx = first + total;
  if (!c0) { inWindow = true; c0 = snapshotCpu(); }
  const members = st.connected;
  const deadline = now() + a.drain * 1000;
  const done = () => {
    for (let i = first; i < nextIdx; i++) if (sentAt[i] && (!acked[i] || got[i] < members)) return false;
    return true;
  };
  while (now() < deadline && !done()) await new Promise((r) => setTimeout(r, 20));
  const c1 = snapshotCpu();
  inWindow = false;
  let lost = 0; let dup = 0; let unacked = 0;
  for (let i = first; i < nextIdx; i++) {
    if (!sentAt[i]) continue;
    if (!acked[i]) { unacked++; continue; }
    if (got[i] < members) lost += members - got[i];
    else if (got[i] > members) dup += got[i] - members;
  }
  const end = Math.max(c0.at, Math.min(c1.at, lastDeliveryAt || c1.at));
  const tick = (j, k) => ((c1.servers[j][k] - c0.servers[j][k]) * 1e6) / CLK_TCK;
  const serverUs = a.pids.map((_, j) => tick(j, 0) + tick(j, 1));
  const serverSysUs = a.pids.map((_, j) => tick(j, 1)).reduce((x, y) => x + y, 0);
  const selfUs = (c1.self.user - c0.self.user) + (c1.self.system - c0.self.system);
  const d = Math.max(1, windowDeliveries);
  const diff = (key) => st[key] - before[key];
  return {
    rate, members, sent: diff("sent"), acked: diff("acked"), unacked,
    delivered: diff("delivered"), lost, duplicated: dup, out_of_order: diff("out_of_order"),
    unexpected_closes: diff("unexpected_closes"), errors: st.errors,
    latency_ms: e2e.summary(), server_ts_latency_ms: fromTs.summary(),
    window_s: (end - c0.at) / 1000, window_deliveries: windowDeliveries,
    server_cpu_us: serverUs,
    server_cpu_us_per_delivery: serverUs.reduce((x, y) => x + y, 0) / d,
    server_sys_us_per_delivery: serverSysUs / d,
    loadgen_cpu_us_per_delivery: selfUs / d,
  };
}


// ------------------------------------------------------------------ reconnect storm

// The web client's reconnect backoff (site/app.js): full jitter, uniform in
// [0, min(cap, base * 2^attempt)].
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;
const backoff = (attempt) =>
  Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
const bump = (obj, key) => { obj[key] = (obj[key] || 0) + 1; };
const idxOf = (text) => Number(String(text).slice(1));
// seqs a chat room can reach in a storm run: every send, its resends and void numbers
const SEQMAX = 4 * MAXMSG;

const storm = {
  triggered: false, t0: 0, back: 0, lastBackAt: 0,
  failed: 0, failures: {}, closes: {}, migrates: 0, colors: {},
  duplicated: 0, repeats: 0, beforeSince: 0, gaps: 0, overlap: 0,
  historyMore: 0, skipped: 0, resent: 0,
};
// 1 ms buckets, up to the storm's timeout
const backMs = new Hist(a.stormTimeout * 1000, 1);      // trigger -> back, per client
const reconnectMs = new Hist(a.stormTimeout * 1000, 1); // own start (migrate, close) -> back

function reasonOf(e) {
  const m = /Unexpected server response: (\d+)/.exec(e && e.message ? e.message : "");
  if (m) return `http_${m[1]}`;
  return (e && (e.code || e.message)) ? String(e.code || e.message).slice(0, 40) : "error";
}

// One user of the storm: a current connection and, while one is being opened (join,
// reconnect, migrate), a candidate that replaces it once its history arrived (chat) or
// it connected (Socket.IO), as the web client does.
class StormUser {
  constructor(i, url) {
    this.i = i; this.url = url; this.current = null; this.candidate = null;
    this.lastSeq = 0; this.everJoined = false; this.attempt = 0; this.retryTimer = null;
    this.seen = new Uint8Array(MAXMSG); this.pending = new Set(); this.resendTimer = null;
    this.from = 0; this.backAt = 0; this.onJoin = null; this.stopped = false;
    this.base = null; // chat: the room's seq at the first join (welcome)
    this.seqs = a.proto === "sio" ? null : new Uint8Array(SEQMAX); // seqs taken
  }

  connect() {
    if (this.candidate || this.stopped) return;
    clearTimeout(this.retryTimer); this.retryTimer = null;
    const conn = a.proto === "sio" ? openSio(this) : openChat(this);
    conn.post = storm.triggered;
    this.candidate = conn;
    conn.historyTimer = setTimeout(() => {
      if (this.candidate === conn) { conn.reason = conn.reason || "history_timeout"; conn.close(); }
    }, a.historyTimeout * 1000);
  }

  retry(delay) {
    if (this.retryTimer || this.stopped) return;
    this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, delay);
  }

  promote(conn) {
    const prev = this.current;
    this.current = conn; this.candidate = null; clearTimeout(conn.historyTimer);
    this.everJoined = true; this.attempt = 0;
    if (prev && prev !== conn) { prev.intentional = true; prev.close(); }
    if (conn.post && !this.backAt) {
      const t = now();
      this.backAt = t; storm.back++; storm.lastBackAt = t;
      backMs.add(t - storm.t0); reconnectMs.add(t - (this.from || storm.t0));
      bump(storm.colors, conn.color || "none");
    }
    if (this.onJoin) { const f = this.onJoin; this.onJoin = null; f(); }
    this.resend();
  }

  closed(conn, code) {
    if (conn.done) return;
    conn.done = true;
    clearTimeout(conn.historyTimer);
    if (conn.intentional || this.stopped) return;
    if (this.candidate === conn) { // an attempt that failed before its history
      this.candidate = null; this.attempt++;
      if (conn.post) { storm.failed++; bump(storm.failures, conn.reason || `close_${code}`); }
      else st.failed++;
      this.retry(backoff(this.attempt));
      return;
    }
    if (this.current === conn) { // the connection in use went away
      this.current = null;
      bump(storm.closes, String(code));
      if (storm.triggered && !this.from) this.from = now();
      if (this.candidate) return; // a migration under way takes over
      this.attempt++;
      this.retry(backoff(this.attempt - 1));
    }
  }

  migrate(conn) {
    if (conn === this.current) {
      storm.migrates++;
      if (storm.triggered && !this.from) this.from = now();
      if (a.migrateUrl) this.url = a.migrateUrl; // where the load balancer would send it
      this.connect();
    } else if (conn === this.candidate) { // its instance drains before it took over
      conn.reason = "migrated_before_history"; conn.close();
    }
  }

  // chat: a message frame (history, page or live) of `conn`, checked against that
  // connection's own stream (continues `since`, no repeat), then taken once by the user.
  frame(conn, m) {
    const seq = Number(m.seq);
    if (conn.last !== null) {
      if (seq <= conn.last) {
        if (conn.since !== null && seq <= conn.since) storm.beforeSince++;
        else storm.repeats++;
        return;
      }
      if (seq > conn.last + 1) storm.gaps++; // a void number, or a hole
    }
    conn.last = seq;
    if (seq <= this.lastSeq) { storm.overlap++; return; } // make-before-break overlap
    this.lastSeq = seq;
    if (seq < SEQMAX) this.seqs[seq] = 1;
    this.take(idxOf(m.text), m.ts);
  }

  take(idx, serverTs) {
    if (!(idx >= 0 && idx < MAXMSG) || sentAt[idx] === 0) return;
    if (this.seen[idx]) { storm.duplicated++; return; }
    const t = now();
    this.seen[idx] = 1; got[idx]++; st.delivered++; lastDeliveryAt = t;
    e2e.add(t - sentAt[idx]);
    if (serverTs) fromTs.add(t - serverTs);
  }

  acked(idx) {
    if (!(idx >= 0 && idx < MAXMSG)) return;
    this.pending.delete(idx);
    if (!acked[idx]) { acked[idx] = 1; st.acked++; }
  }

  // chat: messages not acknowledged go again with their client_id (exactly-once)
  resend() {
    if (a.proto === "sio" || !this.current) return;
    for (const idx of this.pending) if (this.current.send(idx)) storm.resent++;
  }

  resendLater() {
    if (this.resendTimer) return;
    this.resendTimer = setTimeout(() => { this.resendTimer = null; this.resend(); }, 1000);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer); clearTimeout(this.resendTimer);
    for (const c of [this.current, this.candidate]) {
      if (c) { c.intentional = true; clearTimeout(c.historyTimer); c.close(); }
    }
  }
}

// The room's stored messages with seq > since, page by page (GET /api/rooms/.../messages),
// each handed to `each`.
async function fetchFrom(wsUrl, since, each) {
  const base = wsUrl.replace(/^ws/, "http").replace(/\/ws$/, "");
  for (let from = since; ;) {
    const r = await fetch(`${base}/api/rooms/${encodeURIComponent(a.room)}/messages?since=${from}&limit=1000`);
    if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
    const page = (await r.json()).messages;
    for (const m of page) each(m);
    if (page.length < 1000) return;
    from = page[page.length - 1].seq;
  }
}

function openChat(u) {
  const since = u.everJoined ? u.lastSeq : null;
  const q = `room=${encodeURIComponent(a.room)}&name=u${u.i}${since !== null ? `&since=${since}` : ""}`;
  const ws = new WebSocket(`${u.url}?${q}`, { perMessageDeflate: false });
  const conn = {
    since, last: since, color: "", reason: "", intentional: false, done: false, post: false,
    historyTimer: null, buffer: null,
    close: () => ws.close(1000),
    send: (idx) => {
      if (ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify({ type: "send", text: `m${idx}`, client_id: `${runId}-${idx}` }));
      return true;
    },
    open: () => ws.readyState === WebSocket.OPEN,
  };
  const onHistory = async (m) => {
    for (const msg of m.messages) u.frame(conn, msg);
    if (m.more && m.messages.length) {
      storm.historyMore++;
      conn.buffer = []; // live frames wait until the pages are in
      try {
        // history stops after 1,000 messages: the rest over HTTP, as the web client does
        await fetchFrom(u.url, m.messages[m.messages.length - 1].seq, (msg) => u.frame(conn, msg));
      } catch (e) {
        conn.reason = "history_fetch_failed"; conn.close(); return;
      }
      const live = conn.buffer; conn.buffer = null;
      for (const f of live) u.frame(conn, f);
    }
    if (u.candidate === conn) u.promote(conn);
  };
  ws.on("message", (data) => {
    const m = JSON.parse(data.toString());
    switch (m.type) {
      case "welcome":
        conn.color = m.color;
        if (u.base === null) u.base = Number(m.seq);
        break;
      case "history": onHistory(m); break;
      case "message": if (conn.buffer) conn.buffer.push(m); else u.frame(conn, m); break;
      case "ack": u.acked(Number(m.client_id.slice(m.client_id.lastIndexOf("-") + 1))); break;
      case "migrate": u.migrate(conn); break;
      case "error":
        bump(st.errors, m.code);
        if (m.code === "unavailable") u.resendLater();
        break;
      default: break;
    }
  });
  ws.on("error", (e) => { if (!conn.reason) conn.reason = reasonOf(e); });
  ws.on("close", (code) => u.closed(conn, code));
  return conn;
}

function openSio(u) {
  const s = io(u.url, {
    transports: ["websocket"], query: { room: a.room, name: `u${u.i}` },
    reconnection: false, forceNew: true, timeout: a.historyTimeout * 1000,
  });
  const conn = {
    since: null, last: null, color: "", reason: "", intentional: false, done: false,
    post: false, historyTimer: null,
    close: () => {
      const was = s.connected;
      s.disconnect();
      if (!was) u.closed(conn, "closed_before_connect"); // no disconnect event then
    },
    send: (idx) => {
      if (!s.connected) return false;
      s.emit("send", { text: `m${idx}`, client_id: `${runId}-${idx}` }, () => u.acked(idx));
      return true;
    },
    open: () => s.connected,
  };
  s.on("connect", () => { if (u.candidate === conn) u.promote(conn); });
  s.on("connect_error", (e) => { conn.reason = conn.reason || reasonOf(e); s.close(); u.closed(conn, "connect_error"); });
  s.on("disconnect", (reason) => u.closed(conn, reason));
  s.on("message", (m) => u.take(idxOf(m.text), m.ts));
  return conn;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function stormMain() {
  const all = Array.from({ length: a.users }, (_, i) => new StormUser(i, a.urls[i % a.urls.length]));
  // Join everyone, `concurrency` in flight, bounded by the storm timeout.
  const c0 = now();
  const joinDeadline = c0 + a.stormTimeout * 1000;
  let next = 0;
  async function worker() {
    while (next < all.length) {
      const u = all[next++];
      const t = now();
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, joinDeadline - now()));
        u.onJoin = () => { clearTimeout(timer); resolve(); };
        u.connect();
      });
      if (u.current) { st.connected++; connectMs.add(now() - t); }
    }
  }
  await Promise.all(Array.from({ length: Math.min(a.concurrency, all.length) }, worker));
  const connectWall = now() - c0;
  const members = all.filter((u) => u.current);
  for (const u of all) if (!u.current) u.stop();
  const base = { mode: "storm", trigger: a.storm, proto: a.proto, users: a.users,
    members: members.length, initial_failed_attempts: st.failed,
    connect_ms: connectMs.summary(), connect_wall_ms: Math.round(connectWall) };
  if (!members.length) return stormFinish(all, { ...base, error: "nobody connected" });

  // Senders: a fixed schedule over a few members, from before the trigger to after it.
  const senders = members.slice(0, Math.max(1, Math.min(a.stormSenders, members.length)));
  let sending = true;
  let k = 0;
  const sendStart = now();
  const sendLoop = new Promise((resolve) => {
    const tick = () => {
      if (!sending || nextIdx >= MAXMSG) { resolve(); return; } // (arrays sized for the run)
      const due = Math.floor((now() - sendStart) * a.stormRate / 1000) + 1;
      while (k < due && nextIdx < MAXMSG) {
        const u = senders[k % senders.length];
        const idx = nextIdx;
        if (u.current && u.current.open()) {
          nextIdx++;
          sentAt[idx] = now(); st.sent++;
          if (a.proto !== "sio") u.pending.add(idx);
          u.current.send(idx);
        } else storm.skipped++; // its user is between connections
        k++;
      }
      setTimeout(tick, Math.max(0, sendStart + (k * 1000) / a.stormRate - now()));
    };
    tick();
  });
  await sleep(a.stormLead * 1000);

  // The trigger.
  const cpu0 = snapshotCpu();
  storm.triggered = true;
  storm.t0 = now();
  let drainStatus = null;
  if (a.storm === "drain") {
    try {
      const r = await fetch(a.drainUrl, {
        method: "POST", body: JSON.stringify({ color: a.drainColor }),
        headers: { authorization: `Bearer ${process.env.BENCH_ADMIN_TOKEN || ""}`,
          "content-type": "application/json" },
      });
      drainStatus = r.status;
      await r.text();
    } catch (e) { drainStatus = reasonOf(e); }
    if (drainStatus !== 202) {
      sending = false; await sendLoop;
      return stormFinish(all, { ...base, error: `drain call answered ${drainStatus}` });
    }
  } else {
    for (const u of members) {
      const c = u.current;
      c.intentional = true; c.close(); u.current = null;
      u.from = storm.t0;
      u.connect();
    }
  }
  const deadline = storm.t0 + a.stormTimeout * 1000;
  while (storm.back < members.length && now() < deadline) await sleep(20);
  const cpu1 = snapshotCpu();
  const allBack = storm.back === members.length;
  process.stderr.write(`${a.proto} storm ${a.storm}: ${storm.back}/${members.length} back `
    + `${allBack ? `after ${((storm.lastBackAt - storm.t0) / 1000).toFixed(2)} s` : `at the ${a.stormTimeout} s timeout`}\n`);

  await sleep(a.stormTail * 1000);
  sending = false;
  await sendLoop;
  // Every acked message to every member (the peer: what its users were connected for).
  const doneBy = now() + a.drain * 1000;
  const complete = () => {
    for (let i = 0; i < nextIdx; i++) {
      if (!sentAt[i]) continue;
      if (!acked[i] && a.proto !== "sio") return false;
      if (acked[i] && got[i] < members.length) return false;
    }
    return true;
  };
  while (now() < doneBy && !complete()) await sleep(100);
  let lost = 0; let unacked = 0;
  for (let i = 0; i < nextIdx; i++) {
    if (!sentAt[i]) continue;
    if (!acked[i]) { unacked++; continue; }
    lost += members.length - got[i];
  }
  // chat: every stored message after a member's first join reached it (void numbers,
  // never stored, are no gap); the store's own list, read once at the end
  let seqMissing = null;
  if (a.proto !== "sio") {
    const stored = [];
    try {
      await fetchFrom(a.migrateUrl || a.urls[0], 0, (m) => stored.push(Number(m.seq)));
      seqMissing = 0;
      for (const u of members) {
        for (const seq of stored) if (seq > u.base && (seq >= SEQMAX || !u.seqs[seq])) seqMissing++;
      }
    } catch (e) { process.stderr.write(`reading the room's messages: ${e}\n`); }
  }
  const tick = (j, f) => (cpu1.servers[j][f] - cpu0.servers[j][f]) / CLK_TCK;
  const selfS = ((cpu1.self.user - cpu0.self.user) + (cpu1.self.system - cpu0.self.system)) / 1e6;
  return stormFinish(all, {
    ...base, drain_status: drainStatus, timeout_s: a.stormTimeout,
    back: storm.back, not_back: members.length - storm.back,
    all_back_ms: allBack ? storm.lastBackAt - storm.t0 : null,
    back_ms: backMs.summary(), reconnect_ms: reconnectMs.summary(),
    failed_attempts: storm.failed, failures: storm.failures, closes: storm.closes,
    migrates: storm.migrates, back_colors: storm.colors,
    sent: st.sent, acked: st.acked, unacked, skipped: storm.skipped, resent: storm.resent,
    delivered: st.delivered, lost, duplicated: storm.duplicated, out_of_order: storm.repeats,
    before_since: storm.beforeSince, seq_gaps: storm.gaps, seq_missing: seqMissing, overlap_dropped: storm.overlap,
    history_more: storm.historyMore, errors: st.errors,
    latency_ms: e2e.summary(), server_ts_latency_ms: fromTs.summary(),
    server_cpu_s: a.pids.map((_, j) => tick(j, 0) + tick(j, 1)), loadgen_cpu_s: selfS,
  });
}

function stormFinish(all, rep) {
  stopping = true;
  for (const u of all) u.stop();
  const line = JSON.stringify(rep);
  if (a.json) fs.writeFileSync(a.json, line + "\n");
  console.log(line);
  const bad = rep.error || rep.not_back || rep.lost || rep.duplicated || rep.out_of_order
    || rep.before_since || rep.seq_missing;
  setTimeout(() => process.exit(bad ? 1 : 0), 200);
}

function finish(rep, code) {
  for (const u of users) { try { u.close(); } catch { /* closing anyway */ } }
  const line = JSON.stringify(rep);
  if (a.json) fs.writeFileSync(a.json, line + "\n");
  console.log(line);
  setTimeout(() => process.exit(code ?? ((rep.lost || rep.duplicated || rep.out_of_order) ? 1 : 0)), 200);
}

(a.storm ? stormMain() : main()).catch((e) => { console.error(e); process.exit(3); });
