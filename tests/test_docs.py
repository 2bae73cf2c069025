"""The README and docs/ promise commands: run the cheap ones, check every other one against the code.

Every fenced block of shell or Python in README.md and docs/*.md carries a tag after its language:

    ```bash run                 run it with bash -e in a copy of the project: it must exit 0
    ```console run              "$ command" lines, each followed by the exact output it must print
    ```python run               run it (a file's `python run` blocks in order, in one interpreter)
    ```bash skip: <reason>      not run (too slow, needs a GPU, a server, a trained model...);
                                pytest lists it as skipped with the reason

Blocks in other languages (``text``: pictures) are not commands. Run or skipped, every command in a
block and in an inline code span is checked without running it:

- `pokediff <command> ...` parses with that subcommand's own parser; its -S and --overlay values
  validate against params.yaml;
- `dvc`, `prefect`, `mlflow`, `torchrun` and `python -m <module>` commands parse with the real parsers
  of the pinned versions (inline spans, which may leave out required arguments, are checked for their
  subcommand and option names only);
- `make <target>` names a Makefile target;
- every relative link resolves, and every path into the project exists (paths under outputs/ must be
  outputs of dvc.yaml's stages or listed in GENERATED below).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
CODE_LANGS = SHELL_LANGS | {"python"}
TOOLS = ("pokediff", "dvc", "prefect", "mlflow", "torchrun", "python", "make")
# Written by a run, not by a DVC stage: (path prefix, what writes it).
GENERATED = {
    "outputs/sweep": "pipelines/sweep.py (the sweep's plot and table)",
    "outputs/champion": "pipelines/flows.py sample_from_champion",
    "outputs/dataset/.ingest-rejected": "ingest, for a dataset it judged unusable",
}
# Made by installing, fetching or running; not in a fresh checkout, so not checked for existence.
UNCHECKED_ROOTS = {".venv", "mlruns", "data", ".prefect", ".cache", "dvc_plots", ".dvc/tmp", ".dvc/config.local",
                   ".team", "team.env", ".device"}  # made at run time or by the user (git-ignored)
RUN_TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------------
# Reading the documents
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    file: str  # relative to ROOT
    line: int  # of the opening fence
    lang: str
    tag: str  # "run", "skip: reason", or "" (untagged)
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        return self.tag.removeprefix("skip:").strip() if self.tag.startswith("skip:") else None


_FENCE = re.compile(r"^```(.*)$")


def parse_markdown(text: str, name: str) -> tuple[list[Block], str]:
    """(fenced blocks, the prose outside them)."""
    blocks, prose, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        lang, _, tag = opening.group(1).strip().partition(" ")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        blocks.append(Block(name, i + 1, lang, tag.strip(), "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return blocks, "\n".join(prose)


def load_docs() -> list[tuple[str, list[Block], str]]:
    out = []
    for path in DOC_FILES:
        blocks, prose = parse_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        out.append((str(path.relative_to(ROOT)), blocks, prose))
    return out


_OPERATORS = {";", "&&", "||", "|", "&", ";;"}
_KEYWORDS = {"do", "then", "else", "done", "fi", "time", "!"}


def shell_commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block as argv lists (comments, operators, loops and leading
    VAR=value assignments removed). In a console block only the "$ " lines are commands."""
    if block.lang == "console":
        lines = [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
    else:
        lines = block.text.replace("\\\n", " ").splitlines()
    return [cmd for line in lines for cmd in split_commands(line)]


def split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in _OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and (argv[0] in _KEYWORDS or re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0])):
            argv = argv[1:]
        if argv and argv[0] == "for":  # `for x in a b c`: the loop header, not a command
            continue
        if argv:
            out.append(argv)
    return out


def inline_spans(prose: str) -> list[str]:
    return [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]


# ----------------------------------------------------------------------------------------------
# Checking a command without running it
# ----------------------------------------------------------------------------------------------
class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


@contextlib.contextmanager
def stop_after_parse():
    """While active, an argparse parse that succeeds raises _Parsed instead of returning, so calling a
    module's main(argv) checks its arguments with its own parser and runs nothing else."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _quiet_parse(parse):
    """Run an argparse-style parse; return (result, None) or (None, its error text)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse(), None
    except _Parsed as parsed:
        return parsed.namespace, None
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            return argparse.Namespace(), None
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    except Exception as exc:  # DvcParserError and friends
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else repr(exc)


