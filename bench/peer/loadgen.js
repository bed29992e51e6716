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
  };
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
    else if (["users", "rate", "duration", "warmup", "drain", "concurrency"].includes(k)) a[k] = Number(v);
    else if (k in a) a[k] = v;
    else throw new Error(`unknown option --${k}`);
  }
  if (!a.urls.length) throw new Error("--url is required (repeatable)");
  return a;
}

const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms

// Latency histogram: 0.1 ms buckets up to 60 s.
class Hist {
  constructor() { this.b = new Uint32Array(600001); this.n = 0; }
  add(ms) { let i = Math.round(ms * 10); if (i < 0) i = 0; if (i > 600000) i = 600000; this.b[i]++; this.n++; }
  pct(p) {
    if (!this.n) return null;
    const target = Math.ceil(this.n * p);
    let run = 0;
    for (let i = 0; i < this.b.length; i++) { run += this.b[i]; if (run >= target) return i / 10; }
    return 60000;
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
const MAXMSG = Math.ceil(a.rates.reduce((x, y) => x + y, 0) * (a.warmup + a.duration)) + 1000;
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

function finish(rep, code) {
  for (const u of users) { try { u.close(); } catch { /* closing anyway */ } }
  const line = JSON.stringify(rep);
  if (a.json) fs.writeFileSync(a.json, line + "\n");
  console.log(line);
  setTimeout(() => process.exit(code ?? ((rep.lost || rep.duplicated || rep.out_of_order) ? 1 : 0)), 200);
}

main().catch((e) => { console.error(e); process.exit(3); });
