"""HMAC signatures and shared tokens: accepted, refused, and never leaking the secret."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triggerd.errors import BadSignature
from triggerd.intake.signatures import (
    sign_github,
    tokens_equal,
    verify_bitbucket_server,
    verify_gitea,
    verify_github,
    verify_github_headers,
    verify_token,
)

from .payloads import raw

SECRET = "It's a Secret to Everybody"
BODY = b"Hello, World!"
# GitHub's documented test vector for "Validating webhook deliveries".
GITHUB_VECTOR = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def _sha1(body: bytes, secret: str) -> str:
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def _hex(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_sign_github_matches_githubs_documented_vector() -> None:
    assert sign_github(BODY, SECRET) == GITHUB_VECTOR
    assert sign_github(BODY, SECRET.encode()) == GITHUB_VECTOR


@pytest.mark.parametrize(
    "value",
    [
        GITHUB_VECTOR,
        GITHUB_VECTOR.upper().replace("SHA256=", "sha256="),
        f"  {GITHUB_VECTOR}  ",
        GITHUB_VECTOR.replace("sha256", "SHA256"),
    ],
)
def test_verify_github_accepts_a_good_signature(value: str) -> None:
    verify_github(BODY, value, SECRET)


def test_verify_github_accepts_a_real_fixture_signed_with_its_secret() -> None:
    body = raw("github/push-many-commits.json")
    verify_github(body, sign_github(body, SECRET), SECRET)


@pytest.mark.parametrize(
    ("body", "value", "message"),
    [
        (BODY, None, "X-Hub-Signature-256 is missing"),
        (BODY, "", "X-Hub-Signature-256 is missing"),
        (BODY, "   ", "X-Hub-Signature-256 is missing"),
        (BODY + b" ", GITHUB_VECTOR, "X-Hub-Signature-256 does not match the body"),
        (BODY, "sha256=" + "0" * 64, "X-Hub-Signature-256 does not match the body"),
        (BODY, "sha256=", "X-Hub-Signature-256 does not match the body"),
        (BODY, "sha256=zz\u00e9", "X-Hub-Signature-256 does not match the body"),
        (BODY, GITHUB_VECTOR[7:], "X-Hub-Signature-256 is not of the form sha256=<hex digest>"),
        (BODY, _sha1(BODY, SECRET), "SHA-1 is not accepted"),
        (BODY, "md5=abc", "only sha256 is accepted"),
    ],
)
def test_verify_github_refuses(body: bytes, value: str | None, message: str) -> None:
    with pytest.raises(BadSignature, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        verify_github(body, value, SECRET)
    assert SECRET not in str(exc.value)


def test_verify_github_refuses_a_signature_made_with_another_secret() -> None:
    with pytest.raises(BadSignature, match="does not match"):
        verify_github(BODY, sign_github(BODY, "other"), SECRET)


def test_an_empty_configured_secret_accepts_nothing() -> None:
    forged = "sha256=" + hmac.new(b"", BODY, hashlib.sha256).hexdigest()
    with pytest.raises(BadSignature, match="no webhook secret is configured"):
        verify_github(BODY, forged, "")
    with pytest.raises(BadSignature, match="no webhook secret is configured"):
        verify_token("", "")
    assert tokens_equal("", "") is False


class TestVerifyGithubHeaders:
    def test_uses_x_hub_signature_256_in_any_case(self) -> None:
        verify_github_headers(BODY, {"x-hub-signature-256": GITHUB_VECTOR}, SECRET)
        verify_github_headers(BODY, {"X-HUB-SIGNATURE-256": GITHUB_VECTOR}, SECRET)

    def test_prefers_sha256_when_both_are_sent(self) -> None:
        headers = {"X-Hub-Signature": _sha1(BODY, SECRET), "X-Hub-Signature-256": GITHUB_VECTOR}
        verify_github_headers(BODY, headers, SECRET)

    def test_refuses_a_delivery_signed_only_with_sha1(self) -> None:
        with pytest.raises(BadSignature) as exc:
            verify_github_headers(BODY, {"X-Hub-Signature": _sha1(BODY, SECRET)}, SECRET)
        message = str(exc.value)
        assert "X-Hub-Signature-256 is missing" in message
        assert "SHA-1" in message and "not accepted" in message
        assert SECRET not in message

    def test_refuses_an_unsigned_delivery(self) -> None:
        with pytest.raises(BadSignature, match=r"^X-Hub-Signature-256 is missing$"):
            verify_github_headers(BODY, {"X-GitHub-Event": "push"}, SECRET)

    @pytest.mark.parametrize(
        "name", ["X-Gitea-Signature", "X-Gogs-Signature", "X-Forgejo-Signature"]
    )
    def test_accepts_the_gitea_familys_bare_hex_signature(self, name: str) -> None:
        verify_github_headers(BODY, {name: _hex(BODY, SECRET)}, SECRET)
        with pytest.raises(BadSignature, match=f"{name} does not match the body"):
            verify_github_headers(BODY + b"!", {name: _hex(BODY, SECRET)}, SECRET)

    def test_a_bad_sha256_is_not_rescued_by_a_good_gitea_signature(self) -> None:
        headers = {
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
            "X-Gitea-Signature": _hex(BODY, SECRET),
        }
        with pytest.raises(BadSignature, match="X-Hub-Signature-256 does not match"):
            verify_github_headers(BODY, headers, SECRET)


def test_verify_gitea() -> None:
    verify_gitea(BODY, _hex(BODY, SECRET), SECRET)
    with pytest.raises(BadSignature, match="X-Gitea-Signature is missing"):
        verify_gitea(BODY, None, SECRET)


class TestBitbucketServer:
    def test_accepts_sha256(self) -> None:
        verify_bitbucket_server(BODY, "sha256=" + _hex(BODY, SECRET), SECRET)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (None, "X-Hub-Signature is missing"),
            ("sha256=" + "1" * 64, "X-Hub-Signature does not match the body"),
            (_sha1(BODY, SECRET), "SHA-1 is not accepted"),
        ],
    )
    def test_refuses(self, value: str | None, message: str) -> None:
        with pytest.raises(BadSignature, match=message) as exc:
            verify_bitbucket_server(BODY, value, SECRET)
        assert SECRET not in str(exc.value)


class TestTokens:
    def test_equal_tokens_pass(self) -> None:
        verify_token("s3cr3t-t0ken", "s3cr3t-t0ken")
        verify_token("s3cr3t-t0ken", b"s3cr3t-t0ken")
        verify_token("caf\u00e9", "caf\u00e9")
        assert tokens_equal("abc", "abc")

    @pytest.mark.parametrize(
        ("given", "message"),
        [
            (None, "X-Gitlab-Token is missing"),
            ("", "X-Gitlab-Token is missing"),
            ("s3cr3t-t0ke", "X-Gitlab-Token does not match"),
            ("S3CR3T-T0KEN", "X-Gitlab-Token does not match"),
            ("s3cr3t-t0ken ", "X-Gitlab-Token does not match"),
            ("\u00e9\ud800", "X-Gitlab-Token does not match"),
        ],
    )
    def test_other_tokens_fail_without_naming_the_secret(
        self, given: str | None, message: str
    ) -> None:
        with pytest.raises(BadSignature, match=f"^{message}$") as exc:
            verify_token(given, "s3cr3t-t0ken")
        assert "s3cr3t" not in str(exc.value)

    def test_the_header_name_is_the_callers(self) -> None:
        with pytest.raises(BadSignature, match=r"^the secret in the URL does not match$"):
            verify_token("x", "y", name="the secret in the URL")


def test_verification_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    verify_github(BODY, GITHUB_VECTOR, SECRET)
    verify_token("a", "a")
    verify_bitbucket_server(BODY, "sha256=" + _hex(BODY, SECRET), SECRET)
    assert len(calls) == 3


@given(body=st.binary(max_size=256), secret=st.text(min_size=1, max_size=32))
def test_a_signature_verifies_its_own_body_and_no_other(body: bytes, secret: str) -> None:
    signature = sign_github(body, secret)
    verify_github(body, signature, secret)
    with pytest.raises(BadSignature):
        verify_github(body + b"\x00", signature, secret)


@given(value=st.text(max_size=200), secret=st.text(min_size=8, max_size=32))
def test_any_header_value_is_refused_cleanly_and_never_echoes_the_secret(
    value: str, secret: str
) -> None:
    try:
        verify_github(BODY, value, secret)
    except BadSignature as exc:
        assert secret not in str(exc)


@pytest.mark.parametrize("size", [0, 1, 2046, 2047, 2048, 4094, 4095, 7700, 300 * 1024])
def test_sliced_hashing_equals_hashing_the_body_at_once(size: int) -> None:
    """Bodies are hashed in slices (keeping the GIL); the digest must not change."""
    body = bytes(i % 251 for i in range(size))
    expected = "sha256=" + hmac.new(b"s3cr3t", body, hashlib.sha256).hexdigest()
    assert sign_github(body, "s3cr3t") == expected
    verify_github(body, expected, "s3cr3t")
