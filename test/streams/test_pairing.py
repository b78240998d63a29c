"""Tests of cldyn_ros.streams.pairing: approximate-time pairing of colour and thermal frames."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cldyn_ros.streams.pairing import ApproximateTimePairer, Frame, Pair, PairingStats

MS = 1_000_000  # nanoseconds per millisecond


def color(stamp_ms: float, tag: str = "") -> Frame:
    return Frame(stamp_ns=round(stamp_ms * MS), data=tag or f"c{stamp_ms}", frame_id="camera")


def thermal(stamp_ms: float, tag: str = "") -> Frame:
    return Frame(stamp_ns=round(stamp_ms * MS), data=tag or f"t{stamp_ms}", frame_id="thermal")


def stamps_ms(pairs: list[Pair]) -> list[tuple[float, float]]:
    return [(p.color.stamp_ns / MS, p.thermal.stamp_ns / MS) for p in pairs]


def assert_accounted(stats: PairingStats, pending: int = 0) -> None:
    """Every received frame has exactly one outcome."""
    outcomes = (
        2 * stats.pairs + stats.color_unmatched + stats.thermal_unused + stats.out_of_order
        + stats.stale + stats.overflow + stats.discarded + pending
    )
    assert stats.color_received + stats.thermal_received == outcomes, stats


def reference_pairs(colors: list[int], thermals: list[int], slop_ns: int) -> list[tuple[int, int]]:
    """Brute force: each colour frame, in order, takes the nearest thermal frame newer than the
    last one used (older ones are gone), if within slop; ties go to the older one."""
    pairs = []
    first_free = 0
    for c in colors:
        candidates = range(first_free, len(thermals))
        if not candidates:
            continue
        best = min(candidates, key=lambda i: (abs(c - thermals[i]), thermals[i]))
        if abs(c - thermals[best]) <= slop_ns:
            pairs.append((c, thermals[best]))
            first_free = best + 1
    return pairs


def make_stream(rate_hz: float, duration_s: float, jitter_ms: float, rng: np.random.Generator,
                gaps_ms: tuple[tuple[float, float], ...] = ()) -> list[int]:
    """In-order stamps in ns at ``rate_hz`` with uniform jitter, minus frames in the gaps."""
    period_ms = 1000.0 / rate_hz
    n = int(duration_s * rate_hz)
    base = 1_000.0 + np.arange(n) * period_ms  # start at 1 s: stamps are never near 0
    stamps = base + rng.uniform(-jitter_ms, jitter_ms, n)
    keep = np.ones(n, bool)
    for lo, hi in gaps_ms:
        keep &= ~((stamps >= 1_000.0 + lo) & (stamps < 1_000.0 + hi))
    return [round(s * MS) for s in stamps[keep]]


def arrival_order(color_ns: list[int], thermal_ns: list[int], color_latency_ms: float,
                  thermal_latency_ms: float, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Merge both streams by arrival time (stamp + jittered latency, in order per stream)."""
    events = []
    for kind, stamps, latency in (("color", color_ns, color_latency_ms),
                                  ("thermal", thermal_ns, thermal_latency_ms)):
        last = -1
        for s in stamps:
            arrival = max(last + 1, s + round(latency * MS * rng.uniform(0.5, 1.5)))
            events.append((arrival, kind, s))
            last = arrival
    events.sort()
    return [(kind, s) for _, kind, s in events]


def replay(pairer: ApproximateTimePairer, events: list[tuple[str, int]]) -> list[Pair]:
    pairs = []
    for kind, s in events:
        if kind == "color":
            pairs += pairer.add_color(Frame(s, f"c{s}"))
        else:
            pairs += pairer.add_thermal(Frame(s, f"t{s}"))
    return pairs


