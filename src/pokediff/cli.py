"""`pokediff` console script: one subcommand per pipeline stage.

Each subcommand lives in ``pokediff.stages.<module>`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand runs, so ``pokediff --help``
stays fast and a heavy dependency (mlflow, great_expectations) is loaded only where it is used.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pokediff import env
from pokediff.config import ConfigError
from pokediff.errors import PokediffError

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
    """--params and -S, shared by every subcommand that reads params.yaml."""
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a params value, e.g. -S train.steps=200 (repeatable; YAML values)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pokediff",
        description="Denoising diffusion models for Pokémon sprites: data, training, sampling, scoring.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # The module adds its own arguments lazily below (see main) to keep --help cheap;
        # argparse needs them now only for the chosen subcommand.
    return parser


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
    env.tune_cpu_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the subcommand without failing on its own options.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    name = argv[0]
    module = importlib.import_module(f"pokediff.stages.{COMMANDS[name][0]}")
    sub = argparse.ArgumentParser(prog=f"pokediff {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except ConfigError as exc:
        print(f"pokediff {name}: {exc}", file=sys.stderr)
        return 2
    except PokediffError as exc:  # one line, no traceback (e.g. an MLflow store that does not answer)
        print(f"pokediff {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pokediff {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
