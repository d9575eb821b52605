"""The graphs of sophon-demo's ChatGLM4 export, built as ONNX directly from a checkpoint's weights.

sophon-demo (LLM-TPU `models/GLM4` at b2d4693) traces THUDM's `modeling_chatglm.py` with torch; this module
writes the same computation with `onnx.helper` and numpy, so no torch and no transformers are needed:

    embedding          input_ids [1, SEQ] int32         -> hidden_states [1, SEQ, H]
    embedding_cache    input_ids [1, 1] int32           -> hidden_states [1, 1, H]      (the same graph)
    block_i            input_states [1, SEQ, H], position_ids [1, SEQ], attention_mask [1, 1, SEQ, SEQ]
                         -> hidden_states, past_k [1, KV, SEQ, D], past_v [1, KV, SEQ, D]
    block_cache_i      input_states [1, 1, H], position_ids [1, 1], attention_mask [1, 1, 1, SEQ + 1],
                       history_k, history_v [1, KV, SEQ, D]  -> hidden_states, past_k/past_v [1, KV, 1, D]
    lm_head            hidden_states [1, H]             -> m_logits [1, V]   (final RMSNorm + output layer)
    greedy_head        m_logits [1, V]                  -> token [1, 1]       (top-1)
    penalty_sample_head  m_logits, input_ids [1, SEQ], top_p, temperature, penalty [1]
                         -> probs [1, 50], token [1, 50]

Math per block (ChatGLM's GLMBlock): RMSNorm, fused QKV with bias, rotary on the first half of each head's
dimensions over interleaved (even, odd) pairs with base 10000 * rope_ratio, grouped KV heads expanded to the
query heads, scores / sqrt(D) + mask, softmax, dense, residual, RMSNorm, SwiGLU MLP, residual. Differences
from the traced export, none of which changes what is computed: embedding and lm_head are ONNX here (the
export saves them as TorchScript `.pt`), and integer inputs are declared int32 (the bmodel's type).

Runs in the compiler's venv (Python 3.10, onnx): `python -m provision.compile.onnx_graphs CKPT OUT SEQLEN`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from provision.compile.checkpoint import Checkpoint, load_checkpoint
from provision.compile.onnx_graph_names import graph_names  # noqa: F401  (re-exported)

OPSET = 15
PROTO_LIMIT = 2**31 - 1  # protobuf's limit: a bigger model can only be checked and saved with external data
EXTERNAL_ABOVE = 1 << 30  # graphs over 1 GiB (GLM-4-9B's embedding and lm_head) keep weights in .onnx.data
TOP_K = 50
MIN_TOKENS_TO_KEEP = 5
FLOAT, INT32, INT64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


class GraphBuilder:
    """Nodes and initializers of one graph, with unique names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self._fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "i")

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, out: list[str] | None = None, **attrs):
        outputs = out or [self._fresh(op_type) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=self._fresh(op_type + "_n"), **attrs)
        )
        return outputs[0] if n_out == 1 else outputs

    def input(self, name: str, dtype: int, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, source: str, name: str, dtype: int, shape: list[int]) -> None:
        """Make `source` a graph output called `name`: the producing node's output is renamed (no Identity),
        so tpu-mlir names the bmodel tensor `<name>_<OpType>` as in the vendor's bmodels."""
        for node in self.nodes:
            for tensors in (node.input, node.output):
                for i, tensor in enumerate(tensors):
                    if tensor == source:
                        tensors[i] = name
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sophon-fleet"
        )
        if model.ByteSize() < PROTO_LIMIT:
            onnx.checker.check_model(model)  # bigger ones are checked from their file by `save`
        return model

    # ---- building blocks ---------------------------------------------------------------------------

    def rms_norm(self, x: str, weight: np.ndarray, eps: float) -> str:
        square = self.op("Mul", [x, x])
        variance = self.op("ReduceMean", [square], axes=[-1], keepdims=1)
        root = self.op("Sqrt", [self.op("Add", [variance, self.const(np.float32(eps), "eps")])])
        return self.op("Mul", [self.op("Div", [x, root]), self.const(weight.astype(np.float32), "norm")])

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """x @ weight.T (+ bias); weight is [out, in] as in the checkpoint, stored [in, out] for MatMul."""
        y = self.op("MatMul", [x, self.const(np.ascontiguousarray(weight.T), "w")])
        return self.op("Add", [y, self.const(bias, "b")]) if bias is not None else y

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.op("Reshape", [x, self.ints(shape)])

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])])


