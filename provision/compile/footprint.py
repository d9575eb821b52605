"""The device memory a ChatGLM4 bmodel compiled by tpu-mlir 1.30.2 (this package's export and flags) needs
on a BM1684X, computed from the model's config the way the vendor runtime counts it, and what the chat
runtime allocates besides (KV cache, inputs, outputs).

How libbmrt counts (`bmrt_get_bmodel_info`, read from the compiled tiny model and one compiled GLM-4-9B
layer; `tests/vendor/test_heaps.py` checks the coefficient formula against the runtime byte for byte):

- coefficients: every weight tensor of a graph starts on a 4 KiB boundary; nets with the same coefficients
  share one copy (libbmrt's BmCoeff keys them by check code), so `embedding`/`embedding_cache` hold the
  table once and `block_i`/`block_cache_i` one layer's weights once. W4F16/W8F16 linear layers hold
  uint4 (two a byte)/uint8 weights plus an fp16 scale and a uint8 zero point per group of 64 inputs;
  a linear layer less than 64 outputs wide is stored dequantised as fp16 instead (the tiny model's K and V);
  the embedding is fp16, biases, norms and the rotary tables ([SEQLEN, head_dim / 4] each) too.
- neurons: one block shared by every net, the largest net's context.
- instructions: every net's, added up.

The neuron and instruction sizes come from the compiler's memory planning, so they are measured, not derived:
`MEASURED` holds them for the shapes compiled here. `device_bytes` is what libbmrt needs to load the bmodel;
`runtime_tensor_bytes` what chat/model.py allocates after loading.
"""

from __future__ import annotations

from dataclasses import dataclass

COEFF_ALIGN = 4096
GROUP = 64  # model_deploy's --q_group_size (passed for int4, its default for W8F16)
WEIGHT_BITS = {"int4": 4, "int8": 8}
MIB = 1 << 20


@dataclass(frozen=True)
class Planned:
    """What tpu-mlir's memory planning gave one shape at one SEQLEN (bytes, from bmrt_get_bmodel_info)."""

    neuron: int  # the largest net's context: block_i's prefill
    instructions_per_layer: dict[str, int]  # block_i + block_cache_i (instruction + variable), per variant
    instructions_fixed: dict[str, int]  # embedding(_cache), lm_head and the sampling heads, per variant


GLM4_9B = {"layers": 40, "hidden": 4096, "heads": 32, "kv_heads": 2, "head_dim": 128, "ffn": 13696}
GLM4_9B_VOCAB = 151552  # padded_vocab_size
NEURON_PAD = 128  # libbmrt's neuron memory for a combined bmodel: the largest context + 128 bytes
# Measured by compiling one GLM-4-9B-shaped layer (block_0, block_cache_0), its lm_head (int4, int8),
# embedding, embedding_cache and the sampling heads at vocab 151552 with tpu-mlir 1.30.2 on this machine
# (random weights; their coefficients matched coeff_bytes' parts, a folded all-ones RMSNorm weight aside).
MEASURED = {
    ("glm4-9b", 512): Planned(
        neuron=51_515_392,
        instructions_per_layer={"int4": 378_880 + 109_824, "int8": 361_216 + 107_904},
        # embedding 384 + embedding_cache 384 + lm_head + greedy_head 768 + penalty_sample_head 20224
        instructions_fixed={
            "int4": 384 + 384 + 229_760 + 768 + 20_224,
            "int8": 384 + 384 + 255_232 + 768 + 20_224,
        },
    ),
}


