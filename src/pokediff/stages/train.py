"""`pokediff train`: train the U-Net on an image folder or an ingested dataset.

    pokediff train --data outputs/dataset --steps 200 -S train.batch_size=16
    pokediff train --resume            # continue a killed run from its last checkpoint

Reads the model, diffusion and train sections of params.yaml; flags override them.
Before anything is allocated, the run's peak memory is estimated (pokediff.training.memory): a run that
cannot fit stops at once naming the keys to change and the small CPU configuration. The out-dir is
locked (pokediff.locks) for the whole run: a second `pokediff train` into it stops with a clear message.
Writes <out_dir>/checkpoints/last.pt, <out_dir>/model.safetensors, train_log.csv, train_metrics.json and
mlflow_run.json (the MLflow run that the sample and score stages add their evaluations to).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from pokediff.cli import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--data", help="ingested dataset or any image folder (default: data.out_dir)")
    parser.add_argument("--out-dir", help="where checkpoints and logs go (default: train.out_dir)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (train.steps)")
    parser.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (train.lr)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from <out-dir>/checkpoints/last.pt if it exists")
    resume.add_argument("--auto-resume", action="store_true",
                        help="resume only if the checkpoint was made from the same data and settings "
                             "(else start fresh); what the DVC stage uses")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: one progress line every ~30 s instead (logs, DVC)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="start even when the run is estimated not to fit in memory")


def run(args: argparse.Namespace) -> int:
    from pokediff.config import load_params

    flags = {"train.steps": args.steps, "train.batch_size": args.batch_size, "train.lr": args.lr,
             "train.out_dir": args.out_dir}
    params = load_params(args.params, args.overrides, flags)  # validated before any work (and before torch)

    from pokediff.devices import resolve_device
    from pokediff.errors import PokediffError, UsageError, describe_os_error, os_error_in_chain
    from pokediff.locks import OutDirLock
    from pokediff.training.memory import check_training_fits, processes_sharing_memory

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None
    if not args.no_memory_check:  # seconds, nothing allocated: an OOM kill becomes a message
        check_training_fits(params.model, params.train, device, int(os.environ.get("WORLD_SIZE", "1")),
                            processes_sharing_memory(device))
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun
    # One writer per out-dir (rank 0 writes every file; the other ranks only compute).
    with OutDirLock(params.train.out_dir, "train") if rank == 0 else contextlib.nullcontext():
        try:
            return _run_locked(args, params, device, rank)
        except (OSError, RuntimeError) as exc:
            # A full disk inside torch.save names no file: say which run was writing.
            err, described = os_error_in_chain(exc), describe_os_error(exc)
            if err is None or err.filename is not None or described is None:
                raise
            raise PokediffError(f"{described} (training into {params.train.out_dir})") from exc


def _run_locked(args: argparse.Namespace, params, device, rank: int) -> int:
    from pokediff.data import load_training_images
    from pokediff.training import read_sidecar, run_fingerprint, train
    from pokediff.training.memory import count_parameters

    data_dir = Path(args.data or params.data.out_dir)
    images = load_training_images(data_dir, params.model.resolution)
    out_dir = Path(params.train.out_dir)
    n_params = count_parameters(params.model)  # from the config, nothing allocated
    if rank == 0:
        print(f"pokediff train: {images.shape[0]} images from {data_dir}, U-Net {n_params / 1e6:.2f} M params, "
              f"{params.train.steps} steps x batch {params.train.batch_size}")

    fingerprint = run_fingerprint(images, params.model, params.diffusion, params.train)
    resume = args.resume
    previous = read_sidecar(out_dir / "checkpoints" / "last.pt")
    if args.auto_resume:
        resume = previous.get("fingerprint") == fingerprint
        if previous and rank == 0:
            print(f"pokediff train: resuming from the checkpoint at step {previous.get('step')}" if resume else
                  "pokediff train: the checkpoint was made from other data or settings: starting fresh")

    tracking = contextlib.nullcontext()
    if not args.no_track and rank == 0:  # MLflow logging from rank 0 only
        from pokediff.tracking import TrainingRun

        tracking = TrainingRun(params, out_dir, resume=resume, dataset_dir=data_dir,
                               validation_dir=params.validate_.out_dir)
    with tracking as tracker:
        evaluate = None
        if rank == 0:
            # Like train_log.csv: on resume keep the rows up to the checkpoint's step, drop later ones
            # (they are evaluated again), so no step appears twice.
            eval_log = EvalLog(out_dir / "eval_log.csv", keep_rows=resume,
                               resume_step=int(previous.get("step") or 0) if resume else 0)
            if params.train.eval_every:
                evaluate = _in_training_evaluator(params, tracker, eval_log)
        result = train(images, params.model, params.diffusion, params.train, out_dir, resume=resume,
                       device=device, progress=not args.no_progress, fingerprint=fingerprint,
                       on_log=tracker.log_metrics if tracker else None, evaluate=evaluate)
        if rank != 0:
            return 0
        metrics = {
            "steps": result.step,
            "final_loss": result.losses[-1] if result.losses else None,
            "images_per_second": result.images_per_second,
            "seconds": round(result.seconds, 2),
            "parameters": n_params,
            "dataset_images": int(images.shape[0]),
        }
        metrics_path = out_dir / "train_metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        if tracker is not None:  # summaries go to the run's description and JSON, not to metric charts
            version = tracker.finish(result.model_file, result.checkpoint,
                                     [result.log_file, metrics_path, result.model_file, eval_log.path],
                                     summary=metrics, grid=out_dir / EVAL_GRID)
            if version is not None:
                print(f"pokediff train: MLflow run {tracker.run_id}, registered model version {version}")
    print(f"pokediff train: {result.step} steps in {result.seconds:.1f} s; model -> {result.model_file}")
    return 0


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


def _in_training_evaluator(params, tracker, eval_log: EvalLog):
    """FID of a few EMA samples every train.eval_every steps (needs the reference statistics)."""
    from pokediff.evaluation import FIDEvaluator
    from pokediff.imaging import make_grid, save_png
    from pokediff.sampling import generate

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
