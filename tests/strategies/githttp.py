"""A git smart-HTTP server with basic auth for tests: aiohttp in front of the real
``git http-backend`` CGI, serving the bare repositories of a directory."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from aiohttp import web

from tests.support.ports import free_port

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


class GitHttpServer:
    """``url(repo)`` → ``http://127.0.0.1:PORT/<repo>``; requests need ``user``/``password``."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.user = user
        self.password = password
        self.port = free_port()
        self.denied = 0
        self._runner: web.AppRunner | None = None

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            self.denied += 1
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Basic realm="git"'}, text="denied"
            )
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + request.match_info["path"],
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": self.user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        }
        body = await request.read()
        proc = await asyncio.create_subprocess_exec(
            HTTP_BACKEND, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return web.Response(status=status, body=payload, headers=headers)
