"""GLM-4 graphs in numpy: what the emulated TPU computes for each graph of a stand-in bmodel.

The graphs and their math follow sophon-demo's export of glm-4-9b-chat (`tools/export_onnx.py` over THUDM's
`modeling_chatglm.py`): RMSNorm, fused QKV with bias, GLM rotary embedding on the first half of each head's
dimensions with interleaved (even, odd) pairs and base 10000 * rope_ratio, grouped KV heads expanded to the
query heads, an additive attention mask, SwiGLU MLP, final RMSNorm + output layer in `lm_head`, top-1 in
`greedy_head` and the repetition-penalty / top-k / temperature / top-p head in `penalty_sample_head`.

Precision, as tpu-mlir 1.30.2 compiles these graphs (W4F16 / W8F16: weights quantised, every activation
fp16; read from the graphs' tpu dialect): weights are stored as fp16 (already quantised and dequantised by
the generator, see sim/tinyglm.py), and the output of every operation the compiled graph has is rounded to
fp16 — each matmul (fp32 accumulation; the QKV bias added to its fp16 result, as the cmodel's kernels do),
Mul/Add/Sub, the ReduceMean and the epsilon of RMSNorm, the rotary tables, softmax — while rsqrt and SiLU run
in fp32 on an fp16 input (the graph casts around them). lm_head's logits are fp16 values (its matmul's fp16
output cast to f32).
`TinyGlm(..., half=False)` computes the same math in float32 with fp16 only at graph boundaries (to compare
the math itself with transformers). Python 3.8, numpy only.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

F32, F16, I32 = "f32", "f16", "i32"
NUMPY_DTYPES = {F32: np.float32, F16: np.float16, I32: np.int32}
TOP_K = 50
MIN_TOKENS_TO_KEEP = 5


def _tensor(name: str, shape: List[int], dtype: str) -> Dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": dtype}


def graph_specs(config: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The graph list of a ChatGLM4 bmodel (sophon-demo's export: 5 + 2 x layers graphs) scaled to
    `config`, in the real order of names: per layer `block_i` / `block_cache_i`, then embeddings, lm_head
    and the two sampling heads."""
    seq, hidden, vocab = config["seqlen"], config["hidden"], config["padded_vocab"]
    kv_shape = [1, config["kv_heads"], seq, config["head_dim"]]
    one_kv = [1, config["kv_heads"], 1, config["head_dim"]]
    graphs = []
    for layer in range(config["layers"]):
        graphs.append(
            {
                "name": "block_%d" % layer,
                "inputs": [
                    _tensor("input_states", [1, seq, hidden], F16),
                    _tensor("position_ids", [1, seq], I32),
                    _tensor("attention_mask", [1, 1, seq, seq], F16),
                ],
                "outputs": [
                    _tensor("hidden_states", [1, seq, hidden], F16),
                    _tensor("past_k", kv_shape, F16),
                    _tensor("past_v", kv_shape, F16),
                ],
            }
        )
        graphs.append(
            {
                "name": "block_cache_%d" % layer,
                "inputs": [
                    _tensor("input_states", [1, 1, hidden], F16),
                    _tensor("position_ids", [1, 1], I32),
                    _tensor("attention_mask", [1, 1, 1, seq + 1], F16),
                    _tensor("history_k", kv_shape, F16),
                    _tensor("history_v", kv_shape, F16),
                ],
                "outputs": [
                    _tensor("hidden_states", [1, 1, hidden], F16),
                    _tensor("past_k", one_kv, F16),
                    _tensor("past_v", one_kv, F16),
                ],
            }
        )
    graphs += [
        {
            "name": "embedding",
            "inputs": [_tensor("input_ids", [1, seq], I32)],
            "outputs": [_tensor("hidden_states", [1, seq, hidden], F16)],
        },
        {
            "name": "embedding_cache",
            "inputs": [_tensor("input_ids", [1, 1], I32)],
            "outputs": [_tensor("hidden_states", [1, 1, hidden], F16)],
        },
        {
            "name": "lm_head",
            "inputs": [_tensor("hidden_states", [1, hidden], F16)],
            "outputs": [_tensor("m_logits", [1, vocab], F32)],
        },
        {
            "name": "greedy_head",
            "inputs": [_tensor("m_logits", [1, vocab], F32)],
            "outputs": [_tensor("token", [1, 1], I32)],
        },
        {
            "name": "penalty_sample_head",
            "inputs": [
                _tensor("m_logits", [1, vocab], F32),
                _tensor("input_ids", [1, seq], I32),
                _tensor("top_p", [1], F32),
                _tensor("temperature", [1], F32),
                _tensor("penalty", [1], F32),
            ],
            "outputs": [_tensor("probs", [1, TOP_K], F32), _tensor("token", [1, TOP_K], I32)],
        },
    ]
    return graphs


