"""Assemble BENCHMARKS.md from the tables each benchmark wrote to benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
ORDER = ("validate", "train", "gate", "compress", "serving", "fuzz", "monitoring", "make_run")
HEADER = """# Benchmarks

Run with `make bench`. Every figure is a ratio against a baseline measured in the same run, on
the machine named in each section; none of these are asserted in the test suite.
"""


def _nest(text: str) -> str:
    """Make each section's top heading a level-2 heading under the page title."""
    lines = text.splitlines()
    top = min((len(x) - len(x.lstrip("#")) for x in lines if x.startswith("#")), default=2)
    shift = 2 - top
    if shift <= 0:
        return text
    return "\n".join("#" * shift + x if x.startswith("#") else x for x in lines)


def main() -> None:
    results = HERE / "results"
    found = sorted(
        results.glob("*.md"),
        key=lambda p: (p.stem not in ORDER, ORDER.index(p.stem) if p.stem in ORDER else 0, p.stem),
    )
    sections = [_nest(p.read_text().strip()) for p in found]
    out = HERE.parent / "BENCHMARKS.md"
    out.write_text(HEADER + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {out} from {len(sections)} result file(s)")


if __name__ == "__main__":
    main()
