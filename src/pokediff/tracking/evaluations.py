"""Evaluations (sample + score) as MLflow runs, and the champion aliases of the registered model.

What the score stage logs: it needs the store and nothing of the model, so this module imports no
model, sampler or training code (the score stage's DVC deps stay evaluation and data code).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from pokediff.tracking.store import MODEL_NAME, configure, finite_metrics, link_tags, read_run_info

CHAMPION_ALIAS = "champion"


# ----------------------------------------------------------------------------------------------
# Evaluations (sample + score) and the champion
# ----------------------------------------------------------------------------------------------
# FID is only comparable under one evaluation key: the number of samples scored, the reference
# statistics they are compared with (sha256 of ref_stats.npz) and the feature extractor. Design:
#   * every evaluation run carries the tags pokediff.eval_key (the key) and pokediff.eval_key_id (8 hex
#     of its sha256), and its run name ends in "n<num_samples>", so the key shows in the runs table;
#   * a model version gets, per key it was scored under, the tags fid.<id> (its best FID under that
#     key), fid_by.<id> (sampler, steps, samples) and eval_key.<id>;
#   * alias champion-<id> is the best version under that key, for every key;
#   * alias ``champion`` is the best version under the registered model's tag ``champion_key``, which
#     the first evaluation sets (the project's configuration at that time). It never moves to a version
#     scored under another key; to compare under a new key, set that tag (README: MLflow). The plain
#     version tags fid / fid_by / eval_key describe the version under the champion key.
# The FID, KID and memorisation scores are the only metrics of an evaluation; counts go to params.
EVAL_METRICS = ("fid", "kid_mean", "kid_std", "memorisation_share_below_train_nn")
CHAMPION_KEY_TAG = "champion_key"


def evaluation_key(num_samples: int, ref_stats_sha256: str, extractor: str) -> str:
    """"n2048 ref:1a2b3c4d5e6f inception-2015-12-05/pool3/tf1": what makes two FIDs comparable."""
    return f"n{int(num_samples)} ref:{ref_stats_sha256[:12]} {extractor}"


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class EvaluationLogger:
    """Logs one evaluation as a nested run under the pipeline's training run, puts its scores on the
    pipeline run when it is the configured evaluation, and keeps the champion aliases (see above)."""

    def __init__(self, train_out_dir: str | Path):
        self.info = read_run_info(train_out_dir)

    def log(self, params: dict[str, Any], metrics: dict[str, Any], artifacts: list[Path], run_name: str,
            key: str, how: str = "") -> dict:
        configure()
        client = MlflowClient()
        parent = client.get_run(self.info["run_id"])
        clean = {k: v for k, v in finite_metrics(metrics).items() if k in EVAL_METRICS}
        headline = is_configured_evaluation(parent.data.params, params)
        tags = {"pokediff.stage": "score", "pokediff.eval_key": key, "pokediff.eval_key_id": key_id(key),
                "pokediff.headline": str(headline).lower(), **link_tags()}
        # A run of its own (not re-opening the parent), so the training run's end time, and so its
        # duration in the UI, stays that of training.
        with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=run_name,
                              parent_run_id=parent.info.run_id, tags=tags) as child:
            mlflow.log_params(params)
            mlflow.log_metrics(clean)
            mlflow.log_dict({k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
                            "evaluation.json")
            for path in artifacts:
                if Path(path).exists():
                    mlflow.log_artifact(str(path))
            mlflow.set_tag("mlflow.note.content", _describe_evaluation(how, clean, key, artifacts))
        result = {"evaluation_run_id": child.info.run_id, "pipeline_run_id": parent.info.run_id,
                  "evaluation_key": key, "headline": headline}
        if headline:  # the pipeline run shows the evaluation of its own configuration, no other
            now = int(time.time() * 1000)
            client.log_batch(parent.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in clean.items()],
                             tags=[RunTag("pokediff.headline_evaluation", child.info.run_id),
                                   RunTag("pokediff.eval_key", key),
                                   RunTag("mlflow.note.content", _with_headline(
                                       parent.data.tags.get("mlflow.note.content", ""), how, clean, key,
                                       child.info.run_id, any(Path(a).name == "grid.png" and Path(a).exists()
                                                              for a in artifacts)))])
        version = self.info.get("model_version")
        if version and "fid" in clean:
            result.update(update_champion(str(version), clean["fid"], how or run_name, key=key,
                                          run_id=child.info.run_id))
        return result


def is_configured_evaluation(train_params: dict[str, str], eval_params: dict[str, Any]) -> bool:
    """Whether an evaluation used the sampler, steps and sample count that the training run was
    configured with (its logged sample.* / score.* params); ddpm's configured steps are all T."""
    want_sampler = train_params.get("sample.sampler")
    want_steps = train_params.get("diffusion.timesteps") if want_sampler == "ddpm" else train_params.get("sample.steps")
    got = (str(eval_params.get("sample.sampler")), str(eval_params.get("sample.steps")),
           str(eval_params.get("score.num_samples")))
    return got == (want_sampler, str(want_steps), str(train_params.get("score.num_samples")))


def _describe_evaluation(how: str, metrics: dict[str, float], key: str, artifacts: list[Path]) -> str:
    names = [Path(a).name for a in artifacts if Path(a).exists()]
    grid = " Sample grid: artifact `grid.png`." if "grid.png" in names else ""
    scores = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    return f"**Evaluation** ({how}): {scores}.\n\nEvaluation key: `{key}`.{grid}\n"


