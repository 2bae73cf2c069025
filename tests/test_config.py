import pytest

from pokediff.config import ConfigError, Params, load_params, parse_override


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


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_params(bad)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_override("train.steps")
