"""Frame encoding of the isolation protocol: round trips, splitting, corruption."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.runtime.isolate.protocol import (
    MAX_FRAME,
    Body,
    Cancel,
    Chunk,
    Done,
    Forked,
    FrameError,
    FrameReader,
    Head,
    Spec,
    Start,
    decode_control,
    encode_control,
    encode_frame,
    encode_frames,
)

ids = st.integers(min_value=0, max_value=2**63 - 1)
text = st.text(max_size=20)
pairs = st.lists(st.tuples(text, text), max_size=5)

messages = st.one_of(
    st.builds(
        Start, ids, text, text, pairs, st.none() | text, st.none(), text, text,
        st.binary(max_size=64), st.booleans(),
    ),
    st.builds(Body, ids, st.binary(max_size=64), st.booleans()),
    st.builds(Cancel, ids),
    st.builds(Head, ids, st.integers(200, 599), pairs, st.binary(max_size=64), st.booleans()),
    st.builds(Chunk, ids, st.binary(max_size=64), st.booleans()),
    st.builds(
        Done, ids, text, st.floats(0, 1e6), st.floats(0, 1e6), text, text, st.booleans()
    ),
)  # fmt: skip


@given(st.lists(messages, max_size=8), st.integers(min_value=1, max_value=7))
def test_frames_round_trip_however_the_stream_is_split(batch, step):
    data = encode_frames(batch)
    reader = FrameReader()
    out = []
    for i in range(0, len(data), step):
        out += reader.feed(data[i : i + step])
    assert out == batch
    assert reader.pending == 0


def test_one_frame_equals_a_batch_of_one():
    message = Cancel(7)
    assert encode_frame(message) == encode_frames([message])


def test_oversized_length_prefix_is_rejected():
    with pytest.raises(FrameError, match="exceeds"):
        FrameReader().feed((MAX_FRAME + 1).to_bytes(4, "big"))


def test_garbage_payload_is_rejected():
    with pytest.raises(FrameError, match="undecodable"):
        FrameReader().feed(b"\x00\x00\x00\x02\xff\xff")


def test_control_messages_round_trip():
    spec = Spec(
        name="a", code_root="/c", main="app.py", state_dir="/s", environ={"PATH": "/bin"},
        vars={"X": [1, "y"]}, secrets={"S": "v"}, bindings=[], cpu_ms=50, wall_ms=1000,
        memory_mb=128, max_concurrency=4, uid=200001, gid=200001,
    )  # fmt: skip
    assert decode_control(encode_control(spec)) == spec
    assert decode_control(encode_control(Forked(12))) == Forked(12)
    with pytest.raises(FrameError):
        decode_control(b"\xc1")
