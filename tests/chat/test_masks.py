"""Masks and position ids: vectorised buffers equal the seed's prefill loops; decode follows the export."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.masks import MASKED, MaskBuffers


def seed_prefill_mask(length, seqlen):
    """chatglm4.py forward_first, verbatim algorithm (labelled baseline)."""
    mask = np.zeros(seqlen * seqlen, np.float16) - 1000.0
    for i in range(length):
        for j in range(i + 1):
            mask[i * seqlen + j] = 0
    return mask.reshape(seqlen, seqlen)


def seed_positions(length, seqlen):
    positions = np.zeros(seqlen, np.int32)
    positions[:length] = range(length)
    return positions


def test_prefill_mask_and_positions_equal_the_seed_for_any_length_and_buffer_reuse():
    buffers = MaskBuffers(48)
    for length in (48, 1, 17, 30, 2, 47):  # longer then shorter: stale values must not survive
        np.testing.assert_array_equal(buffers.prefill_mask(length), seed_prefill_mask(length, 48))
        np.testing.assert_array_equal(buffers.prefill_positions(length), seed_positions(length, 48))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=32), min_size=1, max_size=8))
def test_prefill_mask_is_right_after_any_sequence_of_lengths(lengths):
    buffers = MaskBuffers(32)
    for length in lengths:
        np.testing.assert_array_equal(buffers.prefill_mask(length), seed_prefill_mask(length, 32))


def test_decode_mask_attends_filled_slots_and_the_current_token_only():
    buffers = MaskBuffers(8)
    assert buffers.decode_mask(3).tolist() == [0, 0, 0, MASKED, MASKED, MASKED, MASKED, MASKED, 0]
    assert buffers.decode_mask(8).tolist() == [0] * 9
    assert buffers.decode_mask(0).tolist() == [MASKED] * 8 + [0]
    assert buffers.decode_position(5).tolist() == [5]


def test_lengths_outside_seqlen_are_refused():
    buffers = MaskBuffers(8)
    with pytest.raises(ValueError):
        buffers.prefill_mask(9)
    with pytest.raises(ValueError):
        buffers.prefill_mask(0)
    with pytest.raises(ValueError):
        buffers.decode_position(8)


def test_masked_is_exact_in_fp16_and_kills_softmax_weight():
    assert float(np.float16(MASKED)) == MASKED
    scores = np.array([3.0, 2.0 + MASKED], dtype=np.float32)
    weights = np.exp(scores - scores.max())
    assert weights[1] / weights.sum() < 1e-300 or weights[1] == 0.0
