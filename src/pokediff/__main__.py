"""`python -m pokediff ...` (also what `torchrun -m pokediff train ...` runs)."""

from pokediff.cli import main

raise SystemExit(main())
