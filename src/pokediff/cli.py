"""`pokediff` console script: one subcommand per pipeline stage.

Each subcommand lives in ``pokediff.stages.<module>`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand runs, so ``pokediff --help``
stays fast and a heavy dependency (mlflow, great_expectations) is loaded only where it is used.

Error boundary: a ``PokediffError`` (bad params, a missing file, a locked out-dir, a machine too small)
or a file-system failure (missing/unreadable file, full disk) is printed as ONE line on stderr,
``pokediff <command>: <message>``, and the exit code is the error's (1, or 2 for usage errors).
``pokediff --debug <command> ...`` (or POKEDIFF_DEBUG=1) prints the traceback as well. Any other
exception is a bug and keeps its traceback.

Stop signals: SIGTERM and SIGINT stop every command cleanly (pokediff.stopping): one line saying what
was kept, exit code 128 + signum (143 / 130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from pokediff import env, stopping
from pokediff.errors import PokediffError, describe_os_error, one_line
from pokediff.team import settings as team_settings

# subcommand -> (module under pokediff.stages, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-data": ("fetch_data", "download the pinned Pokémon sprite source into data/"),
    "ingest": ("ingest", "turn the raw source into a clean square RGB dataset + manifest"),
    "validate": ("validate", "check the ingested dataset with a Great Expectations suite"),
    "train": ("train", "train the U-Net noise predictor (resumable)"),
    "sample": ("sample", "generate images from a checkpoint or a registered model"),
    "ref-stats": ("ref_stats", "Inception reference statistics of the training images (for FID)"),
    "score": ("score", "FID / KID / memorisation of generated samples"),
    "fid": ("fid", "FID and KID between any two image folders"),
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--params, --overlay and -S, shared by every subcommand that reads params.yaml."""
    parser.add_argument(
        "--params", default=None, metavar="FILE",
        help="params file (default: ./params.yaml when it exists, else the built-in defaults); "
             "'none' = the built-in defaults; a FILE that does not exist is an error",
    )
    parser.add_argument(
        "--overlay", dest="overlays", action="append", default=[], metavar="FILE",
        help="a partial params file applied over --params, before -S (repeatable), "
             "e.g. --overlay configs/cpu-small.yaml",
    )
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a params value, e.g. -S train.steps=200 (repeatable; YAML values)",
    )


def add_inception_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --device and --quiet of the two Inception stages (ref-stats, score)."""
    parser.add_argument("--batch-size", type=int, help="Inception batch size (score.batch_size)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (score.device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (``pokediff train: argument --steps: ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {one_line(message)} (see `{self.prog} --help`)\n")


def _resolve_params(args: argparse.Namespace) -> None:
    """No --params: ./params.yaml when it exists, else the built-in defaults ("none"); an explicit
    --params FILE must exist (load_params checks). --overlay FILE...: their keys go before the -S
    overrides (so -S wins; a later overlay wins over an earlier one)."""
    if hasattr(args, "params") and args.params is None:
        from pokediff.config import DEFAULTS  # pydantic (0.2 s): loaded for a command, not for --help

        args.params = "params.yaml" if os.path.exists("params.yaml") else DEFAULTS
    overlays = getattr(args, "overlays", None)
    if overlays:
        from pokediff.config import overlay_overrides  # as above

        args.overrides = [o for path in overlays for o in overlay_overrides(path)] + list(args.overrides)


def _user_error(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an error the user can fix; None for a bug."""
    if isinstance(exc, PokediffError):
        return one_line(str(exc)), exc.exit_code
    described = describe_os_error(exc)
    if described is not None:
        return one_line(described), 1
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="pokediff",
        description="Denoising diffusion models for Pokémon sprites: data, training, sampling, scoring.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error too (also: POKEDIFF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # The module adds its own arguments lazily below (see main) to keep --help cheap;
        # argparse needs them now only for the chosen subcommand.
    return parser


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
    env.set_cpu_thread_defaults()  # before any stage imports torch
    env.tune_cpu_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("POKEDIFF_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":  # global option, before the subcommand
        debug = True
        argv.pop(0)
    parser = build_parser()
    # First pass: find the subcommand without failing on its own options.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    name = argv[0]
    module = importlib.import_module(f"pokediff.stages.{COMMANDS[name][0]}")
    sub = _OneLineParser(prog=f"pokediff {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        team_settings.load()  # this machine's MLflow server and logins, if it has any (team.env)
        with stopping.handle_stop_signals():
            _resolve_params(args)
            return int(module.run(args) or 0)
    except stopping.Stopped as stop:
        if stop.message:
            print(f"pokediff {name}: {one_line(stop.message)}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"pokediff {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary
        reported = _user_error(exc)
        if reported is None:
            raise  # a bug: keep the traceback
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        message, code = reported
        print(f"pokediff {name}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
