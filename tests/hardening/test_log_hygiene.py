"""No request body, header value or secret reaches the log at the default level, whatever the request does.

Every request below carries a recognisable marker where a secret would sit (an environment variable, an annotation,
a header, the body of a malformed request, the message of an exception raised inside the decision); the whole log
output at INFO, tracebacks included, must not contain it. What the log does carry is said in SECURITY.md: the
request uid and object namespace/name (cut short, escaped), the rule, the decision and the number of problems.
The last tests put the marker into every string field and every key of real requests, one at a time, for the
webhook and the extender.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import webhook.app
import webhook.memo
from gpuguard.web.policy_source import PolicySource
from tests.conftest import load_data
from tests.extender.conftest import payload
from tests.hardening.inprocess import InProcessExtender, InProcessServer
from tests.strategies.kserve import compact

MARKER = "s3cr3t-Mark3r-7f1d"


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        connection.sendall(raw)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


def post(port: int, path: str, body: bytes, *headers: str) -> int:
    lines = [f"POST {path} HTTP/1.1", "Host: webhook", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close", *headers]
    reply = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return int(reply.split(b" ", 2)[1])


def with_secrets(review: dict[str, Any], *, fractional: bool = False, uid: str | None = None) -> bytes:
    """A predictor review with the marker in an env value, an annotation, a label and the generateName."""
    review = copy.deepcopy(review)
    pod = review["request"]["object"]
    container = pod["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "HF_TOKEN", "value": f"hf_{MARKER}"})
    pod["metadata"]["annotations"]["example.com/api-key"] = MARKER
    pod["metadata"]["labels"]["owner"] = MARKER
    if fractional:
        container["resources"] = {"limits": {"nvidia.com/gpu": "0.5"}}
    if uid is not None:
        review["request"]["uid"] = uid
    return compact(review)


@pytest.fixture
def server() -> Iterator[InProcessServer]:
    with InProcessServer() as running:
        yield running


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO):
        yield caplog


def assert_clean(log: pytest.LogCaptureFixture, *, logged: bool = True) -> None:
    assert log.records or not logged, "the requests were logged at all"
    assert MARKER not in log.text
    for record in log.records:
        assert MARKER not in record.getMessage()
        assert "\n" not in record.getMessage().split(": ", 1)[0], "no forged line in a log message's head"


TRITON = load_data("review-knative-triton.json")


def test_admitted_and_denied_requests_log_no_request_content(server: InProcessServer,
                                                              log: pytest.LogCaptureFixture) -> None:
    for path in ("/mutate", "/validate"):
        assert post(server.port, path, with_secrets(TRITON)) == 200
        assert post(server.port, path, with_secrets(TRITON, fractional=True)) == 200
    assert any(r.getMessage().startswith("denied Pod") for r in log.records)
    assert_clean(log)


@pytest.mark.parametrize("body", [
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "' + MARKER.encode(),
    b"not json at all " + MARKER.encode(),
    json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": MARKER, "password": MARKER}}).encode(),
    json.dumps([MARKER]).encode(),
], ids=["cut-short", "not-json", "wrong-fields", "wrong-shape"])
def test_malformed_bodies_log_no_request_content(server: InProcessServer, log: pytest.LogCaptureFixture,
                                                 body: bytes) -> None:
    assert post(server.port, "/validate", body) == 400
    assert post(server.port, "/validate", with_secrets(TRITON, fractional=True)) == 200  # a denial is logged
    assert_clean(log)


@pytest.mark.parametrize("raw", [
    f"GET /{MARKER}{'a' * 9000} HTTP/1.1\r\nHost: webhook\r\n\r\n".encode(),
    f"POST /validate HTTP/1.1\r\nHost: webhook\r\nAuthorization: Bearer {MARKER}{'a' * 9000}\r\n\r\n".encode(),
    f"POST /validate HTTP/1.1\r\nHost: webhook\r\nX-Api-Key: {MARKER}\r\n".encode() * 2 + b"\xff\r\n\r\n",
    f"{MARKER} /validate HTTP/1.1\r\nHost: webhook\r\n\r\n".encode(),
], ids=["request-line", "header-value", "broken-header", "bad-method"])
def test_refused_http_requests_log_no_request_content(server: InProcessServer, log: pytest.LogCaptureFixture,
                                                      raw: bytes) -> None:
    assert exchange(server.port, raw).startswith(b"HTTP/1.")
    assert post(server.port, "/validate", with_secrets(TRITON, fractional=True)) == 200  # a denial is logged
    assert_clean(log)


@pytest.mark.parametrize(("module", "name"), [(webhook.app, "review"), (webhook.memo, "mutate")])
def test_an_internal_error_logs_its_stack_but_not_its_message(
    server: InProcessServer, log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, module: Any, name: str
) -> None:
    def broken(request: Any, *_: Any) -> Any:
        raise KeyError(f"{MARKER}: {request.object}")  # an exception quoting the request, as KeyError does

    monkeypatch.setattr(module, name, broken)
    path = "/validate" if name == "review" else "/mutate"
    assert post(server.port, path, with_secrets(TRITON, uid="uid-1")) == 200
    errors = [r for r in log.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"internal error on {path} uid=uid-1" in errors[0].getMessage()
    assert "KeyError" in errors[0].getMessage() and "broken" in errors[0].getMessage(), "type and stack are kept"
    assert_clean(log)


def test_a_failing_memo_logs_without_the_body(server: InProcessServer, log: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: bytes, **_: Any) -> Any:
        raise ValueError(body.decode())

    monkeypatch.setattr(server.app[webhook.app.keys.MEMO], "recall", broken)
    assert post(server.port, "/mutate", with_secrets(TRITON)) == 200
    assert "mutation memo failed" in log.text
    assert_clean(log)


def test_a_uid_or_name_with_control_characters_cannot_forge_log_lines(server: InProcessServer,
                                                                     log: pytest.LogCaptureFixture) -> None:
    assert post(server.port, "/validate", with_secrets(TRITON, fractional=True, uid="u1\nERROR forged line")) == 200
    (denied,) = [r.getMessage() for r in log.records if r.getMessage().startswith("denied Pod")]
    assert "uid=u1\\nERROR forged line" in denied


def test_debug_level_is_where_the_whole_exception_goes(server: InProcessServer, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError(MARKER)

    monkeypatch.setattr(webhook.app, "review", broken)
    with caplog.at_level(logging.DEBUG, logger="webhook.app"):
        assert post(server.port, "/validate", with_secrets(TRITON)) == 200
    assert MARKER in caplog.text, "someone debugging on purpose sees the exception"


def test_a_refused_policy_file_is_named_without_its_content(tmp_path: Any, log: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry

    path = tmp_path / "policy.yaml"
    path.write_text("apiVersion: gpuguard.io/v1\nkind: GpuPolicy\n")
    source = PolicySource(path, registry=CollectorRegistry())
    path.write_text(f"apiVersion: gpuguard.io/v1\nkind: GpuPolicy\nmode: enforce\n{MARKER}: [\n")
    source.check()
    source.check()
    assert "policy update refused" in log.text
    assert_clean(log)


# ----------------------------------------------------------------------------- a marker in every field, one at a time

ALLOWED = {("request", "uid"), ("request", "namespace"), ("request", "name"), ("request", "object", "metadata", "name"),
           ("request", "object", "metadata", "namespace")}
"""What a log line may carry from a request (SECURITY.md): its uid and the object's namespace/name."""

