"""Runs the unmodified chat runtime (chat/model.py) on a real bmodel through `sophon.sail` over libbmrt on
the BM1684X cmodel, in its own process under the boxes' Python 3.8, and prints one JSON document.

    python3.8 cmodel_driver.py REQUEST.json   (sim/sail_cmodel and the repo on PYTHONPATH)

REQUEST: {"bmodel": PATH, "runs": [{"id", "prompt": [ids], "steps": N, "mode": "greedy" | "recompute" |
"seed_mask" | "sample", "seed"?}]}. Per run it returns the tokens and the logits of every step; "recompute"
also returns, per step, the logits and token of a fresh prefill of the whole sequence so far; "sample" draws
with penalty_sample_head and returns its 50 probabilities and tokens.
"""

import json
import random
import sys

import numpy as np

from chat.model import GlmModel, Sampling


class SeedMaskModel(GlmModel):
    """chatglm4.py's decode mask: 1 on [0, SEQLEN - token_length], 0 elsewhere (token_length = filled + 1)."""

    def decode_mask(self):
        mask = np.zeros(self.seqlen + 1, dtype=np.float16)
        mask[: self.seqlen - self.filled] = 1
        return mask


def greedy(model, prompt, steps):
    model.prefill(prompt)
    tokens, logits = [model.greedy()], [model.logits().tolist()]
    while len(tokens) < steps:
        model.decode(tokens[-1])
        tokens.append(model.greedy())
        logits.append(model.logits().tolist())
    return {"tokens": tokens, "logits": logits}


def recompute(model, prompt, tokens):
    fresh = []
    for step in range(len(tokens)):
        model.prefill(list(prompt) + list(tokens[:step]))
        fresh.append({"token": model.greedy(), "logits": model.logits().tolist()})
    return fresh


def sample(model, prompt, seed):
    model.prefill(prompt)
    rng = random.Random(seed)
    token = model.sample(list(prompt), Sampling(temperature=0.9, top_p=0.8, penalty=1.2, seed=seed), rng)
    return {
        "token": token,
        "probs": model._penalty_probs.download().reshape(-1).tolist(),
        "candidates": model._penalty_tokens.download().reshape(-1).tolist(),
        "logits": model.logits().tolist(),
    }


def main(path):
    with open(path) as handle:
        request = json.load(handle)
    model = GlmModel(request["bmodel"])
    seed_model = None
    results = {"summary": model.summary(), "runs": {}}
    for run in request["runs"]:
        if run["mode"] == "sample":
            results["runs"][run["id"]] = sample(model, run["prompt"], run["seed"])
            continue
        if run["mode"] == "seed_mask":
            seed_model = seed_model or SeedMaskModel(request["bmodel"])
            results["runs"][run["id"]] = greedy(seed_model, run["prompt"], run["steps"])
            continue
        result = greedy(model, run["prompt"], run["steps"])
        if run["mode"] == "recompute":
            result["fresh"] = recompute(model, run["prompt"], result["tokens"])
        results["runs"][run["id"]] = result
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
