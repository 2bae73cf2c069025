"""`dvc plots show` draws the loss and FID curves offline: with the project's .dvc/config, the page
loads vega from the project (.cache/vega/, see pipelines/plot_assets.py), never from a CDN.
(DVC's own page loads vega from a CDN: offline, headless Chromium shows it blank.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dvc_plots_page_loads_vega_from_the_project(tmp_path):
    sys.path.insert(0, str(REPO))
    from pipelines import plot_assets

    if plot_assets.missing():
        pytest.skip("no vega in .cache/vega (`python -m pipelines.plot_assets` needs npm once)")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    shutil.copytree(REPO / "pipelines" / "plots", tmp_path / "pipelines" / "plots")
    (tmp_path / ".cache").symlink_to(REPO / ".cache")
    (tmp_path / "train_log.csv").write_text("step,loss\n10,0.5\n20,0.3\n30,0.2\n")
    (tmp_path / "dvc.yaml").write_text("plots:\n  - train_log.csv:\n      x: step\n      y: loss\n")
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show"], cwd=tmp_path, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    page = tmp_path / "dvc_plots" / "index.html"
    html = page.read_text()
    sources = re.findall(r'<script[^>]*src="([^"]+)"', html)
    assert len(sources) == 3 and not any("//" in s for s in sources), sources
    for src in sources:
        assert (page.parent / src).resolve().is_file(), src
    assert "vegaEmbed('#" in html and '"loss"' in html  # the curve's spec and data are in the page
