"""Log lines that never carry request content: no body, no header value, no text an exception quoted from either.

Admission requests carry whole pods (environment variables, annotations, sometimes credentials someone put there),
and exception messages quote what they choke on: aiohttp's `LineTooLong` quotes the request line or a header value,
a `KeyError` names a key from the body. So at the default level the services log what happened (the exception's
type, where in the code, the request uid and object name, cut short and escaped), never an exception's message;
`DEBUG` adds the whole exception for someone debugging on purpose. The standard library alone: the node agent, which
serves without aiohttp, logs through it too (`gpuguard.web.serving.HTTP_LOG` applies the rule to aiohttp's lines).
"""

from __future__ import annotations

import logging
import traceback

MAX_FIELD = 256
"""Characters of one identifier (uid, namespace/name) a log line keeps."""


def loggable(text: object, limit: int = MAX_FIELD) -> str:
    """A request-supplied identifier made safe for one log line: cut short, control and non-ASCII characters escaped
    (a uid holding a newline must not forge a second line)."""
    value = str(text)
    cut = value[:limit].encode("unicode_escape").decode("ascii")
    return cut if len(value) <= limit else f"{cut}... ({len(value)} characters)"


def stack_only(error: BaseException) -> str:
    """The exception's type and the code it went through, without its message."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    return f"{type(error).__name__} (message withheld: it may quote the request)\n{frames.rstrip()}"


def log_bug(logger: logging.Logger, message: str, *args: object, error: BaseException) -> None:
    """An unexpected exception: its stack at ERROR, the exception itself only at DEBUG."""
    logger.error(f"{message}: %s", *args, stack_only(error))
    logger.debug(message, *args, exc_info=error)
