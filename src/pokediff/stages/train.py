"""`pokediff train`: train the U-Net on an image folder or an ingested dataset.

    pokediff train --data outputs/dataset --steps 200 -S train.batch_size=16
    pokediff train --resume            # continue a stopped or killed run from its last checkpoint
    pokediff train --check             # seconds: params, memory estimate, MLflow store; no training

Reads the model, diffusion and train sections of params.yaml; flags override them.
Before anything is allocated, the run's peak memory is estimated (pokediff.training.memory_estimate): a run that
cannot fit stops at once naming the keys to change and the small CPU configuration. The out-dir is
locked (pokediff.locks) for the whole run: a second `pokediff train` into it stops with a clear message.
Writes <out_dir>/checkpoints/last.pt, <out_dir>/model.safetensors, train_log.csv, train_metrics.json and
mlflow_run.json (the MLflow run that the sample and score stages add their evaluations to).

SIGTERM or Ctrl-C (pokediff.stopping) stops after the current step: the checkpoint is written, the lock
released, the MLflow run marked KILLED (tag pokediff.training=partial), and one line says where the work
is and how to continue; exit 143 / 130. No model file is written for a stopped run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from pokediff import stopping
from pokediff.cli import add_common_arguments
from pokediff.config import load_params
from pokediff.errors import PokediffError, describe_os_error, os_error_in_chain
from pokediff.files import write_atomic
from pokediff.launch import requested_processes, run_under_torchrun
from pokediff.locks import OutDirLock


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
                        help="no progress lines (by default one every ~30 s: step, loss, images/s, ETA)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="start even when the run is estimated not to fit in memory")
    parser.add_argument("--check", action="store_true",
                        help="check the params, the memory estimate and the MLflow store, then exit "
                             "without training (seconds; the Prefect flow runs it before its first stage)")


def run(args: argparse.Namespace) -> int:
    flags = {"train.steps": args.steps, "train.batch_size": args.batch_size, "train.lr": args.lr,
             "train.out_dir": args.out_dir}
    params = load_params(args.params, args.overrides, flags)  # validated before any work (and before torch)
    processes = requested_processes()  # POKEDIFF_TRAIN_PROCESSES: this same command again, under torchrun
    if processes > 1:
        return run_under_torchrun(processes)

    # torch and the training code (seconds to import) only once the arguments and params are valid
    from pokediff.devices import resolve_device
    from pokediff.training.memory_estimate import check_training_fits, processes_sharing_memory

    device = resolve_device(args.device, "--device")  # DeviceError: one line, exit 2
    estimate = None
    if not args.no_memory_check:  # seconds, nothing allocated: an OOM kill becomes a message
        estimate = check_training_fits(params.model, params.train, device, int(os.environ.get("WORLD_SIZE", "1")),
                                       processes_sharing_memory(device))
    if args.check:
        return _report_check(params, device, estimate, track=not args.no_track)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    # Under torchrun the launcher owns the hard stop (it forwards a signal to every rank, signals the
    # others again when one exits, and kills what has not stopped within its timeout): each rank only
    # records signals and stops at the loop's next agreed step, so rank 0 always finishes recording
    # the stop (checkpoint, MLflow, lock). A single process stops at once outside the loop.
    graceful = stopping.deferred(repeats_stop_at_once=False) if world > 1 else contextlib.nullcontext()
    # One writer per out-dir (rank 0 writes every file; the other ranks only compute).
    with graceful, OutDirLock(params.train.out_dir, "train") if rank == 0 else contextlib.nullcontext():
        try:
            return _run_locked(args, params, device, rank)
        except stopping.Stopped as stop:
            if stop.bare:  # a signal outside the loop, where it stops at once
                raise stop.explained(f"{stop.message} outside the training loop (setting up, or logging to MLflow "
                                     f"after it); the files in {params.train.out_dir} are whole; "
                                     f"{_how_to_continue(args)}") from None
            raise
        except (OSError, RuntimeError) as exc:
            # A full disk inside torch.save names no file: say which run was writing.
            err, described = os_error_in_chain(exc), describe_os_error(exc)
            if err is None or err.filename is not None or described is None:
                raise
            raise PokediffError(f"{described} (training into {params.train.out_dir})") from exc


def _report_check(params, device, estimate, track: bool) -> int:
    """--check: everything that can stop a training run before it starts has passed; say what was checked.
    The MLflow store is asked for the experiment, as training would (a server that does not answer is a
    one-line error within seconds)."""
    from pokediff.training.memory_estimate import available_memory

    checked = [f"params valid ({params.train.steps} steps x batch {params.train.batch_size})"]
    if estimate is not None:
        checked.append(f"needs about {estimate.total_bytes / 2**30:.1f} GiB of "
                       f"{available_memory(device) / 2**30:.1f} GiB free on {device}")
    if track:
        from pokediff.tracking.store import configure, tracking_uri  # mlflow: seconds to import

        configure()
        checked.append(f"MLflow store {tracking_uri()} answers")
    print(f"pokediff train --check: {'; '.join(checked)}")
    return 0


def _run_locked(args: argparse.Namespace, params, device, rank: int) -> int:
    # as in run(): torch, the data loader and the training code load only for a valid command
    from pokediff.checkpoint import CHECKPOINT_FILE, read_sidecar, run_fingerprint
    from pokediff.data.image_folder import load_labelled_training_images, load_training_images
    from pokediff.training.loop import train
    from pokediff.training.memory_estimate import count_config_parameters
    from pokediff.training.periodic_eval import EVAL_GRID, EvalLog, in_training_evaluator
    from pokediff.training.stop import TrainingStopped

    data_dir = Path(args.data or params.data.out_dir)
    labels = None  # multi-hot types (N, NUM_TYPES), for a type-conditional model
    if params.model.condition == "none":
        images = load_training_images(data_dir, params.model.resolution)
    else:
        images, labels = load_labelled_training_images(data_dir, params.model.resolution)
    out_dir = Path(params.train.out_dir)
    n_params = count_config_parameters(params.model)  # from the config, nothing allocated
    if rank == 0:
        conditioned = "" if labels is None else f", conditioned on types (label dropout {params.train.cond_drop})"
        print(f"pokediff train: {images.shape[0]} images from {data_dir}, U-Net {n_params / 1e6:.2f} M params, "
              f"{params.train.steps} steps x batch {params.train.batch_size}{conditioned}")

    fingerprint = run_fingerprint(images, params.model, params.diffusion, params.train, labels)
    resume = args.resume
    previous = read_sidecar(out_dir / CHECKPOINT_FILE)
    if args.auto_resume:
        resume = previous.get("fingerprint") == fingerprint
        if previous and rank == 0:
            print(f"pokediff train: resuming from the checkpoint at step {previous.get('step')}" if resume else
                  "pokediff train: the checkpoint was made from other data or settings: starting fresh")

    tracking = contextlib.nullcontext()
    if not args.no_track and rank == 0:  # MLflow logging from rank 0 only
        from pokediff.tracking.run import TrainingRun  # mlflow: seconds to import, not with --no-track

        tracking = TrainingRun(params, out_dir, resume=resume, dataset_dir=data_dir,
                               validation_dir=params.validate_.out_dir)
    with tracking as tracker:
        evaluate = None
        if rank == 0:
            # Like train_log.csv: on resume keep the rows up to the checkpoint's step, drop later ones
            # (they are evaluated again), so no step appears twice.
            eval_log = EvalLog(out_dir / "eval_log.csv", keep_rows=resume,
                               resume_step=int(previous.get("step") or 0) if resume else 0)
            evaluate = in_training_evaluator(params, tracker, eval_log)
        try:
            result = train(images, params.model, params.diffusion, params.train, out_dir, resume=resume,
                           device=device, progress=not args.no_progress, fingerprint=fingerprint, labels=labels,
                           on_log=tracker.log_metrics if tracker else None, evaluate=evaluate)
        except TrainingStopped as stop:
            raise stop.explained(_stopped_line(stop, args) if rank == 0 else "") from None
        if rank != 0:
            return 0
        metrics = {
            "steps": result.step,  # reached: fewer than train.steps when train.max_seconds stopped the run
            "stopped_by_budget": int(result.stopped_by_budget),  # 0/1: metrics files hold numbers only
            "final_loss": result.losses[-1] if result.losses else None,
            "images_per_second": result.images_per_second,
            "seconds": round(result.seconds, 2),
            "parameters": n_params,
            "dataset_images": int(images.shape[0]),
        }
        metrics_path = out_dir / "train_metrics.json"
        write_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
        if tracker is not None:  # summaries go to the run's description and JSON, not to metric charts
            version = tracker.finish(result.model_file, result.checkpoint,
                                     [result.log_file, metrics_path, result.model_file, eval_log.path],
                                     summary=metrics, grid=out_dir / EVAL_GRID)
            if version is not None:
                print(f"pokediff train: MLflow run {tracker.run_id}, registered model version {version}")
    if result.stopped_by_budget:
        print(f"pokediff train: stopped by the wall-clock budget (train.max_seconds={params.train.max_seconds:g}) "
              f"at step {result.step} of {params.train.steps}; `pokediff train --resume` continues")
    print(f"pokediff train: {result.step} steps in {result.seconds:.1f} s; model -> {result.model_file}")
    if stopping.pending() is not None:  # under torchrun, a signal that came after the last step
        raise stopping.Stopped(stopping.pending(), "" if rank else
                               f"stopped by {stopping.signal_name(stopping.pending())} after the run completed")
    return 0


def _how_to_continue(args: argparse.Namespace) -> str:
    return ("run the same command again to continue (--auto-resume)" if args.auto_resume else
            "run the same command with --resume to continue")


def _stopped_line(stop, args: argparse.Namespace) -> str:
    """Where a stopped run's work is and how to continue it (stop: a training.stop.TrainingStopped)."""
    from pokediff.stopping import signal_name

    how = _how_to_continue(args)
    if stop.step >= stop.steps:  # the signal came during the final save: the run itself is complete
        return (f"stopped by {signal_name(stop.signum)} after the last step ({stop.step}): {stop.checkpoint} and the "
                f"model file are complete, the MLflow run is not; {how} and log it")
    return (f"stopped by {signal_name(stop.signum)} after step {stop.step} of {stop.steps}: the checkpoint "
            f"{stop.checkpoint} holds it (no model file: the run is unfinished); {how}")
