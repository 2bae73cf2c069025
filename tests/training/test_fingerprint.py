"""The checkpoint fingerprint: which TrainConfig keys it leaves out is TrainConfig's own list, and the
values stay those of existing checkpoints (so `--auto-resume` keeps resuming them)."""

from __future__ import annotations

import torch

from pokediff.checkpoint import run_fingerprint
from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig

# 2 images (3, 8, 8): fixed bytes, no RNG.
IMAGES = torch.arange(2 * 3 * 8 * 8).remainder(251).to(torch.uint8).reshape(2, 3, 8, 8)
# The main job's model and train keys (configs/cpu-small.yaml), spelled out so a later edit of that file
# does not move this test.
SMALL_MODEL = ModelConfig(base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                          head_channels=32, dropout=0.0)
SMALL_TRAIN = TrainConfig(steps=600, batch_size=16, lr=1e-3, warmup_steps=40, checkpoint_every=100, ema_decay=0.995,
                          eval_every=300, eval_num_samples=64, eval_sampler_steps=25)
# Computed with main's code at 40f13ab (the bookkeeping set was then a literal inside run_fingerprint).
MAIN_JOB_FINGERPRINT = "28fb0409c27f2dc17510e5cafcd9ae7ec1fffd0c0bfa6622248108733dee73dc"
DEFAULTS_FINGERPRINT = "78dff3ea2c6000b82018dc2da3a25869e424ce447795895cedfa69ae0d27fd9f"


def test_fingerprints_equal_those_computed_by_the_previous_code() -> None:
    assert run_fingerprint(IMAGES, SMALL_MODEL, DiffusionConfig(), SMALL_TRAIN) == MAIN_JOB_FINGERPRINT
    assert run_fingerprint(IMAGES, ModelConfig(), DiffusionConfig(), TrainConfig()) == DEFAULTS_FINGERPRINT


def test_bookkeeping_keys_are_train_fields_and_leave_the_fingerprint_alone() -> None:
    assert set(TrainConfig.model_fields) >= TrainConfig.BOOKKEEPING, "a bookkeeping name is not a TrainConfig key"
    changed = {"log_every": 1, "checkpoint_every": 7, "eval_every": 0, "eval_num_samples": 2,
               "eval_sampler_steps": 3, "out_dir": "elsewhere", "max_seconds": 300.0}
    assert set(changed) == TrainConfig.BOOKKEEPING
    other = SMALL_TRAIN.model_copy(update=changed)
    assert run_fingerprint(IMAGES, SMALL_MODEL, DiffusionConfig(), other) == MAIN_JOB_FINGERPRINT
    # every other key is part of it (the conditioning keys only for a conditional model: see below)
    for key in set(TrainConfig.model_fields) - TrainConfig.BOOKKEEPING - TrainConfig.CONDITIONING:
        value = getattr(SMALL_TRAIN, key)
        new = (not value if isinstance(value, bool) else "fp32" if key == "precision"
               else (0.5, 0.5) if key == "betas" else value + 1)
        moved = run_fingerprint(IMAGES, SMALL_MODEL, DiffusionConfig(), SMALL_TRAIN.model_copy(update={key: new}))
        assert moved != MAIN_JOB_FINGERPRINT, key


def test_conditional_runs_hash_the_condition_its_keys_and_the_labels() -> None:
    labels = torch.tensor([[1] + [0] * 17, [0, 1] + [0] * 16], dtype=torch.uint8)  # (2, NUM_TYPES)
    for key, value in (("cond_drop", 0.3), ("cond_one_type", 0.9)):  # unused by an unconditional model
        other = SMALL_TRAIN.model_copy(update={key: value})
        assert run_fingerprint(IMAGES, SMALL_MODEL, DiffusionConfig(), other, labels) == MAIN_JOB_FINGERPRINT
    conditional = SMALL_MODEL.model_copy(update={"condition": "type"})
    base = run_fingerprint(IMAGES, conditional, DiffusionConfig(), SMALL_TRAIN, labels)
    assert base != MAIN_JOB_FINGERPRINT
    assert run_fingerprint(IMAGES, conditional, DiffusionConfig(), SMALL_TRAIN, labels.flip(0)) != base
    for key, value in (("cond_drop", 0.3), ("cond_one_type", 0.9)):
        other = SMALL_TRAIN.model_copy(update={key: value})
        assert run_fingerprint(IMAGES, conditional, DiffusionConfig(), other, labels) != base, key
