"""dvc.yaml declares exactly the code and params each stage uses.

1. The source deps equal what each stage's `pokediff` subcommand imports (pipelines/stage_deps.py
   follows every import, lazy ones included); a real import of each stage module loads nothing
   outside that list.
2. In a real DVC repo (a git copy of the project, every output a placeholder recorded with
   `dvc commit`), changing one byte of a source file or one param marks exactly the stages that use
   it in `dvc status`, and DVC's graph reruns exactly those and their descendants.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipelines import stage_deps  # noqa: E402

DOWNSTREAM = {  # from dvc.yaml's outs -> deps; checked against DVC's graph below
    "ingest": {"validate", "ref_stats", "train", "sample", "score"},
    "validate": {"train", "sample", "score"},
    "ref_stats": {"train", "sample", "score"},
    "train": {"sample", "score"},
    "sample": {"score"},
    "score": set(),
}


def test_dvc_yaml_source_deps_match_the_imports():
    assert stage_deps.differences() == {}, (
        "dvc.yaml and the stages' imports disagree; `python -m pipelines.stage_deps` prints the deps to paste"
    )


def test_the_issue_s_missing_deps_are_declared():
    deps = stage_deps.dvc_yaml_source_deps()
    files = {stage: stage_deps.expand(d) for stage, d in deps.items()}
    src = REPO / "src" / "pokediff"
    assert src / "data" / "ingest_workers.py" in files["ingest"]
    for path in ("config.py", "generation.py", "evaluation/frechet.py"):
        assert src / path in files["train"], path
    for path in ("models/unet.py", "pixels.py"):
        assert src / path in files["sample"], path


def test_score_depends_on_evaluation_and_data_code_only():
    """FID over a folder of PNGs: no model, sampler, training, generation or served-model file, so a
    change there never makes a GPU regenerate the samples' score."""
    score = {p.relative_to(REPO / "src" / "pokediff").as_posix()
             for p in stage_deps.expand(stage_deps.dvc_yaml_source_deps()["score"])}
    forbidden = [p for p in score if p.split("/")[0] in ("models", "diffusion", "training")
                 or p in ("generation.py", "sample_requests.py", "checkpoint.py",
                          "tracking/run.py", "tracking/served_model.py", "tracking/pyfunc_model.py")]
    assert not forbidden, forbidden
    assert {"evaluation/evaluator.py", "tracking/evaluations.py", "stages/score.py"} <= score


def test_write_regenerates_the_deps_and_keeps_everything_else(tmp_path):
    """`python -m pipelines.stage_deps --write` on a dvc.yaml whose src/ deps are stale: the deps become
    the generated ones, every other line (comments, data deps, params, outs) stays byte for byte."""
    original = (REPO / "dvc.yaml").read_text()
    stale = original.replace("      - src/pokediff/stages/score.py\n", "      - src/pokediff/models\n", 1)
    stale = stale.replace("      - src/pokediff/stages/ingest.py\n", "", 1)
    assert stale.count("\n") == original.count("\n") - 1
    path = tmp_path / "dvc.yaml"
    path.write_text(stale)
    assert sorted(stage_deps.write(path)) == ["ingest", "score"]
    assert path.read_text() == original
    assert stage_deps.differences(path) == {}
    assert stage_deps.write(path) == []


def test_a_stage_import_loads_nothing_outside_its_deps():
    """The static list covers what Python really loads: import each stage module, build its parser,
    and run the imports its run() does (the lazy ones), in a fresh interpreter per stage."""
    probe = (
        "import argparse, ast, importlib, inspect, json, sys\n"
        "name = sys.argv[1]\n"
        "mod = importlib.import_module(name)\n"
        "mod.add_arguments(argparse.ArgumentParser())\n"
        "for node in ast.walk(ast.parse(inspect.getsource(mod.run))):\n"
        "    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('pokediff'):\n"
        "        importlib.import_module(node.module)\n"
        "    elif isinstance(node, ast.Import):\n"
        "        [importlib.import_module(a.name) for a in node.names if a.name.startswith('pokediff')]\n"
        "print(json.dumps(sorted(getattr(m, '__file__', '') or '' for k, m in sys.modules.items()\n"
        "                        if k == 'pokediff' or k.startswith('pokediff.'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    procs = {stage: subprocess.Popen([sys.executable, "-c", probe, module], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
             for stage, module in stage_deps.STAGE_MODULES.items()}  # in parallel: each pays for torch
    listed = stage_deps.dvc_yaml_source_deps()
    for stage, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        loaded = {Path(p).resolve() for p in json.loads(stdout.strip().splitlines()[-1]) if p}
        declared = {p.resolve() for p in stage_deps.expand(listed[stage])}
        assert loaded, stage
        assert loaded <= declared, f"{stage} loads {sorted(str(p) for p in loaded - declared)} outside its deps"


