import time
from pathlib import Path

import pytest

from pokediff.config import (
    DEFAULTS,
    MAX_PARAMS_BYTES,
    ConfigError,
    Params,
    _yaml_scalar,
    flatten,
    load_params,
    overlay_overrides,
    parse_override,
    parse_yaml,
    read_yaml_file,
)
from pokediff.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_flatten():
    flat = Params().to_flat_dict()
    assert flat["diffusion.schedule"] == "cosine" and flat["sample.sampler"] == "ddim"
    assert "validate.min_images" in flat  # the section keeps its params.yaml name


def test_overrides_are_parsed_as_yaml(tmp_path):
    p = load_params("none", ["train.steps=200", "model.channel_mults=[1, 2]", "sample.eta=0.5"])
    assert p.train.steps == 200 and p.model.channel_mults == (1, 2) and p.sample.eta == 0.5


@pytest.mark.parametrize("override,message", [
    ("diffusion.schedule=quadratic", "diffusion.schedule: Input should be 'linear', 'cosine' or 'sigmoid'"),
    ("train.lr=-0.001", "train.lr: Input should be greater than 0 (got -0.001)"),
    ("sample.steps=5000", "sample.steps (5000) must not exceed diffusion.timesteps (1000)"),
    ("sample.sampler=euler", "sample.sampler: Input should be 'ddpm', 'ddim' or 'dpmpp2m'"),
    ("train.stepz=3", "train.stepz: unknown key"),
])
def test_bad_values_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as info:
        load_params("none", [override])
    assert message in str(info.value)


@pytest.mark.parametrize("overrides,message", [
    (["sample.sampler=ddpm", "sample.eta=0.5"], "sample: eta=0.5 is only used by ddim; sampler=ddpm would ignore it"),
    (["sample.sampler=dpmpp2m", "sample.eta=1"], "sampler=dpmpp2m would ignore it"),
    (["diffusion.schedule=linear", "diffusion.timesteps=20", "sample.steps=10"],
     "diffusion: timesteps=20: the linear schedule needs at least 21"),
])
def test_settings_a_sampler_or_schedule_cannot_honour_stop_before_any_work(overrides, message):
    # Found by comparing with diffusers: eta was silently ignored by ddpm / dpmpp2m, and a short linear
    # schedule failed only when training built it. Both are now params errors (exit 2, one line).
    with pytest.raises(ConfigError) as info:
        load_params("none", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)
    load_params("none", [*overrides[:-1], "sample.eta=0"] if "eta" in overrides[-1] else
                ["diffusion.schedule=linear", "diffusion.timesteps=21", "sample.steps=10"])  # the limit is exact


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_params(bad)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_override("train.steps")


# ------------------------------------------------------------------------------------------------
# Files: missing, folder, binary, too large, alias bomb, deep nesting; strict types; one-line messages
# ------------------------------------------------------------------------------------------------
SMALL = Path(__file__).resolve().parents[1] / "configs" / "cpu-small.yaml"


