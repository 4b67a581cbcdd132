"""Typed aiohttp application keys of the extender app, in one place."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from gpuguard.web.policy_source import PolicySource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.metrics import ExtenderMetrics
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard

SETTINGS = web.AppKey("settings", ExtenderSettings)
POLICY = web.AppKey("policy", PolicySource)
METRICS = web.AppKey("metrics", ExtenderMetrics)
STORE = web.AppKey("store", InventoryStore)
BOARD = web.AppKey("board", UtilizationBoard)


class Clock(Protocol):
    def __call__(self) -> float:
        """Unix time in seconds (time.time, or a fake in tests)."""


CLOCK = web.AppKey("clock", Clock)
