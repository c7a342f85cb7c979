"""The documentation: a README a newcomer can read, and a docs/ site that builds without a broken link.

`mkdocs build --strict` (mkdocs.yml's `validation` turns anchors, unrecognised links and pages
missing from the nav into warnings, which --strict makes errors) fails on a link to a page or file
that does not exist, an anchor no heading makes, or a page outside the nav. The README is not part
of the site, so its own links are checked here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


def test_the_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, (
        f"mkdocs build --strict failed (pip install -e '.[test]' brings mkdocs):\n{run.stderr[-4000:]}"
    )
    assert (site / "index.html").is_file()
    # the measured figures are linked into the site from where they live, not copied into docs/
    assert (site / "repo" / "benchmarks" / "index.html").is_file()
    assert (site / "repo" / "reports" / "fidelity" / "index.html").is_file()


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_relative_link_in_the_readme_exists():
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert "docs/getting-started.md" in local  # found the links, not nothing
    missing = sorted(t for t in local if not (REPO / t).exists())
    assert not missing, f"README.md links to {missing}"
