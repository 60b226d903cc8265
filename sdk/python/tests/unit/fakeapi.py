"""A scripted API conversation for the SDK's unit tests: an in-process
HTTP server that answers the few requests the SDK makes the way the
apiserver and Fast Sandbox's access server answer them (watch streams
replayed from a resourceVersion, WebSocket exec in the channel protocol,
files, logs, metav1.Status errors). It tests the SDK's own transport and
state handling; the real cluster is the e2e suite's.

Behaviour is chosen by name: the sandbox's image decides its fate
(``ok``, ``missing``, ``crash``, ``oom``, ``full``), the ``sh -c`` script
the command's, and a sandbox named ``secret`` refuses everyone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024


def status(code: int, message: str, reason: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def exit_status(code: int, message: str = "") -> bytes:
    if code == 0:
        return b"\x03" + json.dumps({"metadata": {}, "status": "Success"}).encode()
    body = {
        "metadata": {},
        "status": "Failure",
        "message": message or f"command terminated with non-zero exit code: {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }
    return b"\x03" + json.dumps(body).encode()


class State:
    """Sandboxes, their event log, files and what the exec side saw."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.files: dict[str, bytes] = {}
        self.stdin_seen: list[bytes] = []
        self.queries: list[list[tuple[str, str]]] = []
        self.watches = 0
        #: Refusals left per sandbox, as an access server whose cache lags answers.
        self.stale: dict[str, int] = {}
        self.closing = False

    def emit(self, kind: str, obj: dict[str, Any]) -> None:
        with self.cond:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if kind == "DELETED":
                self.objects.pop(obj["metadata"]["name"], None)
            else:
                self.objects[obj["metadata"]["name"]] = obj
            self.events.append((self.rv, kind, obj))
            self.cond.notify_all()

    def create(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        name = meta.get("name") or meta["generateName"] + uuid.uuid4().hex[:5]
        obj = {
            **body,
            "metadata": {**meta, "name": name, "namespace": ns, "uid": str(uuid.uuid4())},
        }
        obj["metadata"].pop("generateName", None)
        self.emit("ADDED", obj)
        created: dict[str, Any] = json.loads(json.dumps(self.objects[name]))
        image = body["spec"]["image"]
        fates: dict[str, list[dict[str, Any]]] = {
            "ok": [
                {"phase": "Bound", "reason": "Creating"},
                {
                    "phase": "Running",
                    "reason": "Started",
                    "containerID": "c1",
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Started"}],
                },
            ],
            "missing": [
                {
                    "phase": "Failed",
                    "reason": "ImageNotPresent",
                    "message": "image missing is not present on node n1",
                }
            ],
            "crash": [
                {
                    "phase": "Failed",
                    "reason": "StartError",
                    "message": "exec: /nope: no such file or directory",
                }
            ],
            "oom": [
                {
                    "phase": "Failed",
                    "reason": "OOMKilled",
                    "exitCode": 137,
                    "message": "exited with code 137",
                }
            ],
            "full": [
                {
                    "phase": "Pending",
                    "reason": "NoCapacity",
                    "message": "no ready agent of pool p has a free slot",
                }
            ],
        }
        for st in fates.get(image, []):
            cur = json.loads(json.dumps(self.objects[name]))
            cur["status"] = st
            self.emit("MODIFIED", cur)
        return created

    def fail_sandbox(self, name: str, reason: str, code: int) -> None:
        with self.cond:
            cur = json.loads(json.dumps(self.objects[name]))
        cur["status"] = {
            "phase": "Failed",
            "reason": reason,
            "exitCode": code,
            "message": f"exited with code {code}",
            "conditions": [{"type": "Ready", "status": "False", "reason": reason}],
        }
        self.emit("MODIFIED", cur)

    def delete(self, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get(name)
        if obj is None:
            return None
        self.emit("DELETED", obj)
        return obj


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    # --- plumbing ---------------------------------------------------------

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send_json(self, code: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fail(self, code: int, message: str, reason: str) -> None:
        self.send_json(code, status(code, message, reason))

    def chunks(self, parts: Iterator[bytes], content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for p in parts:
            if p:
                self.wfile.write(f"{len(p):x}\r\n".encode() + p + b"\r\n")
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    # --- routes -----------------------------------------------------------

    def route(self) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:
        u = urlsplit(self.path)
        pairs = parse_qsl(u.query, keep_blank_values=True)
        return u.path.strip("/").split("/"), dict(pairs), pairs

    def do_GET(self) -> None:
        parts, q, pairs = self.route()
        st = self.server.state
        if parts[:3] == ["apis", "subresources.sandbox.fast.io", "v1alpha1"]:
            return self.access(parts, q, pairs)
        if parts[-1] == "sandboxes":
            if q.get("watch") == "true":
                return self.watch(int(q.get("resourceVersion") or 0))
            with st.cond:
                items = list(st.objects.values())
                return self.send_json(
                    200, {"items": items, "metadata": {"resourceVersion": str(st.rv)}}
                )
        name = parts[-1]
        with st.cond:
            obj = st.objects.get(name)
        if obj is None:
            return self.fail(404, f'sandboxes.sandbox.fast.io "{name}" not found', "NotFound")
        self.send_json(200, obj)

    def do_POST(self) -> None:
        parts, q, pairs = self.route()
        if parts[:3] == ["apis", "subresources.sandbox.fast.io", "v1alpha1"]:
            return self.access(parts, q, pairs)
        body = json.loads(self.body())
        ns = parts[parts.index("namespaces") + 1]
        name = body["metadata"].get("name")
        if name and name in self.server.state.objects:
            return self.fail(
                409, f'sandboxes.sandbox.fast.io "{name}" already exists', "AlreadyExists"
            )
        self.send_json(201, self.server.state.create(ns, body))

    def do_PUT(self) -> None:
        parts, q, pairs = self.route()
        self.access(parts, q, pairs)

    def do_DELETE(self) -> None:
        parts, q, pairs = self.route()
        if parts[:3] == ["apis", "subresources.sandbox.fast.io", "v1alpha1"]:
            return self.access(parts, q, pairs)
        self.body()
        obj = self.server.state.delete(parts[-1])
        if obj is None:
            return self.fail(404, f'sandboxes.sandbox.fast.io "{parts[-1]}" not found', "NotFound")
        self.send_json(200, obj)

    def watch(self, since: int) -> None:
        st = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with st.cond:
            st.watches += 1
            st.cond.notify_all()
        sent = since
        while True:
            with st.cond:
                while not st.closing and not any(rv > sent for rv, _, _ in st.events):
                    st.cond.wait()
                if st.closing:
                    return
                batch = [(rv, k, o) for rv, k, o in st.events if rv > sent]
            for rv, kind, obj in batch:
                line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                try:
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                except OSError:
                    return
                sent = rv

    # --- the access API ---------------------------------------------------

    def access(self, parts: list[str], q: dict[str, str], pairs: list[tuple[str, str]]) -> None:
        name, sub = parts[-2], parts[-1]
        st = self.server.state
        if name == "secret":
            self.body()
            return self.fail(
                403,
                f'sandboxes.subresources.sandbox.fast.io "{name}" is forbidden: User "mallory" '
                f'cannot create resource "sandboxes/{sub}"',
                "Forbidden",
            )
        with st.cond:
            known = name in st.objects
            phase = (st.objects.get(name, {}).get("status") or {}).get("phase")
        if phase == "Failed":
            # As the access server answers when the agent says the
            # sandbox's process does not run.
            self.body()
            return self.fail(
                409,
                f"sandbox {name} is not running: it finished with exit code 137 (OOMKilled)",
                "Conflict",
            )
        if st.stale.get(name):
            st.stale[name] -= 1
            self.body()
            return self.fail(
                409,
                f"sandbox {name} is Bound on agent a-1: its container does not exist yet",
                "Conflict",
            )
        if not known:
            self.body()
            return self.fail(
                404, f'sandboxes.subresources.sandbox.fast.io "{name}" not found', "NotFound"
            )
        if sub == "exec":
            st.queries.append(pairs)
            return self.exec(q, pairs)
        if sub == "log":
            return self.chunks(iter([b"line one\n", b"line ", b"two\n", b"tail"]))
        path, op = q.get("path", ""), q.get("op", "")
        if self.command == "PUT":
            data = self.body()
            st.files[path] = data
            return self.send_json(200, self.info(path, len(data), int(q.get("mode", "644"), 8)))
        if self.command == "DELETE":
            st.files.pop(path, None)
            return self.send_json(200, self.info(path, 0, 0o644))
        if self.command == "POST":
            return self.send_json(200, self.info(path, 0, 0o755, "directory"))
        if op == "list":
            items = [
                self.info(p, len(d), 0o644)
                for p, d in sorted(st.files.items())
                if p.rsplit("/", 1)[0] == path.rstrip("/")
            ]
            return self.send_json(200, {"items": items})
        if path not in st.files:
            return self.fail(404, f"{path}: no such file or directory", "NotFound")
        if op == "stat":
            return self.send_json(200, self.info(path, len(st.files[path]), 0o644))
        data = st.files[path]
        self.chunks(
            (data[i : i + CHUNK] for i in range(0, len(data), CHUNK)), "application/octet-stream"
        )

    @staticmethod
    def info(path: str, size: int, mode: int, kind: str = "file") -> dict[str, Any]:
        return {
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "type": kind,
            "size": size,
            "mode": mode,
            "modifiedAt": "2026-01-01T00:00:00Z",
        }

    # --- WebSocket exec ---------------------------------------------------

    def exec(self, q: dict[str, str], pairs: list[tuple[str, str]]) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        proto = "v5.channel.k8s.io" if "v5.channel.k8s.io" in offered else "v4.channel.k8s.io"
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", proto)
        self.end_headers()
        self.wfile.flush()
        argv = [v for k, v in pairs if k == "command"]
        script = argv[-1]
        send = self.ws_send
        try:
            if script == "echo hi; exit 3":
                send(b"\x01hi\n")
                send(exit_status(3))
            elif script == "cat":
                while True:
                    msg = self.ws_recv()
                    if msg is None or msg == b"\xff\x00":
                        break
                    self.server.state.stdin_seen.append(msg[1:])
                    send(b"\x01" + msg[1:])
                send(exit_status(0))
            elif script == "ticks":
                for i in (1, 2, 3):
                    send(f"\x01{i}\n".encode())
                send(b"\x02done\n")
                send(exit_status(0))
            elif script.startswith("big "):
                n = int(script.split()[1])
                for _ in range(n):
                    send(b"\x01" + b"x" * (CHUNK - 1))
                send(exit_status(0))
            elif script == "utf":
                snow = "☃".encode()
                send(b"\x01a" + snow[:1])
                send(b"\x01" + snow[1:] + b"b")
                send(exit_status(0))
            elif script == "slow":
                send(b"\x01partial\n")
                send(exit_status(124, f"killed after the timeout of {q['timeoutSeconds']}s"))
            elif script == "hang":
                self.ws_recv()
            elif script == "cut":
                send(
                    b"\x03"
                    + json.dumps(
                        {
                            "status": "Failure",
                            "reason": "InternalError",
                            "message": "the exec was cut off",
                        }
                    ).encode()
                )
            elif script == "env":
                env = ",".join(v for k, v in pairs if k == "env")
                send(f"\x01{env} {q.get('workingDir', '')}\n".encode())
                send(exit_status(0))
            else:
                send(b"\x02" + f"{argv[0]}: command not found\n".encode())
                send(exit_status(127, f"{argv[0]}: command not found"))
            self.ws_close()
        except OSError:
            pass
        self.close_connection = True

    def ws_send(self, payload: bytes, opcode: int = 2) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def ws_close(self) -> None:
        self.ws_send(struct.pack("!H", 1000), opcode=8)

    def ws_recv(self) -> bytes | None:
        """One data message from the client; ``None`` once it closes."""
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return None
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if opcode == 8:
                return None
            if opcode in (1, 2):
                return data


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = State()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.state.cond:
            self.state.closing = True
            self.state.cond.notify_all()
        self.shutdown()
        self.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
