"""Log lines that never carry request content: no body, no header value, no text an exception quoted from either.

The rule: at the default level, the only text a log line takes from a request is its uid and the object's
namespace/name, written by `identity` (cut short, escaped). Everything else in a line is the service's own fixed
vocabulary: counts, rule names, decisions, reasons from a closed set, the type of an exception and where in the code
it was raised. Admission requests carry whole pods (environment variables, annotations, sometimes credentials
someone put there); a denial's explanation, which quotes container names, annotation values and quantities, goes to
the user in the admission response, not to the log. Exception messages quote what they choke on (aiohttp's
`LineTooLong` quotes the request line, a `KeyError` names a key from the body), so only `DEBUG` adds the whole
exception, for someone debugging on purpose. The standard library alone: the node agent, which serves without
aiohttp, logs through it too (`gpuguard.web.serving.HTTP_LOG` applies the rule to aiohttp's lines).

Text that is not from a request but can still be long (a refused policy file's list of errors) goes through
`bounded`, so no log line grows with its input.
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


MAX_LINE = 4096
"""Characters of a long message (e.g. a policy's error list) one log record keeps."""


def identity(*, uid: object, namespace: object, name: object) -> str:
    """`uid=... namespace/name`: all a log line may carry from a request, each part cut short and escaped."""
    return f"uid={loggable(uid)} {loggable(namespace)}/{loggable(name)}"


def bounded(text: str, limit: int = MAX_LINE) -> str:
    """Text of our own making cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def stack_only(error: BaseException) -> str:
    """The exception's type and the code it went through, without its message."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    return f"{type(error).__name__} (message withheld: it may quote the request)\n{frames.rstrip()}"


def log_bug(logger: logging.Logger, message: str, *args: object, error: BaseException) -> None:
    """An unexpected exception: its stack at ERROR, the exception itself only at DEBUG."""
    logger.error(f"{message}: %s", *args, stack_only(error))
    logger.debug(message, *args, exc_info=error)
