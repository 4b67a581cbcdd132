"""A body a service cannot read gets a 4xx and a JSON error on every path, never a 5xx, a stack or a stall.

The kinds a client controls: a `Content-Encoding` that does not decode (garbage, cut short, data after the stream),
one that is not supported, chunked framing that is broken, a size over the limit (declared, chunked, or once
decompressed), a body that arrives too slowly, a client that hangs up half-way, and JSON nested just short of the
decoder's limit with a surrogate escape in it. Each runs against the webhook's `/mutate` and `/validate` and the
extender's `/filter` (which answers every failure in its protocol's `Error` field with HTTP 200) and `/prioritize`.
None of them may log at ERROR, and none may leave cyclic garbage behind (the raised garbage-collection thresholds
make such garbage live for many minutes: that was the webhook soak's memory drift).
"""

from __future__ import annotations

import gc
import gzip
import json
import logging
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pytest

from gpuguard.web.limits import ConnectionLimits
from tests.conftest import review_body
from tests.extender.conftest import payload
from tests.hardening.inprocess import InProcessExtender, InProcessServer, ServedApp
from tests.hardening.wire import connect, exchange, head, post, read_reply

LIMITS = ConnectionLimits(header_timeout=5, body_timeout=0.5, idle_timeout=5)
LIMIT = 64 * 1024
REVIEW = review_body("review-knative-sklearn.json")
ARGS = payload("names")
WEBHOOK_PATHS = ("/mutate", "/validate")


@pytest.fixture(scope="module")
def webhook() -> Iterator[InProcessServer]:
    with InProcessServer(connections=LIMITS, max_body_bytes=LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def extender(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessExtender]:
    with InProcessExtender(tmp_path_factory.mktemp("extender"), connections=LIMITS, max_body_bytes=LIMIT) as served:
        yield served


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO):
        yield caplog
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client's bad body is not our error"


def encoded(body: bytes, encoding: str) -> tuple[bytes, str]:
    return body, f"Content-Encoding: {encoding}"


