"""`pokediff-sweep`: FID against the number of network evaluations (NFE) for one trained model, and for a
type-conditional model FID against the guidance scale w.

    python -m pipelines.sweep --grid ddim:10 ddim:25 ddim:50 dpmpp2m:10 dpmpp2m:20 -S sample.num_images=300
    python -m pipelines.sweep --grid ddim:25 dpmpp2m:20 --guidance 0 1 2 4 -S model.condition=type

With --guidance every grid point is sampled at each w (sample.guidance); the result adds a FID-vs-w plot,
one line per sampler, and the points' per-type mean FID (fid_type_mean) when the score stage wrote one.

For each grid point SAMPLER:STEPS the flow runs the pipeline's own sample and score stages as a DVC
experiment (`dvc exp run --single-item sample score -S sample.sampler=... -S sample.steps=...`), so:
  - the trained model is the workspace's outputs/train/model.safetensors, whatever params say (no retraining:
    --single-item does not look upstream);
  - each point is an experiment in `dvc exp show` (named sweep-<flow run>-<sampler>-<steps>) with
    its FID/KID, and `dvc metrics diff` / `dvc plots diff` compare points;
  - the score stage logs each point as a nested MLflow evaluation of the training run; this flow adds
    the point's NFE and sampling seconds to it.
The result, a FID-vs-NFE plot (PNG) and a markdown table, is logged to the training run's MLflow
artifacts (sweep/) and published as a Prefect markdown artifact. params.yaml, dvc.lock and the
workspace's sample/score outputs are put back as they were when the sweep ends.

NFE: one U-Net evaluation per step for all three samplers (DDPM and DDIM one per step; DPM-Solver++(2M)
is a multistep method that reuses the previous step's output), so NFE = steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from pipelines import dvc_tasks
from pipelines.dvc_tasks import LOCK_FILE, PARAMS_FILE, StepFailed
from pipelines.flows import check_overrides, cli_overrides, experiment_name, link_env, report_state, team_preflight
from pokediff.choices import SAMPLERS
from pokediff.env import set_offline_defaults

# CPU-friendly default: about 1 to 2 minutes per point at 300 images on 2 cores (small U-Net).
DEFAULT_GRID = ["ddim:10", "ddim:25", "ddim:50", "dpmpp2m:10", "dpmpp2m:20"]
MAX_STEPS = 10_000
MAX_GUIDANCE = 50.0  # sample.guidance's own bound


def parse_grid(grid: list[str]) -> list[tuple[str, int]] | str:
    """["ddim:10", ...] -> [("ddim", 10), ...], or one line naming the bad entry."""
    points = []
    for entry in grid:
        sampler, _, steps = str(entry).partition(":")
        if sampler not in SAMPLERS or not steps.isdigit() or not 1 <= int(steps) <= MAX_STEPS:
            return (f"invalid flow parameter: grid entry {entry!r} (want SAMPLER:STEPS, sampler one of "
                    f"{', '.join(SAMPLERS)}, 1 <= steps <= {MAX_STEPS})")
        if (sampler, int(steps)) not in points:
            points.append((sampler, int(steps)))
    return points or "invalid flow parameter: grid is empty"


def parse_guidance(values: list[float] | None) -> list[float | None] | str:
    """[0, 1, 2] -> the w of each point ([None]: no guidance set, the params' own), or one line naming the bad one."""
    if not values:
        return [None]
    out: list[float | None] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_GUIDANCE:
            return f"invalid flow parameter: guidance {value!r} (want numbers from 0 to {MAX_GUIDANCE:g})"
        if float(value) not in out:
            out.append(float(value))
    return out


def _point_body(sampler: str, steps: int, overrides: list[str], exp_name: str, extra_env: dict[str, str],
                files: dict[str, str], guidance: float | None = None) -> dict:
    logger = get_run_logger()
    sets = [*overrides, f"sample.sampler={sampler}", f"sample.steps={steps}"]
    if guidance is not None:
        sets.append(f"sample.guidance={guidance}")
    cmd = dvc_tasks.dvc("exp", "run", "--single-item", "sample", "score", "-n", exp_name)
    for item in sets:
        cmd += ["-S", item]
    start = time.perf_counter()
    dvc_tasks.run_streaming(cmd, logger, {**extra_env, "DVC_EXP_NAME": exp_name})
    wall = time.perf_counter() - start
    info = dvc_tasks.read_json_file(files["sample_info"])
    metrics = dvc_tasks.read_json_file(files["metrics"])
    evaluation = dvc_tasks.read_json_file(files["evaluation"])
    if info.get("sampler") != sampler or "fid" not in metrics:
        raise StepFailed(f"{sampler}:{steps}: {files['sample_info']} / {files['metrics']} do not hold this point")
    point = {"sampler": sampler, "steps": steps, "nfe": int(info.get("steps", steps)),
             "spacing": info.get("spacing"), "fid": float(metrics["fid"]), "kid_mean": metrics.get("kid_mean"),
             "num_samples": metrics.get("num_samples"), "sample_seconds": float(info.get("seconds", 0.0)),
             "point_seconds": round(wall, 1), "experiment": exp_name,
             "evaluation_run_id": evaluation.get("evaluation_run_id"),
             "guidance": float(info.get("guidance", 0.0)), "fid_type_mean": metrics.get("fid_type_mean")}
    logger.info("%s:%d  NFE %d  FID %.2f  sampling %.1f s (whole point %.1f s)", sampler, steps, point["nfe"],
                point["fid"], point["sample_seconds"], wall)
    return point


def table_markdown(points: list[dict]) -> str:
    lines = ["| sampler | steps | NFE | w | FID | per-type FID (mean) | KID | samples | sampling s | point s | "
             "DVC experiment |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in sorted(points, key=lambda p: (p["sampler"], p["nfe"], p.get("guidance", 0.0))):
        kid = f"{p['kid_mean']:.4f}" if isinstance(p.get("kid_mean"), float) else "-"
        per_type = f"{p['fid_type_mean']:.2f}" if isinstance(p.get("fid_type_mean"), float) else "-"
        lines.append(f"| {p['sampler']} | {p['steps']} | {p['nfe']} | {p.get('guidance', 0.0):g} | {p['fid']:.2f} | "
                     f"{per_type} | {kid} | {p['num_samples']} | {p['sample_seconds']:.1f} | "
                     f"{p['point_seconds']:.1f} | `{p['experiment']}` |")
    return "\n".join(lines) + "\n"


def plot_fid_vs_nfe(points: list[dict], path: Path, title: str) -> Path:
    """One line per sampler, FID (lower is better) against NFE on a log axis."""
    import matplotlib  # ~1 s to import, only for the plot; the Agg backend must be chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sampler in sorted({p["sampler"] for p in points}):
        pts = sorted((p["nfe"], p["fid"]) for p in points if p["sampler"] == sampler)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=sampler)
        for x, y in pts:
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(sorted({p["nfe"] for p in points}))  # the NFEs measured, as plain numbers
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("NFE (U-Net evaluations per image)")
    ax.grid(True, which="both", alpha=0.3)  # minor ticks too: the x axis is logarithmic
    return _save_fid_plot(plt, fig, ax, title, path)


def plot_fid_vs_guidance(points: list[dict], path: Path, title: str) -> Path:
    """One line per sampler (and step count), FID against the guidance scale w."""
    import matplotlib  # ~1 s to import, only for the plot; the Agg backend must be chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sampler, steps in sorted({(p["sampler"], p["steps"]) for p in points}):
        pts = sorted((p["guidance"], p["fid"]) for p in points if (p["sampler"], p["steps"]) == (sampler, steps))
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{sampler} ({steps} steps)")
        for x, y in pts:
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("guidance scale w (0 = plain conditional)")
    ax.grid(True, alpha=0.3)
    return _save_fid_plot(plt, fig, ax, title, path)


def _save_fid_plot(plt, fig, ax, title: str, path: Path) -> Path:
    """The y axis, title and legend every FID plot shares; writes ``path`` and frees the figure."""
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@task(name="log-to-mlflow", task_run_name="log-to-mlflow", retries=2, retry_delay_seconds=5)
def log_to_mlflow(run_info_path: str, files: list[str]) -> str | None:
    """The plot, table and points as artifacts (sweep/) of the training run that made the model."""
    run_id = dvc_tasks.read_json_file(run_info_path).get("run_id")
    if not run_id:
        get_run_logger().warning("%s names no MLflow run: sweep results not logged to MLflow", run_info_path)
        return None
    from pokediff.tracking.evaluations import log_files_to_run  # imports mlflow (seconds): only here

    log_files_to_run(run_id, files, artifact_path="sweep")
    return run_id


@task(name="log-point-metrics", task_run_name="log-point-metrics", retries=2, retry_delay_seconds=5)
def log_point_metrics(points: list[dict]) -> None:
    """Each point's NFE and seconds on its nested MLflow evaluation run (the score stage made it)."""
    from pokediff.tracking.evaluations import log_metrics_to_run  # imports mlflow (seconds): only here

    for p in points:
        if p.get("evaluation_run_id"):
            log_metrics_to_run(p["evaluation_run_id"], {key: float(p[key]) for key in ("nfe", "sample_seconds")})


@flow(name="pokediff-sweep", log_prints=True)
def pokediff_sweep(grid: list[str] | None = None, num_images: int | None = None,
                   overrides: list[str] | None = None, out_dir: str = "outputs/sweep",
                   guidance: list[float] | None = None):
    """Sample and score the trained model for each SAMPLER:STEPS of ``grid``; FID-vs-NFE plot + table.

    grid:       e.g. ["ddim:10", "ddim:25", "dpmpp2m:20", "ddpm:1000"] (default: a CPU-friendly grid)
    guidance:   type-conditional models: each grid point at each of these w (sample.guidance); adds a
                FID-vs-w plot, one line per sampler
    num_images: images sampled and scored per point (sample.num_images and score.num_samples)
    overrides:  other params as "section.key=value": pass the ones the model was trained with, so each
                experiment's params describe it (e.g. the CPU configuration's, see configs/cpu-small.yaml)
    out_dir:    where the plot, table and points JSON go
    """
    points_wanted = parse_grid(list(grid or DEFAULT_GRID))
    if isinstance(points_wanted, str):
        return Failed(message=points_wanted)
    scales = parse_guidance(guidance)
    if isinstance(scales, str):
        return Failed(message=scales)
    if num_images is not None and num_images < 2:
        return Failed(message=f"invalid flow parameter: num_images={num_images} (FID needs at least 2)")
    base = list(overrides or [])
    if num_images is not None:
        base += [f"sample.num_images={num_images}", f"score.num_samples={num_images}"]
    problem = check_overrides(base + [f"sample.sampler={points_wanted[0][0]}"]
                              + ([f"sample.guidance={max(scales)}"] if scales != [None] else []))
    if problem:
        return Failed(message=problem)

    outputs = dvc_tasks.stage_outputs()

    def declared(stage: str, name: str) -> str:
        for path in outputs.get(stage, {}).get("outs", []) + outputs.get(stage, {}).get("metrics", []):
            if path.endswith(name):
                return path
        raise StepFailed(f"dvc.yaml: stage {stage} declares no {name}")

    try:
        files = {"sample_info": declared("sample", "sample_info.json"), "metrics": declared("score", "metrics.json"),
                 "evaluation": declared("score", "mlflow_evaluation.json"),
                 "run_info": declared("train", "mlflow_run.json"), "model": declared("train", "model.safetensors")}
    except StepFailed as exc:
        return Failed(message=str(exc))
    if not Path(files["model"]).is_file():
        return Failed(message=f"{files['model']} not found: train a model first (`make pipeline` or `dvc repro train`)")

    prefix = experiment_name("sweep")
    extra_env = link_env()
    points: list[dict] = []
    # DVC leaves the last experiment's params in params.yaml and its lock in dvc.lock: put both back,
    # then the workspace outputs that match them (`dvc checkout`).
    try:
        with dvc_tasks.files_restored(PARAMS_FILE, LOCK_FILE, Path(files["evaluation"])):
            for sampler, steps in points_wanted:
                for w in scales:
                    label = f"{sampler}-{steps}" + ("" if w is None else f"-w{w:g}")
                    point_task = task(_point_body, name=label, task_run_name=label)
                    state = point_task(sampler, steps, base, f"{prefix}-{label}".replace(".", "p"), extra_env, files,
                                       w, return_state=True)
                    if not state.is_completed():
                        return Failed(message=f"point {label}: {state.message or state.name}".splitlines()[0])
                    points.append(state.result())
    finally:
        restore = subprocess_quiet(dvc_tasks.dvc("checkout", "--quiet", "sample", "score"))
        if restore:
            get_run_logger().warning("dvc checkout sample score: %s", restore)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(points)
    (out / "sweep.md").write_text(f"# FID vs NFE\n\n{table}")
    (out / "sweep.json").write_text(json.dumps(points, indent=2) + "\n")
    n = points[0].get("num_samples")
    plot = plot_fid_vs_nfe(points, out / "fid_vs_nfe.png", f"FID vs NFE ({n} samples per point)")
    logged = [str(plot), str(out / "sweep.md"), str(out / "sweep.json")]
    if scales != [None]:
        logged.append(str(plot_fid_vs_guidance(points, out / "fid_vs_guidance.png",
                                               f"FID vs guidance ({n} samples per point)")))
    run_id = log_to_mlflow(files["run_info"], logged)
    log_point_metrics(points)
    create_markdown_artifact(
        markdown=(f"# pokediff sweep: FID vs NFE\n\nModel: `{files['model']}` (MLflow run `{run_id}`; plot, table "
                  f"and points under its `sweep/` artifacts). Plot: `{plot}`.\n\n{table}\n"
                  f"Each row is a DVC experiment: `dvc exp show`, `dvc metrics diff <exp-a> <exp-b>`.\n"),
        key="pokediff-sweep", description="FID against NFE for samplers x steps")
    print(f"sweep done: {len(points)} points -> {plot}, {out / 'sweep.md'}")
    return {"points": points, "plot": str(plot), "table": str(out / "sweep.md"), "mlflow_run_id": run_id}


def subprocess_quiet(cmd: list[str]) -> str:
    """Run a command; '' on success, else its last line of output."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=dvc_tasks.env())
    if out.returncode == 0:
        return ""
    return ((out.stderr or out.stdout).strip().splitlines() or ["failed"])[-1][:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="+", default=DEFAULT_GRID, metavar="SAMPLER:STEPS",
                        help="points (default: %(default)s)")
    parser.add_argument("--num-images", type=int, help="images per point (sample.num_images, score.num_samples)")
    parser.add_argument("--guidance", nargs="+", type=float, metavar="W",
                        help="type-conditional models: each point at each guidance scale (sample.guidance)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params the model was trained with (repeatable)")
    parser.add_argument("--params-file", help="YAML overrides with params.yaml's nesting (e.g. configs/cpu-small.yaml)")
    parser.add_argument("--out-dir", default="outputs/sweep")
    args = parser.parse_args(argv)
    set_offline_defaults()
    overrides = cli_overrides("python -m pipelines.sweep", args.params_file, args.overrides)
    if overrides is None:
        return 2
    if not team_preflight("python -m pipelines.sweep"):
        return 1
    state = pokediff_sweep(grid=args.grid, num_images=args.num_images, overrides=overrides, out_dir=args.out_dir,
                           guidance=args.guidance, return_state=True)
    code = report_state("pokediff-sweep", state)
    if code == 0:
        result = state.result()
        print(Path(result["table"]).read_text())
        print(f"plot: {result['plot']}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
