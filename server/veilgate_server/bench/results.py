"""What a benchmark run produces: one :class:`ScenarioResult` per scenario, each judged against its
target by :meth:`ScenarioResult.judge` — ``meets`` is always computed, never written by hand.

Machines here are shared and noisy, so RPC scenarios are reported as a ratio to a bare-grpcio
baseline measured in the same run, with the same certificates, threading model and load generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

__all__ = ["LatencyStats", "ScenarioResult", "Target", "lower_median", "median_round"]


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Calls completed in a measured window, and their latency percentiles."""

    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0

    @property
    def qps(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Target:
    """A target: ``metric`` (a key of the result's figures) compared with ``op`` to ``value``."""

    metric: str
    op: Literal[">=", "<="]
    value: float
    text: str

    def holds(self, figures: dict[str, float | None]) -> bool | None:
        actual = figures.get(self.metric)
        if actual is None:
            return None
        return actual >= self.value if self.op == ">=" else actual <= self.value


@dataclass
class ScenarioResult:
    name: str
    qps: float | None = None
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline_qps: float | None = None
    ratio: float | None = None
    target: str = ""
    meets: bool | None = None
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def judge(self, *targets: Target, extra: dict[str, float | None] | None = None) -> ScenarioResult:
        """Set ``target`` (text) and ``meets`` (all targets hold) from the measured figures; with no
        target, ``meets`` stays None: there is nothing to meet."""
        figures: dict[str, float | None] = {
            "qps": self.qps,
            "rate": self.rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "ratio": self.ratio,
            **(extra or {}),
        }
        verdicts = [t.holds(figures) for t in targets]
        self.target = "; ".join(t.text for t in targets)
        self.meets = None if not targets or any(v is None for v in verdicts) else all(verdicts)
        return self

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("meets",)}


_ROUND_FIGURES = ("qps", "p50_ms", "p99_ms", "baseline_qps", "ratio", "meets")


def lower_median(values: Sequence[float]) -> int:
    """The index of the median of ``values``: the lower of the middle two for an even count, the
    first of equal values, so that a tie never flatters."""
    ranked = sorted(range(len(values)), key=lambda i: (values[i], i))
    return ranked[(len(values) - 1) // 2]


def median_round(rounds: Sequence[ScenarioResult]) -> ScenarioResult:
    """One scenario measured in several rounds, each against the bare baseline measured at the start
    of its own round, reported as its median round: the round whose ratio is the median (the lower
    of the middle two for an even count, so that a tie never flatters). Every figure reported comes
    from that one round, so they were measured together; ``details["each_round"]`` lists each
    round's figures in the order run, and ``details["reported_round"]`` names the one reported.

    A round that could not be measured is reported instead (the first such round, meeting
    nothing); a round with failed calls makes a scenario with targets miss them, as one run with
    failed calls would."""
    if not rounds:
        raise ValueError("a scenario measured in no round")
    listed = [
        {
            "round": number,
            **{key: getattr(result, key) for key in _ROUND_FIGURES},
            **{key: result.details.get(key) for key in ("cpu_us_per_call", "p99_ratio", "errors")},
        }
        for number, result in enumerate(rounds, 1)
    ]
    unmeasured = [n for n, r in enumerate(rounds, 1) if r.ratio is None or "error" in r.details]
    number = unmeasured[0] if unmeasured else lower_median([float(r.ratio or 0) for r in rounds]) + 1
    chosen = rounds[number - 1]
    reported = replace(chosen, details={**chosen.details, "reported_round": number, "each_round": listed})
    if reported.meets and any(r.details.get("errors") for r in rounds):
        reported.meets = False
    return reported
