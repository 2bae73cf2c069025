"""The in-training FID: every train.eval_every steps, score a few EMA samples against the reference stats.

    eval_log = EvalLog(out_dir / "eval_log.csv", keep_rows=resume, resume_step=...)
    evaluate = in_training_evaluator(params, tracker, eval_log)  # None when off or no reference stats
    train(..., evaluate=evaluate)   # the loop calls evaluate(ema_model, step) -> {"eval_fid", "eval_kid_mean"}

A training concern, not an evaluation one: it samples (pokediff.generation) while pokediff.evaluation
imports no model or sampler code, so the ref_stats and score stages, whose DVC deps follow imports,
do not rerun when the U-Net or a sampler changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pokediff.config import Params
from pokediff.evaluation.evaluator import FIDEvaluator
from pokediff.generation import generate
from pokediff.pixels import make_grid, save_png

EVAL_GRID = "eval_grid.png"  # the last in-training sample grid (also logged to MLflow as samples/)


class EvalLog:
    """eval_log.csv (step, fid, kid_mean): the in-training FID curve for `dvc plots`. Always written,
    header only when in-training evaluation is off, so the DVC output exists. On resume the rows up to
    ``resume_step`` are kept and later ones dropped, as train_log.csv does."""

    FIELDS = ["step", "fid", "kid_mean"]

    def __init__(self, path: Path, keep_rows: bool, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if keep_rows and path.exists():
            lines = path.read_text().splitlines()[1:]
            kept = [line for line in lines if _step_of(line) is not None
                    and (resume_step is None or _step_of(line) <= resume_step)]
        path.write_text(",".join(self.FIELDS) + "\n" + "".join(line + "\n" for line in kept))

    def append(self, step: int, fid: float, kid_mean: float) -> None:
        with self.path.open("a") as f:
            f.write(f"{step},{fid:.6g},{kid_mean:.6g}\n")


def _step_of(line: str) -> int | None:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None


def in_training_evaluator(params: Params, tracker: Any, eval_log: EvalLog) -> Callable[..., dict[str, float]] | None:
    """FID of train.eval_num_samples EMA samples (DDIM, train.eval_sampler_steps) every train.eval_every
    steps, scored with the score section's settings. None when eval_every is 0 or the reference stats
    (score.ref_stats) are missing. `tracker`: a TrainingRun (the sample grid goes to MLflow) or None."""
    if not params.train.eval_every:
        return None
    ref = Path(params.score.ref_stats)
    if not ref.exists():
        print(f"pokediff train: {ref} missing; in-training FID disabled (run `pokediff ref-stats` first)")
        return None
    evaluator = FIDEvaluator(ref, device=params.score.device, batch_size=params.score.batch_size,
                             kid_subsets=params.score.kid_subsets, kid_subset_size=params.score.kid_subset_size)
    sample_cfg = params.sample.model_copy(update={
        "sampler": "ddim", "steps": params.train.eval_sampler_steps, "eta": 0.0,
        "num_images": params.train.eval_num_samples, "seed": params.sample.seed,
    })

    def evaluate(ema_model, step: int) -> dict[str, float]:
        was_training = ema_model.training
        ema_model.eval()
        images = generate(ema_model, params.diffusion, sample_cfg, steps=sample_cfg.steps).images
        ema_model.train(was_training)
        scores = evaluator.score(images)
        grid = make_grid(images[:64])  # uint8 (3, H, W)
        save_png(grid, eval_log.path.with_name(EVAL_GRID))
        if tracker is not None:
            tracker.log_image(grid, key="samples", step=step)
        eval_log.append(step, scores["fid"], scores["kid_mean"])
        return {"eval_fid": scores["fid"], "eval_kid_mean": scores["kid_mean"]}

    return evaluate
