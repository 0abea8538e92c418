"""``POST .../buildconfigs/{name}/instantiatebinary``: start a binary build from an upload.

The body is the build context as a tar (plain, gzip, bzip2 or xz) or zip stream, or with
``?asFile=NAME`` one file. It is streamed to a temporary file under the data directory
(never held in memory), capped at maxBinarySize (413), checked with
:func:`triggerd.planning.archives.scan` (400 naming the offending path), then kept
content-addressed at ``<dataDir>/uploads/sha256/<hex>`` and referred to from the Build by
annotation, so re-running the build (``builds/{name}/clone``) uses the same input. Without
``asFile`` in the query, the BuildConfig's ``source.binary.asFile`` decides. The
``revision.*`` query parameters become the Build's ``spec.revision`` as in OpenShift's
BinaryBuildRequestOptions.

The route table :data:`ROUTES` is wired by the composition root; domain errors are mapped
to statuses by the web error middleware. Never logs or echoes the upload's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from triggerd import errors
from triggerd.model import requests, specs
from triggerd.planning import archives
from triggerd.web import ENGINE, SETTINGS
from triggerd.web.api import GROUPS, group_of, namespace_of
from triggerd.web.openapi import Endpoint, Param, Reply

_CHUNK = 1024 * 1024
_QUERY = (
    Param(name="asFile", description="Store the body as this one file instead of unpacking."),
    Param(name="revision.commit", description="Commit id recorded in spec.revision."),
    Param(name="revision.message", description="Commit message recorded in spec.revision."),
    Param(name="revision.authorName", description="Commit author name."),
    Param(name="revision.authorEmail", description="Commit author e-mail."),
    Param(name="revision.committerName", description="Committer name."),
    Param(name="revision.committerEmail", description="Committer e-mail."),
)
BODY_TYPES = (
    "application/octet-stream",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/zip",
)


def parse_revision(query: dict[str, str]) -> specs.SourceRevision | None:
    """OpenShift's revision.* query parameters, or None when none is given; BadRequest for
    a commit that is not a commit id (it is what the image's labels and env will say)."""
    commit = query.get("revision.commit", "")
    message = query.get("revision.message", "")
    author = specs.SourceControlUser(
        name=query.get("revision.authorName", ""), email=query.get("revision.authorEmail", "")
    )
    committer = specs.SourceControlUser(
        name=query.get("revision.committerName", ""),
        email=query.get("revision.committerEmail", ""),
    )
    if not (commit or message or author.name or author.email or committer.name or committer.email):
        return None
    if commit and not (
        4 <= len(commit) <= 64 and all(c in "0123456789abcdefABCDEF" for c in commit)
    ):
        raise errors.BadRequest(
            f"query parameter revision.commit={commit[:80]!r} must be a hexadecimal commit id"
        )
    return specs.SourceRevision(
        commit=commit,
        message=message,
        author=author if author.name or author.email else None,
        committer=committer if committer.name or committer.email else None,
    )


async def instantiate_binary(request: web.Request) -> web.Response:
    """Store the upload, check it, start a build of the BuildConfig with it."""
    namespace = namespace_of(request)
    name = request.match_info["name"]
    engine = request.app[ENGINE]
    settings = request.app[SETTINGS]
    query = dict(request.query)
    as_file = query.get("asFile", "")
    if as_file:
        try:
            archives.check_file_name(as_file)
        except archives.UnsafeArchive as e:
            raise errors.BadRequest(f"query parameter asFile: {e}") from e
    revision = parse_revision(query)
    config = await engine.store.get_buildconfig(namespace, name)
    binary_source = config.spec.source.binary
    if binary_source is None:
        raise errors.BadRequest(
            f'BuildConfig "{name}" does not have binary source (spec.source.binary); '
            "use instantiate instead"
        )
    if not as_file and binary_source.as_file:
        # The BuildConfig's binary.asFile applies when the request names no file of its own.
        try:
            as_file = archives.check_file_name(binary_source.as_file)
        except archives.UnsafeArchive as e:
            raise errors.BadRequest(f"spec.source.binary.asFile: {e}") from e
    limits = archives.limits_for(settings)
    data_dir = settings.data_dir.resolve()
    digest, temporary = await _receive(request, data_dir, limits.max_size)
    try:
        if not as_file:
            try:
                await asyncio.to_thread(archives.scan, temporary, limits)
            except archives.UnsafeArchive as e:
                raise errors.BadRequest(f"unsafe upload: {e}") from e
        await asyncio.to_thread(_keep, temporary, archives.upload_path(data_dir, digest))
    finally:
        await asyncio.to_thread(_discard, temporary)
    annotations = {archives.INPUT_ANNOTATION: digest}
    if as_file:
        annotations[archives.AS_FILE_ANNOTATION] = as_file
    build_request = requests.BuildRequest(revision=revision, annotations=annotations)
    build = await engine.instantiate(namespace, name, build_request)
    doc = build.to_dict()
    doc["apiVersion"] = f"{group_of(request)}/v1"
    return web.json_response(doc, status=201)


async def _receive(request: web.Request, data_dir: Path, max_size: int) -> tuple[str, Path]:
    """Stream the body to a temporary file: (``sha256:<hex>``, path). 413 over the cap."""
    if request.content_length is not None and request.content_length > max_size:
        raise errors.PayloadTooLarge(
            f"upload of {request.content_length} bytes exceeds maxBinarySize ({max_size} bytes)"
        )
    out, path = await asyncio.to_thread(_open_incoming, data_dir)
    hasher = hashlib.sha256()
    size = 0
    try:
        with out:
            while chunk := await request.content.read(_CHUNK):
                size += len(chunk)
                if size > max_size:
                    raise errors.PayloadTooLarge(f"upload exceeds maxBinarySize ({max_size} bytes)")
                hasher.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        if size == 0:
            raise errors.BadRequest("the upload is empty")
    except BaseException:
        await asyncio.to_thread(_discard, path)
        raise
    return f"sha256:{hasher.hexdigest()}", path


def _open_incoming(data_dir: Path) -> tuple[BinaryIO, Path]:
    incoming = data_dir / archives.UPLOADS_DIR / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=incoming, prefix="upload-")
    return os.fdopen(fd, "wb"), Path(name)


def _keep(temporary: Path, stored: Path) -> None:
    stored.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, stored)


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _routes() -> list[Endpoint]:
    return [
        Endpoint(
            method="POST",
            path=f"/apis/{group}/v1/namespaces/{{namespace}}/buildconfigs/{{name}}"
            "/instantiatebinary",
            handler=instantiate_binary,
            operation_id="instantiateBinaryBuildConfig"
            + ("" if group == GROUPS[0] else "_" + group.split(".")[0]),
            summary="Start a binary build from an uploaded tar, tar.gz or zip (or one file).",
            tag="buildconfigs",
            query=_QUERY,
            body_types=BODY_TYPES,
            body_required=True,
            responses={
                201: Reply(description="The Build.", schema="Build"),
                400: Reply(description="Unsafe or unreadable upload; the message names the path."),
                404: Reply(description="No such BuildConfig."),
                413: Reply(description="Upload over maxBinarySize."),
            },
        )
        for group in GROUPS
    ]


ROUTES: list[Endpoint] = _routes()
