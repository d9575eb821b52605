from provision.memory.layout import ASSUMED_MAX_16GB_BM1684X, Layout, clip, plan_layout

README = Layout(7615, 3072, 3072)


def test_readme_layout_is_clipped_to_the_v2_10_max():
    assert clip(README, Layout(7615, 3071, 4096)) == Layout(7615, 3071, 3072)
    assert plan_layout(README, ASSUMED_MAX_16GB_BM1684X, 7168) == Layout(7615, 3071, 3071)


def test_v2_9_max_keeps_the_readme_layout():
    assert plan_layout(README, Layout(7615, 3072, 4096), 7168) == README


def test_small_box_uses_its_whole_max_or_nothing():
    bm1684_12gb = Layout(4015, 2944, 4096)
    assert plan_layout(README, bm1684_12gb, 7168) == Layout(4015, 2944, 2944)
    assert plan_layout(README, Layout(2000, 1000, 1000), 4608) is None
    assert plan_layout(Layout(1000, 1000, 1000), Layout(4000, 1000, 1000), 4608) == Layout(4000, 1000, 1000)
