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
from types import MappingProxyType, ModuleType

from triggerd.events import Event, Provider
from triggerd.intake import bitbucket, generic, github, gitlab
from triggerd.intake._payload import lower_keys as lower_keys

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

    @classmethod
    def of(cls, provider: Provider, module: ModuleType) -> ProviderParser:
        return cls(
            provider=provider,
            event_header=module.EVENT_HEADER,
            parse=module.parse,
            parse_all=module.parse_all,
            delivery_id=module.delivery_id,
        )


PARSERS: Mapping[Provider, ProviderParser] = MappingProxyType(
    {
        provider: ProviderParser.of(provider, module)
        for provider, module in (
            (Provider.GITHUB, github),
            (Provider.GITLAB, gitlab),
            (Provider.BITBUCKET, bitbucket),
            (Provider.GENERIC, generic),
        )
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