def check_pairs(pairs: list[Pair], slop_ns: int) -> None:
    """Properties every output must have: in colour order, each thermal once, within slop."""
    colors = [p.color.stamp_ns for p in pairs]
    thermals = [p.thermal.stamp_ns for p in pairs]
    assert colors == sorted(set(colors)), "pairs must come in strictly increasing colour order"
    assert thermals == sorted(set(thermals)), "each thermal frame is used once, in order"
    for p in pairs:
        assert p.gap_ns == p.color.stamp_ns - p.thermal.stamp_ns
        assert abs(p.gap_ns) <= slop_ns
        assert p.color.data == f"c{p.color.stamp_ns}" and p.thermal.data == f"t{p.thermal.stamp_ns}"


# --- basic decisions --------------------------------------------------------------------------

def test_pairs_as_soon_as_a_newer_thermal_frame_arrives():
    pairer = ApproximateTimePairer(slop_s=0.02)
    assert pairer.add_thermal(thermal(995)) == []
    assert pairer.add_color(color(1000)) == []  # a nearer thermal frame may still come
    pairs = pairer.add_thermal(thermal(1003))
    assert stamps_ms(pairs) == [(1000, 1003)]
    assert pairs[0].gap_ns == -3 * MS
    assert pairs[0].color.frame_id == "camera" and pairs[0].thermal.frame_id == "thermal"
    stats = pairer.stats
    assert (stats.pairs, stats.thermal_unused, stats.color_unmatched) == (1, 1, 0)
    assert pairer.pending_color == 0 and pairer.pending_thermal == 0


def test_older_thermal_frame_wins_when_it_is_nearer():
    pairer = ApproximateTimePairer(slop_s=0.02)
    pairer.add_thermal(thermal(997))
    pairer.add_color(color(1000))
    assert stamps_ms(pairer.add_thermal(thermal(1012))) == [(1000, 997)]
    assert pairer.pending_thermal == 1  # 1012 may still pair with the next colour frame


def test_colour_arriving_after_its_thermal_frames_is_paired_at_once():
    pairer = ApproximateTimePairer(slop_s=0.02)
    for t in (980, 990, 1001, 1011):
        pairer.add_thermal(thermal(t))
    assert stamps_ms(pairer.add_color(color(1000))) == [(1000, 1001)]
    assert pairer.stats.thermal_unused == 2  # 980 and 990 are older than the one used
    assert pairer.pending_thermal == 1


def test_unmatched_when_thermal_stream_passes_beyond_slop():
    pairer = ApproximateTimePairer(slop_s=0.02)
    pairer.add_color(color(1000))
    assert pairer.add_thermal(thermal(1050)) == []
    assert pairer.stats.color_unmatched == 1
    assert pairer.pending_color == 0


def test_waiting_colour_frame_is_decided_when_thermal_frames_can_no_longer_come():
    # The thermal stream is silent; once the colour stream has moved on by more than
    # max_delay + slop, a thermal frame near 1000 would be stale, so the frame is decided.
    pairer = ApproximateTimePairer(slop_s=0.02, max_delay_s=0.1)
    pairer.add_thermal(thermal(985))  # within slop, but a nearer one could still come
    pairer.add_color(color(1000))
    assert pairer.add_color(color(1100)) == []
    assert pairer.pending_color == 2
    # Horizon 1120 - 100 = 1020: a thermal frame still to come is >= 20 ms from 1000, farther
    # than 985.
    pairs = pairer.add_color(color(1120))
    assert stamps_ms(pairs) == [(1000, 985)]
    # With no thermal frame left, 1100 is unmatched once the horizon passes 1100 + slop.
    assert pairer.add_color(color(1220)) == []
    assert pairer.stats.color_unmatched == 0
    pairer.add_color(color(1221))
    assert pairer.stats.color_unmatched == 1
    assert pairer.pending_color == 3  # 1120, 1220, 1221
    assert stamps_ms(pairer.flush()) == []
    assert pairer.stats.color_unmatched == 4
    assert_accounted(pairer.stats)