def _error(path=None, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_params(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_config_error_is_a_usage_error_and_still_a_value_error():
    assert issubclass(ConfigError, UsageError) and issubclass(ConfigError, ValueError)
    assert ConfigError("x").exit_code == 2


def test_a_missing_params_file_is_an_error_not_the_defaults(tmp_path):
    assert _error(tmp_path / "nope.yaml").startswith(f"{tmp_path / 'nope.yaml'}: no such params file")
    assert load_params(DEFAULTS) == Params() and load_params(None) == Params()


def test_folder_binary_and_oversized_params_files_are_one_line_errors(tmp_path):
    assert "is a folder" in _error(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    assert "not a UTF-8 text file" in _error(tmp_path / "bin.yaml")
    (tmp_path / "nul.yaml").write_bytes(b"train:\x00\n")
    assert "binary content" in _error(tmp_path / "nul.yaml")
    (tmp_path / "big.yaml").write_text("# " + "x" * MAX_PARAMS_BYTES + "\n")
    assert "larger than 1024 KiB" in _error(tmp_path / "big.yaml")


def test_yaml_syntax_errors_are_one_line_with_the_position(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  steps: 3\n   lr: [\n")
    message = _error(tmp_path / "p.yaml")
    assert message.startswith(f"{tmp_path / 'p.yaml'}: not valid YAML: ") and "(line 3, column" in message


def test_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefg", "bcdefgh")]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["train: {steps: *h}"]) + "\n")
    t0 = time.perf_counter()
    message = _error(tmp_path / "bomb.yaml")
    assert time.perf_counter() - t0 < 1.0 and len(message) < 200
    assert "anchors and aliases (&, *) are not allowed (line 1)" in message
    # a lone anchor, and aliases in a -S value, too
    (tmp_path / "anchor.yaml").write_text("train: &t\n  steps: 3\n")
    assert "anchors and aliases" in _error(tmp_path / "anchor.yaml")
    assert "anchors and aliases" in _error(None, ["train.betas=[&x 0.9, *x]"])


def test_deep_nesting_and_huge_numbers_are_errors_not_crashes(tmp_path):
    (tmp_path / "deep.yaml").write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested deeper than" in _error(tmp_path / "deep.yaml")
    (tmp_path / "int.yaml").write_text("train:\n  steps: " + "9" * 5000 + "\n")
    assert "int.yaml: not valid YAML" in _error(tmp_path / "int.yaml")


@pytest.mark.parametrize("override,key", [
    ("train.steps=true", "train.steps"),
    ("train.lr=false", "train.lr"),
    ("train.betas=[0.9,true]", "train.betas"),
    ("model.channel_mults=[1,true]", "model.channel_mults"),
    ("data.background=[255,true,255]", "data.background"),
    ("sample.num_images=yes", "sample.num_images"),
])
def test_booleans_are_not_numbers(override, key):
    assert f"{key}: expected a number, not a boolean" in _error(None, [override])


def test_betas_outside_0_1_name_the_key():
    assert "train.betas: each must be in [0, 1) (got [0.9, 2])" in _error(None, ["train.betas=[0.9,2]"])


def test_a_value_where_a_section_belongs_names_the_section():
    assert _error(None, ["train=5"]).endswith("train: expected a section (mapping), got 5")
    message = _error(None, ["train=5", "train.out_dir=x"])
    assert message.startswith("train: expected a section (mapping), got 5")


def test_many_errors_stay_one_short_line_and_values_are_cut():
    message = _error(None, ["train.lr=-1", "train.steps=0", "sample.eta=9", "model.dropout=3", "train.stepz=1"])
    assert message.count(";") == 2 and message.endswith("(+2 more)")
    long = _error(None, ["train.out_dir=" + "[" + ",".join(["1"] * 50_000) + "]"])
    assert len(long) < 400 and "…" in long


def test_overlay_file_becomes_overrides_that_reproduce_its_values():
    overrides = overlay_overrides(SMALL)
    assert "model.channel_mults=[1,2,2,2]" in overrides and "train.lr=0.001" in overrides
    assert "sample.sampler=ddim" in overrides
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", overrides)
    assert params.model.base_channels == 32 and params.train.batch_size == 16 and params.train.lr == 0.001
    assert overrides[0] == "model.base_channels=32"  # file order


def test_yaml_scalars_round_trip_through_overrides():
    for value in (1e-5, 3e20, 0.001, -2.5, 7, True, None, "ddim", "1.0", "yes", "a b", [1, 2], [0.9, 1e-8]):
        assert parse_yaml(_yaml_scalar(value)) == value, (value, _yaml_scalar(value))


def test_overlay_errors_name_the_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping of sections"):
        overlay_overrides(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="nope.yaml: no such overlay file"):
        overlay_overrides(tmp_path / "nope.yaml")


# Keys whose code default differs from params.yaml on purpose. params.yaml is the GPU recipe; a code
# default is what `--params none` (and every test that runs without a params file) gets.
DEFAULTS_DIFFERING_ON_PURPOSE = {
    # in-training FID needs `pokediff ref-stats` first: a bare `pokediff train` must not depend on it
    "train.eval_every": (0, 2000),
    # Inception batch: 8-16 is fastest on a 2-core CPU (the default device there), 64 on a GPU
    "score.batch_size": (16, 64),
}


def test_code_defaults_agree_with_params_yaml_but_for_the_listed_keys():
    in_file = Params.model_validate(read_yaml_file(ROOT / "params.yaml")).to_flat_dict()
    defaults = Params().to_flat_dict()
    differing = {key: (defaults[key], in_file[key]) for key in defaults if defaults[key] != in_file[key]}
    assert differing == DEFAULTS_DIFFERING_ON_PURPOSE


def test_params_yaml_sets_every_key_so_no_code_default_reaches_the_main_job():
    written = set(flatten(read_yaml_file(ROOT / "params.yaml")))
    assert written == set(Params().to_flat_dict())


def _float_keys() -> list[str]:
    """Every params key holding a float or floats (lr, betas, eta, ...), from the typed config itself, so a
    float key added later is covered too."""
    defaults = flatten(Params().model_dump(by_alias=True, mode="json"))
    return sorted(k for k, v in defaults.items()
                  if isinstance(v, float) or (isinstance(v, list) and v and all(isinstance(x, float) for x in v)))


def test_the_float_keys_are_found():
    assert {"train.lr", "train.betas", "train.grad_clip", "train.ema_decay", "train.weight_decay", "sample.eta",
            "diffusion.min_snr_gamma", "model.dropout"} <= set(_float_keys())


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", _float_keys())
def test_inf_and_nan_are_refused_for_every_float_key(key, value):
    # On main train.lr=.inf (and most other keys) passed and training wrote NaN weights.
    default = flatten(Params().model_dump(by_alias=True, mode="json"))[key]
    raw = f"[{','.join([value] + [str(x) for x in default[1:]])}]" if isinstance(default, list) else value
    message = _error(None, [f"{key}={raw}"])
    assert key in message and ("finite number" in message or "must be in" in message), message


def test_an_invalid_value_is_named_by_where_it_came_from(tmp_path):
    # On main every error was labelled with the params file or "params (built-in defaults)", also for a
    # value that came from -S or a command's own option.
    expected = "params (-S/--overlay): train.lr: Input should be a finite number (got inf)"
    assert _error(None, ["train.lr=.inf"]) == expected
    (tmp_path / "p.yaml").write_text("train: {lr: .inf, steps: 3}\n")
    assert _error(tmp_path / "p.yaml").startswith(f"{tmp_path / 'p.yaml'}: train.lr: ")
    mixed = _error(tmp_path / "p.yaml", ["train.batch_size=0"])
    assert mixed.startswith("params (-S/--overlay): train.batch_size: ")
    assert f"; {tmp_path / 'p.yaml'}: train.lr: " in mixed
    with pytest.raises(ConfigError, match=r"^params \(command-line option\): train\.steps: .*\(got 0\)$"):
        load_params(None, ["train.lr=1e-3"], {"train.steps": 0})
    # a cross-field rule: a default (model.resolution 64) against an override (data.resolution 16)
    assert _error(None, ["data.resolution=16"]).startswith("params (built-in defaults, -S/--overlay): ")


@pytest.mark.parametrize("key", ["train.seed", "sample.seed", "score.seed"])
def test_seeds_are_range_checked(key):
    # On main a seed beyond 64 bits passed validation and failed later with an overflow traceback.
    assert f"{key}: Input should be greater than or equal to 0 (got -1)" in _error(None, [f"{key}=-1"])
    assert f"{key}: Input should be less than or equal to {2**63 - 1}" in _error(None, [f"{key}={2**64}"])
    assert load_params(DEFAULTS, [f"{key}={2**63 - 1}"])  # the largest seed is fine
