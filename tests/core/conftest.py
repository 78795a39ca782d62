"""Core tests: bytes in, actions out, explicit ``now``; scapy is the oracle. No trio here."""

from hypothesis import HealthCheck, settings

# scapy is slow to build and dissect; a per-example deadline would only make
# the property tests flaky on a loaded machine without finding anything.
settings.register_profile(
    "core", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("core")
