"""The one markdown-table writer: ``md_table`` renders the tables of every report (``tinylm.analysis``'s REPORT.md,
``tinylm.ablation``'s before/after table, the sweep scripts' summaries) as GitHub-flavoured markdown, without a
tabulate dependency. Standard library only, so any layer can use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any


def fmt_cell(v: Any, digits: int = 4) -> str:
    """A table cell: floats (numpy's too) to ``digits`` significant digits, NaN as ``n/a``, None as empty."""
    if v is None:
        return ""
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        return "n/a" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def md_table(rows: Sequence[Sequence[Any]], header: Sequence[str], right: Collection[int] = ()) -> str:
    """A GitHub-flavoured markdown table (no trailing newline); cells go through ``fmt_cell``, a '|' in a cell is
    escaped and a newline becomes a space. ``right``: the indices of the columns aligned right (numbers)."""
    def cell(v: Any) -> str:
        return fmt_cell(v).replace("|", "\\|").replace("\n", " ")

    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
