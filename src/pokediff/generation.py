"""Batch generation: images from a trained model, in batches, reproducibly, optionally saved as PNGs.

The math lives in pokediff.diffusion (``reverse_process``, ``guided``); this module only batches, seeds,
labels, converts and saves. Used by `pokediff sample`, the in-training FID and the served model's requests.

A type-conditional model (model.condition: type) samples image i with the label cfg.types[i % n] (all 18
types in turn when cfg.types is empty), guided with scale cfg.guidance; an unconditional model refuses
both with a one-line ``GenerationError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pokediff.config import DiffusionConfig, SampleConfig
from pokediff.devices import autocast_for
from pokediff.diffusion import NoiseSchedule, guided, make_sampler, reverse_process
from pokediff.errors import UsageError
from pokediff.pixels import make_grid, save_grid, save_labelled_rows, save_png, save_pngs, to_uint8
from pokediff.pokemon_types import TYPES, multi_hot, parse_label


class GenerationError(UsageError):
    """A type or guidance asked of a model that cannot take it (one line, naming the key)."""


@dataclass
class Generated:
    images: torch.Tensor  # uint8 (N, C, R, R), on CPU
    steps: int
    spacing: str
    paths: list[Path]
    labels: list[str] | None = None  # each image's requested type ("fire", "fire/flying"); None: unconditional


def image_labels(model: nn.Module, cfg: SampleConfig) -> list[str] | None:
    """The label of each of cfg.num_images images (cfg.types in turn, else all types in turn), or None
    for an unconditional model, which refuses a type or a guidance scale (GenerationError)."""
    if not getattr(model, "conditional", False):
        if cfg.types:
            raise GenerationError(f"sample.types={cfg.types}: this model is unconditional (model.condition: none) "
                                  "and takes no type; leave sample.types empty (--type)")
        if cfg.guidance:
            raise GenerationError(f"sample.guidance={cfg.guidance}: guidance needs a type-conditional model "
                                  "(model.condition: type); this one is unconditional: use 0 (--guidance)")
        return None
    wanted = list(cfg.types) or list(TYPES)
    return [wanted[i % len(wanted)] for i in range(cfg.num_images)]


Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, C, R, R), t (B,)) -> prediction


def sampling_network(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> Network:
    """What the sampler calls at every step: ``model``, optionally in channels_last memory format and/or
    torch.compile'd. channels_last converts the model's weights in place and each x_t on the way in
    (the sampler's own arithmetic keeps whatever layout it is given). A compiled network is built once
    per call of ``generate``: the sampler passes t as a (B,) tensor, so the graph does not depend on the
    step and compiles once per batch shape."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if compile else model
    if not channels_last:
        return network

    def call(x: torch.Tensor, t: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:  # labels: (B, K) if conditional
        return network(x.contiguous(memory_format=torch.channels_last), t, *labels)

    return call


def generate(model: nn.Module, diffusion_cfg: DiffusionConfig, cfg: SampleConfig, *, steps: int | None,
             images_dir: str | Path | None = None, grid_path: str | Path | None = None,
             strip_path: str | Path | None = None, grid_max: int = 64,
             type_grid_path: str | Path | None = None,
             on_batch: Callable[[int, int], None] | None = None, precision: str = "auto",
             channels_last: bool = False, compile: bool = False) -> Generated:
    """Generate cfg.num_images images in batches of cfg.batch_size, reproducibly from cfg.seed.

    One CPU generator feeds every batch, so the images do not depend on the device. Optionally writes
    the PNGs, a grid of the first ``grid_max``, a strip of x0 estimates along the first trajectory and a
    per-type grid (one row per label: its first images; one row "unconditional" for such a model).
    ``on_batch(done, total)`` is called after each batch (progress lines).

    precision: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16" or "fp32", around the network
    only: the sampler's arithmetic stays float32 (pokediff.devices.autocast_for). channels_last and
    compile: see sampling_network; they change speed, not the images (beyond float rounding)."""
    device = next(model.parameters()).device
    labels = image_labels(model, cfg)
    sched = NoiseSchedule(diffusion_cfg.schedule, diffusion_cfg.timesteps)
    sampler = make_sampler(cfg.sampler, sched, steps, eta=cfg.eta, prediction=diffusion_cfg.prediction,
                           clip_x0=cfg.clip_x0, spacing=cfg.spacing)
    generator = torch.Generator().manual_seed(cfg.seed)
    res, ch = model.config.resolution, model.config.in_channels

    strip_frames: list[torch.Tensor] = []
    keep = set(torch.linspace(0, len(sampler) - 1, min(10, len(sampler))).round().long().tolist())

    def record(i, t, x_t, pred_x0):
        if i in keep:
            strip_frames.append(to_uint8(x_t[:8]).cpu())

    network = sampling_network(model, channels_last=channels_last, compile=compile)
    batches, paths, done = [], [], 0
    with autocast_for(device, precision):
        while done < cfg.num_images:
            n = min(cfg.batch_size, cfg.num_images - done)
            net = network
            if labels is not None:  # (n, NUM_TYPES) multi-hot; guidance doubles the batch of each call
                rows = torch.tensor([multi_hot(parse_label(text)) for text in labels[done:done + n]], device=device)
                net = guided(network, rows, cfg.guidance)
            x = reverse_process(net, sched, (n, ch, res, res), sampler, generator=generator, device=device,
                                callback=record if (done == 0 and strip_path) else None)
            images = to_uint8(x).cpu()
            if images_dir is not None:
                paths += save_pngs(images, images_dir, start=done)
            batches.append(images)
            done += n
            if on_batch is not None:
                on_batch(done, cfg.num_images)
    images = torch.cat(batches)
    if grid_path is not None:
        save_grid(images[:grid_max], grid_path)
    if type_grid_path is not None:
        save_type_grid(images, labels, type_grid_path)
    if strip_path is not None and strip_frames:
        # rows: images, columns: time from noise to data
        frames = torch.stack(strip_frames, dim=1)  # (k, F, C, R, R)
        save_png(make_grid(frames.flatten(0, 1), ncols=frames.shape[1]), strip_path)
    return Generated(images, len(sampler), sampler.spacing, paths, labels)


TYPE_GRID_COLUMNS = 8


def save_type_grid(images: torch.Tensor, labels: list[str] | None, path: str | Path) -> Path:
    """A row per label, in the order the labels were asked for, with that label's first images."""
    if labels is None:
        return save_labelled_rows([("unconditional", images[:TYPE_GRID_COLUMNS])], path)
    order = list(dict.fromkeys(labels))
    rows = []
    for label in order:
        chosen = [i for i, text in enumerate(labels) if text == label][:TYPE_GRID_COLUMNS]
        rows.append((label, images[chosen]))
    return save_labelled_rows(rows, path)
