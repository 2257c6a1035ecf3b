"""The registry of tools/claims.py still matches the text of README.md and docs/*.md.

Nothing is run here: `python tools/claims.py` re-runs the commands and is slow. This test only
checks that every registered claim's text is still in its document, exactly once, with the
number it quotes, so that a number edited or removed in the text fails here until the
registry follows it.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "claims.py"


def load_claims():
    spec = importlib.util.spec_from_file_location("claims", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["claims"]
    return module


def test_list_runs_nothing_and_finds_every_snippet():
    done = subprocess.run([sys.executable, str(SCRIPT), "--list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "REGISTRY" not in done.stdout
    assert " claims, " in done.stdout


def test_every_snippet_is_in_its_document_once_with_its_numbers():
    claims = load_claims()
    assert claims.CLAIMS
    assert claims.check_registry(claims.CLAIMS) == []
    for claim in claims.CLAIMS:
        text = (ROOT / claim.doc).read_text(encoding="utf-8")
        assert text.count(claim.snippet) == 1, (claim.name, claim.snippet)


def test_the_registry_check_catches_a_removed_claim():
    claims = load_claims()
    gone = claims.Claim("example/gone", "README.md", "a sentence the README never had: 1.234",
                        "1.234", ("exact",), run="quickstart", read=r"([0-9.]+)")
    wrong = claims.Claim("example/wrong-number", "README.md", claims.CLAIMS[0].snippet, "9.99",
                         ("exact",), run="train", read=r"([0-9.]+)")
    problems = claims.check_registry([gone, wrong])
    assert any(p.startswith("example/gone: snippet found 0 times") for p in problems)
    assert any(p.startswith("example/wrong-number: quoted [9.99] not in its snippet")
               for p in problems)


def test_judging_rounds_to_the_quoted_digit():
    claims = load_claims()

    def claim(quoted, tol):
        return claims.Claim("x", "README.md", "", quoted, tol, run="train")

    assert claims.judge(claim("4.4", ("exact",)), [4.36])[1]
    assert not claims.judge(claim("4.4", ("exact",)), [4.46])[1]
    assert claims.judge(claim("0.58–0.70", ("exact",)), [0.578, 0.701])[1]
    assert claims.judge(claim("2.17", ("rel", 0.02)), [2.2])[1]
    assert not claims.judge(claim("2.17", ("rel", 0.02)), [2.3])[1]
    assert claims.judge(claim("21–23", ("info", 0.25)), [22.0])[1]
    assert claims.judge(claim("0.01", ("below",)), [0.004])[1]
    assert not claims.judge(claim("0.01", ("below",)), [0.02])[1]
