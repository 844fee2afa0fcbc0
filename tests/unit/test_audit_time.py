"""An audit entry's time: ISO 8601 UTC with milliseconds, truncated, whatever second came before."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate_server.audit import _timestamp


def _expected(seconds: float) -> str:
    millis = int(seconds * 1000)
    return datetime.fromtimestamp(millis // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def test_known_times() -> None:
    assert _timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert _timestamp(1_764_149_999.9994) == "2025-11-26T09:39:59.999Z"  # truncated, not rounded up
    assert _timestamp(1_764_150_000.25) == "2025-11-26T09:40:00.250Z"
    assert _timestamp(1_764_149_999.5) == "2025-11-26T09:39:59.500Z"  # back to an earlier second


@settings(max_examples=300)
@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=6))
def test_each_time_is_its_own_second_whatever_came_before(times: list[float]) -> None:
    """The text of a second is kept between calls; a call in another second must not reuse it."""
    for seconds in times:
        assert _timestamp(seconds) == _expected(seconds)
