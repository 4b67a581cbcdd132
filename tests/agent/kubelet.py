"""A stand-in for the kubelet's PodResources API: a real gRPC server on a unix socket, serving `List`.

The answer is a `ListPodResourcesResponse` given in protobuf's JSON mapping (the canonical payloads live in
tests/data/agent), served through the generated servicer exactly as the kubelet's Go server encodes it. `behaviour`
makes it misbehave: `hang` (answer after `hang_seconds`), `garbage` (bytes that are no protobuf message), `fail`
(status UNAVAILABLE).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from node_agent.podresources_v1 import api_pb2, api_pb2_grpc


class _Lister(api_pb2_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def List(self, request: Any, context: Any) -> Any:  # noqa: N802 (the generated servicer's method name)
        return self.kubelet.answer(context)


class FakeKubelet:
    def __init__(self, socket: Path, response: dict[str, Any]) -> None:
        self.socket = socket
        self.response = response
        self.behaviour = "answer"
        self.hang_seconds = 5.0
        self.calls = 0
        self._lock = threading.Lock()
        self._server: Any = None

    def answer(self, context: Any) -> Any:
        with self._lock:
            self.calls += 1
        if self.behaviour == "hang":
            time.sleep(self.hang_seconds)
        if self.behaviour == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
        return json_format.ParseDict(self.response, api_pb2.ListPodResourcesResponse())

    def start(self) -> FakeKubelet:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        if self.behaviour == "garbage":
            handler = grpc.unary_unary_rpc_method_handler(
                lambda request, context: b"\xff\xff\xff\xff", request_deserializer=lambda data: data,
                response_serializer=lambda garbage: garbage)
            self._server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("v1.PodResourcesLister", {"List": handler}),))
        else:
            api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), self._server)
        self._server.add_insecure_port(f"unix:{self.socket}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