def _aligned(nbytes: int) -> int:
    return -(-nbytes // COEFF_ALIGN) * COEFF_ALIGN


def linear_tensors(out_dim: int, in_dim: int, variant: str) -> list[int]:
    """Bytes of the coefficient tensors of one quantised linear layer [out, in]."""
    if out_dim < GROUP:
        return [out_dim * in_dim * 2]  # stored dequantised as fp16
    groups = in_dim // GROUP if in_dim % GROUP == 0 else 1
    weights = out_dim * in_dim * WEIGHT_BITS[variant] // 8
    return [weights, out_dim * groups * 2, out_dim * groups]  # weights, fp16 scales, uint8 zero points


def layer_coeff_bytes(config: dict, seqlen: int, variant: str) -> int:
    """One layer's coefficients (shared by block_i and block_cache_i)."""
    hidden, head_dim, ffn = config["hidden"], config["head_dim"], config["ffn"]
    q_out, kv_out = config["heads"] * head_dim, config["kv_heads"] * head_dim
    tensors = []
    for out_dim in (q_out, kv_out, kv_out):  # the export's fused QKV is three matmuls after tpu-mlir
        tensors += linear_tensors(out_dim, hidden, variant) + [out_dim * 2]  # + fp16 bias
    tensors += linear_tensors(hidden, q_out, variant)  # dense
    tensors += linear_tensors(ffn, hidden, variant) * 2  # gate and up (h_to_4h sliced in two)
    tensors += linear_tensors(hidden, ffn, variant)  # 4h_to_h
    tensors += [seqlen * (head_dim // 4) * 2] * 2  # cos and sin tables, fp16
    tensors += [hidden * 2] * 2  # the two RMSNorm weights
    return sum(_aligned(t) for t in tensors)


def embedding_coeff_bytes(config: dict) -> int:
    """The fp16 embedding table (shared by embedding and embedding_cache)."""
    return _aligned(config["padded_vocab"] * config["hidden"] * 2)


def lm_head_coeff_bytes(config: dict, variant: str) -> int:
    """The quantised output layer and the final RMSNorm's weight."""
    tensors = linear_tensors(config["padded_vocab"], config["hidden"], variant) + [config["hidden"] * 2]
    return sum(_aligned(t) for t in tensors)


def coeff_bytes(config: dict, seqlen: int, variant: str) -> int:
    """Every coefficient libbmrt uploads for the combined bmodel, shared copies once."""
    penalty_head = 2 * COEFF_ALIGN  # its two small constants
    layers = config["layers"] * layer_coeff_bytes(config, seqlen, variant)
    return embedding_coeff_bytes(config) + lm_head_coeff_bytes(config, variant) + penalty_head + layers


def planned(config: dict, seqlen: int) -> Planned:
    """The measured neuron and instruction sizes of this shape.

    Raises:
        KeyError: the shape was not compiled here (only GLM-4-9B's at SEQLEN 512 is).
    """
    if all(config[k] == v for k, v in GLM4_9B.items()) and config["padded_vocab"] == GLM4_9B_VOCAB:
        return MEASURED[("glm4-9b", seqlen)]
    raise KeyError(f"no measured neuron/instruction sizes for this shape at SEQLEN {seqlen}")


def device_bytes(config: dict, seqlen: int, variant: str) -> int:
    """What libbmrt needs on the device to load the bmodel: coefficients + neurons + instructions."""
    plan = planned(config, seqlen)
    instructions = config["layers"] * plan.instructions_per_layer[variant] + plan.instructions_fixed[variant]
    return coeff_bytes(config, seqlen, variant) + plan.neuron + NEURON_PAD + instructions


def runtime_tensor_bytes(config: dict, seqlen: int) -> int:
    """The device tensors chat/model.py allocates after loading (fp16 unless noted): the KV cache of every
    layer, the prefill and decode inputs and outputs, the logits (fp32) and the sampling heads' buffers."""
    hidden, layers, vocab = config["hidden"], config["layers"], config["padded_vocab"]
    kv = config["kv_heads"] * seqlen * config["head_dim"] * 2
    one_kv = config["kv_heads"] * config["head_dim"] * 2
    tensors = [seqlen * 4, seqlen * hidden * 2, seqlen * 4, seqlen * seqlen * 2]  # ids, hidden, pos, mask
    tensors += [kv] * (2 * layers)  # past_k, past_v of every layer
    tensors += [4, hidden * 2, 4, (seqlen + 1) * 2, one_kv, one_kv]  # decode: id, hidden, pos, mask, k, v
    tensors += [hidden * 2, vocab * 4, 4]  # lm_head in, logits, greedy token
    tensors += [seqlen * 4, 4, 4, 4, 50 * 4, 50 * 4]  # penalty head: ids, top_p, temperature, penalty, out
    return sum(tensors)


def min_heap_mib(config: dict, seqlen: int, variant: str) -> int:
    """The npu + vpp heap (MiB) that loads the bmodel and holds every tensor the chat runtime allocates."""
    return -(-(device_bytes(config, seqlen, variant) + runtime_tensor_bytes(config, seqlen)) // MIB)
