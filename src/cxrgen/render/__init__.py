"""Render this run's results next to the published numbers: tables (CSV/Markdown/LaTeX) and figures."""

from cxrgen.render.reference import known_papers, known_tables, load_reference, paper_table_label
from cxrgen.render.tables import SCALES, side_by_side, to_latex, to_markdown, write_table

__all__ = [
    "SCALES",
    "known_papers",
    "known_tables",
    "load_reference",
    "paper_table_label",
    "side_by_side",
    "to_latex",
    "to_markdown",
    "write_table",
]