def rotary_tables(seqlen: int, head_dim: int, rope_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [SEQ, D/4] of ChatGLM's RotaryEmbedding(D/2, base 10000 * rope_ratio), in float32."""
    rot_dim = head_dim // 2
    base = 10000.0 * rope_ratio
    theta = 1.0 / (base ** (np.arange(0, rot_dim, 2, dtype=np.float32) / rot_dim))
    angles = np.outer(np.arange(seqlen, dtype=np.float32), theta.astype(np.float32))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotary(g: GraphBuilder, x: str, cos: str, sin: str, heads: int, seq: int, head_dim: int) -> str:
    """Rotate (even, odd) pairs of the first D/2 dims of x [1, heads, seq, D]; cos/sin: [1, 1, seq, D/4]."""
    rot, pairs = head_dim // 2, head_dim // 4
    x_rot, x_pass = g.slice(x, 0, rot, -1), g.slice(x, rot, head_dim, -1)
    shaped = g.reshape(x_rot, [1, heads, seq, pairs, 2])
    even = g.reshape(g.slice(shaped, 0, 1, -1), [1, heads, seq, pairs])
    odd = g.reshape(g.slice(shaped, 1, 2, -1), [1, heads, seq, pairs])
    new_even = g.op("Sub", [g.op("Mul", [even, cos]), g.op("Mul", [odd, sin])])
    new_odd = g.op("Add", [g.op("Mul", [odd, cos]), g.op("Mul", [even, sin])])
    axis = g.ints([-1])
    stacked = g.op(
        "Concat", [g.op("Unsqueeze", [new_even, axis]), g.op("Unsqueeze", [new_odd, axis])], axis=-1
    )
    return g.op("Concat", [g.reshape(stacked, [1, heads, seq, rot]), x_pass], axis=-1)


def _expand_kv(g: GraphBuilder, x: str, kv_heads: int, group: int, length: int, head_dim: int) -> str:
    """[1, KV, L, D] -> [1, KV * group, L, D], each KV head repeated for its group of query heads."""
    unsqueezed = g.op("Unsqueeze", [x, g.ints([2])])
    expanded = g.op("Expand", [unsqueezed, g.ints([1, kv_heads, group, length, head_dim])])
    return g.reshape(expanded, [1, kv_heads * group, length, head_dim])


def build_block(ckpt: Checkpoint, layer: int, seqlen: int, cache: bool) -> onnx.ModelProto:
    """`block_<layer>` (prefill over SEQ positions) or `block_cache_<layer>` (one token + the KV history)."""
    cfg = ckpt.config
    hidden, heads, kv_heads, dim = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    w = lambda name: ckpt.weight(f"layers.{layer}.{name}")  # noqa: E731
    seq = 1 if cache else seqlen
    keys = seqlen + 1 if cache else seqlen
    g = GraphBuilder(f"block_cache_{layer}" if cache else f"block_{layer}")
    x = g.input("input_states", FLOAT, [1, seq, hidden])
    positions = g.input("position_ids", INT32, [1, seq])
    mask = g.input("attention_mask", FLOAT, [1, 1, seq, keys])
    if cache:
        history_k = g.input("history_k", FLOAT, [1, kv_heads, seqlen, dim])
        history_v = g.input("history_v", FLOAT, [1, kv_heads, seqlen, dim])
    cos_table, sin_table = rotary_tables(seqlen, dim, cfg["rope_ratio"])
    cos = g.reshape(g.op("Gather", [g.const(cos_table, "cos"), positions], axis=0), [1, 1, seq, dim // 4])
    sin = g.reshape(g.op("Gather", [g.const(sin_table, "sin"), positions], axis=0), [1, 1, seq, dim // 4])

    normed = g.rms_norm(x, w("input_norm"), cfg["eps"])
    qkv = g.linear(normed, w("qkv.weight"), w("qkv.bias"))
    q_size, kv_size = heads * dim, kv_heads * dim

    def split_heads(start: int, count: int) -> str:
        part = g.slice(qkv, start, start + count * dim, -1)
        return g.op("Transpose", [g.reshape(part, [1, seq, count, dim])], perm=[0, 2, 1, 3])

    query = _rotary(g, split_heads(0, heads), cos, sin, heads, seq, dim)
    key = _rotary(g, split_heads(q_size, kv_heads), cos, sin, kv_heads, seq, dim)
    value = split_heads(q_size + kv_size, kv_heads)
    present_k, present_v = key, value
    if cache:
        key = g.op("Concat", [history_k, key], axis=2)
        value = g.op("Concat", [history_v, value], axis=2)
    key_all = _expand_kv(g, key, kv_heads, heads // kv_heads, keys, dim)
    value_all = _expand_kv(g, value, kv_heads, heads // kv_heads, keys, dim)
    scores = g.op("MatMul", [query, g.op("Transpose", [key_all], perm=[0, 1, 3, 2])])
    scores = g.op("Add", [g.op("Mul", [scores, g.const(np.float32(1.0 / np.sqrt(dim)), "scale")]), mask])
    context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), value_all])
    context = g.reshape(g.op("Transpose", [context], perm=[0, 2, 1, 3]), [1, seq, q_size])
    x = g.op("Add", [x, g.linear(context, w("dense.weight"))])

    normed = g.rms_norm(x, w("post_norm"), cfg["eps"])
    gate_up = g.linear(normed, w("h_to_4h.weight"))
    gate, up = g.slice(gate_up, 0, cfg["ffn"], -1), g.slice(gate_up, cfg["ffn"], 2 * cfg["ffn"], -1)
    swiglu = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    x = g.op("Add", [x, g.linear(swiglu, w("4h_to_h.weight"))])

    g.output(x, "hidden_states", FLOAT, [1, seq, hidden])
    g.output(present_k, "past_k", FLOAT, [1, kv_heads, seq, dim])
    g.output(present_v, "past_v", FLOAT, [1, kv_heads, seq, dim])
    return g.model()


def build_embedding(ckpt: Checkpoint, length: int) -> onnx.ModelProto:
    g = GraphBuilder("embedding" if length > 1 else "embedding_cache")
    ids = g.input("input_ids", INT32, [1, length])
    table = g.const(ckpt.weight("embedding"), "word_embeddings")
    g.output(g.op("Gather", [table, ids], axis=0), "hidden_states", FLOAT, [1, length, ckpt.config["hidden"]])
    return g.model()


def build_lm_head(ckpt: Checkpoint) -> onnx.ModelProto:
    cfg = ckpt.config
    g = GraphBuilder("lm_head")
    x = g.input("hidden_states", FLOAT, [1, cfg["hidden"]])
    logits = g.linear(
        g.rms_norm(x, ckpt.weight("final_norm"), cfg["eps"]), ckpt.weight("output_layer.weight")
    )
    g.output(logits, "m_logits", FLOAT, [1, cfg["padded_vocab"]])
    return g.model()


def build_greedy_head(vocab: int) -> onnx.ModelProto:
    g = GraphBuilder("greedy_head")
    logits = g.input("m_logits", FLOAT, [1, vocab])
    _, token = g.op("TopK", [logits, g.ints([1])], n_out=2, axis=1)
    g.output(token, "token", INT64, [1, 1])
    return g.model()


def build_penalty_sample_head(vocab: int, seqlen: int) -> onnx.ModelProto:
    """Repetition penalty on the given ids, top-k 50, temperature, top-p keeping at least 5 (HF's
    logits processors, as the export writes them)."""
    g = GraphBuilder("penalty_sample_head")
    logits = g.input("m_logits", FLOAT, [1, vocab])
    ids = g.input("input_ids", INT32, [1, seqlen])
    top_p = g.input("top_p", FLOAT, [1])
    temperature = g.input("temperature", FLOAT, [1])
    penalty = g.input("penalty", FLOAT, [1])
    ids64 = g.op("Cast", [ids], to=INT64)
    seen = g.op("GatherElements", [logits, ids64], axis=1)
    negative = g.op("Less", [seen, g.const(np.float32(0.0), "zero")])
    penalised = g.op("Where", [negative, g.op("Mul", [seen, penalty]), g.op("Div", [seen, penalty])])
    logits = g.op("ScatterElements", [logits, ids64, penalised], axis=1)
    values, token = g.op("TopK", [logits, g.ints([TOP_K])], n_out=2, axis=1)
    scaled = g.op("Div", [values, temperature])
    cumulative = g.op("CumSum", [g.op("Softmax", [scaled], axis=1), g.const(np.int64(1), "axis")])
    # `(cumulative < top_p) or keep` with keep = the first MIN_TOKENS_TO_KEEP: tpu-mlir's Or takes no constant
    # operand, so the kept positions are pushed 2 below any cumulative probability instead (same mask for
    # every top_p > -1).
    keep = np.zeros((1, TOP_K), dtype=np.float32)
    keep[0, :MIN_TOKENS_TO_KEEP] = -2.0
    mask = g.op("Less", [g.op("Add", [cumulative, g.const(keep, "keep")]), top_p])
    filtered = g.op("Where", [mask, scaled, g.const(np.array([-1000.0], dtype=np.float32), "minus")])
    g.output(g.op("Softmax", [filtered], axis=1), "probs", FLOAT, [1, TOP_K])
    g.output(token, "token", INT64, [1, TOP_K])
    return g.model()


def build_graph(ckpt: Checkpoint, name: str, seqlen: int) -> onnx.ModelProto:
    vocab = ckpt.config["padded_vocab"]
    if name.startswith("block_cache_"):
        return build_block(ckpt, int(name.rsplit("_", 1)[1]), seqlen, cache=True)
    if name.startswith("block_"):
        return build_block(ckpt, int(name.rsplit("_", 1)[1]), seqlen, cache=False)
    builders = {
        "embedding": lambda: build_embedding(ckpt, seqlen),
        "embedding_cache": lambda: build_embedding(ckpt, 1),
        "lm_head": lambda: build_lm_head(ckpt),
        "greedy_head": lambda: build_greedy_head(vocab),
        "penalty_sample_head": lambda: build_penalty_sample_head(vocab, seqlen),
    }
    return builders[name]()


def export(checkpoint_dir: Path, out_dir: Path, seqlen: int, names: list[str]) -> list[str]:
    """Write `<out_dir>/<name>.onnx` for each of `names` (atomically); returns the written paths."""
    ckpt = load_checkpoint(checkpoint_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        written.append(str(save(build_graph(ckpt, name, seqlen), out_dir, name)))
    return written


def save(model: onnx.ModelProto, out_dir: Path, name: str) -> Path:
    """`<out_dir>/<name>.onnx`, renamed into place when complete; a graph over EXTERNAL_ABOVE keeps its
    weights beside it in `<name>.onnx.data` (ONNX external data, which tpu-mlir's onnx.load reads)."""
    part, final = out_dir / f"{name}.onnx.part", out_dir / f"{name}.onnx"
    if model.ByteSize() > EXTERNAL_ABOVE:
        data = out_dir / f"{name}.onnx.data"
        data.unlink(missing_ok=True)
        onnx.save(model, str(part), save_as_external_data=True, location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(part))
    else:
        onnx.save(model, str(part))
    part.replace(final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provision.compile.onnx_graphs")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("seqlen", type=int)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    print(json.dumps(export(args.checkpoint, args.out_dir, args.seqlen, args.names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