def test_thermal_used_once_and_later_colour_goes_unmatched():
    # Slower thermal: two colour frames near one thermal frame; the first one takes it.
    pairer = ApproximateTimePairer(slop_s=0.02)
    pairer.add_color(color(1000))
    pairer.add_color(color(1010))
    # For 1000 no later thermal frame can beat 1008: paired at once (greedy, although 1010
    # would have been nearer).
    assert stamps_ms(pairer.add_thermal(thermal(1008))) == [(1000, 1008)]
    assert pairer.pending_color == 1  # 1010 waits: a thermal frame may still come at 1010
    assert pairer.add_thermal(thermal(1100)) == []
    assert pairer.stats.color_unmatched == 1  # 1010 had nothing left within slop
    assert_accounted(pairer.stats, pending=pairer.pending_thermal)


# --- realistic streams ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("color_latency_ms", "thermal_latency_ms"),
    [(30.0, 5.0), (5.0, 40.0), (10.0, 10.0)],
    ids=["colour-later", "thermal-later", "similar"],
)
def test_thermal_60hz_colour_30hz_with_jitter_and_gaps(color_latency_ms, thermal_latency_ms):
    rng = np.random.default_rng(1234)
    slop_ns = 20 * MS
    colors = make_stream(30, 10, jitter_ms=2.0, rng=rng, gaps_ms=((3000, 3300),))
    thermals = make_stream(60, 10, jitter_ms=2.0, rng=rng, gaps_ms=((6000, 6500),))
    events = arrival_order(colors, thermals, color_latency_ms, thermal_latency_ms, rng)

    # The queues must cover the gaps: colour frames wait up to max_delay for a thermal frame
    # during a thermal gap, thermal frames wait for the next colour frame in a colour gap.
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=40, max_delay_s=0.5)
    pairs = replay(pairer, events)
    pairs += pairer.flush()

    check_pairs(pairs, slop_ns)
    expected = reference_pairs(colors, thermals, slop_ns)
    assert [(p.color.stamp_ns, p.thermal.stamp_ns) for p in pairs] == expected
    # Every chosen thermal frame is the nearest of the whole thermal stream: at 60 Hz none is
    # taken twice in the competition.
    thermal_arr = np.array(thermals)
    for p in pairs:
        nearest = thermal_arr[np.argmin(np.abs(thermal_arr - p.color.stamp_ns))]
        assert p.thermal.stamp_ns == nearest
    stats = pairer.stats
    unmatched_in_gap = sum(1 for c in colors if 5_980 * MS <= c - 1_000 * MS < 6_520 * MS)
    assert stats.pairs == len(colors) - stats.color_unmatched
    assert 0 < stats.color_unmatched <= unmatched_in_gap
    assert stats.out_of_order == stats.stale == stats.overflow == 0
    assert stats.thermal_unused == len(thermals) - stats.pairs
    assert_accounted(stats)


def test_slower_thermal_than_colour():
    rng = np.random.default_rng(7)
    slop_ns = 15 * MS
    colors = make_stream(30, 5, jitter_ms=1.0, rng=rng)
    thermals = make_stream(9, 5, jitter_ms=1.0, rng=rng)
    events = arrival_order(colors, thermals, 10.0, 20.0, rng)
    pairer = ApproximateTimePairer(slop_s=0.015)
    pairs = replay(pairer, events) + pairer.flush()
    check_pairs(pairs, slop_ns)
    assert [(p.color.stamp_ns, p.thermal.stamp_ns) for p in pairs] == reference_pairs(
        colors, thermals, slop_ns
    )
    stats = pairer.stats
    assert stats.pairs <= len(thermals)
    assert stats.color_unmatched == len(colors) - stats.pairs > len(colors) // 2
    assert_accounted(stats)


def test_pending_queues_stay_bounded_on_long_streams():
    rng = np.random.default_rng(3)
    colors = make_stream(30, 20, jitter_ms=2.0, rng=rng)
    thermals = make_stream(60, 20, jitter_ms=2.0, rng=rng)
    pairer = ApproximateTimePairer(queue_size=10)
    most = 0
    for kind, s in arrival_order(colors, thermals, 30.0, 5.0, rng):
        if kind == "color":
            pairer.add_color(Frame(s, None))
        else:
            pairer.add_thermal(Frame(s, None))
        most = max(most, pairer.pending_color + pairer.pending_thermal)
    assert most <= 6  # only frames that may still pair are kept
    assert pairer.stats.overflow == 0


