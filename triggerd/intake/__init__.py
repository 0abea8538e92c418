"""Webhook intake: provider payloads in, neutral :mod:`triggerd.events` values out.

The web layer checks a delivery's signature or token with :mod:`triggerd.intake.signatures`,
then hands the headers, raw body and Content-Type to the provider's parser (one module per
provider: :mod:`.github`, :mod:`.gitlab`, :mod:`.bitbucket`, :mod:`.generic`), found here by
:class:`~triggerd.events.Provider`. Everything under this package is pure: it must never
import a web framework, asyncio, subprocess or a database, never do I/O, and never raise
anything but :mod:`triggerd.errors` types, whatever bytes and headers it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from triggerd.events import Event, Provider
from triggerd.intake import bitbucket, generic, github, gitlab

ParseAll = Callable[[Mapping[str, str], bytes, str], tuple[Event, ...]]
ParseOne = Callable[[Mapping[str, str], bytes, str], Event]
DeliveryId = Callable[[Mapping[str, str]], str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderParser:
    """One provider's entry points, as its module exposes them."""

    provider: Provider
    #: the header naming the event (None for Generic, whose URL says it all)
    event_header: str | None
    parse: ParseOne
    parse_all: ParseAll
    delivery_id: DeliveryId


PARSERS: Mapping[Provider, ProviderParser] = MappingProxyType(
    {
        Provider.GITHUB: ProviderParser(
            provider=Provider.GITHUB,
            event_header=github.EVENT_HEADER,
            parse=github.parse,
            parse_all=github.parse_all,
            delivery_id=github.delivery_id,
        ),
        Provider.GITLAB: ProviderParser(
            provider=Provider.GITLAB,
            event_header=gitlab.EVENT_HEADER,
            parse=gitlab.parse,
            parse_all=gitlab.parse_all,
            delivery_id=gitlab.delivery_id,
        ),
        Provider.BITBUCKET: ProviderParser(
            provider=Provider.BITBUCKET,
            event_header=bitbucket.EVENT_HEADER,
            parse=bitbucket.parse,
            parse_all=bitbucket.parse_all,
            delivery_id=bitbucket.delivery_id,
        ),
        Provider.GENERIC: ProviderParser(
            provider=Provider.GENERIC,
            event_header=generic.EVENT_HEADER,
            parse=generic.parse,
            parse_all=generic.parse_all,
            delivery_id=generic.delivery_id,
        ),
    }
)


def parse_all(
    provider: Provider, headers: Mapping[str, str], body: bytes, content_type: str
) -> tuple[Event, ...]:
    """Every event in one delivery (several only for a multi-ref Bitbucket push)."""
    return PARSERS[provider].parse_all(headers, body, content_type)


def parse(provider: Provider, headers: Mapping[str, str], body: bytes, content_type: str) -> Event:
    """The delivery's first event."""
    return PARSERS[provider].parse(headers, body, content_type)


def delivery_id(provider: Provider, headers: Mapping[str, str]) -> str | None:
    """The provider's delivery id header, for deduplication, before any parsing."""
    return PARSERS[provider].delivery_id(headers)


__all__ = ["PARSERS", "ProviderParser", "delivery_id", "parse", "parse_all"]
