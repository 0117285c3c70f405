"""Test-wide settings.

Hypothesis runs without its per-example deadline and without the "too slow" health
check: both are timing checks, and the suite runs in two workers on a 2-core machine
(``make test``), where an example that takes 0.3 ms alone can take 300 ms while the other
worker starts bricks.  Correctness is what the properties check; the suite's time is
watched as a whole (``--durations``)."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.harness.timing", "tests.harness.order"]

settings.register_profile("dds", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dds")
