"""A local stand-in for the Hugging Face Hub API, for testing ``push_to_hub`` / ``vljepa.load``
offline: a small HTTP server on 127.0.0.1 (a free port), model repos held in memory.

It answers only what huggingface_hub (2.x) calls for a model repo:

- ``POST /api/repos/create``                               create_repo (409 if it exists)
- ``POST /api/validate-yaml``                              create_commit checks README.md's YAML
- ``POST /api/models/{repo}/preupload/{rev}``              every file "regular" (no LFS, no Xet)
- ``POST /api/models/{repo}/commit/{rev}``                 NDJSON: header + base64 "file" ops
- ``GET  /api/models/{repo}[/revision/{rev}]``             repo info: sha, siblings
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``          the file listing (one page)
- ``HEAD|GET /{repo}/resolve/{rev}/{filename}``            X-Repo-Commit, ETag, Content-Length

Errors carry the ``X-Error-Code`` header the client maps to its exceptions (RepoNotFound,
RevisionNotFound, EntryNotFound). Writes need an ``Authorization: Bearer`` header. Anything else
is answered 404 and recorded in :attr:`HubStandIn.unhandled`, so a test can check that the client
asked for nothing the stand-in does not know. Every request is recorded in
:attr:`HubStandIn.requests` as ``(method, path)``.

Usage::

    with HubStandIn() as hub:          # serving on hub.url until the block ends
        env["HF_ENDPOINT"] = hub.url
        ...
        hub.files("owner/name")        # {path: bytes} at main
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """git's object id of a blob: what the Hub calls a regular file's oid (and huggingface_hub's
    ``sha.git_hash``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)  # oldest first
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid

    def commit_at(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.oid == oid), None)

    def add_commit(self, branch: str, summary: str, files: dict[str, bytes]) -> Commit:
        parent = self.branches.get(branch, "")
        oid = hashlib.sha1(json.dumps([self.repo_id, parent, summary, len(self.commits),
                                       sorted((p, git_blob_sha1(b)) for p, b in files.items())]
                                      ).encode()).hexdigest()
        commit = Commit(oid, summary, dict(files))
        self.commits.append(commit)
        self.branches[branch] = oid
        return commit


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class HubStandIn:
    """The server. ``start()`` / ``stop()``, or use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(self._address, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="hub-standin",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- what a test inspects ----

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch or commit oid)."""
        with self.lock:
            commit = self.repos[repo_id].commit_at(revision)
            assert commit is not None, f"no revision {revision!r} in {repo_id}"
            return dict(commit.files)

    def commits(self, repo_id: str) -> list[Commit]:
        with self.lock:
            return list(self.repos[repo_id].commits)

    # ---- the API ----

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.commit_at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def create_repo(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("type", "model") != "model":
            raise HubError(400, "the stand-in only has model repos")
        name, org = body.get("name"), body.get("organization")
        if not name or not org:
            raise HubError(400, "name and organization are required")
        repo_id = f"{org}/{name}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        repo = self.repos[repo_id] = Repo(repo_id, body.get("visibility") == "private")
        repo.add_commit("main", "initial commit", {".gitattributes": GITATTRIBUTES})
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    @staticmethod
    def validate_yaml(body: dict[str, Any]) -> tuple[int, Any]:
        import yaml  # PyYAML: a huggingface_hub dependency

        text = body.get("content", "")
        if text.startswith("---"):
            try:
                meta = yaml.safe_load(text.split("---", 2)[1])
            except (yaml.YAMLError, IndexError) as e:
                return 400, {"errors": [{"message": f"invalid YAML: {e}"}]}
            if meta is not None and not isinstance(meta, dict):
                return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def preupload(self, repo_id: str, revision: str, body: dict[str, Any]) -> tuple[int, Any]:
        repo = self._repo(repo_id)
        current = repo.commit_at(revision)
        files = current.files if current is not None else {}
        return 200, {"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
            for f in body["files"]]}

    def commit(self, repo_id: str, revision: str, lines: list[dict[str, Any]],
               query: dict[str, list[str]]) -> tuple[int, Any]:
        repo = self._repo(repo_id)
        if query.get("create_pr"):
            raise HubError(400, "the stand-in does not do pull requests")
        parent = self._commit(repo, revision)
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, parent.oid):
            raise HubError(412, "parentCommit is not the head of the branch")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unknown encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:  # lfsFile: never asked for, the preupload answer is "regular" for every file
                raise HubError(400, f"the stand-in does not take {key!r} operations")
        branch = revision if revision in repo.branches else None
        if branch is None:
            raise HubError(400, "commits go to a branch")
        commit = repo.add_commit(branch, header.get("summary", ""), files)
        return 200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                     "commitUrl": f"{self.url}/{repo_id}/commit/{commit.oid}"}

    def repo_info(self, repo_id: str, revision: str) -> tuple[int, Any]:
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        return 200, {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                     "sha": commit.oid, "private": repo.private, "disabled": False,
                     "gated": False, "tags": [], "library_name": None,
                     "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                     "siblings": [{"rfilename": p} for p in sorted(commit.files)]}

    def tree(self, repo_id: str, revision: str, path: str) -> tuple[int, Any]:
        commit = self._commit(self._repo(repo_id), revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries = [{"type": "file", "oid": git_blob_sha1(b), "size": len(b), "path": p}
                   for p, b in sorted(commit.files.items()) if p.startswith(prefix)]
        return 200, entries

    def resolve(self, repo_id: str, revision: str, filename: str
                ) -> tuple[bytes, dict[str, str]]:
        commit = self._commit(self._repo(repo_id), revision)
        if filename not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})
        data = commit.files[filename]
        return data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha1(data)}"',
                      "Content-Type": "application/octet-stream"}


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    timeout = 30  # an idle kept-alive connection is closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are recorded
        pass

    # ---- plumbing ----

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

    def _error(self, e: HubError, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": str(e), **e.headers}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._send(e.status, json.dumps({"error": str(e)}).encode(), headers, head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    # ---- routing ----

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        hub = self.hub
        with hub.lock:
            hub.requests.append((method, path))
        body = self._body()
        parts = [p for p in split.path.split("/") if p]  # still quoted: a revision may hold "/"
        head = method == "HEAD"
        try:
            with hub.lock:
                if method == "POST" and not self._authorized():
                    raise HubError(401, "Invalid credentials in Authorization header")
                if method == "POST" and path == "/api/repos/create":
                    return self._json(*hub.create_repo(json.loads(body)))
                if method == "POST" and path == "/api/validate-yaml":
                    return self._json(*hub.validate_yaml(json.loads(body)))
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
                    rest = [unquote(p) for p in parts[4:]]
                    if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                        return self._json(*hub.preupload(repo_id, rest[1], json.loads(body)))
                    if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                        lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                        return self._json(*hub.commit(repo_id, rest[1], lines, query))
                    if method == "GET" and not rest:
                        return self._json(*hub.repo_info(repo_id, "main"))
                    if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                        return self._json(*hub.repo_info(repo_id, rest[1]))
                    if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                        return self._json(*hub.tree(repo_id, rest[1], "/".join(rest[2:])))
                if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                    repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
                    data, headers = hub.resolve(repo_id, unquote(parts[3]),
                                                unquote("/".join(parts[4:])))
                    return self._send(200, data, headers, head)
                hub.unhandled.append((method, path))
                raise HubError(404, f"the stand-in does not serve {method} {path}")
        except HubError as e:
            return self._error(e, head)
        except (ValueError, KeyError) as e:  # a malformed request
            return self._error(HubError(400, f"bad request: {e!r}"), head)

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")
