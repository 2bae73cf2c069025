"""Where the image modules sit: what each layer may load, checked in a fresh interpreter."""

import json
import subprocess
import sys

import pytest


def _loaded_after(*modules: str) -> set[str]:
    code = (f"import json, sys\nfor name in {list(modules)!r}:\n    __import__(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    ("imported", "forbidden"),
    [
        # ingest's spawned workers decode, encode PNGs and hash pixels: torch would cost every worker seconds
        (("pokediff.data.ingest_workers", "pokediff.pixels"), {"torch"}),
        # writing sample PNGs and grids needs no decoder of untrusted files
        (("pokediff.pixels",), {"pokediff.data", "pokediff.data.raster", "pokediff.data.svg", "pokediff.data.decode"}),
        # scoring reads folders and runs Inception: nothing of the model, the samplers or training
        (("pokediff.evaluation", "pokediff.data.image_folder"),
         {"pokediff.models", "pokediff.diffusion", "pokediff.training"}),
    ],
    ids=["ingest-workers", "sample-files", "evaluation"],
)
def test_image_modules_load_only_their_layer(imported, forbidden):
    loaded = _loaded_after(*imported)
    assert imported[0] in loaded  # the probe really imported something
    assert not forbidden & loaded, f"importing {imported} loads {sorted(forbidden & loaded)}"
