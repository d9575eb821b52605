from pathlib import Path

import pytest

from provision.errors import ConfigError
from provision.manifest import load_manifest
from provision.play.playbook import check_variants, load_playbook, parse_playbook
from provision.yamlfile import parse_yaml

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


@pytest.mark.parametrize("name", ["preflight.yml", "glm4-int4.yml", "glm4-int8.yml", "glm4-auto.yml"])
def test_shipped_playbooks_load(name):
    playbook = load_playbook(PLAYBOOKS / name)
    assert playbook.steps[0].kind == "preflight"
    assert playbook.model is None  # the command's --model: the same playbook runs on a simulated fleet


def test_a_playbook_may_name_its_model(tmp_path):
    book = tmp_path / "b.yml"
    book.write_text("model: chatglm3-6b\nsteps:\n  - preflight: {}\n")
    assert load_playbook(book).model == "chatglm3-6b"


def test_auto_playbook_changes_layouts_only_where_nothing_fits():
    playbook = load_playbook(PLAYBOOKS / "glm4-auto.yml")
    memory = next(s for s in playbook.steps if s.kind == "memory")
    assert memory.options["when"] == "nothing-fits"
    assert memory.options["auto_rollback"] is True  # defaults filled in


def error_of(text):
    with pytest.raises(ConfigError) as info:
        parse_playbook(parse_yaml(text, "p.yml"))
    return str(info.value)


def test_unknown_step_names_file_line_and_key():
    assert error_of("steps:\n  - preflight: {}\n  - reboot-all: {}\n") == (
        "p.yml:3: steps[1].reboot-all: unknown step "
        "(known: preflight, memory, assets, deploy, bench, chat-check, serve)"
    )


def test_unknown_option_and_wrong_type():
    assert error_of("steps:\n  - bench:\n      runz: 3\n").startswith(
        "p.yml:3: steps[0].bench.runz: unknown key"
    )
    assert error_of("steps:\n  - bench:\n      runs: three\n") == (
        "p.yml:3: steps[0].bench.runs: must be a number, not text"
    )
    assert "must be a boolean, not text" in error_of("steps:\n  - memory: {auto_rollback: 'no'}\n")


def test_variants_come_from_the_manifest():
    book = parse_playbook(parse_yaml("steps:\n  - preflight: {}\n  - assets: {variant: fp16}\n", "p.yml"))
    check_variants(book, load_manifest("chatglm3-6b"))  # it has an fp16 variant
    with pytest.raises(ConfigError) as caught:
        check_variants(book, load_manifest("glm4-9b"))
    assert caught.value.message == (
        "p.yml:3: steps[1].assets.variant: unknown variant 'fp16' (model glm4-9b has: int4, int8)"
    )


def test_top_level_errors():
    assert error_of("name: x\n") == "p.yml:1: steps: is required and must list at least one step"
    assert error_of("steps: [preflight]\nserial: half\n").startswith("p.yml:2: serial: must be a number")
    assert error_of("steps: [preflight]\nmax_fail_percent: 150\n").startswith("p.yml:2: max_fail_percent")
    assert error_of("steps: [preflight]\ncolour: red\n").startswith("p.yml:2: colour: unknown key")
    assert "npu, vpu and vpp together" in error_of("steps:\n  - memory: {npu: 7615}\n")


def test_bare_step_names_are_allowed():
    playbook = parse_playbook(parse_yaml("steps: [preflight, deploy]\nserial: 25%\n", "p.yml"))
    assert [s.kind for s in playbook.steps] == ["preflight", "deploy"]
    assert playbook.serial == "25%"
