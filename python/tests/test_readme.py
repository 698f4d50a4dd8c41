"""The README cannot rot: its Python examples run here (CPU), its Rust example is a doctest of
the core crate (lib.rs includes README.md), every other code block says why it is not run, and
every file, extra and package it names exists."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- readme-test: (run|not run) \((.+?)\) -->|<!-- readme-test: (run) -->")


def code_blocks(path: Path) -> list[tuple[str, str, str | None, int]]:
    """``(language, code, marker, line)`` of every fenced block; ``marker`` is the
    ``readme-test`` comment on the line before the fence, if any."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, start = lines[i][3:].strip(), i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = lines[i - 1] if i > 0 else ""
            blocks.append((lang, "\n".join(lines[i + 1 : end]), before if "readme-test" in before else None, start + 1))
            i = end + 1
        else:
            i += 1
    return blocks


BLOCKS = code_blocks(README)
PYTHON = [(code, line) for lang, code, marker, line in BLOCKS if lang == "python" and marker and ": run" in marker]


def test_every_block_is_run_or_says_why_not():
    assert BLOCKS, "the README has code blocks"
    for lang, _, marker, line in BLOCKS:
        assert marker is not None, f"README.md:{line}: a ```{lang} block without a readme-test comment"
        m = MARKER.search(marker)
        assert m, f"README.md:{line}: malformed marker {marker!r}"
        if m.group(1) == "not run":
            assert len(m.group(2)) > 10, f"README.md:{line}: say why the block is not run"
        else:
            assert lang in ("python", "rust"), f"README.md:{line}: only python and rust blocks are run"


def test_the_first_screen_has_what_a_new_user_needs():
    text = README.read_text()
    first = text[: text.index("## Using it from Python")]
    for needed in (
        "cargo run --release -p warp-bitnet-cli -- bench",
        "bash scripts/test.sh",
        "pip install .",
        "pip install '.[hf]'",
        "Python 3.11",
        "Rust 1.85",
        "virtual environment",
        "docs/RESULTS.md",
        "minutes",
    ):
        assert needed in first, needed
    example = next(code for code, line in PYTHON)
    assert 6 <= len(example.splitlines()) <= 10, "the first example has 6-10 lines"


@pytest.mark.parametrize("code, line", PYTHON, ids=[f"line{line}" for _, line in PYTHON])
def test_python_block_runs(code, line, tmp_path):
    # A fresh interpreter in an empty folder, as a user pasting the block would run it.
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code + "\n")
    done = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stderr}"


def named_paths(path: Path) -> set[str]:
    """Repository paths a document names in backticks or links."""
    text = path.read_text()
    found = set(re.findall(r"[`(\s]((?:bench|docs|scripts|examples|crates|python)/[\w./-]+?)[`)\s]", text))
    return {p.rstrip(".") for p in found if "*" not in p}


@pytest.mark.parametrize("doc", ["README.md", "docs/RESULTS.md"])
def test_every_named_path_exists(doc):
    base = ROOT / doc
    missing = [p for p in sorted(named_paths(base)) if not (ROOT / p).exists() and not (base.parent / p).exists()]
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_named_packages_and_extras_exist():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "hf" in pyproject["project"]["optional-dependencies"]
    cli = tomllib.loads((ROOT / "crates/warp-bitnet-cli/Cargo.toml").read_text())
    assert cli["package"]["name"] == "warp-bitnet-cli"
    assert (ROOT / "scripts/test.sh").is_file()
    assert '#[doc = include_str!("../../../README.md")]' in (ROOT / "crates/warp-bitnet/src/lib.rs").read_text()
