"""Shared pieces of the reliability suite: signed push deliveries, a git "black hole" that
keeps a host build busy without using CPU, raw-socket HTTP for hostile clients, and readers
of a subprocess server's builds.

The black hole is how these tests keep builds from loading the machine without a special
setting: a BuildConfig whose git uri points at a socket that listens but never accepts
makes the first build's ``git fetch`` wait forever (one idle process), and every later build
stays New behind ``maxConcurrentBuilds: 1``. Closing the socket resets those connections,
so nothing outlives the test. Nothing here sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.e2e.server import API, TriggerdServer
from triggerd.intake import signatures

DATA = Path(__file__).parent.parent / "intake" / "data" / "github"
SECRET = "reliability-hook-secret-5a7c"
CONFIG = "app"


@contextmanager
def git_black_hole() -> Iterator[str]:
    """A ``git://`` URL whose server accepts connections (kernel backlog) and never speaks."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    try:
        yield f"git://127.0.0.1:{port}/never.git"
    finally:
        listener.close()


def buildconfig(uri: str, *, name: str = CONFIG, policy: str = "Parallel") -> dict[str, Any]:
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runPolicy": policy,
            "source": {"type": "Git", "git": {"uri": uri, "ref": "main"}},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": f"127.0.0.1:1/rel/{name}:latest"}},
            "triggers": [{"type": "GitHub", "github": {"secret": SECRET}}],
        },
    }


def commit_of(index: int) -> str:
    """A distinct 40-hex commit id per delivery, so its build can be found by revision."""
    return f"{index:08x}".rjust(40, "c")


def push_body(uri: str, index: int) -> bytes:
    """GitHub's own push example (octokit), aimed at ``uri``'s main branch, commit ``index``."""
    doc = json.loads((DATA / "push-branch-created.json").read_bytes())
    for key in ("html_url", "clone_url", "ssh_url", "git_url", "url"):
        doc["repository"][key] = uri
    doc["repository"]["default_branch"] = "main"
    doc["ref"] = "refs/heads/main"
    commit = commit_of(index)
    doc["after"] = commit
    for entry in (doc["head_commit"], *doc["commits"]):
        entry["id"] = commit
    return json.dumps(doc, separators=(",", ":")).encode()


def push_headers(body: bytes, delivery: str, *, secret: str = SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signatures.sign_github(body, secret),
    }


def all_builds(server: TriggerdServer, *, limit: int = 250) -> list[dict[str, Any]]:
    """Every stored build, read through the REST API page by page (limit/continue)."""
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        query = f"?limit={limit}" + (f"&continue={quote(token)}" if token else "")
        page = server.ok("GET", f"{API}/builds{query}")
        found.extend(page["items"])
        token = page["metadata"].get("continue") or ""
        if not token:
            return found


def revision(build: Mapping[str, Any]) -> str | None:
    value = ((build.get("spec") or {}).get("revision") or {}).get("git") or {}
    commit = value.get("commit")
    return str(commit) if commit else None


def number(build: Mapping[str, Any]) -> int:
    return int(build["metadata"]["annotations"]["openshift.io/build.number"])


@dataclass(frozen=True, slots=True)
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_reply(reader: asyncio.StreamReader) -> RawReply:
    """One HTTP/1.1 response (Content-Length or read-to-close bodies) from a raw socket."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return RawReply(status=status, headers=headers, body=body)


def request_head(
    method: str, path: str, port: int, headers: Mapping[str, str], *, length: int | None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Any]:
    """POST without an API token (webhooks authenticate themselves); status and JSON."""
    req = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
