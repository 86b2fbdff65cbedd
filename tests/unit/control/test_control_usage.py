"""UsageMeter totals."""

from edgerun.control.usage import UsageMeter


def count(meter, deployment="a", outcome="ok", cold_start=False, error_code=None):
    meter.count(deployment, outcome, 1.5, 2.0, 10, 20, cold_start, error_code)


def test_totals_per_deployment():
    meter = UsageMeter()
    count(meter)
    count(meter, outcome="exceeded_cpu", cold_start=True, error_code="exceeded_cpu")
    count(meter, deployment="b")
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
