"""GLM-4 inference over the SAIL graphs of a ChatGLM4 bmodel (sophon-demo's export and inference loop).

Everything is read from the engine: the graph names (`NUM_LAYERS = (graphs - 5) // 2`), SEQLEN and HIDDEN
from `block_0`'s first input, the KV layout [1, KV_HEADS, SEQLEN, HEAD_DIM] from its outputs, dtypes from
every tensor. Device tensors and host buffers are allocated once.

- prefill: `embedding` → `block_0..N-1` (each writes its layer's whole past_k/past_v) → the hidden row of the
  last prompt token → `lm_head`.
- decode: `embedding_cache` → `block_cache_i` with that layer's KV as history → the returned key/value of the
  current token is scattered into slot `filled` of each KV head (`sync_d2d`, offsets in elements) →
  `lm_head`.
- next token: `greedy_head` (top-1) or `penalty_sample_head` (repetition penalty, top-k 50, temperature,
  top-p) followed by a draw from its 50 probabilities on the host.
"""

from __future__ import annotations

import os
import random
import re
from typing import Dict, NamedTuple, Optional, Sequence

import numpy as np

from .errors import ModelError
from .masks import MaskBuffers

FIXED_GRAPHS = ("embedding", "embedding_cache", "lm_head", "greedy_head", "penalty_sample_head")


def import_sail():
    """`sophon.sail`, or a ModelError saying how to get it."""
    try:
        import sophon.sail as sail
    except ImportError as error:
        raise ModelError(
            "cannot import sophon.sail (install the SAIL wheel, e.g. sophon_arm-*.whl): %s" % error
        )
    return sail


class Sampling(NamedTuple):
    """Parameters of `penalty_sample_head`; `seed` makes the host-side draw repeatable."""

    temperature: float = 0.95
    top_p: float = 0.8
    penalty: float = 1.0
    seed: Optional[int] = None


class _Slot(object):
    """A device tensor bound to one graph tensor name, with its numpy dtype."""

    __slots__ = ("name", "tensor", "shape", "np_dtype", "is_fp16")

    def __init__(self, sail, engine, handle, graph: str, index: int, is_input: bool, shape=None):
        names = engine.get_input_names(graph) if is_input else engine.get_output_names(graph)
        self.name = names[index]
        get_shape = engine.get_input_shape if is_input else engine.get_output_shape
        get_dtype = engine.get_input_dtype if is_input else engine.get_output_dtype
        self.shape = list(shape) if shape is not None else list(get_shape(graph, self.name))
        dtype = get_dtype(graph, self.name)
        self.is_fp16 = dtype == sail.Dtype.BM_FLOAT16
        numpy_dtypes = {
            sail.Dtype.BM_FLOAT32: np.float32,
            sail.Dtype.BM_FLOAT16: np.float16,
            sail.Dtype.BM_INT32: np.int32,
        }
        if dtype not in numpy_dtypes:
            raise ModelError("graph %s tensor %s has unsupported dtype %s" % (graph, self.name, dtype))
        self.np_dtype = numpy_dtypes[dtype]
        self.tensor = sail.Tensor(handle, self.shape, dtype, False, True)

    def upload(self, array: np.ndarray) -> None:
        """Copy host data in (fp16 passed as a uint16 view, as SAIL requires)."""
        data = np.ascontiguousarray(array, dtype=self.np_dtype)
        self.tensor.update_data(data.view(np.uint16) if self.is_fp16 else data)

    def download(self) -> np.ndarray:
        data = np.asarray(self.tensor.asnumpy())
        if self.is_fp16 and data.dtype == np.uint16:
            data = data.view(np.float16)
        return data


