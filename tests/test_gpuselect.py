"""GPU selection is pure: hand-written snapshots in, devices out, no NVML anywhere."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpurouter.gpu.nvml import GpuSnapshot
from gpurouter.gpu.selection import eligible, fits, pick, score


def gpu(
    index: int, free: int | None, total: int | None = 16000, util: float | None = 0, uuid: str | None = None
) -> GpuSnapshot:
    used = None if free is None or total is None else total - free
    return GpuSnapshot(
        index=index,
        uuid=uuid or f"GPU-{index}",
        name="test",
        memory_total_mib=total,
        memory_used_mib=used,
        memory_free_mib=free,
        utilization_percent=util,
    )


@pytest.mark.parametrize(
    ("device", "promised_mib", "expected"),
    [
        pytest.param(gpu(0, free=16000, util=0), 0, 1.0, id="empty-idle-gpu-scores-1"),
        pytest.param(gpu(0, free=0, util=100), 0, 0.0, id="full-busy-gpu-scores-0"),
        pytest.param(gpu(0, free=8000, util=50), 0, 0.5, id="half-free-half-busy"),
        pytest.param(gpu(0, free=16000, util=None), 0, 0.8, id="unknown-utilization-counts-half-idle"),
        pytest.param(gpu(0, free=None, util=0), 0, 0.4, id="unknown-free-memory-scores-0-on-memory"),
        pytest.param(gpu(0, free=None, total=None, util=None), 0, 0.2, id="all-unknown"),
        pytest.param(gpu(0, free=0, total=0, util=0), 0, 0.4, id="zero-total-memory-is-not-a-division-error"),
        pytest.param(gpu(0, free=16000, util=0), 8000, 0.7, id="promised-mib-counts-as-used"),
        pytest.param(gpu(0, free=1000, util=0), 8000, 0.4, id="over-promised-memory-bottoms-out-at-0"),
    ],
)
def test_score_weighs_free_memory_0_6_and_idleness_0_4(
    device: GpuSnapshot, promised_mib: int, expected: float
) -> None:
    assert score(device, promised_mib) == pytest.approx(expected)


def test_a_known_idle_gpu_outscores_one_of_unknown_utilization_which_outscores_a_busy_one() -> None:
    idle, unknown, busy = gpu(0, 8000, util=10), gpu(1, 8000, util=None), gpu(2, 8000, util=90)

    assert score(idle) > score(unknown) > score(busy)


@pytest.mark.parametrize(
    ("free", "need", "cushion", "promised", "expected"),
    [
        pytest.param(4000, 3744, 256, 0, True, id="exactly-need-plus-cushion-fits"),
        pytest.param(3999, 3744, 256, 0, False, id="one-mib-short-does-not-fit"),
        pytest.param(4000, 4000, 256, 0, False, id="the-cushion-counts"),
        pytest.param(8000, 3744, 256, 4000, True, id="promised-mib-counts-but-room-remains"),
        pytest.param(8000, 3744, 256, 4001, False, id="promised-mib-counts"),
        pytest.param(None, 0, 0, 0, False, id="unknown-free-never-fits"),
        pytest.param(0, 0, 0, 0, True, id="nothing-needed-fits-a-full-gpu"),
    ],
)
def test_fits_when_free_minus_promised_covers_need_plus_cushion(
    free: int | None, need: int, cushion: int, promised: int, expected: bool
) -> None:
    assert fits(gpu(0, free), need, cushion, promised) is expected


FOUR = [
    gpu(0, 2000, util=0, uuid="GPU-a"),
    gpu(1, 12000, util=30, uuid="GPU-b"),
    gpu(2, 14000, util=95, uuid="GPU-c"),
    gpu(3, 12000, util=40, uuid="GPU-d"),
]


@pytest.mark.parametrize(
    ("devices_filter", "indexes"),
    [
        pytest.param(None, [0, 1, 2, 3], id="no-filter-allows-all"),
        pytest.param((2, 0), [0, 2], id="by-index-in-device-order"),
        pytest.param(("GPU-d",), [3], id="by-uuid"),
        pytest.param(("1", "GPU-a"), [0, 1], id="digit-string-is-an-index"),
        pytest.param((7, "GPU-zzz"), [], id="unknown-devices-match-nothing"),
        pytest.param((), [], id="empty-filter-allows-none"),
    ],
)
def test_eligible_keeps_the_devices_named_by_index_or_uuid(
    devices_filter: tuple[int | str, ...] | None, indexes: list[int]
) -> None:
    assert [g.index for g in eligible(FOUR, devices_filter)] == indexes


@pytest.mark.parametrize(
    ("gpus", "kwargs", "indexes"),
    [
        pytest.param(FOUR, {"need_mib": 1000, "select": "score"}, [1], id="4-gpus-best-score-wins"),
        pytest.param(
            [gpu(1, 8000), gpu(0, 8000)],
            {"need_mib": 1000, "select": "score"},
            [0],
            id="score-ties-go-to-the-lower-index",
        ),
        pytest.param(FOUR, {"need_mib": 13000, "select": "score"}, [2], id="only-the-busy-one-has-room"),
        pytest.param(FOUR, {"need_mib": 1000, "select": "first"}, [0], id="first-takes-the-lowest-index"),
        pytest.param(
            FOUR, {"need_mib": 5000, "select": "first"}, [1], id="first-passes-over-what-does-not-fit"
        ),
        pytest.param(
            FOUR,
            {"need_mib": 1000, "select": "round-robin", "rotation": 2},
            [2],
            id="round-robin-starts-at-the-rotation",
        ),
        pytest.param(
            FOUR,
            {"need_mib": 1000, "select": "round-robin", "rotation": 9},
            [1],
            id="round-robin-wraps-the-rotation",
        ),
        pytest.param(
            FOUR,
            {"need_mib": 5000, "select": "round-robin", "rotation": 4},
            [1],
            id="round-robin-passes-over-what-does-not-fit",
        ),
        pytest.param(
            FOUR,
            {"need_mib": 1000, "select": "round-robin", "rotation": 3, "count": 2},
            [0, 3],
            id="round-robin-pair-wraps-and-comes-back-by-index",
        ),
        pytest.param(
            FOUR, {"need_mib": 10000, "select": "score", "count": 2}, [1, 3], id="two-need-two-that-fit"
        ),
        pytest.param(
            FOUR,
            {"need_mib": 13000, "select": "score", "count": 2},
            None,
            id="two-needed-but-one-fits-gives-none",
        ),
        pytest.param(FOUR, {"need_mib": 1000, "select": "first", "count": 4}, [0, 1, 2, 3], id="all-four"),
        pytest.param(
            FOUR, {"need_mib": 10000, "select": "first", "promised": {1: 3000}}, [2], id="promised-mib-counts"
        ),
        pytest.param(
            FOUR,
            {"need_mib": 1000, "select": "score", "promised": {1: 9000}},
            [3],
            id="promised-mib-lowers-the-score",
        ),
        pytest.param(
            [gpu(0, None), gpu(1, 500)],
            {"need_mib": None, "select": "first"},
            [0],
            id="no-stated-need-takes-even-unknown-memory",
        ),
        pytest.param(
            [gpu(0, None), gpu(1, 500)],
            {"need_mib": 0, "select": "first"},
            [1],
            id="unknown-free-never-fits-a-stated-need",
        ),
        pytest.param([], {"need_mib": 0, "select": "score"}, None, id="no-gpus-gives-none"),
        pytest.param(
            FOUR, {"need_mib": 99999, "select": "first", "count": 0}, [], id="count-zero-gives-empty"
        ),
    ],
)
def test_pick_chooses_devices_that_fit_all_or_nothing(
    gpus: list[GpuSnapshot], kwargs: dict[str, Any], indexes: list[int] | None
) -> None:
    chosen = pick(gpus, cushion_mib=256, **kwargs)

    assert (None if chosen is None else [g.index for g in chosen]) == indexes


def test_a_multi_gpu_pick_comes_back_in_index_order_whatever_the_ranking() -> None:
    best_last = [gpu(0, 9000, util=90), gpu(1, 15000, util=0), gpu(2, 16000, util=0)]  # ranked 2, 1, 0

    chosen = pick(best_last, need_mib=1000, cushion_mib=0, select="score", count=2)

    assert chosen is not None and [g.index for g in chosen] == [1, 2]


def test_pick_leaves_its_input_untouched_and_accepts_any_iterable() -> None:
    devices = list(reversed(FOUR))

    chosen = pick(iter(devices), need_mib=1000, cushion_mib=0, select="first")

    assert devices == list(reversed(FOUR))
    assert chosen == [FOUR[0]]


@pytest.mark.parametrize(
    ("select", "count"), [("best", 1), ("score", -1)], ids=["unknown-select", "negative-count"]
)
def test_pick_rejects_a_select_mode_or_count_it_does_not_know(select: str, count: int) -> None:
    with pytest.raises(ValueError):
        pick(FOUR, need_mib=0, cushion_mib=0, select=select, count=count)


snapshots = st.lists(
    st.builds(
        gpu,
        index=st.integers(0, 7),
        free=st.none() | st.integers(0, 24000),
        util=st.none() | st.integers(0, 100),
    ),
    max_size=8,
    unique_by=lambda g: g.index,
)


@settings(max_examples=300, database=None, deadline=None)
@given(
    gpus=snapshots,
    need=st.none() | st.integers(0, 24000),
    cushion=st.integers(0, 1024),
    select=st.sampled_from(["score", "first", "round-robin"]),
    count=st.integers(0, 4),
    rotation=st.integers(0, 20),
)
def test_pick_gives_count_distinct_fitting_devices_in_index_order_or_none_exactly_when_too_few_fit(
    gpus: list[GpuSnapshot], need: int | None, cushion: int, select: str, count: int, rotation: int
) -> None:
    chosen = pick(gpus, need, cushion, select, count=count, rotation=rotation)
    fitting = [g for g in gpus if need is None or fits(g, need, cushion)]

    if len(fitting) < count:
        assert chosen is None
    else:
        assert chosen is not None and len(chosen) == count
        assert [g.index for g in chosen] == sorted({g.index for g in chosen})
        assert all(g in fitting for g in chosen)