def _keep(x: np.ndarray) -> np.ndarray:
    return x


def to_f16(x: np.ndarray) -> np.ndarray:
    """Round to fp16 and back to float32: what an fp16 tensor between two TPU operations holds."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, rnd=_keep) -> np.ndarray:
    """GLM's RMSNorm over the last axis (no mean subtraction, no bias); `rnd` rounds each op's output."""
    variance = rnd(rnd(np.mean(rnd(np.square(x)), axis=-1, keepdims=True)) + rnd(np.float32(eps)))
    return rnd(rnd(x * rnd(1.0 / np.sqrt(variance))) * weight)


def rotary_tables(positions: np.ndarray, head_dim: int, rope_ratio: float):
    """cos/sin [len(positions), head_dim // 4] for GLM's rotary over the first head_dim // 2 dims."""
    rot_dim = head_dim // 2
    base = 10000.0 * rope_ratio
    theta = 1.0 / (base ** (np.arange(0, rot_dim, 2, dtype=np.float32) / rot_dim))
    angles = np.outer(positions.astype(np.float32), theta.astype(np.float32))
    return np.cos(angles), np.sin(angles)


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rnd=_keep) -> np.ndarray:
    """Rotate the (even, odd) pairs of the first half of x's last axis; x is [heads, seq, head_dim]."""
    heads, seq, head_dim = x.shape
    rot_dim = head_dim // 2
    pairs = x[..., :rot_dim].reshape(heads, seq, rot_dim // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    new_even = rnd(rnd(even * cos) - rnd(odd * sin))
    new_odd = rnd(rnd(odd * cos) + rnd(even * sin))
    rotated = np.stack([new_even, new_odd], axis=-1)
    return np.concatenate([rotated.reshape(heads, seq, rot_dim), x[..., rot_dim:]], axis=-1)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


class TinyGlm:
    """The weights of a stand-in GLM-4 and the numpy function behind each graph name."""

    def __init__(self, config: Dict[str, Any], arrays: Dict[str, np.ndarray], half: bool = True) -> None:
        self.config = config
        self.weights = {name: value.astype(np.float32) for name, value in arrays.items()}
        self.layers = int(config["layers"])
        self.rnd = to_f16 if half else _keep  # what every operation's output is rounded to

    def run(self, graph: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Compute `graph` on numpy inputs (by tensor name); return the outputs by tensor name."""
        if graph.startswith("block_cache_"):
            return self._block_cache(int(graph[len("block_cache_") :]), inputs)
        if graph.startswith("block_"):
            return self._block(int(graph[len("block_") :]), inputs)
        handlers = {
            "embedding": self._embedding,
            "embedding_cache": self._embedding,
            "lm_head": self._lm_head,
            "greedy_head": self._greedy_head,
            "penalty_sample_head": self._penalty_sample_head,
        }
        return handlers[graph](inputs)

    def _embedding(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ids = inputs["input_ids"].astype(np.int64)
        table = self.weights["embedding"]
        if ids.min() < 0 or ids.max() >= table.shape[0]:
            raise RuntimeError("embedding: token id out of range [0, %d)" % table.shape[0])
        return {"hidden_states": table[ids].astype(np.float16)}

    def _block(self, layer: int, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        x = inputs["input_states"][0].astype(np.float32)
        mask = inputs["attention_mask"][0, 0].astype(np.float32)
        hidden, key, value = self._layer(layer, x, inputs["position_ids"][0], mask, None, None)
        return {"hidden_states": hidden[None], "past_k": key[None], "past_v": value[None]}

    def _block_cache(self, layer: int, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        x = inputs["input_states"][0].astype(np.float32)
        mask = inputs["attention_mask"][0, 0].astype(np.float32)
        history_k = inputs["history_k"][0].astype(np.float32)
        history_v = inputs["history_v"][0].astype(np.float32)
        hidden, key, value = self._layer(layer, x, inputs["position_ids"][0], mask, history_k, history_v)
        return {"hidden_states": hidden[None], "past_k": key[None], "past_v": value[None]}

    def _layer(self, layer, x, positions, mask, history_k, history_v):
        """One GLMBlock on x [seq, hidden]; returns (hidden fp16, present key fp16, present value fp16)."""
        cfg, w, rnd = self.config, self.weights, self.rnd
        prefix = "layers.%d." % layer
        heads, kv_heads, head_dim = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
        seq = x.shape[0]
        normed = rms_norm(x, w[prefix + "input_norm"], cfg["eps"], rnd)
        # the bias goes onto the matmul's fp16 result, as the TPU's kernels do (tpu-mlir's interpreter adds
        # it before rounding; the cmodel's K and V agree with this order, see docs/vendor-runtime.md)
        qkv = rnd(rnd(normed @ w[prefix + "qkv.weight"].T) + w[prefix + "qkv.bias"])
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        query = qkv[:, :q_size].reshape(seq, heads, head_dim).transpose(1, 0, 2)
        key = qkv[:, q_size : q_size + kv_size].reshape(seq, kv_heads, head_dim).transpose(1, 0, 2)
        value = qkv[:, q_size + kv_size :].reshape(seq, kv_heads, head_dim).transpose(1, 0, 2)
        cos, sin = (rnd(table) for table in rotary_tables(positions, head_dim, cfg["rope_ratio"]))
        query, key = apply_rotary(query, cos, sin, rnd), apply_rotary(key, cos, sin, rnd)
        present_k, present_v = key.astype(np.float16), value.astype(np.float16)
        if history_k is not None:
            key = np.concatenate([history_k, key], axis=1)
            value = np.concatenate([history_v, value], axis=1)
        group = heads // kv_heads
        key, value = np.repeat(key, group, axis=0), np.repeat(value, group, axis=0)
        scale = rnd(np.float32(1.0) / np.sqrt(np.float32(head_dim)))
        scores = rnd(rnd(rnd(query @ key.transpose(0, 2, 1)) * scale) + rnd(mask))
        context = rnd(rnd(softmax(scores)) @ value).transpose(1, 0, 2).reshape(seq, q_size)
        x = rnd(x + rnd(context @ w[prefix + "dense.weight"].T))
        normed = rms_norm(x, w[prefix + "post_norm"], cfg["eps"], rnd)
        gate, up = (rnd(normed @ part.T) for part in np.split(w[prefix + "h_to_4h.weight"], 2, axis=0))
        swiglu = rnd(rnd(gate / (1.0 + np.exp(-gate))) * up)
        x = rnd(x + rnd(swiglu @ w[prefix + "4h_to_h.weight"].T))
        return x.astype(np.float16), present_k, present_v

    def _lm_head(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        x = inputs["hidden_states"].astype(np.float32)
        normed = rms_norm(x, self.weights["final_norm"], self.config["eps"], self.rnd)
        return {"m_logits": self.rnd(normed @ self.weights["output_layer.weight"].T).astype(np.float32)}

    def _greedy_head(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {"token": np.argmax(inputs["m_logits"], axis=-1).astype(np.int32).reshape(1, 1)}

    def _penalty_sample_head(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Repetition penalty on the given ids, top-k 50, temperature, top-p keeping at least 5."""
        logits = inputs["m_logits"][0].astype(np.float32).copy()
        ids = inputs["input_ids"][0].astype(np.int64)
        penalty = float(inputs["penalty"][0])
        seen = logits[ids]
        logits[ids] = np.where(seen < 0, seen * penalty, seen / penalty)
        top = np.argsort(-logits, kind="stable")[:TOP_K]
        scaled = logits[top] / float(inputs["temperature"][0])
        keep = np.cumsum(softmax(scaled)) < float(inputs["top_p"][0])
        keep[:MIN_TOKENS_TO_KEEP] = True
        probs = softmax(np.where(keep, scaled, np.float32(-1000.0)))
        return {"probs": probs.astype(np.float32)[None], "token": top.astype(np.int32)[None]}
