"""Run a module as the GPU machine would, where only torch (with its own dependencies), the standard
library, this repository and the carried wheels are installed:

    python -m benchmarks.import_guard [--log FILE] -m pokediff train ...
    python -m benchmarks.import_guard -c "import mlflow"          # fails: not in the wheel set

Every other installed package is made invisible: importing it fails as if it were not installed, and
``importlib.util.find_spec`` returns None for it (optional imports, e.g. torch's of tabulate or
diffusers' availability checks, take their not-installed branch). So a rehearsal on this machine
(`benchmarks/device_run.sh --dry-run-cpu`) fails where the GPU run would, with the missing package's
name, instead of after the GPU minutes were spent. The names it hid are appended to --log.

The allowed set: the standard library; torch and the closure of its requirements for this platform
(what a torch installation brings: sympy, jinja2, triton, the nvidia libraries ...); the distributions
pinned in benchmarks/device_requirements.txt (the carried wheels, installed with --no-deps, so the list
is closed); pokediff and benchmarks.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import runpy
import sys
from collections.abc import Iterable
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("device_requirements.txt")
ALWAYS = {"pokediff", "benchmarks", "__editable___pokediff_finder"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_distributions(path: Path = REQUIREMENTS) -> list[str]:
    """Distribution names of ``name==version`` lines (comments and blanks skipped)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(_normalise(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]))
    return names


def requirement_closure(roots: Iterable[str]) -> set[str]:
    """The roots and, recursively, their requirements whose markers hold here (no extras)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [_normalise(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_normalise(req.name))
    return seen


def allowed_modules(distributions: set[str]) -> set[str]:
    """Top-level import names provided by ``distributions`` (installed here), plus the standard library."""
    allowed = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | ALWAYS
    for module, dists in metadata.packages_distributions().items():
        if any(_normalise(d) in distributions for d in dists):
            allowed.add(module)
    return allowed


class _Hiding:
    """Wraps one meta-path finder: finds nothing for a hidden top-level name."""

    def __init__(self, finder, allowed: set[str], hidden: set[str]):
        self.finder, self.allowed, self.hidden = finder, allowed, hidden

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in self.allowed and not top.startswith("_sysconfigdata_"):  # stdlib, named per platform
            self.hidden.add(top)
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attr)


def install(allowed: set[str]) -> set[str]:
    """Hide everything else from now on; returns the (growing) set of names it hid."""
    hidden: set[str] = set()
    sys.meta_path[:] = [_Hiding(f, allowed, hidden) for f in sys.meta_path]
    return hidden


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.import_guard", description=__doc__.split("\n")[0])
    p.add_argument("--log", help="append the hidden top-level names here, one line per process")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("-m", dest="module", help="module to run as __main__")
    what.add_argument("-c", dest="code", help="code to run")
    args, rest = p.parse_known_args(argv)
    allowed = allowed_modules(requirement_closure(["torch"]) | set(pinned_distributions()))
    hidden = install(allowed)
    sys.argv = [args.module or "-c", *rest]
    try:
        if args.module:
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            exec(compile(args.code, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - as python -c
    finally:
        if args.log and hidden:
            with open(args.log, "a") as f:
                f.write(f"{args.module or '-c'} {' '.join(rest[:1])}: {' '.join(sorted(hidden))}\n")


if __name__ == "__main__":
    main()
