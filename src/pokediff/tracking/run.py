"""The train stage's MLflow run: params, provenance, per-step metrics, images, final artifacts.

Tracking must never cost training. The store is checked before training starts (an unreachable server
is a one-line error within seconds, see store.configure); after that every MLflow call goes through
``TrainingRun._call``: the first failure is reported once on stderr, later metrics are kept in memory,
and at the end, if the store answers again, the buffered metrics, the files and the model are logged
and the run is tagged ``pokediff.tracking=partial``. Training itself, checkpoints and model.safetensors never
wait on MLflow for more than one short HTTP timeout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import fluent

import pokediff
from pokediff.config import Params, flatten
from pokediff.data.fetch import file_sha256
from pokediff.stopping import Stopped, signal_name
from pokediff.tracking.served_model import log_and_register_model
from pokediff.tracking.store import (
    MODEL_NAME,
    RUN_INFO_FILE,
    artifact_image,
    configure,
    dataset_md5,
    dvc_data_hash,
    error_words,
    finite_metrics,
    git_commit,
    link_tags,
    orchestration_lines,
    project_root,
    quick_http,
    read_json,
    rounded_scores,
)

# During training every MLflow HTTP call gives up after one retry and a 10 s read timeout (MLflow's
# defaults, 7 retries with back-off and 120 s, froze a run for ~8 minutes when the server died).
TRAINING_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# What the run's Model-metrics page shows: time series and scores only (summaries are JSON artifacts).
TRAIN_METRICS = ("loss", "lr", "grad_norm", "images_per_second", "eval_fid", "eval_kid_mean")
QUIET_LOGGERS = ("urllib3.connectionpool", "mlflow.system_metrics")
MAX_BUFFERED = 200_000  # metric points kept while the store is away (~40 MB at worst)
STOPPED_TAG = "pokediff.stopped"  # the one line of the stop signal that ended a run, until --resume finishes it


class TrainingRun:
    """Context manager around the train stage's MLflow run.

        with TrainingRun(params, out_dir, resume=args.resume) as run:
            result = train(..., on_log=run.log_metrics, evaluate=...)
            run.finish(result.model_file, ...)
    """

    def __init__(self, params: Params, out_dir: str | Path, *, resume: bool = False,
                 dataset_dir: str | Path | None = None, validation_dir: str | Path | None = None,
                 system_metrics: bool = True):
        self.params, self.out_dir, self.resume = params, Path(out_dir), resume
        self.dataset_dir = Path(dataset_dir) if dataset_dir else None
        self.validation_dir = Path(validation_dir) if validation_dir else None
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_version: str | None = None
        self.broken_since: int | None = None  # step of the first failed MLflow call
        self.buffer: list[Metric] = []
        self.last_step = 0
        self.grid_artifact: str | None = None
        self.status = "RUNNING"  # MLflow's run status, as mlflow_run.json reports it
        self.stopped: str | None = None  # the stop signal's one line, when one ended the run
        self._http_env = quick_http(TRAINING_HTTP_ENV)

    # -- lifecycle
    def __enter__(self) -> TrainingRun:
        self._http_env.__enter__()
        # One warning per outage is ours to give: urllib3's "Retrying ..." lines and MLflow's system
        # metrics thread would repeat it on stderr.
        self._quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            self._start()
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        self._http_env.__exit__(None, None, None)
        for name, level in self._quiet.items():
            logging.getLogger(name).setLevel(level)

    def _start(self) -> None:
        self.experiment_id = configure()  # TrackingError within seconds when the store does not answer
        previous = read_json(self.out_dir / RUN_INFO_FILE) if self.resume else {}
        run = None
        if previous.get("run_id"):
            try:  # continue the killed run's MLflow run, so its curves stay in one place
                run = mlflow.start_run(run_id=previous["run_id"], log_system_metrics=self.system_metrics)
            except MlflowException:
                run = None
        if run is None:
            root = project_root()
            tags = {"pokediff.git_commit": git_commit(root), "pokediff.stage": "train",
                    "pokediff.dvc_data_md5": dvc_data_hash(root / "data.dvc" if root else "data.dvc"),
                    "pokediff.version": pokediff.__version__,
                    "pokediff.device": "cuda" if torch.cuda.is_available() else "cpu", **link_tags()}
            run = mlflow.start_run(experiment_id=self.experiment_id, tags=tags, run_name=self._run_name(),
                                   log_system_metrics=self.system_metrics)
            mlflow.log_params(self.params.to_flat_dict())
            self._log_dataset()
        else:
            mlflow.set_tags(link_tags())
        self.run_id = run.info.run_id
        self._write_run_info()

    def _run_name(self) -> str:
        """train-<schedule>-<steps>, and -type for a type-conditional model: what tells runs apart in the
        runs table before any column is opened."""
        p = self.params
        conditional = "-type" if p.model.condition == "type" else ""
        return f"train-{p.diffusion.schedule}-{p.train.steps}{conditional}"

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.status = "FINISHED" if exc_type is None else (
                "KILLED" if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            if isinstance(exc, Stopped):  # a stop signal: the checkpoint holds the work, the run is partial
                self.stopped = exc.message or f"stopped by {signal_name(exc.signum)}"
                self._call(mlflow.set_tags, {"pokediff.training": "partial", STOPPED_TAG: self.stopped})
            if self.broken_since is not None and not self._reconnect():
                self._abandon_run()
                return
            self._call(mlflow.end_run, status=self.status)
            if self.broken_since is not None:
                self._abandon_run()  # end_run failed: drop the fluent run so nothing retries later
            else:
                self._write_run_info()
        finally:
            self._restore()

    def _write_run_info(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        complete = self.broken_since is None and self.stopped is None
        info = {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": mlflow.get_tracking_uri(),
                "model_name": MODEL_NAME, "model_version": self.model_version, "status": self.status,
                "tracking": "complete" if complete else "partial"}
        if self.stopped is not None:
            info["stopped"] = self.stopped
        (self.out_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def _log_dataset(self) -> None:
        """The dataset as an MLflow dataset input (digest = DVC's md5 of what was trained on) and the
        ingest/validation summaries as JSON artifacts plus a few tags: counts are not time series."""
        # mlflow.data: ~1 s to import, only when a dataset is logged
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        root = project_root()
        tags: dict[str, str] = {}
        if self.dataset_dir is not None:
            digest = dataset_md5(root, self.dataset_dir) or dvc_data_hash(root / "data.dvc" if root else "data.dvc")
            source = self.dataset_dir.resolve()
            if root is not None and source.is_relative_to(root):
                source = source.relative_to(root)  # the project may be copied: keep the source relative
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
                warnings.simplefilter("ignore")
                resolved = resolve_dataset_source(str(source))
            # The pipeline's dataset is named after its source; any other folder after itself.
            ingested = self.dataset_dir.resolve() == Path(self.params.data.out_dir).resolve()
            label = self.params.data.source if ingested else self.dataset_dir.name
            dataset = MetaDataset(resolved, name=f"pokemon-{label}-{self.params.data.resolution}px", digest=digest[:36])
            mlflow.log_input(dataset, context="training")
            summary = read_json(self.dataset_dir / "ingest_summary.json")
            if summary:
                mlflow.log_dict(summary, "data/ingest_summary.json")
                flat = flatten(summary)
                for key in ("n_images", "images", "duplicates_dropped", "quarantined"):
                    if key in flat:
                        tags[f"pokediff.data.{key}"] = str(flat[key])
            manifest = self.dataset_dir / "manifest.csv"
            if manifest.exists():
                tags["pokediff.manifest_sha256"] = file_sha256(manifest)
        if self.validation_dir is not None:
            metrics = read_json(self.validation_dir / "validation_metrics.json")
            if metrics:
                mlflow.log_dict(metrics, "data/validation_metrics.json")
                if "success" in metrics:
                    tags["pokediff.validation.success"] = str(bool(metrics["success"]))
        if tags:
            mlflow.set_tags(tags)

    # -- failure handling
    def _call(self, fn, *args, **kwargs) -> Any:
        """Run one MLflow call; on failure warn once, remember the step, return None."""
        if self.broken_since is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # requests/urllib3 errors, MlflowException, OSError, sqlite errors ...
            self.broken_since = self.last_step
            print(f"pokediff train: MLflow tracking failed at step {self.last_step} ({error_words(exc)}); training "
                  "continues, metrics are kept and logged at the end if MLflow answers again", file=sys.stderr)
            logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)  # also its errors
            self._stop_system_metrics()
            self._write_run_info()
            return None

    def _stop_system_metrics(self) -> None:
        monitor = fluent.run_id_to_system_metrics_monitor.pop(self.run_id, None)
        if monitor is not None:
            monitor._shutdown_event.set()  # the thread exits after its current call; not joined

    def _reconnect(self) -> bool:
        """After an outage: if the store answers, log the buffered metrics and continue normally."""
        try:
            with quick_http():
                mlflow.MlflowClient().get_run(self.run_id)
                for i in range(0, len(self.buffer), 1000):
                    mlflow.MlflowClient().log_batch(self.run_id, metrics=self.buffer[i:i + 1000])
                mlflow.set_tags({"pokediff.tracking": "partial",
                                 "pokediff.tracking_outage": f"from step {self.broken_since}; metrics buffered "
                                                             "and logged at the end, in-training images lost"})
        except Exception:
            return False
        print(f"pokediff train: MLflow answers again: logged {len(self.buffer)} buffered metric values",
              file=sys.stderr)
        self.buffer.clear()
        self.broken_since = None
        return True

    def _abandon_run(self) -> None:
        """Forget the fluent active run without calling the store (it does not answer)."""
        self._stop_system_metrics()
        fluent._active_run_stack.get().clear()  # this thread's stack of active runs
        self._write_run_info()
        print(f"pokediff train: MLflow still unreachable; run {self.run_id} stays incomplete there "
              f"({len(self.buffer)} metric values not logged); the model is in {self.out_dir}", file=sys.stderr)

    # -- during training
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self.last_step = max(self.last_step, step)
        clean = rounded_scores({k: v for k, v in finite_metrics(metrics).items() if k in TRAIN_METRICS})
        if self.broken_since is None:
            self._call(mlflow.log_metrics, clean, step=step)
            if self.broken_since is None:
                return
        if len(self.buffer) < MAX_BUFFERED:  # the store is away: keep the values for the end
            now = int(time.time() * 1000)
            self.buffer.extend(Metric(k, v, now, step) for k, v in clean.items())

    def log_image(self, image: torch.Tensor, key: str, step: int) -> None:
        """uint8 (C, H, W) image, e.g. the in-training sample grid, as a step-indexed image."""
        self.last_step = max(self.last_step, step)
        self._call(mlflow.log_image, image.permute(1, 2, 0).cpu().numpy(), key=key, step=step)

    # -- at the end
    def finish(self, model_file: Path, checkpoint: Path | None, extra_artifacts: list[Path] = (),
               summary: dict[str, Any] | None = None, grid: Path | None = None) -> str | None:
        """Log files, the checkpoint and the model; register a new model version; write the run's
        description. Returns the version, or None when MLflow did not answer (the files stay local)."""
        if self.broken_since is not None and not self._reconnect():
            return None
        for path in extra_artifacts:
            if Path(path).exists():
                self._call(mlflow.log_artifact, str(path))
        if checkpoint is not None and checkpoint.exists():
            self._call(mlflow.log_artifact, str(checkpoint), artifact_path="checkpoints")
        if grid is not None and Path(grid).exists():
            self._call(mlflow.log_artifact, str(grid), artifact_path="samples")
            self.grid_artifact = f"samples/{Path(grid).name}"
        self.model_version = self._call(log_and_register_model, model_file, self.run_id)
        if self.model_version is not None:
            self._call(mlflow.set_tag, "pokediff.model_version", self.model_version)
        summary = summary or {}
        if "steps" in summary:  # the steps reached: below train.steps when a wall-clock budget stopped the run
            self._call(mlflow.set_tags, {"pokediff.steps_reached": summary["steps"],
                                         "pokediff.stopped_by_budget": bool(summary.get("stopped_by_budget"))})
        self._call(mlflow.set_tag, "pokediff.training", "complete")  # also after a stopped run was resumed
        if self.resume:  # the stop's tag told the user to --resume: done now
            self._call(_clear_tag, self.run_id, STOPPED_TAG)
        self._call(mlflow.set_tag, "mlflow.note.content",
                   describe_training(self.params, summary or {}, self.model_version, self.grid_artifact, self.run_id))
        self._write_run_info()
        return self.model_version


def _clear_tag(run_id: str, key: str) -> None:
    """Delete a run's tag if it has it (MLflow refuses to delete one that does not exist)."""
    client = mlflow.MlflowClient()
    if key in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, key)


