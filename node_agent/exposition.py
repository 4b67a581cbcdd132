"""The `/metrics` body: prometheus_client's text exposition of the registry, family by family, reusing the text of
families that did not change since the previous scrape.

prometheus_client checks and escapes every label name and value of every sample on every scrape; on a node of 8 GPUs
with 56 attributed MIG devices that is about 3,250 label occurrences and two thirds of a scrape's CPU. Most families
carry the same samples scrape after scrape (clocks, power limits, ECC counters, framebuffer use of a loaded model,
the holders of each device), so each family is rendered by `generate_latest` on its own and its text is kept with
the family: the next scrape reuses the text when the family compares equal (prometheus_client's `Metric` equality:
name, help, type, unit and every sample's name, labels, value, timestamp), and renders it anew otherwise. The
collector's label dicts are the same objects from scrape to scrape (`collector.LabelCache`), so an unchanged sample
is recognised without comparing its labels. The body is byte for byte what `generate_latest(registry)` returns (but
for the sign of a zero: 0.0 and -0.0 compare equal, the same value to Prometheus); a family that disappears is
forgotten. Text written here never comes from anywhere but prometheus_client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class _OneFamily(Collector):
    """A family as a collector of its own, for `generate_latest`."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterable[Metric]:
        return (self._family,)


class CachedExposition:
    """`render()` is `generate_latest(registry)`, reusing the text of each family that is unchanged."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry
        self._rendered: dict[str, tuple[Metric, bytes]] = {}
        self._lock = threading.Lock()
        self.reused = 0
        """Families whose text came from an earlier scrape (for the benchmark and the tests)."""

    def render(self) -> bytes:
        with self._lock:  # concurrent scrapes take turns: they would render the same families anyway
            previous, current, parts = self._rendered, {}, []
            for family in self._registry.collect():
                known = previous.get(family.name)
                if known is not None and known[0] == family:
                    text = known[1]
                    self.reused += 1
                else:
                    text = generate_latest(_OneFamily(family))
                current[family.name] = (family, text)
                parts.append(text)
            self._rendered = current
        return b"".join(parts)
