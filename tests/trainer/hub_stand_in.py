"""A stand-in for the Hugging Face Hub on 127.0.0.1: what ``HfApi.create_repo`` and ``upload_folder`` call.

There is no network here, so ``radforge export --push-to-hub`` is tested against this server, as
s3fs is tested against moto. It speaks what huggingface_hub 0.36's upload flow sends and checks it:

- ``POST /api/repos/create``: a model repo (``{"name", "organization", "type", "private"}``); 409 if it
  exists (``exist_ok`` goes on).
- ``POST /api/validate-yaml``: a README's metadata block must be a YAML mapping.
- ``POST /api/models/{repo}/preupload/{revision}``: the upload mode per file: ``lfs`` for
  ``*.safetensors`` and files of 10 MB or more (the Hub's default ``.gitattributes`` and size rule),
  ``regular`` otherwise.
- ``POST /{repo}.git/info/lfs/objects/batch``: the Git LFS batch API (``basic`` transfer, never
  ``xet``): an upload and a verify action per object not stored yet.
- ``PUT /lfs/{oid}``: the object itself; refused unless its sha256 is ``oid`` (what the Hub's
  storage checks); ``POST /lfs-verify/{oid}``: 200 once it is stored.
- ``POST /api/models/{repo}/commit/{revision}``: the NDJSON commit: a header, ``file`` (base64)
  and ``lfsFile`` (an oid uploaded before, of the stated size) lines; the files land under
  ``root/REPO/`` and the commit is recorded.

Every ``/api`` and LFS batch call needs ``Authorization: Bearer TOKEN`` (401 otherwise); the LFS
``PUT`` and verify URLs are the pre-signed kind and carry none. Anything else is answered 404 and
recorded in :attr:`HubStandIn.unhandled`, so a test fails if the client's flow changes. Not covered:
Xet storage, multipart LFS, pull requests, deletions, copies, ``.gitignore`` handling, downloads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

USER = "radforge-tester"
LFS_MIN_BYTES = 10 * 1024 * 1024
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Commit:
    """One commit the stand-in accepted."""

    repo_id: str
    summary: str
    files: dict[str, str]  # path -> "regular" or "lfs"


@dataclass
class HubStandIn:
    """The server's state: repos, LFS objects, commits, and every call it answered (method, path)."""

    root: Path
    token: str
    url: str = ""
    repos: dict[str, bool] = field(default_factory=dict)  # repo id -> private
    objects: dict[str, bytes] = field(default_factory=dict)  # LFS oid (sha256 hex) -> bytes
    commits: list[Commit] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    unhandled: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def repo_files(self, repo_id: str) -> dict[str, bytes]:
        """Every file of the repo as committed: relative path -> bytes."""
        base = self.root / repo_id
        return {
            p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
        }


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        """Quiet: the test reads :attr:`HubStandIn.calls` instead."""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, obj: Any = None) -> None:
        data = json.dumps(obj if obj is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.hub.token}":
            return True
        self._send(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        self._route("PUT")

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._route("GET")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        body = self._body()
        with self.hub.lock:
            self.hub.calls.append((method, path))
        routes: list[tuple[str, str, Callable[..., None]]] = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            ("POST", r"/lfs-verify/(?P<oid>[0-9a-f]{64})", self._lfs_verify),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self._commit),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                handler(body, **match.groupdict())
                return
        with self.hub.lock:
            self.hub.unhandled.append((method, path))
        self._send(404, {"error": f"the Hub stand-in does not implement {method} {path}"})

    def _create_repo(self, body: bytes) -> None:
        if not self._authorised():
            return
        req = json.loads(body)
        if req.get("type") not in (None, "model"):
            self._send(400, {"error": "only model repos"})
            return
        repo_id = f"{req.get('organization') or USER}/{req['name']}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                self._send(
                    409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"}
                )
                return
            self.hub.repos[repo_id] = bool(req.get("private"))
        self._send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, body: bytes) -> None:
        if not self._authorised():
            return
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if match is not None and not isinstance(yaml.safe_load(match.group(1)), dict):
            self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []})
            return
        self._send(200, {"errors": [], "warnings": []})

    def _known_repo(self, repo: str) -> bool:
        if repo in self.hub.repos:
            return True
        self._send(404, {"error": f"Repository Not Found for {repo}"})
        return False

    def _preupload(self, body: bytes, *, repo: str, rev: str) -> None:
        if not (self._authorised() and self._known_repo(repo)):
            return
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["path"].endswith(".safetensors") or f["size"] >= LFS_MIN_BYTES
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            )
        self._send(200, {"files": files, "commitOid": "0" * 40})

    def _lfs_batch(self, body: bytes, *, repo: str) -> None:
        if not (self._authorised() and self._known_repo(repo)):
            return
        req = json.loads(body)
        objects = []
        for obj in req["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.objects:  # stored ones need no upload (no actions)
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{obj['oid']}", "header": {}},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, body: bytes, *, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            self._send(400, {"error": "content does not match its oid"})
            return
        with self.hub.lock:
            self.hub.objects[oid] = body
        self._send(200)

    def _lfs_verify(self, body: bytes, *, oid: str) -> None:
        self._send(200 if oid in self.hub.objects else 404)

    def _commit(self, body: bytes, *, repo: str, rev: str) -> None:
        if not (self._authorised() and self._known_repo(repo)):
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            self._send(400, {"error": "a commit starts with its header"})
            return
        writes: dict[str, tuple[bytes, str]] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value.get("encoding") == "base64":
                writes[value["path"]] = (base64.b64decode(value["content"]), "regular")
            elif line["key"] == "lfsFile":
                data = self.hub.objects.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    self._send(
                        400, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"}
                    )
                    return
                writes[value["path"]] = (data, "lfs")
            else:
                self._send(
                    400, {"error": f"the Hub stand-in does not implement commit lines of key {line['key']}"}
                )
                return
        for path, (data, _) in writes.items():
            target = self.hub.root / repo / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        oid = hashlib.sha1(body, usedforsecurity=False).hexdigest()
        with self.hub.lock:
            self.hub.commits.append(
                Commit(repo, lines[0]["value"]["summary"], {p: m for p, (_, m) in writes.items()})
            )
        self._send(200, {"commitUrl": f"{self.hub.url}/{repo}/commit/{oid}", "commitOid": oid})


class HubServer:
    """The stand-in on an ephemeral 127.0.0.1 port, served from a thread (a context manager)."""

    def __init__(self, root: Path, *, token: str) -> None:
        self.hub = HubStandIn(root=root, token=token)
        handler = type("Handler", (_Handler,), {"hub": self.hub})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
