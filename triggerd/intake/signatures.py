"""Webhook authenticity checks: HMAC-SHA256 signatures and shared tokens, in constant time.

The web layer calls these before a body reaches a parser: GitHub (and Gitea, Gogs, Forgejo)
sign the raw body into ``X-Hub-Signature-256``, Bitbucket Data Center into
``X-Hub-Signature``, and GitLab, URL secrets and bearer tokens send a shared token. Every
comparison goes through :func:`hmac.compare_digest`. Failures raise
:class:`~triggerd.errors.BadSignature` (401) whose message names the header and never the
secret, the expected digest or anything derived from the secret. SHA-1 is refused outright.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from triggerd.errors import BadSignature
from triggerd.intake._payload import header, lower_keys

GITHUB_HEADER = "X-Hub-Signature-256"
#: GitHub's legacy SHA-1 signature; its presence alone only earns a clearer refusal.
GITHUB_SHA1_HEADER = "X-Hub-Signature"
#: Gitea, Gogs and Forgejo also sign with a bare hex SHA-256 digest in these headers.
GITEA_HEADERS = ("X-Gitea-Signature", "X-Forgejo-Signature", "X-Gogs-Signature")
BITBUCKET_SERVER_HEADER = "X-Hub-Signature"
GITLAB_TOKEN_HEADER = "X-Gitlab-Token"  # noqa: S105 (a header name, not a secret)
#: hashlib lets go of the GIL while hashing 2,048 bytes or more. For a webhook-sized body
#: that costs more than the hashing: the store's writer thread takes the GIL, and the event
#: loop waits to get it back (the intake bench measured 5-10 % more deliveries per second
#: with the GIL held). Bodies up to _HOLD_GIL_BYTES are fed in slices below that threshold;
#: larger ones are hashed in a worker thread anyway, where letting go is right.
_SLICE = 2047
_HOLD_GIL_BYTES = 256 * 1024


def _bytes(value: str | bytes) -> bytes:
    # surrogatepass: a header decoded leniently may hold lone surrogates; never crash on them.
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def _key(secret: str | bytes) -> bytes:
    key = _bytes(secret)
    if not key:
        # An empty key would make every forger's signature valid.
        raise BadSignature("no webhook secret is configured for this trigger")
    return key


def _hex_digest(body: bytes, secret: str | bytes) -> str:
    if len(body) > _HOLD_GIL_BYTES:
        return hmac.new(_key(secret), body, hashlib.sha256).hexdigest()
    mac = hmac.new(_key(secret), None, hashlib.sha256)
    view = memoryview(body)
    for start in range(0, len(view), _SLICE):
        mac.update(view[start : start + _SLICE])
    return mac.hexdigest()


def _same(given: str | bytes, expected: str | bytes) -> bool:
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold anything.
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def sign_github(body: bytes, secret: str | bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for ``body`` (tests, benchmarks)."""
    return "sha256=" + _hex_digest(body, secret)


def _verify_prefixed(body: bytes, value: str | None, secret: str | bytes, name: str) -> None:
    expected = _hex_digest(body, secret)
    if value is None or not value.strip():
        raise BadSignature(f"{name} is missing")
    algorithm, sep, digest = value.strip().partition("=")
    if not sep:
        raise BadSignature(f"{name} is not of the form sha256=<hex digest>")
    algorithm = algorithm.strip().lower()
    if algorithm == "sha1":
        raise BadSignature(f"{name} carries a SHA-1 signature; SHA-1 is not accepted, use sha256")
    if algorithm != "sha256":
        # The sender's text is not echoed: it could be anything, even a pasted secret.
        raise BadSignature(f"{name} names another algorithm; only sha256 is accepted")
    if not _same(digest.strip().lower(), expected):
        raise BadSignature(f"{name} does not match the body")


def verify_github(body: bytes, header_value: str | None, secret: str | bytes) -> None:
    """Check an ``X-Hub-Signature-256: sha256=<hex>`` value against the raw body."""
    _verify_prefixed(body, header_value, secret, GITHUB_HEADER)


def verify_gitea(
    body: bytes, header_value: str | None, secret: str | bytes, *, name: str = GITEA_HEADERS[0]
) -> None:
    """Check a bare hex HMAC-SHA256 digest, as Gitea, Gogs and Forgejo send it."""
    expected = _hex_digest(body, secret)
    if header_value is None or not header_value.strip():
        raise BadSignature(f"{name} is missing")
    if not _same(header_value.strip().lower(), expected):
        raise BadSignature(f"{name} does not match the body")


def verify_github_headers(body: bytes, headers: Mapping[str, str], secret: str | bytes) -> None:
    """Verify a GitHub-style delivery from its headers, whichever signature header it carries.

    ``X-Hub-Signature-256`` wins; Gogs sends only ``X-Gogs-Signature``; a delivery signed
    only with SHA-1 (``X-Hub-Signature``) is refused with a message that says why.
    """
    lowered = lower_keys(headers)
    signature = header(lowered, GITHUB_HEADER)
    if signature is not None:
        verify_github(body, signature, secret)
        return
    for name in GITEA_HEADERS:
        bare = header(lowered, name)
        if bare is not None:
            verify_gitea(body, bare, secret, name=name)
            return
    _key(secret)
    if header(lowered, GITHUB_SHA1_HEADER) is not None:
        raise BadSignature(
            f"{GITHUB_HEADER} is missing; the delivery is signed only with SHA-1 "
            f"({GITHUB_SHA1_HEADER}), and SHA-1 is not accepted"
        )
    raise BadSignature(f"{GITHUB_HEADER} is missing")


def verify_bitbucket_server(body: bytes, header_value: str | None, secret: str | bytes) -> None:
    """Check Bitbucket Data Center's ``X-Hub-Signature: sha256=<hex>`` against the raw body."""
    _verify_prefixed(body, header_value, secret, BITBUCKET_SERVER_HEADER)


def tokens_equal(given: str | None, expected: str | bytes) -> bool:
    """Constant-time equality of a presented token and the configured one (never empty)."""
    if not expected or given is None:
        return False
    return _same(given, expected)


def verify_token(
    given: str | None, expected: str | bytes, *, name: str = GITLAB_TOKEN_HEADER
) -> None:
    """Check a shared token (GitLab's ``X-Gitlab-Token``, a URL secret, a bearer token)."""
    if not expected:
        raise BadSignature("no webhook secret is configured for this trigger")
    if given is None or given == "":
        raise BadSignature(f"{name} is missing")
    if not tokens_equal(given, expected):
        raise BadSignature(f"{name} does not match")
