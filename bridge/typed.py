"""Typed events: an event class declares its type once.

```python
class InviteAccepted(bridge.EventData, type="invite.accepted"):
    user_id: int

@on(InviteAccepted)                        # registers for "invite.accepted"
async def add(data: InviteAccepted) -> None: ...

await bus.emit(InviteAccepted(user_id=7))  # builds the envelope
```

An `EventData` class is a msgspec Struct (any Struct options, ``frozen=True``
and the like, go next to ``type=``); ``kind=`` makes its events ``domain``
events (default ``notification``). ``@on(cls)`` registers for ``cls``'s type
with ``data=cls``, so the handler's ``data`` (or a parameter annotated
``cls``) is the decoded instance; ``bus.emit``, ``bus.emit_many``,
``ctx.emit`` and ``bus.send`` take an instance and build the `Event` (its
``data`` the instance as builtins); ``bus.subscription(cls)`` subscribes to the
type. Routing stays by exact type.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from bridge.event import KINDS, Event, Kind


class EventMeta(msgspec.StructMeta):
    """Takes ``type=`` and ``kind=`` in the class statement (the rest goes to msgspec)."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        type: str | None = None,  # the keyword users write; shadows the builtin here
        kind: Kind | None = None,
        **options: Any,
    ) -> EventMeta:
        cls = super().__new__(mcls, name, bases, namespace, **options)
        if type is not None:
            if not isinstance(type, str) or not type:
                raise TypeError(f"{name}: type= must be a non-empty string, got {type!r}")
            cls.__event_type__ = type  # type: ignore[attr-defined]
        if kind is not None:
            if kind not in KINDS:
                raise TypeError(f"{name}: kind= must be one of {', '.join(KINDS)}; got {kind!r}")
            cls.__event_kind__ = kind  # type: ignore[attr-defined]
        return cls


class EventData(msgspec.Struct, metaclass=EventMeta):
    """The base of typed events: ``class X(EventData, type="x.happened"): field: int``."""

    __event_type__: ClassVar[str | None] = None
    __event_kind__: ClassVar[Kind] = "notification"


def event_type(cls: type[EventData]) -> str:
    """The type ``cls`` declared; a TypeError naming it when it declared none."""
    declared = cls.__event_type__
    if declared is None:
        raise TypeError(
            f"{cls.__qualname__} declares no event type: class {cls.__name__}(EventData, "
            'type="...")'
        )
    return declared


def pattern_of(pattern: str | type[EventData]) -> tuple[str, type[Any] | None]:
    """A handler or subscription pattern, and the data type a typed event class implies."""
    if isinstance(pattern, type) and issubclass(pattern, EventData):
        return event_type(pattern), pattern
    return pattern, None


def to_event(event: Event | EventData) -> Event:
    """``event`` itself, or the envelope of a typed event instance."""
    if isinstance(event, EventData):
        cls = type(event)
        return Event(type=event_type(cls), kind=cls.__event_kind__, data=msgspec.to_builtins(event))
    return event
