#!/usr/bin/env python3
"""A directory stand-in for reach/netns-demo: the subset of an IICP directory
(protocol.md §2) that nodes and consumers of the demo use, in memory.

  POST   /v1/register   probes {endpoint}/iicp/health unless the body declares
                        a concrete nat_type with a transport_method (as the Rust
                        directory does), then issues a token
  POST   /v1/heartbeat  Bearer token required
  DELETE /v1/register   Bearer token required
  GET    /v1/discover?intent=URN   nodes heard from in the last 90 s
  GET    /v1/node/{id}  node detail; public_key is the gossip key

Bounded: at most MAX_NODES nodes, bodies up to MAX_BODY bytes, probes time
out after 5 s. Usage: directory-standin.py HOST PORT (an IPv6 HOST such as
"::" listens dual-stack).
"""

import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MAX_NODES = 1000
MAX_BODY = 1 << 20
LIVENESS_S = 90
NODES = {}
LOCK = threading.Lock()


def declared_reachable(body):
    nat = body.get("nat_type") or ""
    return nat not in ("", "none", "unknown") and bool(body.get("transport_method"))


def alive(endpoint):
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + "/iicp/health", timeout=5) as answer:
            return 200 <= answer.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Directory(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.answer(status, {"error": {"code": code, "message": message}})

    def body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None

    def token_owner(self, body):
        bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        node_id = (body or {}).get("node_id", "")
        with LOCK:
            node = NODES.get(node_id)
        return node_id if node and node["token"] == bearer else None

    def do_POST(self):
        body = self.body()
        if not isinstance(body, dict):
            return self.error(422, "validation_error", "body is not a JSON object")
        path = urlparse(self.path).path.removeprefix("/api")
        if path == "/v1/register":
            return self.register(body)
        if path == "/v1/heartbeat":
            node_id = self.token_owner(body)
            if node_id is None:
                return self.error(401, "unauthorized", "invalid node_token")
            with LOCK:
                NODES[node_id]["last_seen"] = time.time()
            return self.answer(200, {"ok": True, "next_heartbeat_ms": 5000})
        self.error(404, "not_found", "no such route")

    def register(self, body):
        endpoint, node_id = body.get("endpoint"), body.get("node_id") or str(uuid.uuid4())
        if not endpoint or not body.get("capabilities"):
            return self.error(422, "validation_error", "endpoint and capabilities required")
        if not declared_reachable(body) and not alive(endpoint):
            return self.error(422, "IICP-E036", "liveness check failed")
        with LOCK:
            if node_id not in NODES and len(NODES) >= MAX_NODES:
                return self.error(429, "IICP-E034", "directory full")
            NODES[node_id] = {
                "token": str(uuid.uuid4()),
                "endpoint": endpoint,
                "region": body.get("region", ""),
                "intents": [c.get("intent") for c in body["capabilities"]],
                "transport_method": body.get("transport_method"),
                "public_key": body.get("gossip_public_key"),
                "last_seen": time.time(),
            }
            token = NODES[node_id]["token"]
        self.answer(201, {"node_id": node_id, "node_token": token, "node_hmac_key": uuid.uuid4().hex})

    def do_DELETE(self):
        body = self.body()
        node_id = self.token_owner(body)
        if node_id is None:
            return self.error(401, "unauthorized", "invalid node_token")
        with LOCK:
            NODES.pop(node_id, None)
        self.answer(200, {"deregistered": True})

    def do_GET(self):
        url = urlparse(self.path)
        path = url.path.removeprefix("/api")
        now = time.time()
        if path == "/v1/discover":
            intent = parse_qs(url.query).get("intent", [""])[0]
            with LOCK:
                nodes = [
                    {"node_id": node_id, "endpoint": n["endpoint"], "region": n["region"],
                     "transport_method": n["transport_method"]}
                    for node_id, n in NODES.items()
                    if intent in n["intents"] and now - n["last_seen"] < LIVENESS_S
                ]
            return self.answer(200, {"nodes": nodes, "count": len(nodes)})
        if path.startswith("/v1/node/"):
            with LOCK:
                node = NODES.get(path.removeprefix("/v1/node/"))
            if node is None:
                return self.error(404, "not_found", "Node not found")
            return self.answer(200, {"node_id": path.removeprefix("/v1/node/"),
                                     "endpoint": node["endpoint"], "region": node["region"],
                                     "public_key": node["public_key"]})
        self.error(404, "not_found", "no such route")


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class DualStackServer(Server):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    server = (DualStackServer if ":" in host else Server)((host, port), Directory)
    print(f"directory stand-in listening on {host}:{port}", flush=True)
    server.serve_forever()
