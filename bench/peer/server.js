// The peer: the chat a team would otherwise write with Socket.IO 4.8 and the Redis adapter.
// Two of these processes share one redis-server (the adapter carries room broadcasts
// between them), exactly as the chat's blue and green instances share theirs.
//
//   PORT=9001 REDIS_URL=redis://127.0.0.1:6390 node server.js
//
// Client side: connect with query {room, name}; emit("send", {text, client_id}, ack) ->
// ack({ts}) and every member of the room (sender included, on both processes) gets
// "message" {room, user_id, name, text, client_id, ts}. No storage: this is the fan-out
// path alone, which is what the benchmark compares.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const port = Number(process.env.PORT || 9001);
  const pub = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"status":"ok"}');
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), serveClient: false });
  let nextUser = 1;
  io.on("connection", (socket) => {
    const room = String(socket.handshake.query.room || "lobby");
    const name = String(socket.handshake.query.name || "user");
    const userId = port * 100000 + nextUser++;
    socket.join(room);
    socket.on("send", (data, ack) => {
      if (!data || typeof data.text !== "string") return;
      const ts = Date.now();
      io.to(room).emit("message", {
        room, user_id: userId, name, text: data.text, client_id: data.client_id, ts,
      });
      if (typeof ack === "function") ack({ ts });
    });
  });
  httpServer.listen(port, "127.0.0.1", () => {
    console.log(`peer listening on 127.0.0.1:${port}`);
  });
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