# --- dropped frames ---------------------------------------------------------------------------

def test_out_of_order_frames_are_dropped_and_counted():
    pairer = ApproximateTimePairer()
    pairer.add_color(color(1000))
    assert pairer.add_color(color(990)) == []
    assert pairer.add_color(color(1000)) == []  # same stamp: not newer
    pairer.add_thermal(thermal(995))
    assert pairer.add_thermal(thermal(995)) == []
    assert pairer.stats.out_of_order == 3
    assert stamps_ms(pairer.add_thermal(thermal(1004))) == [(1000, 1004)]
    assert_accounted(pairer.stats, pending=pairer.pending_color + pairer.pending_thermal)


def test_stale_frames_are_dropped_and_counted():
    pairer = ApproximateTimePairer(slop_s=0.02, max_delay_s=0.5)
    pairer.add_color(color(2000))
    assert pairer.add_thermal(thermal(1499)) == []  # older than 2000 - 500
    assert pairer.stats.stale == 1
    pairer.add_thermal(thermal(1500))  # exactly at the horizon: accepted
    assert pairer.stats.stale == 1
    pairer.add_thermal(thermal(2600))  # newest is now 2600: colour frames before 2100 are stale
    assert pairer.add_color(color(2050)) == []
    assert pairer.stats.stale == 2
    assert pairer.stats.out_of_order == 0
    assert_accounted(pairer.stats, pending=pairer.pending_color + pairer.pending_thermal)


def test_colour_queue_overflow_drops_oldest():
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=3, max_delay_s=100.0)
    pairer.add_thermal(thermal(990))  # keeps every colour frame undecidable
    for c in (1000, 1001, 1002, 1003, 1004):
        pairer.add_color(color(c))
    assert pairer.stats.overflow == 2
    assert pairer.pending_color == 3
    pairs = pairer.add_thermal(thermal(1003))
    # 1000 and 1001 were evicted; 1002 takes 1003 (nearer than 990, which is now unused);
    # 1003 and 1004 wait, as a thermal frame at 1004 or later may still come.
    assert stamps_ms(pairs) == [(1002, 1003)]
    assert_accounted(pairer.stats, pending=pairer.pending_color + pairer.pending_thermal)


def test_thermal_queue_overflow_drops_oldest():
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=4, max_delay_s=100.0)
    for t in range(1000, 1060, 10):  # 6 frames, no colour frame yet: all may still pair
        pairer.add_thermal(thermal(t))
    assert pairer.stats.overflow == 2
    assert pairer.pending_thermal == 4
    assert stamps_ms(pairer.add_color(color(1000))) == [(1000, 1020)]  # 1000, 1010 evicted


# --- flush and reset --------------------------------------------------------------------------

def test_flush_decides_everything_waiting():
    pairer = ApproximateTimePairer(slop_s=0.02, max_delay_s=10.0)
    pairer.add_thermal(thermal(995))
    pairer.add_color(color(1000))
    pairer.add_color(color(1033))
    pairer.add_thermal(thermal(1020))  # 1000 -> 995 (nearer than 1020)
    pairer.add_thermal(thermal(1030))
    assert pairer.pending_color == 1 and pairer.pending_thermal == 2
    pairs = pairer.flush()
    assert stamps_ms(pairs) == [(1033, 1030)]
    assert pairer.pending_color == pairer.pending_thermal == 0
    stats = pairer.stats
    assert stats.pairs == 2 and stats.thermal_unused == 1
    assert_accounted(stats)
    # The last stamps survive a flush: older frames are still out of order.
    pairer.add_color(color(900))
    assert pairer.stats.out_of_order == 1