# Bodies that cannot be read, each with the status a webhook endpoint answers and a word of the error it gives.
CASES = {
    "garbage-gzip": (*encoded(b"\x1f\x8bnot gzip at all", "gzip"), 400, "not valid gzip"),
    "garbage-deflate": (*encoded(b"not deflate at all", "deflate"), 400, "not valid deflate"),
    "gzip-then-garbage": (*encoded(gzip.compress(REVIEW) + b"trailing", "gzip"), 400, "data after its gzip"),
    "deflate-then-garbage": (*encoded(zlib.compress(REVIEW) + b"trailing", "deflate"), 400, "data after its deflate"),
    "gzip-cut-short": (*encoded(gzip.compress(REVIEW)[:40], "gzip"), 400, "ends inside its gzip"),
    "gzip-bomb": (*encoded(gzip.compress(b" " * (LIMIT * 64)), "gzip"), 413, "larger than"),
    "brotli": (*encoded(b"\x0b\x02\x80hello", "br"), 415, "Content-Encoding is not supported"),
    "zstd": (*encoded(b"\x28\xb5\x2f\xfd", "zstd"), 415, "Content-Encoding is not supported"),
    "stacked": (*encoded(gzip.compress(gzip.compress(REVIEW)), "gzip, gzip"), 415, "not supported"),
    "too-large": (b" " * (LIMIT + 1), "X-Padding: yes", 413, "larger than"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", WEBHOOK_PATHS)
def test_the_webhook_answers_an_unreadable_body_with_a_4xx_and_a_json_error(
    webhook: InProcessServer, errors: pytest.LogCaptureFixture, path: str, case: str
) -> None:
    body, header, status, words = CASES[case]
    reply = exchange(webhook.port, post(path, body, header))
    assert reply.status == status and reply.headers["content-type"].startswith("application/json")
    assert words in reply.json()["error"]
    assert exchange(webhook.port, post(path, REVIEW)).status == 200, "and the next request is answered"


@pytest.mark.parametrize("case", CASES)
def test_the_extender_answers_an_unreadable_body_in_its_protocols_channels(
    extender: InProcessExtender, errors: pytest.LogCaptureFixture, case: str
) -> None:
    body, header, status, words = CASES[case]
    filtered = exchange(extender.port, post("/filter", body, header))
    assert filtered.status == 200 and words in filtered.json()["Error"]
    assert filtered.json()["NodeNames"] is None and filtered.json()["Nodes"] is None
    prioritized = exchange(extender.port, post("/prioritize", body, header))
    assert prioritized.status == status and words in prioritized.json()["error"]
    assert exchange(extender.port, post("/filter", ARGS)).json()["Error"] == ""


def test_well_formed_compressed_bodies_are_read(webhook: InProcessServer, extender: InProcessExtender) -> None:
    for body, header in (encoded(gzip.compress(REVIEW), "gzip"), encoded(zlib.compress(REVIEW), "deflate"),
                         encoded(zlib.compress(REVIEW)[2:-4], "deflate"),  # raw deflate, as some clients send it
                         encoded(gzip.compress(REVIEW[:100]) + gzip.compress(REVIEW[100:]), "gzip")):  # two members
        assert exchange(webhook.port, post("/validate", body, header)).status == 200
    reply = exchange(extender.port, post("/filter", gzip.compress(ARGS), "Content-Encoding: gzip"))
    assert reply.json()["Error"] == "" and reply.json()["NodeNames"]


BROKEN_CHUNKS = head("POST", "{path}", "Transfer-Encoding: chunked") + b"zz\r\nnot a chunk size\r\n0\r\n\r\n"


@pytest.mark.parametrize("path", [*WEBHOOK_PATHS, "/filter", "/prioritize"])
def test_broken_chunked_framing_is_a_json_400(webhook: InProcessServer, extender: InProcessExtender,
                                               errors: pytest.LogCaptureFixture, path: str) -> None:
    port = extender.port if path in ("/filter", "/prioritize") else webhook.port
    reply = exchange(port, BROKEN_CHUNKS.replace(b"{path}", path.encode()))
    assert reply.status == 400 and "chunked body framing" in reply.json()["error"]
    assert b"not a chunk size" not in reply.body, "the refusal quotes nothing it was sent"


@pytest.mark.parametrize("path", [*WEBHOOK_PATHS, "/filter", "/prioritize"])
def test_a_body_slower_than_the_body_timeout_gets_408(webhook: InProcessServer, extender: InProcessExtender,
                                                      errors: pytest.LogCaptureFixture, path: str) -> None:
    port = extender.port if path in ("/filter", "/prioritize") else webhook.port
    with connect(port) as connection:
        connection.sendall(head("POST", path, length=len(REVIEW)) + REVIEW[:100])
        reply = read_reply(connection)
    answer = reply.json()
    if path == "/filter":
        assert reply.status == 200 and "did not arrive within 0.5 s" in answer["Error"]
    else:
        assert reply.status == 408 and "did not arrive within 0.5 s" in answer["error"]


@pytest.mark.parametrize("path", [*WEBHOOK_PATHS, "/filter", "/prioritize"])
@pytest.mark.parametrize("how", ["reset", "half-close"])
def test_a_client_that_hangs_up_mid_body_is_not_an_error(webhook: InProcessServer, extender: InProcessExtender,
                                                         errors: pytest.LogCaptureFixture, path: str,
                                                         how: str) -> None:
    served: ServedApp = extender if path in ("/filter", "/prioritize") else webhook
    connection = socket.create_connection(("127.0.0.1", served.port))
    connection.sendall(head("POST", path, length=len(REVIEW)) + REVIEW[:100])
    time.sleep(0.05)
    if how == "reset":
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        connection.shutdown(socket.SHUT_WR)
    connection.close()
    time.sleep(0.2)
    body = ARGS if served is extender else REVIEW
    assert exchange(served.port, post(path, body)).status == 200


def nested(depth: int, escape: str) -> bytes:
    """An ExtenderArgs whose pod holds `depth` nested arrays around one string with an escape in it."""
    pod = json.loads(ARGS)["Pod"]
    text = json.dumps(pod)[:-1] + ', "deep": ' + "[" * depth + f'"{escape}"' + "]" * depth + "}"
    return ('{"Pod": ' + text + ', "NodeNames": ["gpu-a100-0"]}').encode()


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00x", "\\ud83d\\ude00"])
def test_json_nested_up_to_the_decoders_limit_with_a_surrogate_escape_never_fails_the_server(
    extender: InProcessExtender, errors: pytest.LogCaptureFixture, escape: str
) -> None:
    """The lone-surrogate check once decoded the body again, one level deeper, and a RecursionError escaped."""
    for depth in range(900, 1010):
        body = nested(depth, escape)
        filtered = exchange(extender.port, post("/filter", body))
        assert filtered.status == 200, depth
        prioritized = exchange(extender.port, post("/prioritize", body))
        assert prioritized.status in (200, 400), depth
        if "\\ud83d\\ude00" != escape:
            assert "surrogate" in filtered.json()["Error"] or "deeper" in filtered.json()["Error"], depth


def test_deep_nesting_is_a_400_on_the_webhook(webhook: InProcessServer, errors: pytest.LogCaptureFixture) -> None:
    review = json.loads(REVIEW)
    for depth in (900, 1000, 5000, 25_000):
        review["request"]["object"]["metadata"]["annotations"]["deep"] = "x"
        text = json.dumps(review).replace('"deep": "x"', '"deep": ' + "[" * depth + '"\\ud800"' + "]" * depth)
        reply = exchange(webhook.port, post("/validate", text.encode()))
        assert reply.status == 400 and reply.json()["error"], depth


def test_refused_bodies_leave_no_cyclic_garbage(webhook: InProcessServer, extender: InProcessExtender) -> None:
    """Raising aiohttp's HTTPRequestEntityTooLarge left ~30 objects in reference cycles per refusal; with the raised
    collection thresholds they lived for minutes (the soak's memory drift). Kept-alive connections, so that the
    cycle asyncio leaves behind each closed connection (a transport and its bound read callback) is not counted."""
    kinds = [CASES[name][:2] for name in ("too-large", "garbage-gzip", "brotli", "gzip-bomb")]
    with connect(webhook.port) as to_webhook, connect(extender.port) as to_extender:
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                for body, header in kinds:
                    for connection, path in ((to_webhook, "/validate"), (to_extender, "/filter")):
                        connection.sendall(head("POST", path, header, length=len(body)) + body)
                        assert 200 <= read_reply(connection).status < 500
            found = gc.collect()
        finally:
            gc.enable()
    assert found < 20, f"{found} objects in cycles after 160 refused bodies"
