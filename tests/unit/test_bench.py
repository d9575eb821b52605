from __future__ import annotations

from provision.runtime.bench import PUBLISHED, BoxBench, Run, Spread, bench_client, write_chart
from tests.unit.test_remote_chat import client_of, server, standin  # noqa: F401 (fixtures)


def test_spread_is_median_min_max():
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)


def test_bench_runs_the_prompt_from_a_fresh_history_each_time(server):  # noqa: F811
    client = client_of(server)
    client.wait_ready()
    seen = []
    result = bench_client(
        client, host="box", variant="int4", runs=3, max_new_tokens=5, on_run=lambda i, run: seen.append(i)
    )
    assert seen == [0, 1, 2]
    assert len(result.runs) == 3 and all(r.tokens >= 1 and r.tps > 0 for r in result.runs)
    assert len({r.tokens for r in result.runs}) == 1  # greedy + reset: the same answer each run
    doc = result.as_dict()
    assert doc["published"] == {"ftl_s": PUBLISHED["int4"][0], "tps": PUBLISHED["int4"][1]}
    assert doc["ftl_s"]["min"] <= doc["ftl_s"]["median"] <= doc["ftl_s"]["max"]


def test_chart_is_a_png(tmp_path):
    results = [
        BoxBench("se7-1", "int8", (Run(1.2, 4.4, 100), Run(1.1, 4.6, 100))),
        BoxBench("se7-2", "int4", (Run(1.0, 7.5, 100),)),
    ]
    path = write_chart(results, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
