"""`pokediff score`: FID, KID and memorisation of generated samples against the reference stats.

    pokediff score --samples outputs/samples/images --ref outputs/ref_stats/ref_stats.npz \
                   --out outputs/score/metrics.json

Scores the first score.num_samples images (sorted by path) of --samples. Writes flat metrics JSON
(fid, kid_mean, kid_std, memorisation_*, num_samples, ...) for `dvc metrics show`, and next to it
nearest.csv: each sample's nearest reference image in Inception space, closest first.

Samples of a type-conditional model (labels.csv beside the images folder lists each image's type) are
also scored per type, against that type's reference statistics (score.ref_stats_types): type_metrics.json
next to metrics.json, {type: {fid, kid_mean, kid_std, num_samples, num_reference}}, and the mean over
types as fid_type_mean in metrics.json. type_metrics.json is {} for an unconditional model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

from pokediff.cli import add_common_arguments, add_inception_arguments
from pokediff.config import load_params
from pokediff.data.fetch import file_sha256
from pokediff.errors import PokediffError
from pokediff.files import write_atomic
from pokediff.limits import read_small_json
from pokediff.locks import OutDirLock
from pokediff.pokemon_types import SAMPLE_LABELS_NAME
from pokediff.stopping import Stopped, signal_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--samples", help="folder of generated images (default: <sample.out_dir>/images)")
    parser.add_argument("--ref", help="reference stats from `pokediff ref-stats` (default: score.ref_stats)")
    parser.add_argument("--out", help="metrics JSON (default: <score.out_dir>/metrics.json)")
    parser.add_argument("--num-samples", type=int, help="score at most this many images (score.num_samples)")
    parser.add_argument("--ref-types", help="per-type reference stats folder (default: score.ref_stats_types)")
    add_inception_arguments(parser)
    parser.add_argument("--no-track", action="store_true",
                        help="do not log this evaluation to the pipeline's MLflow run")


def run(args: argparse.Namespace) -> int:
    flags = {"score.num_samples": args.num_samples, "score.batch_size": args.batch_size,
             "score.device": args.device}
    params = load_params(args.params, args.overrides, flags)
    cfg = params.score
    samples_dir = Path(args.samples or Path(params.sample.out_dir) / "images")
    ref_path = Path(args.ref or cfg.ref_stats)
    out = Path(args.out or Path(cfg.out_dir) / "metrics.json")

    from pokediff.devices import resolve_device  # torch: seconds to import, only for a valid command

    resolve_device(cfg.device, "--device" if args.device else "score.device")  # DeviceError: exit 2, before any work
    with OutDirLock(out.parent, "score"):  # one writer: metrics.json, nearest.csv, mlflow_evaluation.json
        try:
            return _score(args, params, samples_dir, ref_path, out)
        except Stopped as stop:  # every file is written whole (pokediff.files): no half of one is left
            raise stop.explained(f"stopped by {signal_name(stop.signum)}; {out} and nearest.csv are either "
                                 "from before or complete") from None


def _score(args: argparse.Namespace, params, samples_dir: Path, ref_path: Path, out: Path) -> int:
    # Inception (seconds to import) only once the arguments and params are valid
    from pokediff.data.image_folder import load_image_folder
    from pokediff.evaluation.evaluator import FIDEvaluator
    from pokediff.evaluation.memorisation import memorisation_metrics, nearest_neighbours
    from pokediff.evaluation.report import write_metrics_json, write_nearest_csv

    cfg = params.score
    start = time.perf_counter()
    try:
        evaluator = FIDEvaluator(
            ref_path, device=cfg.device, batch_size=cfg.batch_size, kid_subsets=cfg.kid_subsets,
            kid_subset_size=cfg.kid_subset_size, seed=cfg.seed,
        )
        images, paths = load_image_folder(samples_dir, resolution=None, on_error="raise",
                                          max_images=cfg.num_samples, how="first")
        if len(images) < 2:
            raise ValueError(f"{samples_dir}: FID needs at least 2 images, found {len(images)}")
        features = evaluator.features(images, progress=not args.quiet)
        metrics = evaluator.score_features(features)
        per_type = _score_per_type(samples_dir, paths, features, Path(args.ref_types or cfg.ref_stats_types), cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pokediff score: {exc}", file=sys.stderr)
        return 1
    # Memorisation, kept here rather than via FIDEvaluator(memorisation=True) to get the indices too.
    distances, nearest = nearest_neighbours(features, evaluator.ref.features)
    metrics.update(memorisation_metrics(distances, evaluator.ref.train_nn))
    ref_paths = evaluator.ref.paths or ("",) * evaluator.ref.n
    if per_type:
        metrics["fid_type_mean"] = sum(m["fid"] for m in per_type.values()) / len(per_type)
    write_metrics_json(metrics, out)
    write_atomic(out.with_name(TYPE_METRICS_NAME), json.dumps(per_type, indent=2, sort_keys=True) + "\n")
    write_nearest_csv(
        out.with_name("nearest.csv"), paths, distances.tolist(), [ref_paths[i] for i in nearest],
        metrics["memorisation_train_nn_median"],
    )
    if not args.no_track:
        _log_evaluation(params, metrics, out, samples_dir, ref_path, evaluator.ref.extractor,
                        score_seconds=time.perf_counter() - start)
    if per_type:
        shown = ", ".join(f"{name} {m['fid']:.1f}" for name, m in per_type.items())
        print(f"score per type (FID, {len(per_type)} types, mean {metrics['fid_type_mean']:.2f}): {shown}")
    print(
        f"score: {metrics['num_samples']} samples vs {metrics['num_reference']} reference images: "
        f"FID {metrics['fid']:.2f}, KID {metrics['kid_mean']:.4f} ± {metrics['kid_std']:.4f}, "
        f"{metrics['memorisation_share_below_train_nn']:.0%} closer to a training image than the median "
        f"training pair -> {out} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


TYPE_METRICS_NAME = "type_metrics.json"
MAX_LABELS_BYTES = 16 << 20  # one short row per sample: 2,048 samples are about 40 KB


def _score_per_type(samples_dir: Path, paths: list[str], features, ref_dir: Path, cfg) -> dict[str, dict]:
    """{type: metrics} of the samples labelled with one type alone (labels.csv beside samples_dir) against
    that type's reference stats; {} for unlabelled (unconditional) samples."""
    import numpy as np

    from pokediff.evaluation.evaluator import FIDEvaluator
    from pokediff.evaluation.type_reference import load_type_reference_stats

    labels_file = samples_dir.parent / SAMPLE_LABELS_NAME
    if not labels_file.is_file():
        return {}
    with labels_file.open("rb") as f:
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise ValueError(f"{labels_file}: larger than {MAX_LABELS_BYTES:,} bytes; expected the labels.csv "
                         "that `pokediff sample` writes")
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
        label_of = {row["image"]: row["type"] for row in rows}
    except (UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise ValueError(f"{labels_file}: not the labels.csv that `pokediff sample` writes (image,type): "
                         f"{type(exc).__name__}") from None
    if not label_of:
        return {}
    references = load_type_reference_stats(ref_dir)
    out = {}
    for name, ref in references.items():
        rows = [i for i, p in enumerate(paths) if label_of.get(p) == name]
        if len(rows) < 2:
            continue
        evaluator = FIDEvaluator(ref, device=cfg.device, batch_size=cfg.batch_size, kid_subsets=cfg.kid_subsets,
                                 kid_subset_size=cfg.kid_subset_size, seed=cfg.seed)
        scores = evaluator.score_features(np.asarray(features)[rows])
        out[name] = {k: scores[k] for k in ("fid", "kid_mean", "kid_std", "num_samples", "num_reference")}
    return out


def _log_evaluation(params, metrics: dict, metrics_path: Path, samples_dir: Path, ref_path: Path,
                    extractor: str, score_seconds: float) -> None:
    """Add this evaluation as a nested MLflow run under the pipeline's training run (found through
    <train.out_dir>/mlflow_run.json) and keep the `champion` alias on the best-FID model version.
    Samples made outside the pipeline (no run recorded) are scored without tracking."""
    # mlflow: seconds to import, not needed with --no-track
    from pokediff.tracking.evaluations import EvaluationLogger, evaluation_key

    key = evaluation_key(metrics["num_samples"], file_sha256(ref_path), extractor)
    train_dir = Path(params.train.out_dir)
    try:
        logger = EvaluationLogger(train_dir)
    except FileNotFoundError as exc:
        print(f"pokediff score: not logged to MLflow ({exc})", file=sys.stderr)
        return
    sample_dir = samples_dir.parent
    sample_info = sample_dir / "sample_info.json"
    try:
        info = read_small_json(sample_info) if sample_info.exists() else {}
    except ValueError as exc:
        raise PokediffError(str(exc)) from None
    if not isinstance(info, dict):
        raise PokediffError(f"{sample_info}: expected a JSON object, as `pokediff sample` writes")
    sample_params = {f"sample.{k}": v for k, v in params.sample.model_dump(mode="json").items()}
    # What the sample stage really used (flags such as --sampler override params.yaml there).
    sample_params.update({f"sample.{k}": info[k] for k in ("sampler", "steps", "eta", "spacing", "num_images", "seed",
                                                           "types", "guidance")
                          if k in info})
    score_params = {f"score.{k}": v for k, v in params.score.model_dump(mode="json").items()}
    sampler, steps, n = sample_params["sample.sampler"], sample_params["sample.steps"], metrics["num_samples"]
    # The run name carries the evaluation key's sample count: FIDs of different n never compare.
    guidance = f" w{info['guidance']:g}" if info.get("conditional") else ""
    name = f"eval-{sampler}-{steps}{guidance} n{n}"
    how = f"{sampler}, {steps} steps, {n} samples" + (f", guidance {info['guidance']:g}" if guidance else "")
    artifacts = [metrics_path, metrics_path.with_name("nearest.csv"), sample_info,
                 sample_dir / "grid.png", sample_dir / "progression.png"]
    # a conditional model's per-type grid, requested labels and per-type scores
    artifacts += [f for f in (sample_dir / "type_grid.png", sample_dir / SAMPLE_LABELS_NAME,
                              metrics_path.with_name(TYPE_METRICS_NAME)) if f.is_file()]
    # The evaluation run lasts as long as its work: the sampling (sample_info.json) and this scoring.
    work_seconds = score_seconds + float(info.get("seconds") or 0.0)
    result = logger.log({**sample_params, **score_params}, metrics, artifacts, name, key=key, how=how,
                        work_seconds=work_seconds)
    write_atomic(metrics_path.with_name("mlflow_evaluation.json"), json.dumps(result, indent=2) + "\n")
    alias = result.get("champion_alias", "champion")
    champion = f"this model is @{alias}" if result.get("is_champion") else (
        f"@{alias} stays version {result.get('champion_version')} (FID {result.get('champion_fid')})")
    print(f"pokediff score: logged to MLflow run {result['pipeline_run_id']} "
          f"(evaluation {result['evaluation_run_id']}, key {key}); {champion}")
