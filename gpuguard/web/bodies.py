"""Read a request body, or say in fixed words why it cannot be read: the one reader every service's handlers use.

A body can fail to arrive as JSON text in several ways a client controls: it is larger than the service accepts
(declared, chunked or after decompression), its `Content-Encoding` is one we do not speak or does not decode
(garbage, a truncated stream, data after the compressed stream), its chunked framing is broken or it stops short
of its `Content-Length`, it trickles in slower than the body timeout, or the client goes away. Each becomes an
`UnreadableBody` with an HTTP status (413, 415, 400, 408) and a message that quotes nothing from the request, and
each service turns that into its protocol's answer in one place. Nothing here raises anything else for a body.

Decompression is done here rather than by aiohttp (the servers run with `auto_decompress=False`): aiohttp's own
decoder raises from inside its parser, where a handler cannot answer, and it accepts some encodings only when
optional libraries are installed. kube-apiserver and kube-scheduler never compress request bodies; gzip and deflate
are accepted for other clients, and the limit applies to the decompressed size, so a small bomb is refused.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Literal

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

Reason = Literal["too_large", "unsupported_encoding", "undecodable", "broken_framing", "timeout", "client_gone"]
"""Why a body could not be read: also the value of metric labels, so it is a closed set."""

_GZIP_MAGIC = b"\x1f\x8b"


class UnreadableBody(Exception):
    """The body cannot be read; `status` and `message` are the answer, `reason` the metric label."""

    def __init__(self, status: int, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def too_large(limit: int) -> UnreadableBody:
    return UnreadableBody(413, "too_large", f"the request body is larger than {limit} bytes")


def decode_body(raw: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body with its `Content-Encoding` undone, at most `limit` bytes of it; `UnreadableBody` otherwise."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return raw
    if coding in ("gzip", "x-gzip"):
        return _inflate(raw, 16 + zlib.MAX_WBITS, limit, "gzip", members=True)
    if coding == "deflate":  # RFC 9110 says zlib format; some clients send raw deflate, which has no zlib header
        zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
        return _inflate(raw, zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS, limit, "deflate", members=False)
    raise UnreadableBody(415, "unsupported_encoding",
                         "this Content-Encoding is not supported; send the body uncompressed, as gzip or as deflate")


def _inflate(raw: bytes, wbits: int, limit: int, name: str, *, members: bool) -> bytes:
    """Decompress every member (gzip allows several back to back), never producing more than `limit + 1` bytes."""
    out = bytearray()
    rest = raw
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            out += decoder.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or decoder.unconsumed_tail:
                raise too_large(limit)
            out += decoder.flush()
        except zlib.error:
            raise UnreadableBody(400, "undecodable", f"the request body is not valid {name} data") from None
        if len(out) > limit:
            raise too_large(limit)
        if not decoder.eof:
            raise UnreadableBody(400, "undecodable", f"the request body ends inside its {name} stream")
        rest = decoder.unused_data
        if not rest:
            return bytes(out)
        if not (members and rest.startswith(_GZIP_MAGIC)):
            raise UnreadableBody(400, "undecodable", f"the request body has data after its {name} stream")


async def read_body(request: web.BaseRequest, *, limit: int, timeout: float) -> bytes:
    """The decoded body of `request`: at most `limit` bytes on the wire and after decoding, within `timeout` s."""
    if (request.content_length or 0) > limit:  # refused before reading it: a declared size is enough
        raise too_large(limit)
    try:
        async with asyncio.timeout(timeout):
            raw = await _read_raw(request, limit)
    except TimeoutError:
        raise UnreadableBody(408, "timeout", f"the request body did not arrive within {timeout:g} s") from None
    except RequestPayloadError:
        raise UnreadableBody(400, "broken_framing",
                             "the request body's chunked framing is broken or it ends before its Content-Length"
                             ) from None
    except ConnectionError:
        raise UnreadableBody(400, "client_gone", "the client closed the connection before sending the body"
                             ) from None
    return decode_body(raw, request.headers.get("Content-Encoding"), limit=limit)


async def _read_raw(request: web.BaseRequest, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
