"""Flow parameters without running a flow: the params file Makefile passes, the sweep grid, and the
one-line message a bad override gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def test_params_file_becomes_overrides_that_load(tmp_path, monkeypatch):
    from pipelines.flows import check_overrides, overrides_from_file

    cfg = tmp_path / "cpu-small.yaml"
    cfg.write_text("model:\n  channel_mults: [1, 2, 2, 2]\n  base_channels: 32\nsample:\n  sampler: ddim\n")
    overrides = overrides_from_file(cfg)
    assert [o.split("=")[0] for o in overrides] == ["model.channel_mults", "model.base_channels", "sample.sampler"]
    monkeypatch.chdir(REPO)
    assert check_overrides(overrides) is None
    from pokediff.config import load_params

    params = load_params("params.yaml", overrides)
    assert list(params.model.channel_mults) == [1, 2, 2, 2] and params.sample.sampler == "ddim"


@pytest.mark.parametrize("text", ["- a\n- b\n", "model: [\n"])
def test_a_bad_params_file_is_one_line_naming_it(tmp_path, text):
    from pipelines.flows import overrides_from_file

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError) as err:
        overrides_from_file(cfg)
    assert str(cfg) in str(err.value) and "\n" not in str(err.value)


def test_bad_override_message_is_one_line(monkeypatch):
    from pipelines.flows import check_overrides

    monkeypatch.chdir(REPO)
    msg = check_overrides(["train.stepz=3"])
    assert msg.startswith("invalid flow parameter: params (-S/--overlay): train.stepz") and "\n" not in msg


def test_sweep_grid_parsing():
    from pipelines.sweep import parse_grid

    assert parse_grid(["ddim:10", "dpmpp2m:20", "ddim:10", "ddpm:1000"]) == [
        ("ddim", 10), ("dpmpp2m", 20), ("ddpm", 1000)]
    for bad in (["heun:5"], ["ddim"], ["ddim:0"], ["ddim:x"], []):
        msg = parse_grid(bad)
        assert isinstance(msg, str) and msg.startswith("invalid flow parameter: grid")


def test_dvc_status_becomes_one_short_line_naming_a_few_changes_per_kind():
    from pipelines.dvc_tasks import describe_changes

    # The shape of `dvc status --json <stage>`'s list for one stage.
    changes = [{"changed deps": {f"src/pokediff/m{i}.py": "modified" for i in range(5)}},
               {"changed outs": {"outputs/train/model.safetensors": "deleted"}},
               {"changed deps": {"params.yaml": {"sample.sampler": "modified"}}},
               "always changed"]
    assert describe_changes(changes, max_names=3) == (
        "changed deps: src/pokediff/m0.py (modified), src/pokediff/m1.py (modified), src/pokediff/m2.py (modified)"
        " and 2 more; changed outs: outputs/train/model.safetensors (deleted); changed deps: sample.sampler "
        "(modified); always changed")
    assert "and" not in describe_changes(changes[:1]) and describe_changes([]) == "changed"


def test_sweep_guidance_parsing():
    from pipelines.sweep import parse_guidance

    assert parse_guidance(None) == [None] and parse_guidance([0, 1, 2.5, 1]) == [0.0, 1.0, 2.5]
    for bad in ([-1], [51], [True], ["2"]):
        msg = parse_guidance(bad)
        assert isinstance(msg, str) and msg.startswith("invalid flow parameter: guidance") and "\n" not in msg


def test_sample_from_champion_refuses_an_unknown_type_or_guidance_before_any_work():
    from pipelines.flows import sample_from_champion

    for kwargs, words in (({"pokemon_type": "fyre"}, "unknown type 'fyre'"), ({"guidance": -1.0}, "guidance=-1.0")):
        state = sample_from_champion.fn(**kwargs)
        assert state.is_failed() and words in state.message and "\n" not in state.message
