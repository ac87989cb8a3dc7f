// A handler for evbridge in Node, without dependencies: it receives events on its own
// Unix socket (CloudEvents HTTP binary mode: ce-* headers, the body is the event's data)
// and answers with follow-up events or a directive. Run: node app.js /run/app/app.sock
//
// Configure it in evbridge.yaml:
//   handlers:
//     http:
//       - {name: node-invite, match: "invite.*", socket: /run/app/app.sock, path: /hooks/invite}
//
// The other paths answer each way the bridge understands (its tests use them).
"use strict";

const http = require("http");
const fs = require("fs");

const socketPath = process.argv[2];
if (!socketPath) {
  console.error("usage: node app.js SOCKET_PATH");
  process.exit(2);
}

function send(res, status, body) {
  const text = body === undefined ? "" : JSON.stringify(body);
  const headers = { "content-length": Buffer.byteLength(text) };
  if (text) headers["content-type"] = "application/json";
  res.writeHead(status, headers);
  res.end(text);
}

const seen = new Set(); // event ids /hooks/flaky has answered

const routes = {
  // A follow-up event: it runs through the bridge's pipeline after this event.
  "/hooks/invite": (event, res) =>
    send(res, 200, {
      emit: [
        {
          type: "invite.welcomed",
          kind: "domain",
          data: { user: event.data && event.data.user, by: "node" },
        },
      ],
    }),
  "/hooks/audit": (event, res) => send(res, 204),
  "/hooks/stop": (event, res) => send(res, 200, { stop: true, reason: "node says stop" }),
  "/hooks/skip": (event, res) => send(res, 200, { skip: true, reason: "node says skip" }),
  "/hooks/reject": (event, res) => send(res, 422, { error: "node refuses " + event.type }),
  "/hooks/fail": (event, res) => send(res, 503, { error: "node is unwell" }),
  // 503 the first time it sees an event id, 200 after: a retry (on_error: retry) succeeds.
  "/hooks/flaky": (event, res) => {
    if (seen.has(event.id)) return send(res, 200);
    seen.add(event.id);
    send(res, 503, { error: "node is unwell once" });
  },
  // Answers after 30 s: past any sensible handler timeout.
  "/hooks/slow": (event, res) => setTimeout(() => send(res, 200), 30000),
  "/hooks/big": (event, res) => send(res, 200, { pad: "x".repeat(2 * 1024 * 1024) }),
};

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const route = routes[req.url];
    if (req.method !== "POST" || !route) return send(res, 404, { error: "no such hook" });
    const body = Buffer.concat(chunks);
    const type = req.headers["content-type"] || "";
    const event = {
      id: req.headers["ce-id"],
      type: req.headers["ce-type"],
      source: req.headers["ce-source"],
      data: type.includes("json") && body.length ? JSON.parse(body.toString("utf8")) : body,
    };
    route(event, res);
  });
});

if (fs.existsSync(socketPath)) fs.unlinkSync(socketPath);
server.listen(socketPath, () => console.log("listening on " + socketPath));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
