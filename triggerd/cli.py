"""The ``triggerd`` command: ``serve``, and oc-style client commands against a running server.

``serve`` loads the settings and hands over to :mod:`triggerd.server`. The client commands
(``apply``, ``get``, ``start-build``, ``logs``, ``cancel-build``) talk to the REST API with
aiohttp's client, authenticated with ``--token``/``TRIGGERD_TOKEN`` or the token file the
server generated in the data dir. Exit codes: 0 success, 1 a followed build did not complete,
2 usage or API errors (the server's Status message is printed as ``error: …``). The client
never imports the engine or the store: everything goes through HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
import yaml

from triggerd import errors, manifests, upload
from triggerd.model import meta as metas

DEFAULT_SERVER = "http://127.0.0.1:8080"
API = "/apis/build.openshift.io/v1"
TERMINAL = frozenset({"Complete", "Failed", "Error", "Cancelled"})
MERGE_PATCH = "application/merge-patch+json"
#: Server-owned metadata that ``apply`` ignores when it compares a file with the server.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_ERROR = 2


class CommandError(Exception):
    """Ends the command with ``error: <message>`` and exit code 2."""


class ApiError(CommandError):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


# Client -------------------------------------------------------------------------------------
class Client:
    """A thin REST client for one server and namespace."""

    def __init__(self, session: aiohttp.ClientSession, server: str, namespace: str) -> None:
        self.session = session
        self.server = server.rstrip("/")
        self.namespace = namespace

    def url(self, resource: str, name: str | None = None, sub: str | None = None) -> str:
        path = f"{self.server}{API}/namespaces/{quote(self.namespace, safe='')}/{resource}"
        if name is not None:
            path += "/" + quote(name, safe="")
        if sub is not None:
            path += "/" + sub
        return path

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body, default=str).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, params=params
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _api_error(response.status, text)
                return json.loads(text) if text else None
        except aiohttp.ClientConnectionError as e:
            raise CommandError(f"cannot reach triggerd at {self.server}: {e}") from e

    async def stream_log(self, name: str, *, follow: bool) -> None:
        """Copy the build's log to stdout (following it until the build ends)."""
        params = {"follow": "true"} if follow else {}
        url = self.url("builds", name, "log")
        out = sys.stdout.buffer
        try:
            async with self.session.get(
                url, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
            ) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.text())
                async for chunk in response.content.iter_any():
                    out.write(chunk)
                    out.flush()
        except aiohttp.ClientConnectionError as e:
            raise CommandError(f"cannot reach triggerd at {self.server}: {e}") from e


def _api_error(status: int, text: str) -> ApiError:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return ApiError(status, str(doc.get("message") or doc.get("reason")), doc.get("reason", ""))
    return ApiError(status, f"the server answered {status}: {text.strip()[:200]}")