def describe_training(params: Params, summary: dict[str, Any], model_version: str | None,
                      grid_artifact: str | None, run_id: str | None = None) -> str:
    """Markdown for tag mlflow.note.content of the training (pipeline) run: the last in-training sample
    grid on top (until the score stage puts the final samples there), then the run's numbers."""
    p = params
    lines = []
    if grid_artifact and run_id:
        lines += [artifact_image(run_id, grid_artifact, "last in-training samples (EMA, DDIM)", 260), ""]
    lines += [f"**pokediff training**: {p.diffusion.schedule} schedule, {p.diffusion.prediction}-prediction, "
              f"U-Net base {p.model.base_channels} x {list(p.model.channel_mults)}, "
              f"{summary.get('steps', p.train.steps)} steps x batch {p.train.batch_size}", ""]
    stopped = (f"wall-clock budget ({p.train.max_seconds:g} s) at step {summary.get('steps')} of {p.train.steps}"
               if summary.get("stopped_by_budget") else None)
    rows = [("stopped by", stopped), ("final loss", summary.get("final_loss")),
            ("images/s", summary.get("images_per_second")),
            ("train seconds", summary.get("seconds")), ("parameters", summary.get("parameters")),
            ("dataset images", summary.get("dataset_images"))]
    lines += ["| | |", "|---|---|"] + [f"| {name} | {_fmt(value)} |" for name, value in rows if value is not None]
    if model_version:
        lines += ["", f"Registered model: `{MODEL_NAME}` version {model_version}."]
    if grid_artifact:
        lines += ["", f"Last in-training sample grid: artifact `{grid_artifact}` (each in-training grid: the image "
                      "`samples` under Model metrics, one per evaluation step)."]
    orchestrated = orchestration_lines()
    if orchestrated:
        lines += [""] + orchestrated
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
