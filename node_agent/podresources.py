"""The kubelet's PodResources API (gRPC, v1 `List`) over its unix socket: which container holds which device.

One `List` call returns every pod on the node with the device ids of each container. Started (`start()`, as the
agent does), the client asks every `max_age` seconds on a thread of its own and a scrape only takes the latest
answer: the call (about 3 ms for a hundred pods, over a kubelet that may be slow) stays off the scrape path, which
dcgm-exporter still has on it. Not started (tests, one-off reads), `allocations()` asks when its answer is older
than `max_age`. A pod is thus labelled at most `max_age` seconds after it starts. The client is generated from
`node_agent/podresources_v1/api.proto`. grpcio is imported on first use, when the socket exists: a node without a
kubelet socket (a test machine, `--pod-resources-socket ''`) never loads it.

Failures never cost a scrape: without the socket, or while the kubelet does not answer (within `timeout`), there are
no allocations and the metrics go out without pod labels. Each change of state is logged once (socket missing, a
kind of error, answering again), not every scrape. A failed call drops the channel, so a restarted kubelet's new
socket is dialled afresh rather than after gRPC's reconnect back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node_agent.attribution import Allocation

log = logging.getLogger(__name__)

SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
"""Where the kubelet serves the PodResources API (its `--pod-resources` directory is fixed)."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A node's full pod list; gRPC's default limit of 4 MiB could be exceeded by a node with very many pods."""


def allocations_of(response: Any) -> tuple[Allocation, ...]:
    """Flatten a `ListPodResourcesResponse` into one `Allocation` per device id."""
    return tuple(
        Allocation(pod.name, pod.namespace, container.name, devices.resource_name, device_id)
        for pod in response.pod_resources
        for container in pod.containers
        for devices in container.devices
        for device_id in devices.device_ids
    )


class PodResourcesClient:
    """`allocations()` answers from a cache younger than `max_age` seconds, else asks the kubelet."""

    def __init__(
        self, socket: Path = SOCKET, *, timeout: float = 2.0, max_age: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket = socket
        self._timeout = timeout
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._channel: Any = None
        self._list: Callable[..., Any] | None = None
        self._cached: tuple[Allocation, ...] = ()
        self._asked_at: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state = ""
        """The last state logged: "", "answering", "missing" or an error description."""

    def allocations(self) -> tuple[Allocation, ...]:
        if self._thread is not None:
            return self._cached  # the refresher keeps it current; a scrape never waits for the kubelet
        with self._lock:
            now = self._clock()
            if self._asked_at is None or now - self._asked_at >= self._max_age:
                self._refresh(now)
            return self._cached

    def start(self) -> None:
        """Ask now, then every `max_age` seconds on a daemon thread, until `close()`."""
        with self._lock:
            self._refresh(self._clock())
        self._thread = threading.Thread(target=self._run, name="podresources", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 1)
        with self._lock:
            self._drop_channel()

    def _run(self) -> None:
        while not self._stop.wait(self._max_age):
            with self._lock:
                self._refresh(self._clock())

    def _refresh(self, now: float) -> None:
        self._cached = self._ask()
        self._asked_at = now

    def _ask(self) -> tuple[Allocation, ...]:
        if not self.socket.is_socket():
            self._drop_channel()
            self._say("missing", "no kubelet PodResources socket at %s: metrics go out without pod, namespace and "
                                 "container labels (mount /var/lib/kubelet/pod-resources read-only to get them)",
                      self.socket)
            return ()
        lister = self._lister()
        import grpc  # loaded by _lister

        try:
            response = lister(self._request(), timeout=self._timeout)
        except grpc.RpcError as error:  # also a garbled answer: gRPC reports it as INTERNAL
            self._drop_channel()
            reason = _describe(error)
            self._say(reason, "kubelet PodResources List on %s failed (%s): metrics go out without pod labels "
                              "until it answers", self.socket, reason)
            return ()
        self._say("answering", "pod attribution from the kubelet PodResources API at %s", self.socket)
        return allocations_of(response)

    def _lister(self) -> Callable[..., Any]:
        if self._list is None:
            import grpc  # here: only a node with the socket pays for loading gRPC

            from node_agent.podresources_v1 import api_pb2_grpc

            self._channel = grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.enable_http_proxy", 0)],
            )
            stub: Any = api_pb2_grpc.PodResourcesListerStub  # generated, untyped
            self._list = stub(self._channel).List
        return self._list

    @staticmethod
    def _request() -> Any:
        from node_agent.podresources_v1 import api_pb2

        return api_pb2.ListPodResourcesRequest()

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel, self._list = None, None

    def _say(self, state: str, message: str, *args: object) -> None:
        if state == self._state:
            return
        self._state = state
        (log.info if state == "answering" else log.warning)(message, *args)


def _describe(error: BaseException) -> str:
    """`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...: the status code a failed call carries (its type if it has none)."""
    code = getattr(error, "code", None)
    status = code() if callable(code) else None
    return str(getattr(status, "name", None) or type(error).__name__)