# Commands -----------------------------------------------------------------------------------
async def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    try:
        documents = manifests.read_documents([Path(f) for f in args.filename])
    except errors.TriggerdError as e:
        raise CommandError(str(e)) from e
    failed = False
    for source, doc in documents:
        kind = doc.get("kind", "BuildConfig")
        if kind != "BuildConfig":
            print(f"warning: {source}: skipping {kind} (only BuildConfigs)", file=sys.stderr)
            continue
        try:
            print(await _apply_one(client, doc))
        except ApiError as e:
            failed = True
            print(f"error: {source}: {e}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


async def _apply_one(client: Client, doc: dict[str, Any]) -> str:
    metadata = dict(doc.get("metadata") or {})
    namespace = metadata.get("namespace") or client.namespace
    metadata["namespace"] = namespace
    doc = {**doc, "metadata": metadata}
    scoped = Client(client.session, client.server, namespace)
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        await scoped.call("POST", scoped.url("buildconfigs"), body=doc)  # the server says why
        return "buildconfig created"
    try:
        current = await scoped.call("GET", scoped.url("buildconfigs", name))
    except ApiError as e:
        if e.status != 404:
            raise
        await scoped.call("POST", scoped.url("buildconfigs"), body=doc)
        return f"buildconfig/{name} created"
    if _user_part(current) == _user_part(doc):
        return f"buildconfig/{name} unchanged"
    metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
    await scoped.call("PUT", scoped.url("buildconfigs", name), body=doc)
    return f"buildconfig/{name} configured"


def _user_part(doc: Mapping[str, Any]) -> Any:
    metadata = {
        k: v
        for k, v in (doc.get("metadata") or {}).items()
        if k not in SERVER_METADATA and v not in ({}, None)
    }
    # Round-trip through JSON so YAML-only types (dates) compare as the server stores them.
    return json.loads(json.dumps({"metadata": metadata, "spec": doc.get("spec")}, default=str))


RESOURCES = {
    "bc": "buildconfigs",
    "buildconfig": "buildconfigs",
    "buildconfigs": "buildconfigs",
    "build": "builds",
    "builds": "builds",
}


async def cmd_get(client: Client, args: argparse.Namespace) -> int:
    resource = RESOURCES[args.resource]
    if args.name:
        doc = await client.call("GET", client.url(resource, _strip_kind(args.name)))
        items = [doc]
    else:
        params = {"labelSelector": args.selector} if args.selector else None
        doc = await client.call("GET", client.url(resource), params=params)
        items = doc.get("items", [])
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(doc, sort_keys=False), end="")
    elif not items:
        print(f"No resources found in {client.namespace} namespace.", file=sys.stderr)
    elif resource == "builds":
        print(
            format_table(
                ["NAME", "TYPE", "FROM", "STATUS", "STARTED", "DURATION"], map(build_row, items)
            )
        )
    else:
        print(format_table(["NAME", "TYPE", "FROM", "LATEST"], map(buildconfig_row, items)))
    return EXIT_OK


def format_table(header: Sequence[str], rows: Any) -> str:
    table = [list(header), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    )