class GlmModel:
    """One loaded ChatGLM4 bmodel and its KV cache; `filled` counts the tokens in the cache."""

    def __init__(self, bmodel_path: str, dev_id: int = 0, sail=None) -> None:
        if not os.path.isfile(bmodel_path):
            raise ModelError("%s: bmodel not found" % bmodel_path)
        self.sail = sail or import_sail()
        self.path = bmodel_path
        try:
            self.handle = self.sail.Handle(dev_id)
            self.engine = self.sail.Engine(bmodel_path, dev_id, self.sail.IOMode.DEVIO)
        except RuntimeError as error:
            raise ModelError("%s: cannot load bmodel on device %d: %s" % (bmodel_path, dev_id, error))
        self._names = {}  # type: Dict[str, tuple]
        self.graph_names = list(self.engine.get_graph_names())
        self.num_layers = (len(self.graph_names) - len(FIXED_GRAPHS)) // 2
        self._check_graphs()
        block_input = self.engine.get_input_names("block_0")[0]
        _, self.seqlen, self.hidden = self.engine.get_input_shape("block_0", block_input)
        _, self.kv_heads, _, self.head_dim = self.engine.get_output_shape(
            "block_0", self.engine.get_output_names("block_0")[1]
        )
        self.vocab = self.engine.get_output_shape("lm_head", self.engine.get_output_names("lm_head")[0])[-1]
        self._allocate()
        self.masks = MaskBuffers(self.seqlen, self._prefill_mask.np_dtype, self._prefill_pid.np_dtype)
        self._ids = np.zeros(self.seqlen, dtype=np.int32)
        self._token = np.zeros((1, 1), dtype=np.int32)
        self.filled = 0

    def _check_graphs(self) -> None:
        """The 5 fixed graphs plus block_i and block_cache_i for every layer index that appears, and nothing
        else, so that the seed's NUM_LAYERS = (graphs - 5) // 2 is right."""
        indices = [int(n.rsplit("_", 1)[1]) for n in self.graph_names if re.match(r"^block_(cache_)?\d+$", n)]
        layers = max(indices) + 1 if indices else 0
        wanted = list(FIXED_GRAPHS)
        for layer in range(layers):
            wanted += ["block_%d" % layer, "block_cache_%d" % layer]
        missing = [name for name in wanted if name not in self.graph_names]
        unexpected = [name for name in self.graph_names if name not in wanted]
        if layers < 1 or missing or unexpected or layers != self.num_layers:
            raise ModelError(
                "%s: not a ChatGLM4 bmodel (%d graphs; missing %s; unexpected %s)"
                % (self.path, len(self.graph_names), missing[:8], unexpected[:8])
            )

    def _slot(self, graph: str, index: int, is_input: bool = True, shape=None) -> _Slot:
        return _Slot(self.sail, self.engine, self.handle, graph, index, is_input, shape)

    def _allocate(self) -> None:
        """All device tensors, once. Hidden states go in and out of the same tensor, as in the seed."""
        self._embed_ids = self._slot("embedding", 0)
        self._hidden = self._slot("block_0", 0)
        self._prefill_pid = self._slot("block_0", 1)
        self._prefill_mask = self._slot("block_0", 2)
        self._past_k = [self._slot("block_0", 1, False) for _ in range(self.num_layers)]
        self._past_v = [self._slot("block_0", 2, False) for _ in range(self.num_layers)]
        for slot in self._past_k + self._past_v:
            slot.tensor.memory_set(0)
        self._next_ids = self._slot("embedding_cache", 0)
        self._next_hidden = self._slot("block_cache_0", 0)
        self._next_pid = self._slot("block_cache_0", 1)
        self._next_mask = self._slot("block_cache_0", 2)
        self._present_k = self._slot("block_cache_0", 1, False)
        self._present_v = self._slot("block_cache_0", 2, False)
        self._lm_in = self._slot("lm_head", 0)
        self._logits = self._slot("lm_head", 0, False)
        self._greedy_token = self._slot("greedy_head", 0, False)
        head = "penalty_sample_head"
        self._penalty_in = [
            self._slot(head, i) for i in range(1, 5)
        ]  # input_ids, top_p, temperature, penalty
        self._penalty_probs = self._slot(head, 0, False)
        self._penalty_tokens = self._slot(head, 1, False)

    def _process(self, graph: str, inputs: Sequence[_Slot], outputs: Sequence[_Slot]) -> None:
        """Run `graph`, binding the slots to its input/output names by position (names differ per graph:
        the hidden tensor is `hidden_states` out of `embedding` and `input_states` into `block_i`)."""
        if graph not in self._names:
            self._names[graph] = (self.engine.get_input_names(graph), self.engine.get_output_names(graph))
        input_names, output_names = self._names[graph]
        self.engine.process(
            graph,
            {name: slot.tensor for name, slot in zip(input_names, inputs)},
            {name: slot.tensor for name, slot in zip(output_names, outputs)},
        )

    def prefill(self, tokens: Sequence[int]) -> None:
        """Run the prompt through every layer, filling the KV cache; logits of the last token are ready."""
        length = len(tokens)
        if not 0 < length <= self.seqlen:
            raise ModelError("prompt of %d tokens does not fit SEQLEN %d" % (length, self.seqlen))
        self._ids[:length] = tokens
        self._ids[length:] = 0
        self._embed_ids.upload(self._ids.reshape(1, -1))
        self._process("embedding", [self._embed_ids], [self._hidden])
        self._prefill_pid.upload(self.masks.prefill_positions(length).reshape(1, -1))
        self._prefill_mask.upload(self.masks.prefill_mask(length))
        inputs = [self._hidden, self._prefill_pid, self._prefill_mask]
        for layer in range(self.num_layers):
            self._process(
                "block_%d" % layer, inputs, [self._hidden, self._past_k[layer], self._past_v[layer]]
            )
        self._lm_in.tensor.sync_d2d(self._hidden.tensor, (length - 1) * self.hidden, 0, self.hidden)
        self._process("lm_head", [self._lm_in], [self._logits])
        self.filled = length

    def decode_mask(self) -> np.ndarray:
        """The [SEQLEN+1] additive mask for feeding the next token (see masks.py for the semantics)."""
        return self.masks.decode_mask(self.filled)

    def decode(self, token: int) -> None:
        """Feed one token at position `filled`, append its key/value to the cache; its logits are ready."""
        if self.filled >= self.seqlen:
            raise ModelError("KV cache full (SEQLEN %d)" % self.seqlen)
        position = self.filled
        self._token[0, 0] = token
        self._next_ids.upload(self._token)
        self._process("embedding_cache", [self._next_ids], [self._next_hidden])
        self._next_pid.upload(self.masks.decode_position(position).reshape(1, 1))
        self._next_mask.upload(self.decode_mask())
        for layer in range(self.num_layers):
            inputs = [
                self._next_hidden,
                self._next_pid,
                self._next_mask,
                self._past_k[layer],
                self._past_v[layer],
            ]
            outputs = [self._next_hidden, self._present_k, self._present_v]
            self._process("block_cache_%d" % layer, inputs, outputs)
            self._scatter_kv(layer, position)
        self._lm_in.tensor.sync_d2d(self._next_hidden.tensor, 0, 0, self.hidden)
        self._process("lm_head", [self._lm_in], [self._logits])
        self.filled = position + 1

    def _scatter_kv(self, layer: int, position: int) -> None:
        """Write the current token's [1, KV_HEADS, 1, HEAD_DIM] key/value into slot `position` per head."""
        dim = self.head_dim
        for head in range(self.kv_heads):
            destination = (head * self.seqlen + position) * dim
            self._past_k[layer].tensor.sync_d2d(self._present_k.tensor, head * dim, destination, dim)
            self._past_v[layer].tensor.sync_d2d(self._present_v.tensor, head * dim, destination, dim)

    def logits(self) -> np.ndarray:
        """The current [VOCAB] logits (float32), for tests and diagnostics."""
        return self._logits.download().reshape(-1).astype(np.float32)

    def greedy(self) -> int:
        self._process("greedy_head", [self._logits], [self._greedy_token])
        return int(self._greedy_token.download().reshape(-1)[0])

    def sample(self, history: Sequence[int], sampling: Sampling, rng: random.Random) -> int:
        """Penalise `history` (the last SEQLEN ids), keep top-k/top-p on the device, draw on the host."""
        ids = np.full(self.seqlen, history[-1] if history else 0, dtype=np.int32)
        recent = list(history)[-self.seqlen :]
        ids[: len(recent)] = recent
        values = [ids.reshape(1, -1), [sampling.top_p], [sampling.temperature], [sampling.penalty]]
        for slot, value in zip(self._penalty_in, values):
            slot.upload(np.asarray(value).reshape(slot.shape))
        self._process(
            "penalty_sample_head",
            [self._logits] + self._penalty_in,
            [self._penalty_probs, self._penalty_tokens],
        )
        probs = self._penalty_probs.download().reshape(-1).astype(np.float64)
        tokens = self._penalty_tokens.download().reshape(-1)
        return int(tokens[_draw(probs, rng.random())])

    def summary(self) -> Dict[str, object]:
        return {
            "model": os.path.basename(self.path),
            "graphs": len(self.graph_names),
            "layers": self.num_layers,
            "seqlen": self.seqlen,
            "hidden": self.hidden,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab": self.vocab,
        }


def _draw(probs: np.ndarray, uniform: float) -> int:
    """Index i with probability probs[i] / sum(probs), from one uniform number in [0, 1)."""
    cumulative = np.cumsum(probs)
    return int(min(np.searchsorted(cumulative, uniform * cumulative[-1], side="right"), len(probs) - 1))