def test_flush_counts_unmatched_colour_and_unused_thermal():
    pairer = ApproximateTimePairer(slop_s=0.01, max_delay_s=10.0)
    pairer.add_thermal(thermal(950))
    pairer.add_color(color(1000))
    pairer.add_thermal(thermal(960))
    assert stamps_ms(pairer.flush()) == []
    stats = pairer.stats
    assert (stats.color_unmatched, stats.thermal_unused) == (1, 2)
    assert_accounted(stats)


def test_reset_discards_waiting_frames_and_accepts_older_stamps():
    pairer = ApproximateTimePairer(slop_s=0.02)
    pairer.add_thermal(thermal(5000))
    pairer.add_color(color(5010))
    pairer.reset()
    assert pairer.pending_color == pairer.pending_thermal == 0
    assert pairer.stats.discarded == 2
    # A bag loop starts again from an older stamp: accepted after the reset.
    pairer.add_color(color(1000))
    assert stamps_ms(pairer.add_thermal(thermal(1001))) == [(1000, 1001)]
    stats = pairer.stats
    assert stats.out_of_order == stats.stale == 0
    assert stats.color_received == stats.thermal_received == 2
    assert_accounted(stats)


# --- API --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs",
    [
        {"slop_s": -0.01},
        {"slop_s": float("nan")},
        {"slop_s": "0.02"},
        {"queue_size": 0},
        {"queue_size": 2.5},
        {"queue_size": True},
        {"max_delay_s": 0.0},
        {"max_delay_s": float("inf")},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ApproximateTimePairer(**kwargs)


def test_properties_stats_snapshot_and_repr():
    pairer = ApproximateTimePairer(slop_s=0.015, queue_size=7, max_delay_s=0.25)
    assert (pairer.slop_s, pairer.queue_size, pairer.max_delay_s) == (0.015, 7, 0.25)
    assert "slop_s=0.015" in repr(pairer)
    snapshot = pairer.stats
    pairer.add_color(color(1000))
    assert snapshot.color_received == 0  # a copy, not a live view
    stats = pairer.stats.as_dict()
    assert stats["color_received"] == 1
    assert set(stats) == {
        "color_received", "thermal_received", "pairs", "color_unmatched", "thermal_unused",
        "out_of_order", "stale", "overflow", "discarded",
    }
    assert all(isinstance(v, int) for v in stats.values())


def test_zero_slop_pairs_identical_stamps_only():
    pairer = ApproximateTimePairer(slop_s=0.0)
    pairer.add_color(color(1000))
    assert stamps_ms(pairer.add_thermal(thermal(1000))) == [(1000, 1000)]
    pairer.add_color(color(1033))
    pairer.add_thermal(thermal(1034))
    assert pairer.stats.color_unmatched == 1


def test_two_threads_adding_concurrently():
    rng = np.random.default_rng(99)
    colors = make_stream(30, 10, jitter_ms=2.0, rng=rng)
    thermals = make_stream(60, 10, jitter_ms=2.0, rng=rng)
    # Generous bounds: whatever the interleaving, nothing is stale or evicted, so the result
    # must equal the reference exactly.
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=10_000, max_delay_s=1_000.0)
    results: dict[str, list[Pair]] = {"color": [], "thermal": []}
    start = threading.Barrier(2)

    def feed(kind: str, stamps: list[int]) -> None:
        add = pairer.add_color if kind == "color" else pairer.add_thermal
        start.wait()
        for s in stamps:
            results[kind].extend(add(Frame(s, f"{kind[0]}{s}")))

    threads = [threading.Thread(target=feed, args=("color", colors)),
               threading.Thread(target=feed, args=("thermal", thermals))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
        assert not t.is_alive()
    flushed = pairer.flush()
    for part in (results["color"], results["thermal"], flushed):
        check_pairs(part, 20 * MS)
    pairs = sorted(results["color"] + results["thermal"] + flushed, key=lambda p: p.color.stamp_ns)
    check_pairs(pairs, 20 * MS)
    assert [(p.color.stamp_ns, p.thermal.stamp_ns) for p in pairs] == reference_pairs(
        colors, thermals, 20 * MS
    )
    assert_accounted(pairer.stats)
