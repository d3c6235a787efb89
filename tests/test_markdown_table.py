"""tinylm.markdown_table: the one markdown-table writer of the reports, the ablation table and the sweep scripts."""

import numpy as np

from tinylm.markdown_table import fmt_cell, md_table


def test_cells_and_alignment():
    assert fmt_cell(None) == "" and fmt_cell(float("nan")) == "n/a" and fmt_cell(np.float32(0.123456)) == "0.1235"
    assert fmt_cell(12345) == "12345" and fmt_cell(True) == "True" and fmt_cell(2 / 3, 2) == "0.67"
    table = md_table([["a|b", 1.0 / 3, None], ["two\nlines", np.int64(7), float("nan")]], ["name", "x", "y"],
                     right=[1, 2])
    assert table.split("\n") == ["| name | x | y |", "|---|---:|---:|", "| a\\|b | 0.3333 |  |",
                                 "| two lines | 7 | n/a |"]
