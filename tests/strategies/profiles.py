"""Hypothesis profiles: a bounded, derandomized one for the test command and a long one for `bench/`.

`gpuguard` (the default, loaded by tests/conftest.py) draws the same examples on every run, writes no example
database and has no deadline (the machine is shared, so timing must never fail a test); its example counts keep
all property tests together well under half a minute on two cores. `gpuguard-long` is the same search with 50 times
the examples and a fresh random seed per run: `pytest tests/hardening --hypothesis-profile=gpuguard-long`
(see bench/properties_long.sh).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

DEFAULT = "gpuguard"
LONG = "gpuguard-long"
_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": (HealthCheck.too_slow, HealthCheck.data_too_large),
}


def register() -> None:
    settings.register_profile(DEFAULT, max_examples=100, derandomize=True, **_COMMON)  # type: ignore[arg-type]
    settings.register_profile(LONG, max_examples=3000, derandomize=False, **_COMMON)  # type: ignore[arg-type]
    if settings.get_current_profile_name() == "default":  # not chosen on the command line (and not loaded yet)
        settings.load_profile(DEFAULT)


def fewer(divisor: int) -> settings:
    """The active profile with `divisor` times fewer examples: for properties that are slow to check."""
    return settings(max_examples=max(3, settings.default.max_examples // divisor))
