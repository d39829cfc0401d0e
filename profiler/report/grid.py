"""Lay out a table of cells as aligned text or as Markdown: the one place that knows layout."""
from __future__ import annotations

from typing import Sequence


def text(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "─" * len(line(["x" * w for w in widths]))
    return "\n".join([line(headers), rule, *(line(r) for r in rows), rule])


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")
    head = "| " + " | ".join(esc(h) for h in headers) + " |"
    align = "|" + "|".join("---:" if r else ":---" for r in right) + "|"
    body = ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join([head, align, *body])
