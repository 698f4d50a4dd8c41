"""docs/NOTES.md stays navigable: it opens with the current rules, every kernel version cited by
the code or the docs has its own heading, and bench/results/ holds results only (development
patches and scripts live in docs/experiments/, each one referenced)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTES = ROOT / "docs" / "NOTES.md"
# Files whose comments or text cite docs/NOTES.md.
CITING = [
    *ROOT.glob("crates/**/*.rs"),
    *ROOT.glob("crates/**/*.cu"),
    *ROOT.glob("crates/**/*.cuh"),
    *ROOT.glob("python/warp_bitnet/*.py"),
    *ROOT.glob("examples/*.py"),
    *ROOT.glob("bench/probes/*"),
    *ROOT.glob("bench/results/**/README.md"),
    ROOT / "README.md",
    ROOT / "docs" / "RESULTS.md",
]
RESULT_SUFFIXES = {".json", ".txt", ".md", ".log", ".csv", ".png", ".svg"}


def headings() -> list[str]:
    return [m.group(1) for m in re.finditer(r"^#+ (.+)$", NOTES.read_text(), re.MULTILINE)]


def versions(spec: str) -> list[str]:
    """``v16-v19`` -> v16..v19; other ``vN`` tokens as they are."""
    out = []
    for m in re.finditer(r"v(\d+)([a-z]?)(?:-v(\d+))?", spec):
        if m.group(3):
            out += [f"v{i}" for i in range(int(m.group(1)), int(m.group(3)) + 1)]
        else:
            out.append(f"v{m.group(1)}{m.group(2)}")
    return out


def citations() -> list[tuple[str, str]]:
    """``(file, cited name)`` for every ``NOTES.md`` citation: versions and quoted headings."""
    found = []
    for path in CITING:
        if not path.is_file() or path == NOTES:
            continue
        # Comment markers removed so that a citation broken over two lines reads whole.
        text = re.sub(r"\n\s*(//+|#|\*)?\s*", " ", path.read_text(errors="replace"))
        for m in re.finditer(r"NOTES\.md\b([^)]{0,80})", text):
            tail = m.group(1)
            tail = tail.split(".")[0] if not tail.lstrip(" ,").startswith('"') else tail
            quoted = re.findall(r'"([^"]+)"', tail)
            for q in quoted:
                found.append((str(path.relative_to(ROOT)), q))
            found += [(str(path.relative_to(ROOT)), v) for v in versions(re.sub(r'"[^"]*"', "", tail))]
    return found


def test_notes_open_with_the_current_rules():
    text = NOTES.read_text()
    first = headings()[:2]
    assert first[1].startswith("The current rules"), first
    rules = text[text.index("## The current rules") : text.index("## How these numbers were measured")]
    assert len(rules.splitlines()) <= 60, "one page"
    for pointer in ("plan_gemm", "plan_split", "plan_prefill", "kernel_family", "dense_path"):
        assert pointer in rules, pointer


def test_every_cited_version_has_its_own_heading():
    names = headings()
    cited = citations()
    assert len(cited) > 10, cited
    missing = []
    for where, name in cited:
        if name.startswith("v") and re.fullmatch(r"v\d+[a-z]?", name):
            ok = any(re.match(rf"{name}\b", h) for h in names)
        else:
            ok = any(name in h for h in names)
        if not ok:
            missing.append((where, name))
    assert not missing, f"citations with no heading in docs/NOTES.md: {missing}"


def test_every_version_in_the_notes_has_a_heading():
    names = headings()
    table = re.findall(r"^\| \**(v\d+|vM|vD10)\b", NOTES.read_text(), re.MULTILINE)
    for v in table:
        assert any(h.startswith(v + " ") for h in names), v
    numbered = {int(m) for h in names for m in re.findall(r"^v(\d+)\b", h)}
    assert not set(range(1, 31)) - numbered, sorted(set(range(1, 31)) - numbered)


def test_bench_results_hold_results_only():
    files = [p for p in (ROOT / "bench" / "results").rglob("*") if p.is_file()]
    assert files
    other = [str(p.relative_to(ROOT)) for p in files if p.suffix not in RESULT_SUFFIXES]
    assert not other, f"development files belong in docs/experiments/: {other}"


def test_every_experiment_is_referenced():
    docs = [*(ROOT / "bench" / "results").rglob("README.md"), NOTES]
    text = "\n".join(p.read_text() for p in docs)
    experiments = [p for p in (ROOT / "docs" / "experiments").rglob("*") if p.is_file() and p.name != "README.md"]
    assert experiments
    for p in experiments:
        rel = str(p.relative_to(ROOT))
        glob = f"{p.parent.relative_to(ROOT)}/*{p.suffix}"  # e.g. variants/*.diff
        assert rel in text or glob in text, f"{rel} is referenced by no README or docs/NOTES.md"
