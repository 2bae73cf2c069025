"""Data Docs readable offline: data_docs/results.html lists every expectation without scripts or CDNs."""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path


def test_static_results_page_lists_every_expectation_offline(mini_sprites: Path, tmp_path: Path, pokediff_cli,
                                                             capsys) -> None:
    dataset, out = tmp_path / "dataset", tmp_path / "validation"
    assert pokediff_cli("ingest", "--quiet", "--source", str(mini_sprites), "--out-dir", str(dataset),
                        "-S", "data.num_workers=1", "-S", "data.max_quarantine_fraction=1.0") == 0
    # min_images far above the mini dataset: one failed table-level expectation to show.
    code = pokediff_cli("validate", "--dataset-dir", str(dataset), "--out-dir", str(out),
                        "-S", "validate.min_images=1000", "-S", "validate.min_per_variant=1",
                        "-S", "validate.min_per_type=0")
    assert code == 1
    assert "data_docs/results.html" in capsys.readouterr().err

    page = (out / "data_docs" / "results.html").read_text()
    result = json.loads((out / "validation_result.json").read_text())
    assert "Dataset validation <span style='color:#cf222e'>FAILED</span>" in page
    for expectation in result["expectations"]:
        assert escape(expectation["description"]) in page
    assert page.count("&#10007;") == result["n_failed"] == 1
    # Nothing loads from the network: no scripts, no external stylesheets or links.
    assert "<script" not in page and not re.search(r"(src|href)=['\"]https?:", page)
    links = re.findall(r"href='([^']+)'", page)
    assert links and all((out / "data_docs" / link).is_file() for link in links)  # GX's validation pages
