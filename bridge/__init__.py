"""evbridge: run in-process event handlers, then publish notification events to brokers.

The public API for handler authors and embedders::

    from bridge import Bus, Event, Context, Depends, on, StopChain, Skip
"""

from importlib.metadata import PackageNotFoundError, version

from bridge.bus import Bus, current_bus
from bridge.config import Config, load_config, parse_config
from bridge.errors import (
    BridgeError,
    ConfigError,
    InvalidEvent,
    MaxDepthExceeded,
    NoRoute,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    TemplateError,
)
from bridge.event import Event
from bridge.handlers import Context, Handler, HandlerRegistry, Skip, StopChain, on
from bridge.inject import Depends
from bridge.resources import resource
from bridge.results import Delivery, EmitResult, ErrorInfo, HandlerOutcome
from bridge.signature import HandlerSignatureError
from bridge.typed import EventData

try:
    __version__ = version("evbridge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BridgeError",
    "Bus",
    "Config",
    "ConfigError",
    "Context",
    "Delivery",
    "Depends",
    "EmitResult",
    "ErrorInfo",
    "Event",
    "EventData",
    "Handler",
    "HandlerOutcome",
    "HandlerRegistry",
    "HandlerSignatureError",
    "InvalidEvent",
    "MaxDepthExceeded",
    "NoRoute",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "Skip",
    "StopChain",
    "TemplateError",
    "__version__",
    "current_bus",
    "load_config",
    "on",
    "parse_config",
    "resource",
]
