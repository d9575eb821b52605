from provision.memory.layout import ASSUMED_MAX_16GB_BM1684X, Layout, clip, plan_layout

README = Layout(7615, 3072, 3072)


INT8, INT4 = 10045, 5860  # models/glm4-9b.yaml: MiB of npu + vpp


def test_readme_layout_is_clipped_to_the_v2_10_max():
    assert clip(README, Layout(7615, 3071, 4096)) == Layout(7615, 3071, 3072)
    assert plan_layout(README, ASSUMED_MAX_16GB_BM1684X, INT8) == Layout(7615, 3071, 3071)


def test_v2_9_max_keeps_the_readme_layout():
    assert plan_layout(README, Layout(7615, 3072, 4096), INT8) == README


def test_a_threshold_counts_npu_and_vpp_only():
    assert (README.total, README.usable) == (13759, 10687)
    assert plan_layout(README, ASSUMED_MAX_16GB_BM1684X, 10686) == Layout(7615, 3071, 3071)
    # one MiB more than the clipped layout's npu + vpp: only the whole max (vpp 4096) holds it
    assert plan_layout(README, ASSUMED_MAX_16GB_BM1684X, 10687) == ASSUMED_MAX_16GB_BM1684X


def test_small_box_uses_its_whole_max_or_nothing():
    bm1684_12gb = Layout(4015, 2944, 4096)
    assert plan_layout(README, bm1684_12gb, INT4) == Layout(4015, 2944, 2944)  # npu + vpp 6959
    assert plan_layout(README, bm1684_12gb, 7168) == bm1684_12gb  # 8111 with vpp's whole 4096
    assert plan_layout(README, bm1684_12gb, INT8) is None
    assert plan_layout(README, Layout(2000, 1000, 1000), INT4) is None
    assert plan_layout(Layout(1000, 1000, 1000), Layout(4000, 1000, 2000), INT4) == Layout(4000, 1000, 2000)
