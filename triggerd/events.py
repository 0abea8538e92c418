"""Neutral webhook events: what a provider told us, in one shape for every provider.

The intake parsers (:mod:`triggerd.intake`) turn a GitHub, GitLab, Bitbucket or Generic
webhook body into these values; matching and planning read only these, never provider JSON.
The module holds plain frozen data and a few pure helpers: it must never import a web
framework, touch the network, the disk or the clock, and never know about BuildConfigs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: The all-zero object id git uses for "no commit" (a ref created from, or deleted to, nothing).
ZERO_SHA = "0" * 40


def is_zero_sha(value: str | None) -> bool:
    """True for git's "no commit" id in either object format (SHA-1 or SHA-256 lengths)."""
    return value is not None and value != "" and value.strip("0") == ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Person:
    """An author, committer or pusher as the payload names them (email may be empty)."""

    name: str
    email: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """One commit listed in a push; the file lists are empty where the provider omits them."""

    id: str
    message: str
    author: Person | None
    committer: Person | None
    added: tuple[str, ...]
    modified: tuple[str, ...]
    removed: tuple[str, ...]


class Provider(StrEnum):
    """Which webhook dialect an event came in (Gitea, Gogs and Forgejo speak GitHub's)."""

    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"
    GENERIC = "generic"


class RefKind(StrEnum):
    BRANCH = "branch"
    TAG = "tag"


@dataclass(frozen=True, slots=True, kw_only=True)
class GitPush:
    """One ref moved (created, updated or deleted) in one repository."""

    provider: Provider
    #: X-GitHub-Delivery / X-Gitlab-Event-UUID / X-Request-UUID / X-Request-Id
    delivery_id: str | None
    #: every URL the payload names for the repository (web, https clone, ssh, git)
    repository_urls: tuple[str, ...]
    #: the full ref: refs/heads/main, refs/tags/v1
    ref: str
    ref_kind: RefKind
    #: the short name: main, v1
    ref_name: str
    before: str | None
    #: the exact commit to build (GitLab's checkout_sha, not the last of commits[])
    after: str
    deleted: bool
    created: bool
    default_branch: str | None
    #: the commit ``after`` names, when the payload describes it
    head_commit: Commit | None
    commits: tuple[Commit, ...]
    pusher: Person | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """A provider checking that the hook is reachable; it never starts a build."""

    provider: Provider
    delivery_id: str | None
    repository_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericRevision:
    """One ``refs[]`` entry of a post-receive style Generic payload (git's fields merged in)."""

    ref: str | None
    commit: str | None
    author: Person | None
    committer: Person | None
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericTrigger:
    """OpenShift's GenericWebHookEvent; every field is optional (an empty body is valid).

    ``ref`` … ``message`` are what ``git`` names, or the first ``refs[]`` entry when ``git``
    has no ref; ``refs`` lists every entry in order when the payload used ``refs[]`` (and
    ``git.ref`` is absent), so matching can build the first one the trigger accepts.
    """

    delivery_id: str | None
    ref: str | None
    commit: str | None
    author: Person | None
    committer: Person | None
    message: str | None
    #: from the payload's ``env`` list, in order
    env: tuple[tuple[str, str], ...]
    #: ``dockerStrategyOptions.buildArgs``, in order
    build_args: tuple[tuple[str, str], ...]
    #: ``dockerStrategyOptions.noCache``; None when the payload does not say
    no_cache: bool | None
    #: ``git.uri`` when given
    repository_urls: tuple[str, ...]
    #: the post-receive ``refs[]`` entries, in payload order (empty when ``git.ref`` is set)
    refs: tuple[GenericRevision, ...] = ()


Event = GitPush | Ping | GenericTrigger


def changed_paths(push: GitPush) -> frozenset[str]:
    """Every path added, modified or removed by the commits the push lists."""
    paths: set[str] = set()
    for commit in push.commits:
        paths.update(commit.added)
        paths.update(commit.modified)
        paths.update(commit.removed)
    return frozenset(paths)