def buildconfig_row(doc: Mapping[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    return [
        doc.get("metadata", {}).get("name", ""),
        (spec.get("strategy") or {}).get("type", ""),
        (spec.get("source") or {}).get("type", ""),
        str((doc.get("status") or {}).get("lastVersion", 0)),
    ]


def build_row(doc: Mapping[str, Any], now: datetime | None = None) -> list[str]:
    spec = doc.get("spec") or {}
    status = doc.get("status") or {}
    source = (spec.get("source") or {}).get("type", "")
    commit = ((spec.get("revision") or {}).get("git") or {}).get("commit", "")
    phase = status.get("phase", "New")
    reason = status.get("reason", "")
    shown = f"{phase} ({reason})" if reason and phase in ("Failed", "Error", "Cancelled") else phase
    started = status.get("startTimestamp")
    duration = status.get("duration")
    return [
        doc.get("metadata", {}).get("name", ""),
        (spec.get("strategy") or {}).get("type", ""),
        f"{source}@{commit[:7]}" if commit else source,
        shown,
        _ago(started, now) if started else "",
        metas.format_duration(duration) if isinstance(duration, int) else "",
    ]


def _ago(timestamp: str, now: datetime | None) -> str:
    try:
        when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    seconds = max(seconds, 0)
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def _strip_kind(name: str) -> str:
    """Accept oc's ``build/NAME`` and ``bc/NAME`` spellings."""
    return name.split("/", 1)[1] if "/" in name else name


def _pairs(values: Sequence[str] | None) -> list[dict[str, str]]:
    return [dict(zip(("name", "value"), v.split("=", 1), strict=True)) for v in values or []]


async def _start_binary(client: Client, config: str, args: argparse.Namespace) -> Any:
    """Upload the build's input (a directory, file, archive or git commit) and start it."""
    try:
        status, text = await upload.start_binary(
            client.session,
            client.url("buildconfigs", config, "instantiatebinary"),
            from_dir=args.from_dir,
            from_file=args.from_file,
            from_archive=args.from_archive,
            from_repo=args.from_repo,
            commit=args.commit or "",
        )
    except upload.UploadError as e:
        raise CommandError(str(e)) from e
    if status >= 400:
        raise _api_error(status, text)
    return json.loads(text)


def _binary_source(args: argparse.Namespace) -> bool:
    return bool(args.from_dir or args.from_file or args.from_archive or args.from_repo)


def check_start_build(args: argparse.Namespace) -> str | None:
    """Why these start-build options cannot go together, or None. Nothing is dropped
    silently: instantiatebinary has no env or build args (OpenShift's
    BinaryBuildRequestOptions has none), and a clone builds its build's commit."""
    if bool(args.buildconfig) == bool(args.from_build):
        return "give a BUILDCONFIG or --from-build BUILD"
    if args.from_build and (_binary_source(args) or args.commit):
        return (
            "--from-build cannot be combined with --commit or --from-dir/--from-file/"
            "--from-archive/--from-repo: a clone builds the input of the build it clones"
        )
    if _binary_source(args) and (args.env or args.build_arg):
        return (
            "--env and --build-arg cannot be used with --from-dir/--from-file/--from-archive/"
            "--from-repo: a binary build takes them from its BuildConfig"
        )
    return None


async def cmd_start_build(client: Client, args: argparse.Namespace) -> int:
    target = _strip_kind(args.from_build or args.buildconfig)
    body: dict[str, Any] = {
        "kind": "BuildRequest",
        "apiVersion": "build.openshift.io/v1",
        "metadata": {"name": target},
    }
    if args.commit:
        body["revision"] = {"type": "Git", "git": {"commit": args.commit}}
    if args.env:
        body["env"] = _pairs(args.env)
    if args.build_arg:
        body["dockerStrategyOptions"] = {"buildArgs": _pairs(args.build_arg)}
    if args.from_build:
        # oc start-build --from-build: the server's clone of that build.
        body["triggeredBy"] = [{"message": "Manually triggered"}]
        build = await client.call("POST", client.url("builds", target, "clone"), body=body)
    elif _binary_source(args):
        build = await _start_binary(client, target, args)
    else:
        build = await client.call(
            "POST", client.url("buildconfigs", target, "instantiate"), body=body
        )
    name = build["metadata"]["name"]
    print(f"build/{name} started", flush=True)
    if not args.follow:
        return EXIT_OK
    await client.stream_log(name, follow=True)
    return await _outcome(client, name)


async def _outcome(client: Client, name: str) -> int:
    build = await client.call("GET", client.url("builds", name))
    status = build.get("status") or {}
    phase = status.get("phase", "")
    if phase == "Complete":
        return EXIT_OK
    if phase in TERMINAL:
        detail = status.get("message") or status.get("reason") or ""
        print(f"build/{name} {phase}" + (f": {detail}" if detail else ""), file=sys.stderr)
        return EXIT_BUILD_FAILED
    raise CommandError(f"the log stream ended while build/{name} is still {phase}")


async def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    await client.stream_log(_strip_kind(args.build), follow=args.follow)
    return EXIT_OK


async def cmd_cancel_build(client: Client, args: argparse.Namespace) -> int:
    for name in (_strip_kind(b) for b in args.builds):
        patch = {"status": {"cancelled": True}}
        await client.call("PATCH", client.url("builds", name), body=patch, content_type=MERGE_PATCH)
        print(f"build/{name} cancelled")
    return EXIT_OK


# Argument parsing ---------------------------------------------------------------------------
def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triggerd", description="Build trigger server speaking the OpenShift Build API."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", "-c", metavar="FILE", help="settings file (YAML)")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--server",
        default=os.environ.get("TRIGGERD_SERVER", DEFAULT_SERVER),
        help="server URL (env TRIGGERD_SERVER; default %(default)s)",
    )
    client.add_argument("--token", help="API token (env TRIGGERD_TOKEN; else <data-dir>/api-token)")
    client.add_argument(
        "--data-dir", help="where the server keeps its token file (env TRIGGERD_DATA_DIR)"
    )
    client.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")

    apply = commands.add_parser("apply", parents=[client], help="create or update BuildConfigs")
    apply.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR",
        help="YAML/JSON file or folder (repeatable)",
    )

    get = commands.add_parser("get", parents=[client], help="show BuildConfigs or Builds")
    get.add_argument("resource", choices=sorted(RESOURCES), metavar="bc|buildconfigs|builds|build")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=("yaml", "json"))
    get.add_argument("-l", "--selector", help="label selector, e.g. app=web")

    start = commands.add_parser(
        "start-build",
        parents=[client],
        help="start a build",
        description="Start a build of BUILDCONFIG, or a new build like BUILD (--from-build). "
        "The --from-* options upload the build's input (binary builds); the upload is kept, "
        "so --from-build re-runs a binary build without uploading again.",
    )
    start.set_defaults(usage_parser=start)
    start.add_argument("buildconfig", metavar="BUILDCONFIG", nargs="?")
    start.add_argument(
        "--from-build", metavar="BUILD", help="start a new build like BUILD (its clone)"
    )
    start.add_argument(
        "--commit",
        help="build this commit (with --from-dir/--from-file/--from-archive: recorded as the "
        "build's revision; with --from-repo: the commit archived)",
    )
    start.add_argument(
        "--env", "-e", action="append", type=_key_value, metavar="K=V",
        help="set a strategy environment variable (not with --from-*)",
    )  # fmt: skip
    start.add_argument(
        "--build-arg", action="append", type=_key_value, metavar="K=V",
        help="set a Docker build argument (not with --from-*)",
    )  # fmt: skip
    source = start.add_mutually_exclusive_group()
    source.add_argument(
        "--from-dir",
        metavar="DIR",
        help="upload DIR as the context (.git directories are left out; to send the "
        "repository, use --from-repo)",
    )
    source.add_argument("--from-file", metavar="FILE", help="upload FILE as the only file")
    source.add_argument("--from-archive", metavar="FILE", help="upload a tar, tar.gz or zip")
    source.add_argument("--from-repo", metavar="DIR", help="upload git archive of --commit (HEAD)")
    start.add_argument(
        "--follow",
        "-F",
        action="store_true",
        help="stream the log; exit 0 if the build completes, 1 otherwise",
    )

    logs = commands.add_parser("logs", parents=[client], help="print a build's log")
    logs.add_argument("build", metavar="BUILD")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the build ends")

    cancel = commands.add_parser("cancel-build", parents=[client], help="cancel builds")
    cancel.add_argument("builds", nargs="+", metavar="BUILD")
    return parser


