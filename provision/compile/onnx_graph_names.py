"""The graph names of a ChatGLM4 bmodel, in the order `model_tool --combine` gets them (sophon-demo's)."""

from __future__ import annotations

FIXED_GRAPHS = ("embedding", "embedding_cache", "lm_head", "greedy_head", "penalty_sample_head")


def graph_names(layers: int) -> list[str]:
    names = list(FIXED_GRAPHS)
    for layer in range(layers):
        names += [f"block_{layer}", f"block_cache_{layer}"]
    return names
