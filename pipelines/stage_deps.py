"""The pokediff source files each DVC stage runs, from its imports: what dvc.yaml's deps must list.

    python -m pipelines.stage_deps            # print, per stage, the files/packages for dvc.yaml
    python -m pipelines.stage_deps --check    # exit 1 and name the differences with dvc.yaml
    python -m pipelines.stage_deps --write    # rewrite dvc.yaml's src/ deps to match (comments kept)

A stage's command is `pokediff <subcommand>`: the console script imports pokediff.cli, which imports
pokediff.stages.<module>. From there this follows every `import` of a pokediff module, including the
lazy ones inside functions (run() imports torch-heavy code only when it runs) and module names given
as strings ("pokediff.tracking.pyfunc_model", the code file MLflow stores as the model), plus the
__init__.py of every package on the way. The result is a superset of what one run loads (a branch not taken
still counts), which is the safe side for DVC: a change there may matter, so the stage reruns.
A whole package is listed as its folder when every file in it is used (so a new module there is
covered without editing dvc.yaml); otherwise the files are listed one by one.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "pokediff"
# dvc.yaml stage -> its `pokediff` subcommand's module (see pokediff.cli.COMMANDS)
STAGE_MODULES = {
    "ingest": "pokediff.stages.ingest",
    "validate": "pokediff.stages.validate",
    "ref_stats": "pokediff.stages.ref_stats",
    "train": "pokediff.stages.train",
    "sample": "pokediff.stages.sample",
    "score": "pokediff.stages.score",
}
ENTRY = "pokediff.cli"  # the console script `pokediff` = pokediff.cli:main
MAX_SOURCE_BYTES = 2_000_000  # a source file larger than this is not ours: refuse to parse it


def module_file(name: str, src: Path = SRC) -> Path | None:
    """pokediff.a.b -> src/pokediff/a/b.py or src/pokediff/a/b/__init__.py (None if neither)."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Module names a file imports anywhere (top level or inside functions), absolute, pokediff only."""
    text = path.read_bytes()
    if len(text) > MAX_SOURCE_BYTES:
        raise ValueError(f"{path}: {len(text)} bytes, more than {MAX_SOURCE_BYTES}; not a pokediff module?")
    tree = ast.parse(text, filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names.add(parent)
            # `from pokediff.data import dataset` may name a submodule
            names.update(f"{parent}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + "."):
            names.add(node.value)  # importlib.import_module("pokediff.x") / lazy-attribute tables
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def used_files(entry_modules: list[str], src: Path = SRC) -> set[Path]:
    """Every pokediff source file the entry modules reach through imports (see the module docstring)."""
    seen: set[str] = set()
    todo = list(entry_modules)
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, src)
        if path is None:
            continue  # an attribute (from pokediff.x import SomeClass), not a module
        files.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        todo.extend(_imported_names(path, name))
    return files


def stage_files(stage: str, src: Path = SRC) -> set[Path]:
    return used_files([ENTRY, STAGE_MODULES[stage]], src)


def collapse(files: set[Path], root: Path = ROOT, src: Path = SRC) -> list[str]:
    """Repo-relative deps: a package folder when all its .py files are used, else the single files."""
    out: set[str] = set()
    for path in files:
        rel = path
        # climb while the whole parent package is used (never up to src/pokediff itself: cli, config
        # and friends are listed one by one so a new stage module does not rerun every stage)
        while rel.parent != src / PACKAGE and all(p in files for p in rel.parent.rglob("*.py")):
            rel = rel.parent
        out.add(rel.relative_to(root).as_posix())
    # drop entries inside a listed folder
    return sorted(d for d in out if not any(d != o and d.startswith(o + "/") for o in out))


def expand(deps: list[str], root: Path = ROOT) -> set[Path]:
    """dvc.yaml source deps -> the .py files they cover."""
    files: set[Path] = set()
    for dep in deps:
        path = root / dep
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return files


def dvc_yaml_source_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """Each stage's deps under src/ as dvc.yaml lists them."""
    text = dvc_yaml.read_text()
    stages = yaml.safe_load(text)["stages"]
    return {name: [d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith("src/")]
            for name, stage in stages.items()}


def differences(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict[str, list[str]]]:
    """Per stage: files it uses that dvc.yaml misses, and files dvc.yaml lists that it never imports."""
    listed = dvc_yaml_source_deps(dvc_yaml)
    out = {}
    for stage in STAGE_MODULES:
        used, declared = stage_files(stage), expand(listed.get(stage, []))
        missing = sorted(p.relative_to(ROOT).as_posix() for p in used - declared)
        extra = sorted(p.relative_to(ROOT).as_posix() for p in declared - used)
        if missing or extra:
            out[stage] = {"missing": missing, "unused": extra}
    return out


def write(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """Replace each stage's run of ``- src/...`` deps in dvc.yaml by the generated list, leaving every
    other line (other deps, params, outs, comments) as it is. Returns the stages whose deps changed."""
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    out: list[str] = []
    stage, changed, i = None, [], 0
    while i < len(lines):
        header = re.match(r"^  ([A-Za-z_][\w-]*):\s*(#.*)?$", lines[i])  # a stage under `stages:`
        if header:
            stage = header.group(1)
        dep = re.match(r"^(\s+)- src/", lines[i])
        if dep is None or stage not in STAGE_MODULES:
            out.append(lines[i])
            i += 1
            continue
        end = i
        while end < len(lines) and re.match(r"^\s+- src/", lines[end]):
            end += 1
        new = [f"{dep.group(1)}- {path}\n" for path in collapse(stage_files(stage))]
        if new != lines[i:end]:
            changed.append(stage)
        out += new
        i = end
    missing = sorted(set(STAGE_MODULES) - {s for s, d in dvc_yaml_source_deps(dvc_yaml).items() if d})
    if missing:
        raise SystemExit(f"{dvc_yaml}: stage(s) {', '.join(missing)} list no src/ deps to replace; "
                         "add one `- src/pokediff/cli.py` line under their deps first")
    dvc_yaml.write_text("".join(out))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.stage_deps", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with dvc.yaml; exit 1 on a difference")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's src/ deps from the imports")
    args = parser.parse_args(argv)
    if args.write:
        changed = write()
        print(f"dvc.yaml: src/ deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: deps already match")
        return 0
    if args.check:
        diff = differences()
        for stage, d in diff.items():
            for path in d["missing"]:
                print(f"dvc.yaml: stage {stage} imports {path} but does not depend on it")
            for path in d["unused"]:
                print(f"dvc.yaml: stage {stage} depends on {path} but never imports it")
        return 1 if diff else 0
    for stage in STAGE_MODULES:
        print(f"{stage}:")
        for dep in collapse(stage_files(stage)):
            print(f"  - {dep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
