"""Session-wide test configuration shared by unit and integration tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Hypothesis' 200 ms deadline is a timed assertion on a loaded 2-core machine (TRAPS).
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