def _argparse_leaf(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """Descend subparsers along argv's leading positional words; the leaf parser and the tokens left."""
    argv = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        words = [t for t in argv if not t.startswith("-")]
        if not subs or not words or words[0] not in subs[0].choices:
            return parser, argv
        argv.remove(words[0])
        parser = subs[0].choices[words[0]]


def _unknown_options(known: set[str], argv: list[str]) -> list[str]:
    return [t.split("=")[0] for t in argv if t.startswith("-") and t != "-" and t.split("=")[0] not in known]


class Checker:
    """Check commands against the real parsers; collect problems as one line each."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self.validate_params = True  # off for console blocks: they show a bad value on purpose
        self.problems: list[str] = []
        self.checked = 0
        self.makefile_targets = set(re.findall(r"^([\w.-]+)\s*:(?!=)", (root / "Makefile").read_text(), re.M))
        dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
        self.dvc_outs = set()
        for stage in dvc_yaml["stages"].values():
            for kind in ("outs", "metrics", "plots"):
                for entry in stage.get(kind, []):
                    self.dvc_outs.add(next(iter(entry)) if isinstance(entry, dict) else entry)

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    # -- per tool --------------------------------------------------------------------------------
    def check(self, argv: list[str], where: str, full: bool) -> None:
        """full: a command in a block (must parse completely); else an inline span (names only)."""
        tool = argv[0]
        if tool == "python" and argv[1:2] == ["-m"] and len(argv) > 2:
            self.checked += 1
            return self.python_module(argv[2], argv[3:], where, full)
        checker = {"pokediff": self.pokediff, "dvc": self.dvc, "make": self.make, "mlflow": self.mlflow,
                   "prefect": self.prefect, "torchrun": self.torchrun}.get(tool)
        if checker is not None:
            self.checked += 1
            checker(argv[1:], where, full)

    def pokediff(self, argv: list[str], where: str, full: bool) -> None:
        from pokediff import cli

        while argv[:1] == ["--debug"]:
            argv = argv[1:]
        if not argv or argv[0] in ("-h", "--help"):
            return
        name, rest = argv[0], argv[1:]
        if name not in cli.COMMANDS:
            return self.fail(where, f"`pokediff {name}`: no such subcommand (pokediff has {', '.join(cli.COMMANDS)})")
        module = importlib.import_module(f"pokediff.stages.{cli.COMMANDS[name][0]}")
        parser = argparse.ArgumentParser(prog=f"pokediff {name}")
        module.add_arguments(parser)
        if not full:  # an inline span may leave out required arguments: check the names only
            for option in _unknown_options(set(parser._option_string_actions), rest):
                self.fail(where, f"`pokediff {name}` has no option {option}")
            def values_of(*flags: str) -> list[str]:
                return [v for i, v in enumerate(rest) if i and rest[i - 1] in flags]

            return self.params(values_of("--overlay"), values_of("-S", "--set"), where)
        args, error = _quiet_parse(lambda: parser.parse_args(rest))
        if error:
            return self.fail(where, f"`pokediff {shlex.join(argv)}`: {error}")
        self.params(getattr(args, "overlays", []), getattr(args, "overrides", []), where)

    def params(self, overlays: list[str], overrides: list[str], where: str) -> None:
        """-S values (and --overlay files) must be valid on top of params.yaml; a shell variable
        ($s) or a placeholder (<key>) in a value is checked by its key only."""
        from pokediff.config import ConfigError, Params, flatten, load_params, overlay_overrides

        if not self.validate_params:
            return
        keys = set(flatten(Params().model_dump()))
        concrete = []
        for override in overrides:
            key, _, value = override.partition("=")
            if "$" in value or "<" in value:
                if key not in keys and not any(k.startswith(key + ".") for k in keys):
                    self.fail(where, f"-S {override}: no params key {key}")
            else:
                concrete.append(override)
        try:
            files = [o for path in overlays for o in overlay_overrides(self.root / path)]
            load_params(self.root / "params.yaml", files + concrete)
        except (ConfigError, OSError) as exc:
            self.fail(where, f"params: {str(exc).splitlines()[0]}")

    def dvc(self, argv: list[str], where: str, full: bool) -> None:
        from dvc.cli.parser import get_main_parser

        parser = get_main_parser()
        if full:
            # dvc logs its parse errors instead of printing them: keep the last one for the message
            logged: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: logged.append(record.getMessage())
            logging.getLogger("dvc").addHandler(handler)
            try:
                args, error = _quiet_parse(lambda: parser.parse_args(argv))
            finally:
                logging.getLogger("dvc").removeHandler(handler)
            error = error and (logged[-1] if logged else error)
            if error:
                return self.fail(where, f"`dvc {shlex.join(argv)}`: {error}")
            # dvc's -S is [<file>:]<key>=<value>
            sets = getattr(args, "set_param", None) or []
            overrides = [re.sub(r"^[\w./-]+\.(yaml|yml|json|toml|py):", "", o) for o in sets]
            self.params([], overrides, where)
        else:
            leaf, rest = _argparse_leaf(parser, argv)
            words = [t for t in rest if not t.startswith("-")]
            subs = [a for a in leaf._actions if isinstance(a, argparse._SubParsersAction)]
            if leaf is parser or (subs and words and words[0] not in subs[0].choices):
                return self.fail(where, f"`dvc {shlex.join(argv)}`: no such dvc command")
            for option in _unknown_options(set(leaf._option_string_actions), rest):
                self.fail(where, f"`dvc {shlex.join(argv)}`: no option {option}")

    def make(self, argv: list[str], where: str, full: bool) -> None:
        for target in (t for t in argv if not t.startswith("-") and "=" not in t):
            if target not in self.makefile_targets:
                self.fail(where, f"`make {target}`: no such target in the Makefile")

    def mlflow(self, argv: list[str], where: str, full: bool) -> None:
        import click
        from mlflow.cli import cli

        command, rest = cli, list(argv)
        while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
            sub = command.get_command(click.Context(command), rest[0])
            if sub is None:
                return self.fail(where, f"`mlflow {shlex.join(argv)}`: no command {rest[0]}")
            command, rest = sub, rest[1:]
        if full:
            try:
                command.make_context(command.name, rest)
            except click.ClickException as exc:
                self.fail(where, f"`mlflow {shlex.join(argv)}`: {exc.format_message()}")
        else:
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            for option in _unknown_options(known, rest):
                self.fail(where, f"`mlflow {shlex.join(argv)}`: no option {option}")

    def prefect(self, argv: list[str], where: str, full: bool) -> None:
        from prefect.cli._app import _app

        rest = list(argv)
        while rest and rest[0] in ("--no-prompt", "--prompt", "--profile"):
            rest = rest[2:] if rest[0] == "--profile" else rest[1:]
        if not rest:
            return
        try:
            _app.parse_args(rest, exit_on_error=False, print_error=False)
        except Exception as exc:  # cyclopts' errors: unknown command or option, missing argument
            if full or "Unknown" in type(exc).__name__:
                self.fail(where, f"`prefect {shlex.join(argv)}`: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return
        if rest[:2] == ["deployment", "run"] and len(rest) > 2 and rest[2] not in self.deployments():
            self.fail(where, f"`prefect {shlex.join(argv)}`: prefect.yaml deploys no {rest[2]} "
                             f"(it deploys {', '.join(sorted(self.deployments()))})")

    def deployments(self) -> set[str]:
        """'<flow name>/<deployment name>' of every deployment in prefect.yaml."""
        out = set()
        for deployment in yaml.safe_load((self.root / "prefect.yaml").read_text())["deployments"]:
            file, _, function = deployment["entrypoint"].partition(":")
            module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
            out.add(f"{getattr(module, function).name}/{deployment['name']}")
        return out

    def torchrun(self, argv: list[str], where: str, full: bool) -> None:
        from torch.distributed.run import get_args_parser

        args, error = _quiet_parse(lambda: get_args_parser().parse_args(argv))
        if error:
            return self.fail(where, f"`torchrun {shlex.join(argv)}`: {error}")
        if args.module and args.training_script == "pokediff":
            self.pokediff(args.training_script_args, where, full)

    def python_module(self, module_name: str, argv: list[str], where: str, full: bool) -> None:
        if importlib.util.find_spec(module_name) is None:
            return self.fail(where, f"`python -m {module_name}`: no such module")
        if module_name == "pokediff":
            return self.pokediff(argv, where, full)
        module = importlib.import_module(module_name)
        main = getattr(module, "main", None)
        if main is None:
            return
        with stop_after_parse():
            args, error = _quiet_parse(lambda: main(argv))
        if error:
            return self.fail(where, f"`python -m {module_name} {shlex.join(argv)}`: {error}")
        params_file = getattr(args, "params_file", None)  # the flows' and the sweep's params options
        self.params([params_file] if params_file else [], getattr(args, "overrides", None) or [], where)

    # -- paths and links -------------------------------------------------------------------------
    def path(self, token: str, where: str) -> None:
        token = token.rstrip(".,:;)")
        if token.startswith(("/", "http", "./")) or "://" in token or not re.fullmatch(r"[\w.*-]+(/[\w.*-]*)*", token):
            return
        first = token.split("/")[0]
        if any(token == r or token.startswith(r + "/") for r in UNCHECKED_ROOTS):
            return
        if first == "outputs":
            path = token.rstrip("/")
            made = any(out == path or out.startswith(path + "/") or path.startswith(out + "/")
                       for out in self.dvc_outs)
            if not made and not any(path == g or path.startswith(g + "/") for g in GENERATED):
                self.fail(where, f"{token}: not an output of any dvc.yaml stage (nor in GENERATED)")
            return
        top_level = "/" in token or (self.root / first).is_file()
        if not top_level or not (self.root / first).exists():
            return  # not a path into this project (a placeholder, a model URI, a file a user names)
        if not list(self.root.glob(token.rstrip("/"))):
            self.fail(where, f"{token}: no such file in the project")

    def link(self, target: str, doc: Path, where: str) -> None:
        target = target.split("#")[0]
        if not target or "://" in target or target.startswith("mailto:"):
            return
        if not (doc.parent / target).exists():
            self.fail(where, f"link {target}: no such file")


def check_docs(docs: list[tuple[str, list[Block], str]], root: Path = ROOT) -> Checker:
    checker = Checker(root)
    for name, blocks, prose in docs:
        for block in blocks:
            if block.lang in SHELL_LANGS:
                checker.validate_params = block.lang != "console"
                for argv in shell_commands(block):
                    checker.check(argv, block.where, full=True)
                    for token in argv[1:]:
                        checker.path(token.split("=")[-1], block.where)
                checker.validate_params = True
        for span in inline_spans(prose):
            try:
                argv = shlex.split(span)
            except ValueError:
                continue
            if argv and argv[0] in TOOLS:
                checker.check(argv, f"{name} `{span}`", full=False)
            for token in argv:
                checker.path(token.split("=")[-1], f"{name} `{span}`")
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            checker.link(target, root / name, name)
    return checker


# ----------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------
DOCS = load_docs()
ALL_BLOCKS = [block for _, blocks, _ in DOCS for block in blocks]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL_LANGS]
PYTHON_FILES = sorted({b.file for b in ALL_BLOCKS if b.lang == "python"})


def test_every_code_block_says_whether_it_runs():
    untagged = [f"{b.where} ```{b.lang} {b.tag}".rstrip() for b in ALL_BLOCKS
                if b.lang in CODE_LANGS and not (b.tag == "run" or b.skip_reason)]
    assert not untagged, f"tag these blocks `run` or `skip: <reason>`: {untagged}"
    unknown = [f"{b.where} ```{b.lang}" for b in ALL_BLOCKS if not b.lang]
    assert not unknown, f"name the language of these blocks (text for pictures): {unknown}"
    assert sum(b.tag == "run" for b in ALL_BLOCKS) >= 4, "the README's cheap commands are run"


def test_commands_paths_and_links_agree_with_the_code():
    t0 = time.perf_counter()
    checker = check_docs(DOCS)
    assert checker.checked >= 40, f"only {checker.checked} commands found: is the extraction broken?"
    assert not checker.problems, "\n".join(checker.problems)
    print(f"{checker.checked} commands checked in {time.perf_counter() - t0:.1f} s")


def test_the_checks_catch_what_goes_stale(tmp_path):
    """Each kind of mistake a rename or a deletion leaves in the docs is reported."""
    bad = """
```bash skip: never run
pokediff trane --steps 3
pokediff train --stepz 3
pokediff sample -S sample.sampler=euler
dvc exp run -S train.nosuchkey=1
dvc exp shwo
make pipline
python -m pipelines.flows --no-such-flag
python -m pipelines.nosuchmodule
torchrun --standalone -m pokediff train --bogus
prefect worker start --bogus
prefect deployment run 'pokediff-pipeline/nightly' --watch
mlflow models serve -m x --bogus
ls src/pokediff/nosuchfile.py outputs/nosuchstage/x.json
```
A span `pokediff fid --nosuch` and [a link](nosuch.md).
"""
    blocks, prose = parse_markdown(bad, "bad.md")
    problems = "\n".join(check_docs([("bad.md", blocks, prose)]).problems)
    for expected in ("pokediff trane`: no such subcommand", "--stepz", "sample.sampler", "train.nosuchkey",
                     "dvc exp shwo", "`make pipline`", "--no-such-flag", "pipelines.nosuchmodule`: no such module",
                     "pokediff train --bogus", "prefect worker start --bogus", "deploys no pokediff-pipeline/nightly",
                     "mlflow models serve", "nosuchfile.py", "outputs/nosuchstage/x.json",
                     "`pokediff fid` has no option --nosuch", "link nosuch.md"):
        assert expected in problems, f"not reported: {expected}\n{problems}"
    assert len(problems.splitlines()) == 16, problems


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    """The project's files (tracked and new, as git lists them) in a temporary folder, so running the
    blocks writes nothing into the checkout (e.g. Prefect's home, .prefect/)."""
    dest = tmp_path_factory.mktemp("project")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _env(project: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # pokediff, dvc, prefect of this interpreter's venv
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}", "POKEDIFF_DEBUG": "",
            # one intra-op thread: on a shared 2-core machine two threads wait on each other (3x slower)
            "OMP_NUM_THREADS": "1"}


def _run(args: list[str], project: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=project, env=_env(project), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, **kw)


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.where for b in SHELL_BLOCKS])
def test_shell_block(block: Block, project_copy: Path):
    if block.skip_reason:
        pytest.skip(f"{block.where}: {block.skip_reason}")
    if block.lang != "console":
        done = _run(["bash", "-e", "-o", "pipefail", "-c", block.text], project_copy)
        output = done.stdout[-2000:] + done.stderr[-2000:]
        assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{output}"
        return
    # console: "$ cmd" then its expected output; each command's combined output is compared exactly
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    marker = "@@pokediff-docs-step@@"
    script = "".join(f"{cmd} 2>&1; __rc=$?; echo {marker}; (exit $__rc)\n" for cmd, _ in steps)
    done = _run(["bash", "-c", script], project_copy)
    outputs = done.stdout.split(marker + "\n")
    assert len(outputs) == len(steps) + 1, f"{block.where}: the script stopped early:\n{done.stdout}{done.stderr}"
    for (cmd, expected), got in zip(steps, outputs, strict=False):
        assert got.rstrip("\n").splitlines() == expected, f"{block.where}: `{cmd}` printed:\n{got}"


@pytest.mark.parametrize("doc", PYTHON_FILES)
def test_python_blocks(doc: str, project_copy: Path):
    blocks = [b for b in ALL_BLOCKS if b.file == doc and b.lang == "python"]
    skipped = [f"{b.where}: {b.skip_reason}" for b in blocks if b.skip_reason]
    code = "".join(b.text for b in blocks if b.tag == "run")
    if not code:
        pytest.skip("; ".join(skipped))
    done = _run([sys.executable, "-c", code], project_copy)
    assert done.returncode == 0, f"{doc}'s python blocks failed:\n{done.stderr[-3000:]}"
    if skipped:
        print("skipped:", "; ".join(skipped))
