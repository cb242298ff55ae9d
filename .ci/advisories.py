"""What can be audited where only PyPI's project pages answer: PyPI's project JSON lists the known advisories
(the OSV data pip-audit reads) of a project's *latest* release, so every installed package that is at its latest
release is audited for real; one pinned below it is listed as not audited here, never as clean.

Usage: python .ci/advisories.py [SITE_PACKAGES]   (default: .venv's). Exit 1 on any advisory, else 0."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import Distribution, distributions
from pathlib import Path


def latest(name: str) -> tuple[str, list[str]]:
    """The project's latest version and the ids of the advisories PyPI lists for it."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as answer:
        page = json.load(answer)
    return page["info"]["version"], [v["id"] for v in page.get("vulnerabilities") or []]


def audit(dist: Distribution) -> tuple[str, str, str]:
    name, version = dist.metadata["Name"], dist.version
    try:
        newest, advisories = latest(name)
    except urllib.error.HTTPError as e:
        return name, version, f"not on PyPI ({e.code})"
    if version.split("+")[0] != newest:
        return name, version, f"not audited here: latest is {newest}"
    return name, version, "ADVISORIES " + ", ".join(advisories) if advisories else "clean"


def main() -> int:
    default = next(Path(".venv/lib").glob("python3*/site-packages"), None)
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if site is None or not site.is_dir():
        print("no site-packages: run .ci/run first, or pass the path", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(16) as pool:
        rows = sorted(pool.map(audit, distributions(path=[str(site)])), key=lambda row: row[0].lower())
    for name, version, verdict in rows:
        print(f"{name:32} {version:16} {verdict}")
    counts = {
        kind: sum(verdict.startswith(kind) for *_, verdict in rows)
        for kind in ("clean", "ADVISORIES", "not audited", "not on PyPI")
    }
    print(", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return 1 if counts["ADVISORIES"] else 0


if __name__ == "__main__":
    sys.exit(main())
