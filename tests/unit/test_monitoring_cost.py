"""Cost arithmetic by hand: token pricing, GPU-hour pricing split by engine busy time."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from monitoring.cost import (
    CostInputError,
    CostModel,
    EngineBusyMeter,
    GpuHourPricing,
    Pricing,
    TokenPricing,
)

pytestmark = pytest.mark.unit

PRICING = TypeAdapter(Pricing)


def test_token_pricing_by_hand() -> None:
    model = CostModel(TokenPricing(prompt_usd_per_1k_tokens=0.5, completion_usd_per_1k_tokens=1.5))
    # 1200 * 0.5/1000 + 300 * 1.5/1000 = 0.6 + 0.45
    assert model.cost_usd(1200, 300) == pytest.approx(1.05)
    assert model.cost_usd(0, 0) == 0.0
    assert not model.needs_busy_time


def test_gpu_hour_single_request_pays_all_its_busy_time() -> None:
    pricing = GpuHourPricing(usd_per_gpu_hour=3.6, gpus_per_replica=2)
    assert pricing.usd_per_second == pytest.approx(0.002)  # 3.6 * 2 / 3600
    meter = EngineBusyMeter()
    meter.start("a", now=100.0)
    share = meter.finish("a", now=104.0)
    assert share == pytest.approx(4.0)
    model = CostModel(pricing)
    assert model.needs_busy_time
    assert model.cost_usd(10, 20, busy_share_seconds=share) == pytest.approx(0.008)


def test_overlapping_requests_split_busy_time_and_idle_is_free() -> None:
    meter = EngineBusyMeter()
    # a: [0, 4], b: [2, 6], idle [6, 10], c: [10, 11]
    meter.start("a", now=0.0)
    meter.start("b", now=2.0)
    a = meter.finish("a", now=4.0)  # 2 s alone + 2 s shared with b -> 2 + 1
    b = meter.finish("b", now=6.0)  # 2 s shared with a + 2 s alone -> 1 + 2
    meter.start("c", now=10.0)
    c = meter.finish("c", now=11.0)
    assert (a, b, c) == pytest.approx((3.0, 3.0, 1.0))
    busy = meter.busy_seconds(now=20.0)
    assert busy == pytest.approx(7.0)  # the idle [6, 10] and [11, 20] are nobody's
    assert a + b + c == pytest.approx(busy)
    assert meter.active_requests == 0


def test_three_way_overlap_shares_sum_to_busy_time() -> None:
    meter = EngineBusyMeter()
    # a: [0, 6], b: [1, 4], c: [2, 3]
    meter.start("a", now=0.0)
    meter.start("b", now=1.0)
    meter.start("c", now=2.0)
    c = meter.finish("c", now=3.0)
    b = meter.finish("b", now=4.0)
    a = meter.finish("a", now=6.0)
    # [0,1] a alone; [1,2] a,b; [2,3] a,b,c; [3,4] a,b; [4,6] a alone
    assert a == pytest.approx(1 + 0.5 + 1 / 3 + 0.5 + 2)
    assert b == pytest.approx(0.5 + 1 / 3 + 0.5)
    assert c == pytest.approx(1 / 3)
    assert a + b + c == pytest.approx(meter.busy_seconds(now=6.0)) == pytest.approx(6.0)


def test_meter_uses_monotonic_clock_by_default() -> None:
    meter = EngineBusyMeter()
    meter.start("a")
    assert meter.active_requests == 1
    assert meter.finish("a") >= 0.0


def test_meter_rejects_misuse() -> None:
    meter = EngineBusyMeter()
    meter.start("a", now=5.0)
    with pytest.raises(CostInputError) as dup:
        meter.start("a", now=6.0)
    assert dup.value.param == "request_id"
    with pytest.raises(CostInputError, match="was not started"):
        meter.finish("zzz", now=6.0)
    with pytest.raises(CostInputError, match="time went backwards") as back:
        meter.finish("a", now=4.0)
    assert back.value.value == 4.0
    assert meter.finish("a", now=7.0) == pytest.approx(2.0)  # state intact after the errors


def test_gpu_pricing_never_records_zero_without_busy_time() -> None:
    model = CostModel(GpuHourPricing(usd_per_gpu_hour=2.0))
    with pytest.raises(CostInputError) as err:
        model.cost_usd(100, 100)
    assert err.value.param == "busy_share_seconds"
    with pytest.raises(ValidationError, match="usd_per_gpu_hour"):
        GpuHourPricing(usd_per_gpu_hour=0)


def test_negative_counts_are_rejected_by_name() -> None:
    model = CostModel(TokenPricing(prompt_usd_per_1k_tokens=1, completion_usd_per_1k_tokens=1))
    with pytest.raises(CostInputError, match="completion_tokens must be >= 0; got -1") as err:
        model.cost_usd(1, -1)
    assert (err.value.param, err.value.value) == ("completion_tokens", -1)


def test_discriminated_union_selects_mode() -> None:
    tok = PRICING.validate_python(
        {"mode": "token", "prompt_usd_per_1k_tokens": 0.1, "completion_usd_per_1k_tokens": 0.2}
    )
    gpu = PRICING.validate_python({"mode": "gpu_hour", "usd_per_gpu_hour": 2.5, "gpus_per_replica": 0.5})
    assert isinstance(tok, TokenPricing) and isinstance(gpu, GpuHourPricing)
    assert gpu.usd_per_second == pytest.approx(2.5 * 0.5 / 3600)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"mode": "gpu_hour", "usd_per_gpu_hour": 2, "gpu_per_replica": 1}, "gpu_per_replica"),
        ({"mode": "gpu_hour", "usd_per_gpu_hour": 2, "gpus_per_replica": 17}, "gpus_per_replica"),
        (
            {"mode": "token", "prompt_usd_per_1k_tokens": -1, "completion_usd_per_1k_tokens": 1},
            "prompt_usd_per_1k_tokens",
        ),
        ({"mode": "token", "prompt_usd_per_1k_tokens": 0, "completion_usd_per_1k_tokens": 0}, "both 0"),
        ({"mode": "flat", "usd": 1}, "mode"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        PRICING.validate_python(data)
