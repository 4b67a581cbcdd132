"""aiohttp helpers every service shares: TLS, serving two listeners, probes, /metrics, policy reloading."""