Path_ = tuple[Any, ...]


def string_fields(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, bool]]:
    """Every string value (False) and every object key (True) in a JSON document, by path."""
    if isinstance(value, str):
        yield path, False
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), True
            yield from string_fields(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_fields(item, (*path, index))


def marked(document: Any, path: Path_, key: bool) -> bytes:
    """The document with the marker added to one string value or one key."""
    document = copy.deepcopy(document)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if key:
        parent[f"{last}{MARKER}"] = parent.pop(last)
    else:
        parent[last] = f"{parent[last]}{MARKER}"
    return compact(document)


class KeepAlive:
    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(self, *_: object) -> None:
        self.connection.close()

    def post(self, path: str, body: bytes) -> int:
        self.connection.request("POST", path, body, {"Content-Type": "application/json", "X-Request-Note": MARKER})
        reply = self.connection.getresponse()
        reply.read()
        return reply.status


def denied_by_the_demand_model(change: Any) -> dict[str, Any]:
    """The Triton predictor changed into a pod the GPU-demand checks refuse; their messages name containers,
    environment variables, annotations and resource keys, all of which the marker reaches."""
    review = copy.deepcopy(TRITON)
    change(review["request"]["object"])
    return review  # type: ignore[no-any-return]


def _device_env(pod: Any) -> None:
    pod["spec"]["containers"][-1].setdefault("env", []).append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})