HEADLINE_START, HEADLINE_END = "<!-- evaluation -->", "<!-- /evaluation -->"


def _with_headline(description: str, how: str, metrics: dict[str, float], key: str, run_id: str = "",
                   has_grid: bool = False) -> str:
    """The training run's description with its headline evaluation on top (replacing an older one)."""
    if HEADLINE_START in description and HEADLINE_END in description:
        before, rest = description.split(HEADLINE_START, 1)
        description = before + rest.split(HEADLINE_END, 1)[1].lstrip("\n")
    fid, kid = metrics.get("fid"), metrics.get("kid_mean")
    head = f"### FID {fid:.2f}" if fid is not None else "### evaluation"
    if kid is not None:
        head += f" · KID {kid:.4f}"
    grid = f" Sample grid: artifact `grid.png` of evaluation run `{run_id}`." if has_grid else ""
    block = f"{HEADLINE_START}\n{head}\n\n{how}; evaluation key `{key}`.{grid}\n{HEADLINE_END}\n\n"
    return block + description


def _alias_version(client: MlflowClient, alias: str):
    try:
        return client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        return None


def update_champion(version: str, fid: float, how: str, *, key: str, run_id: str) -> dict[str, Any]:
    """Record an evaluation's FID on the model version under its key and move that key's champion
    alias (and ``champion`` when the key is the champion key) to the best version under the key.

    A version's fid.<id> tag is its best FID under that key (fid_by.<id> says which sampler settings
    reached it): re-scoring a model with a worse sampler does not make the model worse."""
    client = MlflowClient()
    kid = key_id(key)
    tags = client.get_model_version(MODEL_NAME, version).tags
    best = fid
    if tags.get(f"fid.{kid}") is not None and float(tags[f"fid.{kid}"]) <= fid:
        best = float(tags[f"fid.{kid}"])
    else:
        for name, value in ((f"fid.{kid}", f"{fid:.6g}"), (f"fid_by.{kid}", how), (f"eval_key.{kid}", key),
                            (f"eval_run.{kid}", run_id)):
            client.set_model_version_tag(MODEL_NAME, version, name, value)
    key_alias = f"{CHAMPION_ALIAS}-{kid}"
    current = _alias_version(client, key_alias)
    current_fid = float(current.tags[f"fid.{kid}"]) if current and f"fid.{kid}" in current.tags else None
    if current is None or current_fid is None or str(current.version) == version or best < current_fid:
        client.set_registered_model_alias(MODEL_NAME, key_alias, version)
        winner, winner_fid = version, best
    else:
        winner, winner_fid = str(current.version), current_fid

    champion_key = client.get_registered_model(MODEL_NAME).tags.get(CHAMPION_KEY_TAG)
    if champion_key is None:
        client.set_registered_model_tag(MODEL_NAME, CHAMPION_KEY_TAG, key)
        champion_key = key
    if champion_key == key:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, winner)
        for name in ("fid", "fid_by", "eval_key"):  # the plain tags: this version under the champion key
            value = client.get_model_version(MODEL_NAME, version).tags.get(f"{name}.{kid}")
            if value is not None:
                client.set_model_version_tag(MODEL_NAME, version, name, value)
    _describe_version(client, version)
    return {"champion_version": winner, "champion_fid": winner_fid, "is_champion": winner == version,
            "champion_alias": CHAMPION_ALIAS if champion_key == key else key_alias, "key_alias": key_alias,
            "champion_key": champion_key}


def _describe_version(client: MlflowClient, version: str) -> None:
    """The model version's description: its best evaluation per key (sampler, steps, samples, FID)."""
    tags = client.get_model_version(MODEL_NAME, version).tags
    lines = []
    for name, key in sorted(tags.items()):
        if name.startswith("eval_key."):
            kid = name.split(".", 1)[1]
            lines.append(f"- FID **{float(tags.get(f'fid.{kid}', 'nan')):.2f}** with {tags.get(f'fid_by.{kid}', '?')} "
                         f"(evaluation key `{key}`, run {tags.get(f'eval_run.{kid}', '?')})")
    if lines:
        text = "Evaluations of this version (best per evaluation key; FIDs compare only within a key):\n\n"
        client.update_model_version(MODEL_NAME, version, description=text + "\n".join(lines) + "\n")


def champion_version(key: str | None = None) -> tuple[str, float | None] | None:
    """(version, its FID) of the model carrying ``champion`` (or, with a key, that key's champion)."""
    client = MlflowClient()
    alias = CHAMPION_ALIAS if key is None else f"{CHAMPION_ALIAS}-{key_id(key)}"
    mv = _alias_version(client, alias)
    if mv is None:
        return None
    fid = mv.tags.get("fid") if key is None else mv.tags.get(f"fid.{key_id(key)}")
    return str(mv.version), (float(fid) if fid is not None else None)


# ----------------------------------------------------------------------------------------------
# Sweeps: extra results on runs that already exist
# ----------------------------------------------------------------------------------------------
def log_files_to_run(run_id: str, paths: list[str | Path], artifact_path: str) -> None:
    """Attach files (e.g. a sampler sweep's plot and table) to an existing run, under artifact_path/."""
    configure()
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_metrics_to_run(run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics (e.g. a sweep point's NFE and seconds) to an existing evaluation run."""
    configure()
    client = MlflowClient()
    for key, value in finite_metrics(metrics).items():
        client.log_metric(run_id, key, value)
