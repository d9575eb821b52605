"""Running a playbook (`provision/play/playbook.py` describes and validates one).

Steps run one after the other over the boxes still in the play; each step runs on those boxes in parallel
(`forks`; the memory step in rolling batches of `serial`, because it reboots). A box that fails a step
leaves the play; when more than `max_fail_percent` of the boxes have failed, the remaining steps are not
started. Every (step, box) ends with one outcome — ok, changed, skipped, failed, unreachable — and the
recap counts them per box, like Ansible's. `dry_run` runs only what reads (preflight, plans).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from provision.assets.cache import Cache
from provision.assets.download import pull
from provision.assets.pins import Pins, load_pins
from provision.assets.push import BoxPusher, plan_push, transport_opener
from provision.errors import ConnectError, FleetError, NotReadyError
from provision.facts.parse import Facts, gather
from provision.facts.preflight import Status, Verdict, judge
from provision.fleet import over_budget, run_fleet
from provision.inventory.hosts import Host
from provision.manifest import Manifest
from provision.memory import apply as memory_apply
from provision.memory import kit as memory_kit
from provision.memory import plan as memory_plan
from provision.memory.layout import Layout
from provision.memory.rollout import plan_one
from provision.play.playbook import STEPS, Playbook, Step
from provision.runtime import serve as serve_core
from provision.runtime.bench import SEED_PROMPT, BoxBench, bench_box
from provision.runtime.deploy import Deployer, deploy_box
from provision.runtime.remote_chat import answer_text, choose_variant, runtime_session
from provision.settings import Settings
from provision.ssh.transport import Connector

OUTCOMES = ("ok", "changed", "skipped", "failed", "unreachable")


@dataclass
class BoxState:
    """What the play knows about one box as it goes."""

    host: Host
    facts: Facts | None = None
    verdict: Verdict | None = None
    variant: str | None = None
    out: bool = False  # failed a step: left the play


@dataclass(frozen=True)
class StepDone:
    """How a step ended on one box that did not fail it."""

    outcome: Literal["ok", "changed", "skipped"]
    message: str
    data: Any = None  # e.g. a BoxBench for the recap's bench table


@dataclass(frozen=True)
class StepResult:
    step: str
    host: str
    outcome: str  # one of OUTCOMES
    message: str
    error: FleetError | None = None
    data: Any = None


@dataclass
class PlayReport:
    playbook: Playbook
    results: list[StepResult] = field(default_factory=list)
    aborted: str | None = None

    def recap(self) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {}
        for result in self.results:
            counts.setdefault(result.host, Counter())[result.outcome] += 1
        return counts

    @property
    def changed(self) -> bool:
        return any(r.outcome == "changed" for r in self.results)

    @property
    def errors(self) -> list[FleetError]:
        return [r.error for r in self.results if r.error is not None]

    def benches(self) -> list[BoxBench]:
        return [r.data for r in self.results if isinstance(r.data, BoxBench)]


class Play:
    def __init__(
        self,
        playbook: Playbook,
        hosts: list[Host],
        connector: Connector,
        manifest: Manifest,
        settings: Settings,
        *,
        dry_run: bool = False,
        serial: int | str | None = None,
        max_fail_percent: int | None = None,
        forks: int | None = None,
        say: Callable[[str], None] = lambda _line: None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.playbook, self.connector, self.manifest, self.settings = playbook, connector, manifest, settings
        self.states = {h.name: BoxState(h) for h in hosts}
        self.dry_run, self.say = dry_run, say
        self.cancel = cancel or threading.Event()  # Ctrl-C: no box starts another step (cli/interrupt.py)
        self.serial = serial if serial is not None else playbook.serial
        self.max_fail_percent = (
            max_fail_percent if max_fail_percent is not None else playbook.max_fail_percent
        )
        self.forks = forks or playbook.forks
        self.cache = Cache(settings.cache_dir)
        self._lock: Pins | None = None
        self._guard = threading.Lock()
        self._kit = memory_kit.shared_kit(manifest, settings)  # one kit download for the whole play

    @property
    def lock(self) -> Pins:
        if self._lock is None:
            self._lock = load_pins(self.manifest)
        return self._lock

    def run(self) -> PlayReport:
        report = self.report = PlayReport(self.playbook)  # read as it grows by a second Ctrl-C's recap
        for step in self.playbook.steps:
            if self.cancel.is_set():
                report.aborted = f"interrupted: stopped before step {step.kind}"
                break
            boxes = [s for s in self.states.values() if not s.out]
            if not boxes:
                break
            self.say(f"step {step.kind}: {len(boxes)} box{'es' if len(boxes) != 1 else ''}")
            results = self._run_step(step, boxes)
            report.results += results
            for result in results:
                if result.outcome in ("failed", "unreachable"):
                    self.states[result.host].out = True
            failed = sum(1 for s in self.states.values() if s.out)
            if over_budget(failed, len(self.states), self.max_fail_percent):
                report.aborted = (
                    f"stopped after step {step.kind}: {failed} of {len(self.states)} boxes failed "
                    f"(max_fail_percent {self.max_fail_percent})"
                )
                break
        return report

    def _run_step(self, step: Step, boxes: list[BoxState]) -> list[StepResult]:
        kind = STEP_RUNNERS[step.kind]
        if kind.prepare is not None and not self.dry_run:
            try:
                kind.prepare(self, step.options, boxes)
            except FleetError as exc:  # nothing could start (e.g. a download failed): every box fails it
                return [StepResult(step.kind, b.host.name, "failed", exc.message, exc) for b in boxes]
        outcomes = run_fleet(
            [b.host for b in boxes],
            lambda h: self._unless_cancelled(kind, step, self.states[h.name]),
            forks=self.forks,
            serial=self.serial if kind.rolling else None,
        )
        results = []
        for o in outcomes:
            if o.value is not None:
                done = o.value
                results.append(StepResult(step.kind, o.host.name, done.outcome, done.message, data=done.data))
            else:
                assert o.error is not None
                outcome = "unreachable" if isinstance(o.error, ConnectError) else "failed"
                results.append(StepResult(step.kind, o.host.name, outcome, o.error.message, o.error))
        for result in results:
            self.say(f"  {result.host}: {result.outcome} — {result.message}")
        return results

    def _unless_cancelled(self, kind: Any, step: Step, state: BoxState) -> StepDone:
        if self.cancel.is_set():  # Ctrl-C: a box that has not started this step does not start it
            return StepDone("skipped", "interrupted before this step")
        return kind.run(self, step.options, state)

    def _transport(self, state: BoxState):
        return self.connector.transport(state.host)

    def _refresh(self, state: BoxState) -> Facts:
        state.facts = gather(self._transport(state))
        return state.facts

    # ---- steps (registered in STEP_RUNNERS below) ----------------------------------------------------
    # Each returns a StepDone for one box, or raises a FleetError (the box fails the step).

    def _preflight(self, options: dict[str, Any], state: BoxState) -> StepDone:
        facts = self._refresh(state)
        verdict = judge(state.host, facts, self.manifest, variant=options["variant"])
        state.verdict, state.variant = verdict, verdict.variant
        reasons = "; ".join(r.message for r in verdict.reasons)
        if verdict.status.ready:
            usable = facts.heaps_now.usable if facts.heaps_now else "?"
            return StepDone("ok", f"ready for {verdict.variant} ({facts.heaps_now}: npu+vpp {usable} MiB)")
        if verdict.status is Status.NEEDS_LAYOUT and verdict.suggestion is not None:
            return StepDone(
                "ok", f"needs the memory layout {verdict.suggestion.layout} for {verdict.variant}: {reasons}"
            )
        raise NotReadyError(f"{state.host.name}: {verdict.status.value}: {reasons}", hint=verdict.hint)

    def _memory(self, options: dict[str, Any], state: BoxState) -> StepDone:
        if options["when"] == "nothing-fits" and (state.verdict is None or state.verdict.status.ready):
            return StepDone("ok", "a variant fits the current layout: left alone")
        variant = options["variant"] if options["variant"] != "auto" else None
        layout = (
            Layout(options["npu"], options["vpu"], options["vpp"]) if options["npu"] is not None else None
        )
        request = memory_plan.request_for(self.manifest, variant=variant, layout=layout)
        facts = state.facts or self._refresh(state)
        now = facts.heaps_now
        if layout is None and now is not None and request.min_usable and now.usable >= request.min_usable:
            # `when: needed`: only boxes below the variant's threshold get a layout (and a reboot)
            return StepDone(
                "ok",
                f"{now}: npu+vpp {now.usable} MiB already fits {request.variant} "
                f"(>= {request.min_usable} MiB)",
            )
        box, plan = plan_one(state.host.name, facts, request)
        if plan.action is memory_plan.Action.NOTHING:
            return StepDone("ok", plan.reason)
        if plan.action is memory_plan.Action.REFUSED:
            raise NotReadyError(f"{state.host.name}: memory layout refused: {plan.reason}")
        if self.dry_run:
            return StepDone("changed", f"would apply {plan.target} and reboot ({plan.reason})")
        options_ = memory_apply.ApplyOptions(
            kit_resolver=self._kit,
            auto_rollback=options["auto_rollback"],
            reboot=memory_apply.RebootPolicy(timeout=options["reboot_timeout"]),
        )
        result = memory_apply.apply_box(
            self._transport(state),
            plan,
            request,
            box,
            options_,
            progress=lambda host, stage, detail: self.say(f"  {host}: {stage.value} {detail}"),
            cancel=self.cancel,
        )
        self._refresh(state)
        state.variant = request.variant or state.variant
        if result.status is memory_apply.Status.UNCHANGED:  # a `check` box whose own max showed it at target
            return StepDone("ok", result.note)
        return StepDone("changed", f"{result.before} → {result.after}, rebooted and verified")

    def _asset_variant(self, options: dict[str, Any], state: BoxState) -> str:
        variant = options["variant"] if options["variant"] != "auto" else state.variant
        if not variant:
            raise FleetError(f"{state.host.name}: no variant chosen (run a preflight step first)")
        return variant

    def _prepare_assets(self, options: dict[str, Any], boxes: list[BoxState]) -> None:
        variants = sorted(
            {self._asset_variant(options, b) for b in boxes if b.variant or options["variant"] != "auto"}
        )
        if variants and not options["from_mirror"]:
            self.say(f"  cache: {', '.join(variants)} (downloaded once, verified, resumable)")
            pull(self.manifest, variants, cache=self.cache, lock=self.lock, mirrors=self.settings.mirrors)

    def _assets(self, options: dict[str, Any], state: BoxState) -> StepDone:
        variant = self._asset_variant(options, state)
        if self.dry_run:
            return StepDone("skipped", f"would push {variant} (dry run)")
        items = plan_push(
            self.manifest, variant, cache=self.cache, lock=self.lock, mirror=options["from_mirror"]
        )
        pusher = BoxPusher(
            state.host.name,
            transport_opener(self._transport(state)),
            self.manifest.model,
            variant,
            items,
            reverify=options["reverify"],
            from_mirror=options["from_mirror"] is not None,
        )
        result = pusher.run()
        if result.skipped:
            return StepDone("ok", f"{variant}: every file already verified on the box")
        return StepDone(
            "changed", f"{variant}: {result.transferred / 2**20:.1f} MiB sent, verified on the box"
        )

    def _deploy(self, options: dict[str, Any], state: BoxState) -> StepDone:
        if self.dry_run:
            return StepDone("skipped", "would deploy the runtime (dry run)")
        deployer = Deployer(self._transport(state), state.host.name)
        result = deploy_box(
            deployer,
            self._refresh(state),
            self.manifest,
            cache=self.cache,
            lock=self.lock,
            keep=options["keep"],
        )
        test = result.selftest or {}
        detail = f"selftest {test.get('tokens')} tokens at {test.get('tps')} tok/s"
        if result.status == "up-to-date":
            return StepDone("ok", f"runtime {result.version} up to date")
        return StepDone("changed", f"runtime {result.version} deployed, {detail}")

    def _bench(self, options: dict[str, Any], state: BoxState) -> StepDone:
        if self.dry_run:
            return StepDone("skipped", "no benchmark in a dry run")
        result = bench_box(
            self._transport(state),
            state.host.name,
            self.manifest,
            runs=options["runs"],
            prompt=options["prompt"] or SEED_PROMPT,
            max_new_tokens=options["max_new_tokens"],
        )
        return StepDone(
            "ok", f"{result.variant}: FTL {result.ftl.median:.3f} s, {result.tps.median:.2f} tok/s", result
        )

    def _chat_check(self, options: dict[str, Any], state: BoxState) -> StepDone:
        if self.dry_run:
            return StepDone("skipped", "no chat in a dry run")
        variant = choose_variant(self._refresh(state), self.manifest, "auto", state.host.name)
        with runtime_session(self._transport(state), self.manifest, variant, state.host.name) as client:
            client.wait_ready()
            text, done = answer_text(client.chat(options["prompt"], max_new_tokens=options["max_new_tokens"]))
        if not text.strip():
            raise FleetError(
                f"{state.host.name}: the model answered nothing ({done.tokens} tokens, {done.stop})"
            )
        return StepDone(
            "ok",
            f"{options['prompt']!r} → {text.strip()[:60]!r}",
            {"prompt": options["prompt"], "answer": text},
        )

    def _serve(self, options: dict[str, Any], state: BoxState) -> StepDone:
        if self.dry_run:
            return StepDone("skipped", "would start sophon-chat.service (dry run)")
        transport, host = self._transport(state), state.host
        variant = choose_variant(self._refresh(state), self.manifest, options["variant"], host.name)
        key = serve_core.ensure_key(serve_core.key_path(self.settings.home, host.name))
        result = serve_core.serve_up(
            transport, host.name, serve_core.render_unit(self.manifest, variant, host.user), key
        )
        if not result.changes:
            return StepDone("ok", f"{variant} served on port {serve_core.PORT}, as planned already")
        changes = ", ".join(result.changes)
        return StepDone("changed", f"{variant} served on port {serve_core.PORT} ({changes})")


@dataclass(frozen=True)
class StepKind:
    """How `play` runs one kind of step: per box, after an optional fleet-wide preparation; `rolling` steps
    (they reboot) go in `serial` batches."""

    run: Callable[[Play, dict[str, Any], BoxState], StepDone]
    prepare: Callable[[Play, dict[str, Any], list[BoxState]], None] | None = None
    rolling: bool = False


STEP_RUNNERS: dict[str, StepKind] = {
    "preflight": StepKind(Play._preflight),
    "memory": StepKind(Play._memory, rolling=True),
    "assets": StepKind(Play._assets, prepare=Play._prepare_assets),
    "deploy": StepKind(Play._deploy),
    "bench": StepKind(Play._bench),
    "chat-check": StepKind(Play._chat_check),
    "serve": StepKind(Play._serve),
}
assert set(STEP_RUNNERS) == set(STEPS), "every step kind the schema knows is run, and only those"
