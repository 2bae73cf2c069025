"""`pokediff convert-checkpoint --trust OLD NEW`: rewrite an old pickled checkpoint in the safe format.

    pokediff convert-checkpoint --trust runs/a/model.pt runs/a/model.safetensors      # model file
    pokediff convert-checkpoint --trust runs/a/checkpoints/last.pt runs/a/last-v2.pt   # resumable checkpoint

Files written before pokediff's safe formats (``pokediff-*-v1``) are pickles: loading one runs any
code it holds, so every other command refuses them. This command is the one explicit opt-in that
unpickles (``torch.load(weights_only=False)``), and only with ``--trust``. NEW ending in
``.safetensors`` becomes a model file (from a model file or a training checkpoint); any other name
becomes a training checkpoint that ``pokediff train --resume`` reads with ``weights_only=True``
(move it to <out_dir>/checkpoints/last.pt). NEW must not exist yet.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="the old pickled checkpoint or model file")
    parser.add_argument("new", metavar="NEW", help="where to write it (.safetensors: model file; else checkpoint)")
    parser.add_argument("--trust", action="store_true",
                        help="required: OLD is unpickled, which runs any code it holds; only for files you trust")


def run(args: argparse.Namespace) -> int:
    from pokediff.training.checkpoint import convert_legacy

    done = convert_legacy(args.old, args.new, trust=args.trust)
    print(f"pokediff convert-checkpoint: {args.old} -> {done['path']} ({done['format']}, step {done['step']})")
    return 0