CLIENT_COMMANDS = {
    "apply": cmd_apply,
    "get": cmd_get,
    "start-build": cmd_start_build,
    "logs": cmd_logs,
    "cancel-build": cmd_cancel_build,
}


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    token = args.token or environ.get("TRIGGERD_TOKEN")
    if token:
        return str(token)
    data_dir = Path(args.data_dir or environ.get("TRIGGERD_DATA_DIR") or "data")
    try:
        return (data_dir / "api-token").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


async def run_client(args: argparse.Namespace) -> int:
    token = resolve_token(args, os.environ)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        client = Client(session, args.server, args.namespace)
        return await CLIENT_COMMANDS[args.command](client, args)


def run_serve(args: argparse.Namespace) -> int:
    from triggerd import server, settings

    try:
        loaded = settings.load(args.config)
    except errors.Invalid as e:
        _fail(str(e))
    server.configure_logging(loaded.log_level)
    try:
        asyncio.run(server.serve(loaded))
    except errors.TriggerdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot serve on {loaded.listen}: {e}", file=sys.stderr)
        return 1
    return EXIT_OK


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "start-build":
        problem = check_start_build(args)
        if problem:
            # A usage error (exit 2 with the usage), as a missing argument is.
            args.usage_parser.error(problem)
    if args.command == "serve":
        return run_serve(args)
    try:
        return asyncio.run(run_client(args))
    except CommandError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        return 130
