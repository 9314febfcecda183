"""Structured JSON logs that cannot carry secrets by accident.

Every log line is one JSON object: ``ts``, ``level``, ``logger``, ``event`` and the event's
fields (a field with one of those names is written as ``field_<name>``: the log level is never
overwritten). Code logs through :func:`log_event`, which applies two rules before anything is
formatted:

* a field whose *name* suggests secret material (``payload``, ``share``, ``secret``,
  ``passphrase``, ``key`` other than ``key_id``...) is replaced by ``"[redacted]"``;
* a ``bytes`` value is never printed raw: identifiers (``*_id`` fields) are shown as hex, any
  other bytes only as their length. Payloads can contain private protocol messages (shares
  sent to one party), so "it is only a payload" is exactly how shares end up in log archives.

Exception messages from the protocol and storage layers are written not to contain secrets
(see ``protocol/errors.py``), so ``reason`` strings are safe to log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

# gRPC's C core writes log lines of its own to stderr (a port it cannot bind, a refused
# handshake): they break a JSON log stream and turn a one-line error into several. It reads
# this variable once, when grpc is first imported, so the node CLI (which every daemon's entry
# point imports before anything that imports grpc) imports this module first. An operator's
# own GRPC_VERBOSITY (ERROR, DEBUG) still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

SECRET_MARKERS = ("payload", "share", "secret", "passphrase", "password", "private", "nonce", "presignature_data",
                  "signature_bytes", "key_pem", "seed", "mnemonic")
SAFE_NAMES = {"key_id", "presig_id", "presignature_id", "aux_id", "public_key", "identity_public_key"}


def _sanitize(name: str, value: Any) -> Any:
    lowered = name.lower()
    if lowered not in SAFE_NAMES and (
        any(marker in lowered for marker in SECRET_MARKERS) or lowered == "key" or lowered.endswith("_key")
    ):
        return "[redacted]"
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if lowered.endswith("_id") or lowered in SAFE_NAMES:
            return raw.hex()
        return f"<{len(raw)} bytes>"
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_sanitize(name, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _sanitize(str(k), v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# The keys every line has (and ``exception``, added for a logged exception): a field of an
# event never replaces them. ``level`` is the log level, never a security level.
RESERVED_KEYS = frozenset({"ts", "level", "logger", "event", "exception"})


def _field_name(name: str) -> str:
    """``name``, or ``field_<name>`` for a reserved key (repeated until it is free)."""
    while name in RESERVED_KEYS:
        name = f"field_{name}"
    return name


def log_event(logger: logging.Logger, level: int, event: str, /, exc_info: Any = None, **fields: Any) -> None:
    """Log ``event`` with sanitized structured ``fields``. A field named like one of the
    line's own keys (:data:`RESERVED_KEYS`) is renamed ``field_<name>``, so it can never
    overwrite the log level, time, logger or event. ``exc_info`` is passed to the logger (the
    formatter prints the exception's type and message, never a traceback)."""
    if logger.isEnabledFor(level):
        clean = {_field_name(k): _sanitize(k, v) for k, v in fields.items()}
        logger.log(level, event, exc_info=exc_info, extra={"fp_fields": clean})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name, value in getattr(record, "fp_fields", {}).items():
            doc[_field_name(name)] = value  # fields passed some other way cannot overwrite either
        if record.exc_info and record.exc_info[0] is not None:
            # The type and message only: tracebacks print local variables in some handlers.
            doc["exception"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(doc, default=str, separators=(",", ":"))


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Route the ``fusion_prime`` loggers to one JSON handler (idempotent)."""
    root = logging.getLogger("fusion_prime")
    for handler in list(root.handlers):
        if getattr(handler, "_fp_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._fp_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    root.propagate = True
    return handler


def internal_error(exc: BaseException) -> str:
    """What an unexpected exception may say in a log or an audit record: its type and where it
    was raised - never its message, which could carry a value (a share, a nonce) that a
    careless ``raise ValueError(f"...{x}")`` put there."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}{where}"
