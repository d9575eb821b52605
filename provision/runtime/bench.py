"""Fleet benchmark: first-token latency and tokens/s of the seed's prompt on each box.

The published numbers are sophon-demo's ChatGLM4 README (SE7-32, SDK V24.04.01); every box's median,
min and max are reported beside them.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.errors import Cancelled
from provision.facts.parse import gather
from provision.manifest import Manifest
from provision.runtime.remote_chat import ChatClient, answer_text, choose_variant, runtime_session
from provision.ssh.transport import Transport

SEED_PROMPT = "请使用C++写一段冒泡排序算法。"
PUBLISHED: dict[str, tuple[float, float]] = {"int8": (1.181, 4.471), "int4": (1.114, 7.489)}  # FTL s, tok/s


@dataclass(frozen=True)
class Run:
    ftl_s: float
    tps: float
    tokens: int


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class BoxBench:
    host: str
    variant: str
    runs: tuple[Run, ...]
    load_s: float | None = None

    @property
    def ftl(self) -> Spread:
        return Spread.of([r.ftl_s for r in self.runs])

    @property
    def tps(self) -> Spread:
        return Spread.of([r.tps for r in self.runs])

    @property
    def published(self) -> tuple[float, float] | None:
        return PUBLISHED.get(self.variant)

    def as_dict(self) -> dict[str, object]:
        ftl, tps, published = self.ftl, self.tps, self.published
        return {
            "host": self.host,
            "variant": self.variant,
            "runs": [vars(r) for r in self.runs],
            "load_s": self.load_s,
            "ftl_s": vars(ftl),
            "tps": vars(tps),
            "published": {"ftl_s": published[0], "tps": published[1]} if published else None,
        }


def bench_client(
    client: ChatClient,
    *,
    host: str,
    variant: str,
    runs: int = 3,
    prompt: str = SEED_PROMPT,
    max_new_tokens: int | None = None,
    on_run: Callable[[int, Run], None] | None = None,
    cancel: threading.Event | None = None,
) -> BoxBench:
    """Ask `prompt` `runs` times, each from a fresh history, and measure as the seed does (FTL, TPS).
    After `cancel` is set no further run starts: the runs done so far are the result."""
    results: list[Run] = []
    for index in range(runs):
        if cancel is not None and cancel.is_set() and results:
            break
        client.reset()
        _, done = answer_text(client.chat(prompt, max_new_tokens=max_new_tokens))
        run = Run(done.ftl_s, done.tps, done.tokens)
        results.append(run)
        if on_run:
            on_run(index, run)
    return BoxBench(host, variant, tuple(results))


def bench_box(
    transport: Transport,
    host: str,
    manifest: Manifest,
    *,
    runs: int,
    prompt: str,
    max_new_tokens: int | None,
    progress: Callable[[str, str], None] = lambda _host, _stage: None,
    cancel: threading.Event | None = None,
) -> BoxBench:
    """Start the box's runtime once, ask `runs` times from a fresh history, stop it (no orphan).
    After `cancel` is set the runtime is not started, or no further run starts (the runs done count)."""
    variant = choose_variant(gather(transport), manifest, "auto", host)
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{host}: interrupted before the runtime started", hint="run `bench` again")
    progress(host, f"starting the {variant} runtime")
    with runtime_session(transport, manifest, variant, host) as client:
        ready = client.wait_ready()
        progress(host, f"model loaded in {ready.load_s:.2f} s; {runs} runs")
        result = bench_client(
            client,
            host=host,
            variant=variant,
            runs=runs,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            on_run=lambda i, r: progress(host, f"run {i + 1}: FTL {r.ftl_s:.3f} s, {r.tps:.2f} tok/s"),
            cancel=cancel,
        )
    return BoxBench(result.host, result.variant, result.runs, ready.load_s)


def write_chart(results: Sequence[BoxBench], path: Path) -> Path:
    """A PNG with two panels (first-token latency, tokens/s) per box, published numbers as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [f"{r.host}\n{r.variant}" for r in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(results) + 3), 4), dpi=120)
    for axis, title, unit, pick, index in (
        (left, "first-token latency", "s", lambda r: r.ftl, 0),
        (right, "decode speed", "tokens/s", lambda r: r.tps, 1),
    ):
        spreads = [pick(r) for r in results]
        medians = [s.median for s in spreads]
        errors = [
            [m - s.min for m, s in zip(medians, spreads, strict=True)],
            [s.max - m for m, s in zip(medians, spreads, strict=True)],
        ]
        axis.bar(names, medians, yerr=errors, capsize=4, color="#4c72b0")
        for variant, published in PUBLISHED.items():
            if any(r.variant == variant for r in results):
                axis.axhline(
                    published[index],
                    linestyle="--",
                    linewidth=1,
                    color="#c44e52" if variant == "int8" else "#55a868",
                    label=f"published SE7-32 {variant}",
                )
        axis.set_title(f"{title}\nmedian, min–max", fontsize=10)
        axis.set_ylabel(unit)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.suptitle("ChatGLM4-9B on the fleet (the seed prompt: bubble sort in C++)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
