"""Attention masks and position ids for the exported GLM-4 graphs, built in preallocated numpy buffers.

The export adds the mask to the attention scores before softmax (`scores + mask`, CoreAttention.forward in
sophon-demo's modeling_chatglm.py), so 0 means "attend" and a large negative value means "ignore":

- prefill (`block_i`, mask [1,1,SEQLEN,SEQLEN]): row i attends to columns j <= i for i < L; everything else
  is MASKED (the export traces with -1000 * triu(ones, 1)).
- decode (`block_cache_i`, mask [1,1,1,SEQLEN+1]): the graph concatenates the SEQLEN history slots with the
  current token's key/value, so index SEQLEN is the token itself. Slots [0, filled) hold real history → 0;
  slots [filled, SEQLEN) are empty → MASKED; index SEQLEN (the current token) → 0.

The seed (chatglm4.py) instead writes `1` on [0, SEQLEN - token_length] and 0 elsewhere: the empty slots
get score + 0 and stay attended (their zero keys/values dilute attention). That is the bug fixed here.
"""

from __future__ import annotations

import numpy as np

MASKED = -1000.0  # what the export traced with; exact in fp16 and drives softmax weights to 0


class MaskBuffers:
    """Reusable host buffers for one model: no per-call allocation, no Python loops over positions."""

    def __init__(self, seqlen: int, mask_dtype=np.float16, position_dtype=np.int32) -> None:
        self.seqlen = seqlen
        self._causal = np.triu(np.full((seqlen, seqlen), MASKED, dtype=mask_dtype), k=1)
        self._prefill_mask = np.full((seqlen, seqlen), MASKED, dtype=mask_dtype)
        self._prefill_length = 0  # the length _prefill_mask currently holds (0: all MASKED)
        self._decode_mask = np.zeros(seqlen + 1, dtype=mask_dtype)
        self._prefill_positions = np.zeros(seqlen, dtype=position_dtype)
        self._arange = np.arange(seqlen, dtype=position_dtype)
        self._decode_position = np.zeros(1, dtype=position_dtype)

    def prefill_mask(self, length: int) -> np.ndarray:
        """[SEQLEN, SEQLEN]: causal over the first `length` rows/columns, MASKED elsewhere.

        Rows below min(previous, length) are the same for both lengths (0 up to the diagonal, MASKED after)
        and rows from max(previous, length) on are all MASKED for both, so only the rows in between are
        rewritten: O(|length - previous| * SEQLEN) per prompt instead of the seed's O(length^2) Python loop.
        """
        self._check(length, 1, self.seqlen)
        previous = self._prefill_length
        low, high = min(previous, length), max(previous, length)
        if length > previous:
            self._prefill_mask[low:high] = self._causal[low:high]
        else:
            self._prefill_mask[low:high] = MASKED
        self._prefill_length = length
        return self._prefill_mask

    def prefill_positions(self, length: int) -> np.ndarray:
        """[SEQLEN]: 0..length-1, then 0 for the padding."""
        self._check(length, 1, self.seqlen)
        positions = self._prefill_positions
        positions[:length] = self._arange[:length]
        positions[length:] = 0
        return positions

    def decode_mask(self, filled: int) -> np.ndarray:
        """[SEQLEN + 1]: 0 on the `filled` history slots and on the current token, MASKED on empty slots."""
        self._check(filled, 0, self.seqlen)
        mask = self._decode_mask
        mask[:filled] = 0
        mask[filled : self.seqlen] = MASKED
        mask[self.seqlen] = 0
        return mask

    def decode_position(self, filled: int) -> np.ndarray:
        """[1]: the position of the token being fed, i.e. the number of tokens already in the cache."""
        self._check(filled, 0, self.seqlen - 1)
        self._decode_position[0] = filled
        return self._decode_position

    def _check(self, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            raise ValueError("length %d outside [%d, %d] for SEQLEN %d" % (value, low, high, self.seqlen))
