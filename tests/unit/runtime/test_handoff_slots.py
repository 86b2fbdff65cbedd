"""The shared slot table of connection handoff (``runtime.isolate.handoff.Slots``).

Every test maps one real memfd twice, as the zygote's fork does: ``worker`` writes
(begin, responding, end) and ``node`` reads (state, busy, progress) and clears, so
what is asserted is what crosses the shared mapping, not a Python object's state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.runtime.isolate.handoff import MAX_CONNS, SLOTS_BYTES, Slots


@pytest.fixture
def pair() -> Iterator[tuple[Slots, Slots]]:
    """(worker view, node view) of one fresh table."""
    fd = os.memfd_create("edgerun-slots-test")
    try:
        os.ftruncate(fd, SLOTS_BYTES)
        worker, node = Slots(fd), Slots(fd)
    finally:
        os.close(fd)  # the mappings keep the memory alive
    yield worker, node
    worker.close()
    node.close()


def test_a_fresh_table_is_idle_everywhere(pair):
    _worker, node = pair
    assert node.busy == 0
    assert node.progress == 0
    for slot in (0, 1, MAX_CONNS // 2, MAX_CONNS - 1):
        assert node.state(slot) == (0, False)


def test_begin_responding_end_are_seen_by_the_other_view(pair):
    worker, node = pair
    worker.begin(3)
    seq, responding = node.state(3)
    assert seq >= 1 and responding is False
    assert node.busy == 1
    assert node.progress == 0
    worker.responding(3)
    assert node.state(3) == (seq, True)
    assert node.busy == 1
    worker.end(3)
    assert node.state(3) == (0, False)
    assert node.busy == 0
    assert node.progress == 1
    # Neighbouring slots were never touched.
    assert node.state(2) == (0, False) and node.state(4) == (0, False)


def test_the_last_slot_is_usable(pair):
    worker, node = pair
    worker.begin(MAX_CONNS - 1)
    assert node.state(MAX_CONNS - 1)[0] >= 1
    assert node.busy == 1
    worker.end(MAX_CONNS - 1)
    assert node.busy == 0 and node.progress == 1


def test_responding_and_end_on_an_idle_slot_change_nothing(pair):
    worker, node = pair
    worker.responding(5)
    assert node.state(5) == (0, False)
    worker.end(5)
    assert node.state(5) == (0, False)
    assert node.busy == 0
    assert node.progress == 0  # progress counts only requests that began


def test_end_twice_counts_once(pair):
    worker, node = pair
    worker.begin(0)
    worker.end(0)
    worker.end(0)
    assert node.busy == 0
    assert node.progress == 1


def test_busy_counts_slots_in_flight_not_begins(pair):
    worker, node = pair
    worker.begin(0)
    worker.begin(1)
    assert node.busy == 2
    # A second begin on a slot already in flight is the same connection: still 2.
    worker.begin(1)
    assert node.busy == 2
    worker.end(0)
    assert node.busy == 1
    worker.end(1)
    assert node.busy == 0
    assert node.progress == 2


def test_a_new_request_clears_the_responding_bit(pair):
    worker, node = pair
    worker.begin(7)
    worker.responding(7)
    first, _ = node.state(7)
    worker.begin(7)
    second, responding = node.state(7)
    assert responding is False
    assert second > first


def test_the_smallest_seq_is_the_oldest_in_flight_request(pair):
    worker, node = pair
    order = [9, 2, 40, 0, 17]
    for slot in order:
        worker.begin(slot)
    seqs = {slot: node.state(slot)[0] for slot in order}
    assert len(set(seqs.values())) == len(order)  # every request has its own number
    assert sorted(seqs, key=seqs.__getitem__) == order
    # Once the oldest ends, the next oldest is the minimum.
    worker.end(9)
    in_flight = {slot: node.state(slot)[0] for slot in order if node.state(slot)[0]}
    assert min(in_flight, key=in_flight.__getitem__) == 2
    # A slot begun again later is younger than all the others.
    worker.begin(9)
    seqs = {slot: node.state(slot)[0] for slot in order}
    assert max(seqs, key=seqs.__getitem__) == 9


def test_clear_resets_a_slot_for_a_new_connection(pair):
    worker, node = pair
    worker.begin(4)
    worker.responding(4)
    worker.end(4)
    worker.begin(4)
    worker.responding(4)
    node.clear(4)
    assert node.state(4) == (0, False)
    assert worker.state(4) == (0, False)  # the worker's view sees the clear too


def test_clear_of_an_idle_slot_keeps_the_counters(pair):
    worker, node = pair
    worker.begin(1)
    worker.end(1)
    node.clear(1)
    node.clear(2)
    assert node.busy == 0
    assert node.progress == 1


def test_close_unmaps(pair):
    worker, node = pair
    worker.begin(0)
    node.close()
    with pytest.raises(ValueError):
        node.state(0)
    assert worker.state(0)[0] >= 1  # the other view is unaffected


_SLOTS = 4
_ops = st.lists(
    st.tuples(st.sampled_from(["begin", "responding", "end"]), st.integers(0, _SLOTS - 1)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops)
def test_random_sequences_keep_busy_and_progress_consistent(ops):
    fd = os.memfd_create("edgerun-slots-prop")
    try:
        os.ftruncate(fd, SLOTS_BYTES)
        worker, node = Slots(fd), Slots(fd)
    finally:
        os.close(fd)
    try:
        in_flight: dict[int, bool] = {}  # slot -> responding
        ends = 0
        last_seq = 0
        for op, slot in ops:
            if op == "begin":
                worker.begin(slot)
                in_flight[slot] = False
                seq, _ = node.state(slot)
                assert seq > last_seq
                last_seq = seq
            elif op == "responding":
                worker.responding(slot)
                if slot in in_flight:
                    in_flight[slot] = True
            else:
                worker.end(slot)
                if in_flight.pop(slot, None) is not None:
                    ends += 1
            assert node.busy == len(in_flight)
            assert node.progress == ends
            for s in range(_SLOTS):
                seq, responding = node.state(s)
                if s in in_flight:
                    assert seq > 0
                    assert responding is in_flight[s]
                else:
                    assert (seq, responding) == (0, False)
    finally:
        worker.close()
        node.close()
