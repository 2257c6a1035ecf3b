"""The scripts under tools/ install what pyproject.toml declares.

tools/sanitize.sh installs rnnfast with ``--no-deps`` (pip must not rebuild the C++ core to
satisfy a dependency), so it names every runtime and build dependency itself. A dependency
added to pyproject.toml and not to that list breaks only the sanitizer run of CI, after its
long build; this test names the missing package at once instead.
"""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - tomllib is in the standard library from 3.11
    tomllib = pytest.importorskip("tomli")


def _name(requirement):
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_by(script):
    """Names after ``pip install`` in a shell script, continuation lines joined."""
    text = (ROOT / script).read_text().replace("\\\n", " ")
    names = set()
    for line in text.splitlines():
        if "pip install" not in line:
            continue
        for word in line.split("pip install", 1)[1].split():
            word = word.strip("\"'")
            if word.startswith("-") or word in (".", "") or word.startswith("$"):
                continue
            names.add(_name(word))
    return names


def test_sanitize_installs_every_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {_name(r) for r in project["project"]["dependencies"]}
    needed |= {_name(r) for r in project["build-system"]["requires"]}
    needed |= {_name(r) for r in project["project"]["optional-dependencies"]["test"]}
    missing = needed - _installed_by("tools/sanitize.sh")
    assert not missing, (
        f"tools/sanitize.sh installs rnnfast with --no-deps and does not install {sorted(missing)}, "
        "which pyproject.toml declares; add them to its pip install line")
