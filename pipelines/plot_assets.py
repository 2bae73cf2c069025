"""Put vega, vega-lite and vega-embed into .cache/vega/ so `dvc plots show` draws curves offline.

    python -m pipelines.plot_assets        # `make install` runs it; needs npm once, then nothing

DVC's HTML page loads these three scripts from a CDN; without network the loss and FID curves are
blank. .dvc/config points DVC at pipelines/plots/offline.html, which loads them from .cache/vega/.
The tarballs come from the npm registry through `npm pack` and are checked against pinned sha256s.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / ".cache" / "vega"
# package spec -> (sha256 of the npm tarball, file inside it, name in DEST)
PACKAGES = {
    "vega@5.33.1": ("1b8504b6731c5311be3269c4d84ca996a5cc293bc772283293ede20c490e16c3",
                    "package/build/vega.min.js", "vega.min.js"),
    "vega-lite@5.23.0": ("e4cbfdd8f6f1abe381c59cd558fd6a559c12b1496bfdf2e0c3295263a40fe4da",
                         "package/build/vega-lite.min.js", "vega-lite.min.js"),
    "vega-embed@6.29.0": ("ecf1ee709c2bac9e0a4ead6908114b05b62c71493e10a8a4308109bb070f8eb1",
                          "package/build/vega-embed.min.js", "vega-embed.min.js"),
}
MAX_TARBALL_BYTES = 50 * 2**20
MAX_MEMBER_BYTES = 5 * 2**20


def missing(dest: Path = DEST) -> list[str]:
    return [spec for spec, (_, _, name) in PACKAGES.items() if not (dest / name).is_file()]


def fetch(dest: Path = DEST, force: bool = False) -> list[str]:
    """npm pack each missing package, check its sha256, extract the one script. Returns what it did."""
    todo = list(PACKAGES) if force else missing(dest)
    if not todo:
        return []
    if shutil.which("npm") is None:
        raise RuntimeError("npm not found: install Node.js/npm, or copy the three vega scripts into .cache/vega/")
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in todo:
            sha, member, name = PACKAGES[spec]
            out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"npm pack {spec} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
            tarball = Path(tmp) / out.stdout.strip().splitlines()[-1]
            if tarball.stat().st_size > MAX_TARBALL_BYTES:
                raise RuntimeError(f"{spec}: tarball larger than {MAX_TARBALL_BYTES} bytes")
            data = tarball.read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                raise RuntimeError(f"{spec}: sha256 differs from the pin in pipelines/plot_assets.py")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                info = tar.getmember(member)
                if not info.isfile() or info.size > MAX_MEMBER_BYTES:
                    raise RuntimeError(f"{spec}: {member} is not a small regular file")
                (dest / name).write_bytes(tar.extractfile(info).read())
            done.append(f"{spec} -> {dest / name}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.plot_assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="fetch again even if present")
    args = parser.parse_args(argv)
    try:
        done = fetch(force=args.force)
    except RuntimeError as exc:
        print(f"plot_assets: {exc}", file=sys.stderr)
        return 1
    print("\n".join(done) if done else f"plot_assets: {DEST} has vega, vega-lite and vega-embed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