def _privileged(pod: Any) -> None:
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}


def _mixed_kinds(pod: Any) -> None:
    pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    pod["spec"]["containers"].append({"name": "side", "image": "side:1",
                                      "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}})


def _cdi(pod: Any) -> None:
    pod["metadata"]["annotations"]["cdi.k8s.io/model"] = "nvidia.com/gpu=all"


REVIEWS = {
    "predictor-pod": (load_data("review-knative-triton.json"), ("/mutate", "/validate")),
    "fractional-pod": (load_data("review-knative-fractional-gpu.json"), ("/validate",)),
    "fractional-isvc": (load_data("review-isvc-fractional-gpu.json"), ("/validate",)),
    "mig-isvc": (load_data("review-isvc-mig-mixed.json"), ("/validate",)),
    "device-env-pod": (denied_by_the_demand_model(_device_env), ("/mutate", "/validate")),
    "privileged-pod": (denied_by_the_demand_model(_privileged), ("/validate",)),
    "mixed-kinds-pod": (denied_by_the_demand_model(_mixed_kinds), ("/validate",)),
    "cdi-pod": (denied_by_the_demand_model(_cdi), ("/validate",)),
    "dra-pod": (load_data("review-dra-claim.json"), ("/mutate", "/validate")),
    "hami-pod": (load_data("review-hami-vgpu.json"), ("/mutate", "/validate")),
    "kai-pod": (load_data("review-kai-fractional.json"), ("/mutate", "/validate")),
}
ALLOWED_AS_THEY_ARE = {"predictor-pod", "dra-pod", "hami-pod", "kai-pod"}


@pytest.mark.parametrize("name", REVIEWS)
def test_a_marker_in_any_field_of_an_admission_request_reaches_no_log_line(
    server: InProcessServer, log: pytest.LogCaptureFixture, name: str
) -> None:
    review, paths = REVIEWS[name]
    fields = [(path, key) for path, key in string_fields(review) if key or path not in ALLOWED]
    with KeepAlive(server.port) as client:
        statuses = Counter(client.post(endpoint, marked(review, path, key)) for path, key in fields
                           for endpoint in paths)
    assert set(statuses) <= {200, 400} and statuses[200] > len(fields) / 2
    assert any(r.getMessage().startswith("denied ") for r in log.records) or name in ALLOWED_AS_THEY_ARE
    assert_clean(log, logged=name not in ALLOWED_AS_THEY_ARE)


@pytest.fixture(scope="module")
def extender(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessExtender]:
    with InProcessExtender(tmp_path_factory.mktemp("extender")) as served:
        yield served


@pytest.mark.parametrize("mode", ["names", "nodes"])
def test_a_marker_in_any_field_of_an_extender_request_reaches_no_log_line(
    extender: InProcessExtender, log: pytest.LogCaptureFixture, mode: str
) -> None:
    args = json.loads(payload(mode))
    # Full-Node requests repeat one shape per Node: every field of the envelope, the pod and the first Node.
    fields = [(path, key) for path, key in string_fields(args)
              if not (len(path) > 3 and path[:2] == ("Nodes", "items") and path[2] != 0)]
    with KeepAlive(extender.port) as client:
        statuses = Counter(client.post(verb, marked(args, path, key)) for path, key in fields
                           for verb in ("/filter", "/prioritize"))
    assert set(statuses) <= {200, 400} and statuses[200] > len(fields)
    assert_clean(log, logged=False)
