"""UsageMeter totals."""

from edgerun.control.usage import UsageMeter, UsageRecord


def rec(**kw):
    base = dict(
        deployment="a", outcome="ok", status=200, cpu_ms=1.5, wall_ms=2.0, bytes_in=10, bytes_out=20
    )
    return UsageRecord(**{**base, **kw})


def test_totals_per_deployment():
    meter = UsageMeter()
    meter.record(rec())
    meter.record(
        rec(cold_start=True, outcome="exceeded_cpu", status=503, error_code="exceeded_cpu")
    )
    meter.record(rec(deployment="b"))
    snap = meter.snapshot()
    assert list(snap) == ["a", "b"]
    a = snap["a"]
    assert a["requests"] == 2 and a["cold_starts"] == 1
    assert a["cpu_ms"] == 3.0 and a["wall_ms"] == 4.0
    assert a["bytes_in"] == 20 and a["bytes_out"] == 40
    assert a["outcomes"] == {"exceeded_cpu": 1, "ok": 1}
    assert a["errors"] == {"exceeded_cpu": 1}
    assert snap["b"]["requests"] == 1
    assert meter.get("missing").requests == 0
