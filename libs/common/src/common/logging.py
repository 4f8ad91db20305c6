"""structlog for every process: JSON lines in production, console in dev, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from itertools import islice
from typing import Any

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from common.tracing import current_span_id, current_trace_id

REDACTED = "[REDACTED]"
# Keys whose values never reach a log, wherever they sit in an event.
SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential"
    r"|signature|private[-_]?key|session[-_]?id|^x-internal-identity$",
    re.IGNORECASE,
)
# Secrets embedded in free text: bearer tokens, key-looking strings, key=value pairs, "the
# password is ...", credentials in URLs. Each finder runs on a lowercased copy of the text
# and captures the secret in its last group; `scrub_text` then replaces those spans of the
# original in one pass.
# Why this shape (attacker-controlled text reaches logs, e.g. a provider's error message):
# - Linear time. No quantifier can give back what it took (possessive, or followed by a
#   character it cannot match), and a match can start only where a literal occurs. The
#   regexes these replace retried a scheme-like run from every position in it: 0.68 s for
#   40 kB, a minute for 400 kB, on the event loop.
# - Fast in practice. A pattern that starts with a literal is searched for in C; one that
#   starts with `\b` or under re.IGNORECASE is tried at every position, 20-60 ms per MB each.
#   Lowercasing first (one C pass) lets every finder start with a literal, and the `\b`
#   before a keyword becomes a lookbehind after it. 1 MB of adversarial text takes < 50 ms
#   (libs/common/tests/test_logging.py).
# - Bounded Python work. Each secret found costs ~0.5 us of Python: past MAX_SECRETS of one
#   kind in one string (an attack, not a log line), the rest of the string is redacted whole.
MAX_SECRETS = 1000
_CREDENTIALS = r"[a-z0-9._~+/=-]++"  # what follows "Bearer "
_ASSIGNED = r"\"?\s*+[:=]\s*+\"?([^\s\"&,;]++)"  # password=x, "password": "x"
_STATED = r"\s++(?:is|was|of)\s++(\S++)"  # the password is x


def _word(keyword: str) -> str:
    """`keyword` at the start of a word (a `\\b` before it, checked once it matched)."""
    return rf"{keyword}(?<!\w{keyword})"


SECRET_FINDERS = [
    re.compile(rf"{_word('bearer')}\s++({_CREDENTIALS})"),
    re.compile(rf"{_word('basic')}\s++({_CREDENTIALS})"),
    re.compile(r"((?:sk|pk|hf|lp)(?<!\w..)[-_][a-z0-9_-]{12,}+)"),
    re.compile(rf"{_word('pass')}(?:word|wd)(?:{_ASSIGNED}|{_STATED})"),
    re.compile(rf"{_word('secret')}(?:{_ASSIGNED}|{_STATED})"),
    re.compile(rf"{_word('token')}(?:{_ASSIGNED}|{_STATED})"),
    re.compile(rf"{_word('api')}[-_]?key(?:{_ASSIGNED}|{_STATED})"),
    re.compile(rf"{_word('session')}{_ASSIGNED}"),
    re.compile(r"://[^:/@\s]*+:([^@/\s]++)@"),  # scheme://user:password@host
]


def scrub_text(text: str) -> str:
    """`text` with the secrets found in it replaced by [REDACTED], in linear time."""
    # Position for position the same as `text`: U+0130 is the one character whose
    # lowercase is two characters long.
    lowered = text.replace("\u0130", "I").lower()
    spans: list[tuple[int, int]] = []
    cut = len(text)  # where a text dense with secrets is cut (MAX_SECRETS)
    for finder in SECRET_FINDERS:
        found = [
            match.span(match.lastindex or 0)
            for match in islice(finder.finditer(lowered, 0, cut), MAX_SECRETS)
        ]
        if len(found) == MAX_SECRETS:
            cut = found[-1][1]
        spans += found
    if not spans:
        return text
    spans.sort()
    parts: list[str] = []
    end = 0
    for start, stop in spans:
        if start >= cut:
            break
        if start < end:  # overlaps the secret just replaced: widen that one
            end = max(end, stop)
            continue
        parts += (text[end:start], REDACTED)
        end = stop
    if cut < len(text):
        parts += (text[end:cut], REDACTED)  # the rest, redacted whole
    else:
        parts.append(text[end:])
    return "".join(parts)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Drop the values of sensitive keys and scrub secrets out of strings."""
    for key in list(event_dict):
        if key in ("exc_info", "_record", "_from_structlog"):
            continue
        event_dict[key] = _redact_item(key, event_dict[key])
    return event_dict


def _redact_item(key: Any, value: Any) -> Any:
    # Numbers stay: `prompt_tokens=12` is a count, not a secret.
    if (
        isinstance(key, str)
        and SENSITIVE_KEY.search(key)
        and not isinstance(value, bool | int | float | type(None))
    ):
        return REDACTED
    return redact_value(value)


def _redact_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Scrub the rendered exception (a string, or structured frames) like any other value."""
    if "exception" in event_dict:
        event_dict["exception"] = redact_value(event_dict["exception"])
    return event_dict


def _add_service(service: str) -> Processor:
    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add


def _add_trace(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    trace_id = current_trace_id()
    if trace_id:
        event_dict.setdefault("trace_id", trace_id)
        event_dict.setdefault("span_id", current_span_id())
    return event_dict


def configure_logging(service: str, *, level: str = "INFO", json: bool = False) -> None:
    """Route structlog and the standard library (uvicorn included) through one pipeline."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_service(service),
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace,
        redact,
    ]
    final: list[Processor]
    if json:
        # Frames without their local variables: a local may hold a secret under any name.
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        final = [
            structlog.processors.ExceptionRenderer(tracebacks),
            _redact_exception,
            structlog.processors.JSONRenderer(),
        ]
    else:
        final = [
            structlog.processors.format_exc_info,
            _redact_exception,
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            ),
        ]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level events before any work
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; send its records through ours instead.
    # Its access log is replaced by one structured line per request (common.middleware).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("uvicorn.error").addFilter(_drop_already_logged)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _drop_already_logged(record: logging.LogRecord) -> bool:
    """Starlette re-raises an exception after our handler has logged it (with the trace and
    request ids); uvicorn would log it a second time, without them."""
    exc = record.exc_info[1] if record.exc_info else None
    return not getattr(exc, "__logged__", False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever sys.stderr is now (test runners swap it), not what it was."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


# Uvicorn's own logging config would re-install its handlers; services pass this instead.
UVICORN_LOG_CONFIG: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}
