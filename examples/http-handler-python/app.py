"""A handler for evbridge in plain Python (standard library only).

It receives events on its own Unix socket (CloudEvents HTTP binary mode: ``ce-*``
headers, the body is the event's data) and answers with follow-up events or a
directive. Run: ``python3 app.py /run/app/app.sock``. Configure it in evbridge.yaml::

    handlers:
      http:
        - {name: py-invite, match: "invite.*", socket: /run/app/app.sock, path: /hooks/invite}

The other paths answer each way the bridge understands (its tests use them).
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

#: Event ids /hooks/flaky has answered (the server is threaded: one lock).
SEEN: set[str | None] = set()
SEEN_LOCK = threading.Lock()


class Hooks(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the bridge keeps a connection pool

    def address_string(self) -> str:
        return "unix"  # a Unix socket's peer has no address

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, body: object = None) -> None:
        text = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if text:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        is_json = "json" in (self.headers.get("Content-Type") or "")
        data = json.loads(raw) if raw and is_json else raw
        event_type = self.headers.get("ce-type")
        if self.path == "/hooks/invite":
            user = data.get("user") if isinstance(data, dict) else None
            follow = {
                "type": "invite.welcomed",
                "kind": "domain",
                "data": {"user": user, "by": "python"},
            }
            self.send(200, {"emit": [follow]})
        elif self.path == "/hooks/audit":
            self.send(204)
        elif self.path == "/hooks/stop":
            self.send(200, {"stop": True, "reason": "python says stop"})
        elif self.path == "/hooks/skip":
            self.send(200, {"skip": True, "reason": "python says skip"})
        elif self.path == "/hooks/reject":
            self.send(422, {"error": f"python refuses {event_type}"})
        elif self.path == "/hooks/fail":
            self.send(503, {"error": "python is unwell"})
        elif self.path == "/hooks/flaky":
            # 503 the first time an event id comes, 200 after: a retry succeeds.
            with SEEN_LOCK:
                again = self.headers.get("ce-id") in SEEN
                SEEN.add(self.headers.get("ce-id"))
            if again:
                self.send(200)
            else:
                self.send(503, {"error": "python is unwell once"})
        elif self.path == "/hooks/slow":
            time.sleep(30)  # past any sensible handler timeout
            self.send(200)
        elif self.path == "/hooks/big":
            self.send(200, {"pad": "x" * (2 * 1024 * 1024)})
        else:
            self.send(404, {"error": "no such hook"})


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # The bridge may open max_concurrency connections at once; the default backlog is 5,
    # and a connect beyond a full backlog on a Unix socket fails at once (EAGAIN).
    request_queue_size = 128


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python3 app.py SOCKET_PATH")
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, Hooks)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on {path}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
