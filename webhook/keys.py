"""Typed aiohttp application keys of the webhook app, in one place."""

from __future__ import annotations

from aiohttp import web

from gpuguard.web.policy_source import PolicySource
from webhook.memo import MutationMemo
from webhook.metrics import WebhookMetrics
from webhook.settings import WebhookSettings

SETTINGS = web.AppKey("settings", WebhookSettings)
POLICY = web.AppKey("policy", PolicySource)
METRICS = web.AppKey("metrics", WebhookMetrics)
MEMO = web.AppKey("memo", MutationMemo)
