"""A small Hugging Face Hub stand-in on 127.0.0.1 for the real huggingface_hub client
(pointed at it through ``HF_ENDPOINT``): the endpoints that ``HfApi.model_info``,
``hf_hub_download``, ``create_repo``, ``create_branch`` and ``create_commit`` /
``upload_folder`` call, as huggingface_hub's source requests them, no more.

Read side: ``GET /api/models/{repo}/revision/{rev}`` (``sha`` + ``siblings``) and
``HEAD/GET /{repo}/resolve/{rev}/{file}`` (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``, ranges). Write side: ``POST /api/repos/create``,
``/api/models/{repo}/branch/{b}``, ``/preupload/{rev}`` (every file "regular": content travels
base64 in the commit, so no LFS / Xet server is needed), ``/commit/{rev}`` (NDJSON, optional
``create_pr``), ``/api/validate-yaml``. Errors carry the Hub's ``X-Error-Code`` headers
(RepoNotFound, RevisionNotFound, EntryNotFound), so the client raises its own classes.

Test hooks: :meth:`HubServer.publish` (a commit from a dict of files), ``revisions`` (delete
one to make it disappear), ``private`` + ``token`` (a private repository answers 401
without ``Authorization: Bearer <token>``; no token set: no check),
``cut`` (``{file: n}``: send ``n`` bytes of that file, then stop the server - a server killed
mid-download), ``delay`` (``{file: seconds}``: a slow download), ``requests`` (every request line, to prove that no network call was made).
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlsplit


class HubServer:
    def __init__(self) -> None:
        self.commits: Dict[str, Dict[str, Dict[str, bytes]]] = {}  # repo -> sha -> files
        self.revisions: Dict[str, Dict[str, str]] = {}  # repo -> branch/tag -> sha
        self.private: Dict[str, bool] = {}
        self.prs: List[dict] = []
        self.token: Optional[str] = None
        self.cut: Dict[str, int] = {}
        self.delay: Dict[str, float] = {}  # file -> seconds before its GET is answered
        self.requests: List[str] = []
        self._n = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ state
    def _new_sha(self, repo: str) -> str:
        self._n += 1
        return hashlib.sha1(f"{repo}/{self._n}".encode()).hexdigest()

    def publish(self, repo: str, files: Dict[str, bytes], revision: str = "main",
                base: Optional[str] = None) -> str:
        """A new commit of ``files`` (over ``base``'s files) on branch ``revision``."""
        self.revisions.setdefault(repo, {})
        self.commits.setdefault(repo, {})
        parent = dict(self.commits[repo].get(base, {})) if base else {}
        parent.update(files)
        sha = self._new_sha(repo)
        self.commits[repo][sha] = parent
        self.revisions[repo][revision] = sha
        return sha

    def resolve(self, repo: str, rev: str) -> Optional[str]:
        if rev in self.commits.get(repo, {}):
            return rev
        return self.revisions.get(repo, {}).get(rev)

    def files(self, repo: str, rev: str) -> Dict[str, bytes]:
        return self.commits[repo][self.resolve(repo, rev)]


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:  # quiet
            pass

        # -------------------------------------------------------------- helpers
        def _send(self, code: int, body: bytes = b"", headers: Optional[dict] = None,
                  ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Connection", "close")  # stop() really ends every connection
            self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj, headers: Optional[dict] = None) -> None:
            self._send(code, json.dumps(obj).encode(), headers)

        def _error(self, code: int, error_code: str, msg: str) -> None:
            self._json(code, {"error": msg}, {"X-Error-Code": error_code,
                                               "X-Error-Message": msg})

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _repo_ok(self, repo: str) -> bool:
            if repo not in hub.commits:
                self._error(404, "RepoNotFound", "Repository not found")
                return False
            auth = self.headers.get("Authorization", "")
            if hub.private.get(repo) and hub.token and auth != f"Bearer {hub.token}":
                self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
                return False
            return True

        # -------------------------------------------------------------- routes
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                return self._model_info(f"{parts[2]}/{parts[3]}", "/".join(parts[5:]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            self._error(404, "EntryNotFound", f"no route {self.path}")

        def _model_info(self, repo: str, rev: str) -> None:
            if not self._repo_ok(repo):
                return
            sha = hub.resolve(repo, rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            self._json(200, {"id": repo, "modelId": repo, "sha": sha,
                             "private": bool(hub.private.get(repo)),
                             "siblings": [{"rfilename": f} for f in sorted(hub.files(repo, sha))]})

        def _resolve(self, repo: str, rev: str, name: str) -> None:
            if not self._repo_ok(repo):
                return
            sha = hub.resolve(repo, rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = hub.files(repo, sha)
            if name not in files:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            data = files[name]
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            headers = {"X-Repo-Commit": sha, "ETag": etag, "X-Linked-Etag": etag,
                       "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes"}
            start = 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes=") and self.command == "GET":
                start = int(rng[6:].split("-")[0] or 0)
            if self.command == "GET" and name in hub.delay:
                time.sleep(hub.delay[name])
            if self.command == "GET" and name in hub.cut:
                return self._cut(data, headers, hub.cut[name])
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], headers, "application/octet-stream")
            self._send(200, data, headers, "application/octet-stream")

        def _cut(self, data: bytes, headers: dict, n: int) -> None:
            """Announce the whole file, send ``n`` bytes, then the server dies."""
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[:n])
            self.wfile.flush()
            self.close_connection = True
            threading.Thread(target=hub.stop, daemon=True).start()

        def do_POST(self) -> None:
            hub.requests.append(f"POST {self.path}")
            split = urlsplit(self.path)
            parts = [unquote(p) for p in split.path.strip("/").split("/")]
            query = parse_qs(split.query)
            body = self._body()
            if parts == ["api", "validate-yaml"]:
                return self._json(200, {"errors": [], "warnings": []})
            if parts == ["api", "repos", "create"]:
                return self._create(json.loads(body))
            if parts[:2] != ["api", "models"] or len(parts) < 6:
                return self._error(404, "EntryNotFound", f"no route {self.path}")
            repo, action, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            if not self._repo_ok(repo):
                return
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                   "shouldIgnore": False} for f in files]})
            if action == "branch":
                if rev in hub.revisions[repo]:
                    return self._error(409, "BranchExists", "Reference already exists")
                hub.revisions[repo][rev] = hub.revisions[repo].get("main") or \
                    hub.publish(repo, {".gitattributes": b""})
                return self._json(200, {})
            if action == "commit":
                return self._commit(repo, rev, body, "1" in query.get("create_pr", []))
            self._error(404, "EntryNotFound", f"no route {self.path}")

        def _create(self, req: dict) -> None:
            repo = f"{req.get('organization') or 'user'}/{req['name']}"
            if self.headers.get("Authorization", "") != f"Bearer {hub.token}" and hub.token:
                return self._error(401, "Unauthorized", "Invalid credentials")
            if repo in hub.commits:
                return self._json(409, {"error": "You already created this model repo",
                                        "url": f"{hub.url}/{repo}"})
            hub.publish(repo, {".gitattributes": b""})
            hub.private[repo] = req.get("visibility") == "private" or bool(req.get("private"))
            self._json(200, {"url": f"{hub.url}/{repo}", "name": repo})

        def _commit(self, repo: str, rev: str, body: bytes, create_pr: bool) -> None:
            items = [json.loads(line) for line in body.splitlines() if line.strip()]
            base = hub.resolve(repo, rev)
            if base is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = dict(hub.commits[repo][base])
            for it in items:
                v = it["value"]
                if it["key"] == "file":
                    files[v["path"]] = base64.b64decode(v["content"])
                elif it["key"] == "deletedFile":
                    files.pop(v["path"], None)
            target = f"refs/pr/{len(hub.prs) + 1}" if create_pr else rev
            sha = hub.publish(repo, files, revision=target)
            pr_url = None
            if create_pr:
                pr_url = f"{hub.url}/{repo}/discussions/{len(hub.prs) + 1}"
                hub.prs.append({"ref": target, "sha": sha})
            self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": pr_url})

    return Handler