# ---------------------------------------------------------------------------------------------
# dvc status in a real repo
# ---------------------------------------------------------------------------------------------
def _dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory):
    """A git + DVC copy of the project where every stage is recorded in dvc.lock (placeholder outputs)."""
    dest = tmp_path_factory.mktemp("deps")
    for name in ("dvc.yaml", "params.yaml", "data.dvc", ".gitignore"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    (dest / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    (dest / "data").mkdir()
    (dest / "data" / "placeholder.tgz").write_bytes(b"not the sprites")
    stages = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                path = dest / (entry if isinstance(entry, str) else next(iter(entry)))
                if path.suffix:  # a file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("step,loss,fid\n1,1,1\n" if path.suffix == ".csv" else "{}\n")
                else:  # a folder output
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder.txt").write_text("x\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    _dvc("commit", "--force", "--quiet", cwd=dest)
    assert json.loads(_dvc("status", "--json", cwd=dest).stdout or "{}") == {}
    yield dest
    assert _status(dest) == {}  # every edit was undone


def _status(repo: Path) -> dict:
    """`dvc status` through DVC's Python API (the same code as the CLI, without a new interpreter each time)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return dvc_repo.status()


def _marked_after(repo: Path, edit) -> set[str]:
    """Apply ``edit`` (returns an undo), read `dvc status`, undo; the stages DVC marks."""
    undo = edit(repo)
    try:
        status = _status(repo)
    finally:
        undo()
    return {name.split(":")[-1] for name in status if not name.endswith(".dvc")}


def _touch_byte(rel: str):
    def edit(repo: Path):
        path = repo / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# changed\n")
        return lambda: path.write_bytes(original)

    return edit


def _replace(rel: str, old: str, new: str):
    """A real code change: ``old`` (which must be in the file) becomes ``new``."""
    def edit(repo: Path):
        path = repo / rel
        original = path.read_text()
        assert old in original, (rel, old)
        path.write_text(original.replace(old, new))
        return lambda: path.write_text(original)

    return edit


def _set_param(key: str, value):
    def edit(repo: Path):
        path = repo / "params.yaml"
        original = path.read_text()
        tree = yaml.safe_load(original)
        section, leaf = key.split(".")
        tree[section][leaf] = value
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return lambda: path.write_text(original)

    return edit


def test_dvc_graph_matches_the_downstream_table(committed_repo):
    """DOWNSTREAM (used below) is what DVC's own graph says, and the flow's stage order follows it."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    from pipelines.dvc_tasks import pipeline_stages

    cwd = os.getcwd()
    os.chdir(committed_repo)
    try:
        order = pipeline_stages()
        with Repo(".") as repo:
            graph = repo.index.graph  # edges: stage -> the stages it depends on
            below = {s.addressing: {a.addressing for a in nx.ancestors(graph, s) if isinstance(a, PipelineStage)}
                     for s in graph.nodes if isinstance(s, PipelineStage)}
    finally:
        os.chdir(cwd)
    assert below == DOWNSTREAM
    assert order == ["ingest", "validate", "ref_stats", "train", "sample", "score"]


@pytest.mark.parametrize(
    ("edit", "direct"),
    [
        # files the issue found missing, and one per stage
        (_touch_byte("src/pokediff/data/ingest_workers.py"), {"ingest"}),
        (_touch_byte("src/pokediff/stages/validate.py"), {"validate"}),
        (_touch_byte("src/pokediff/evaluation/reference.py"), {"ref_stats", "train", "score"}),
        (_touch_byte("src/pokediff/generation.py"), {"train", "sample"}),
        (_touch_byte("src/pokediff/models/unet.py"), {"train", "sample"}),
        (_touch_byte("src/pokediff/checkpoint.py"), {"train", "sample"}),
        # the served model's request limits and the training run's MLflow description: only train logs them
        (_replace("src/pokediff/sample_requests.py", "MAX_IMAGES_PER_CALL = 64", "MAX_IMAGES_PER_CALL = 32"),
         {"train"}),
        (_replace("src/pokediff/tracking/run.py", "**pokediff training**", "**pokediff training run**"),
         {"train"}),
        (_touch_byte("src/pokediff/tracking/evaluations.py"), {"score"}),
        (_touch_byte("src/pokediff/evaluation/report.py"), {"score"}),
        (_touch_byte("src/pokediff/stages/sample.py"), {"sample"}),
        (_touch_byte("src/pokediff/config.py"), set(DOWNSTREAM)),
        # params: the in-training FID reads score.* and sample.* keys
        (_set_param("score.kid_subsets", 7), {"train", "score"}),
        (_set_param("sample.spacing", "leading"), {"train", "sample"}),
        (_set_param("sample.steps", 7), {"sample"}),
        (_set_param("data.resolution", 32), {"ingest", "validate"}),
        (_set_param("train.eval_every", 7), {"train"}),
    ],
    ids=["ingest_workers.py", "stages/validate.py", "evaluation/reference.py", "generation.py", "models/unet.py",
         "checkpoint.py", "request-limit", "run-description", "tracking/evaluations.py", "evaluation/report.py",
         "stages/sample.py", "config.py", "score.kid_subsets", "sample.spacing", "sample.steps", "data.resolution",
         "train.eval_every"],
)
def test_one_change_marks_exactly_its_stages_and_their_descendants(committed_repo, edit, direct):
    marked = _marked_after(committed_repo, edit)
    assert marked == direct
    rerun = set(marked).union(*(DOWNSTREAM[s] for s in marked))
    expected = set(direct).union(*(DOWNSTREAM[s] for s in direct))
    assert rerun == expected
