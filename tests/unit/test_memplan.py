"""The layout planner: facts → per-box plan (nothing / apply / check / refused), no SSH."""

import pytest

from provision.manifest import load_manifest
from provision.memory.layout import Layout
from provision.memory.plan import Action, BoxMemory, plan_box, request_for

MAX_V212 = Layout(7615, 3071, 4096)  # 16 GB BM1684X, memory_edit v2.10+
MAX_V29 = Layout(7615, 3072, 4096)
FACTORY = Layout(3950, 2048, 3072)
READY = Layout(7615, 3071, 3071)


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("glm4-9b")


def box(now=FACTORY, maximum=MAX_V212, chip="bm1684x"):
    return BoxMemory("se7-1", now=now, max=maximum, chip=chip)


def test_default_target_is_the_recommended_layout_clipped_to_the_box(manifest):
    plan = plan_box(box(), request_for(manifest))
    assert plan.action is Action.APPLY
    assert plan.target == READY
    assert "clipped" in plan.reason


def test_an_older_kit_with_a_larger_max_keeps_the_readme_layout(manifest):
    assert plan_box(box(maximum=MAX_V29), request_for(manifest)).target == Layout(7615, 3072, 3072)


def test_a_box_at_target_needs_nothing(manifest):
    plan = plan_box(box(now=READY), request_for(manifest, variant="int4"))
    assert plan.action is Action.NOTHING
    assert not plan.reboots


def test_explicit_layout_over_max_is_refused_with_the_heap_named(manifest):
    plan = plan_box(box(), request_for(manifest, layout=Layout(7616, 3071, 3071)))
    assert plan.action is Action.REFUSED
    assert plan.reason == "over the box's maximum: npu 7616 > max 7615"


def test_explicit_layout_is_not_clipped(manifest):
    plan = plan_box(box(), request_for(manifest, layout=Layout(2048, 2048, 2048)))
    assert (plan.action, plan.target) == (Action.APPLY, Layout(2048, 2048, 2048))


def test_below_the_variant_threshold_is_refused(manifest):
    small_max = Layout(4015, 2944, 4096)  # 12 GB BM1684 figures, but take them as a small BM1684X
    plan = plan_box(box(maximum=Layout(1000, 1000, 1000)), request_for(manifest, variant="int4"))
    assert plan.action is Action.REFUSED
    assert plan.reason == "1000/1000/1000 has 2000 MiB of npu+vpp, below the 5860 MiB int4 needs"
    assert plan_box(box(maximum=small_max), request_for(manifest, variant="int4")).action is Action.APPLY
    # its whole max, 4015 + 4096 MiB of npu + vpp, cannot hold int8's 10045
    assert plan_box(box(maximum=small_max), request_for(manifest, variant="int8")).action is Action.REFUSED


def test_explicit_layout_with_a_variant_keeps_its_threshold(manifest):
    request = request_for(manifest, variant="int8", layout=Layout(2048, 2048, 2048))
    assert plan_box(box(), request).action is Action.REFUSED


def test_default_variant_is_the_one_with_the_largest_threshold(manifest):
    request = request_for(manifest)
    assert (request.variant, request.min_usable) == ("int8", 10045)


def test_unknown_max_means_check_on_the_box(manifest):
    plan = plan_box(box(now=FACTORY, maximum=None), request_for(manifest))
    assert plan.action is Action.CHECK
    assert plan.target == READY  # what a 16 GB BM1684X would get; the box's own max decides on the box
    assert plan.reboots


def test_unknown_max_but_exactly_the_request_is_nothing(manifest):
    request = request_for(manifest, layout=READY)
    assert plan_box(box(now=READY, maximum=None), request).action is Action.NOTHING


def test_unreadable_heaps_and_wrong_chip_are_refused(manifest):
    request = request_for(manifest)
    unreadable = BoxMemory("se7-1", now=None, max=None, problem="heaps: sudo refused")
    assert plan_box(unreadable, request).reason == "current heaps unknown: heaps: sudo refused"
    wrong = plan_box(box(chip="bm1684"), request)
    assert wrong.action is Action.REFUSED and "bm1684" in wrong.reason


def test_unknown_max_at_the_assumed_16gb_target_is_nothing(manifest):
    plan = plan_box(box(now=READY, maximum=None), request_for(manifest))
    assert plan.action is Action.NOTHING and "assumed" in plan.reason


def test_deleting_vpu_drops_vpp_max_by_the_1_mib_reserve():
    """Sophgo's memory_edit.sh: `-vpu 0` keeps 1 MiB of vpp's top; vpp max 4096 -> 4095."""
    from provision.memory.plan import over_max

    maximum = Layout(7615, 3071, 4096)
    assert over_max(Layout(7615, 0, 4096), maximum) == [
        "vpp 4096 > max 4095 (vpp max is 4095 when vpu is deleted)"
    ]
    assert over_max(Layout(7615, 0, 4095), maximum) == []
    assert over_max(Layout(7615, 3071, 4096), maximum) == []
