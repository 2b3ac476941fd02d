"""Paper-vs-this-run tables with exact, dependency-free Markdown and LaTeX output.

Formatting is deterministic: the same frame always gives byte-identical text (no tabulate, no jinja2).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType

import pandas as pd

from cxrgen.errors import InputError
from cxrgen.io import write_csv_atomic, write_text_atomic

#: {table stem: sentences} appended to that table's caption: the overlaps the config allows (cxrgen.data.leakage),
#: set for the running rule by cxrgen.workflow.script_context
CAPTION_NOTES: ContextVar[Mapping[str, Sequence[str]]] = ContextVar("CAPTION_NOTES",
                                                                      default=MappingProxyType({}))

PAPER = "(paper)"
OURS = "(this run)"

#: Run scales and the words every caption uses for them.
SCALES = {
    "miniature": "miniature (embedded phantom data, CPU)",
    "paper": "paper scale",
}


# --------------------------------------------------------------------------- cell formatting
def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_cell(value, float_format: str | Callable[[float], str] | None = None) -> str:
    """Text for one cell: missing -> ``""``, integral floats -> integers, other floats -> ``.6g``."""
    if _is_missing(value):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if float_format is not None:
            return float_format(value) if callable(float_format) else format(value, float_format)
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".6g")
    return " ".join(str(value).split())


def _is_numeric_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _check_frame(df) -> None:
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame, got {type(df).__name__}")


# --------------------------------------------------------------------------- side by side
def _ci_columns(ours_df: pd.DataFrame, value_cols: Sequence[str], ours_ci) -> dict[str, tuple[str, str]]:
    if ours_ci is not None:
        if not isinstance(ours_ci, Mapping):
            raise InputError("ours_ci must map metric -> (ci_low column, ci_high column)")
        out = {}
        for metric, pair in ours_ci.items():
            if metric not in value_cols:
                raise InputError(f"ours_ci names metric {metric!r}, which is not in value_cols {list(value_cols)}")
            low, high = pair
            for col in (low, high):
                if col not in ours_df.columns:
                    raise InputError(f"ours_ci column {col!r} not in this run's frame; columns: {list(ours_df.columns)}")
            out[metric] = (low, high)
        return out
    out = {}
    for metric in value_cols:
        low, high = f"{metric}_ci_low", f"{metric}_ci_high"
        if low in ours_df.columns and high in ours_df.columns:
            out[metric] = (low, high)
    if not out and len(value_cols) == 1 and {"ci_low", "ci_high"} <= set(ours_df.columns):
        out[value_cols[0]] = ("ci_low", "ci_high")
    return out


def format_ci(value, low, high, digits: int = 3) -> str:
    """``'0.81 [0.76, 0.86]'``; missing bounds give just the value, a missing value gives ``''``."""
    if _is_missing(value):
        return ""
    text = f"{float(value):.{digits}f}"
    if _is_missing(low) or _is_missing(high):
        return text
    return f"{text} [{float(low):.{digits}f}, {float(high):.{digits}f}]"


def fid_kid_caption(frame: pd.DataFrame) -> str:
    """Caption sentences for FID/KID cells computed by :func:`cxrgen.metrics.fid.fid_kid_with_ci`: the CI method,
    where n is shown and, where min(n_real, n_fake) is below the feature dimension, that FID is biased at that n
    and KID (unbiased) is the one to compare. ``frame`` needs ``n_real``, ``n_fake``, ``dim``, ``n_boot``."""
    missing = [c for c in ("n_real", "n_fake", "dim", "n_boot") if c not in frame.columns]
    if missing:
        raise InputError(f"FID/KID frame lacks {missing}; expected the columns fid_kid_with_ci returns")
    rows = frame.dropna(subset=["n_real", "n_fake"])
    if rows.empty:
        return "No FID/KID was computed (too few images)."
    boots = sorted({int(b) for b in rows["n_boot"].dropna()})
    text = ("FID and KID cells: value [95% CI], percentile bootstrap over "
            f"{' / '.join(map(str, boots)) or 0} resamples of the real and the synthetic feature rows (FID's shifted "
            "by the bootstrap bias estimate, so it brackets the FID at that n); n real / n synthetic per row.")
    n_min = rows[["n_real", "n_fake"]].min(axis=1)
    biased = n_min < rows["dim"]
    if biased.any():
        lo, hi = int(n_min[biased].min()), int(n_min[biased].max())
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        text += (f" FID is biased upward at n below the feature dimension ({span} < {int(rows['dim'][biased].max())} "
                 "here; Chong & Forsyth 2020): compare FID only between rows of equal n, and use KID, whose estimate "
                 "is unbiased at any n, across sizes.")
    return text


def side_by_side(
    paper_df: pd.DataFrame,
    ours_df: pd.DataFrame,
    keys: Sequence[str],
    value_cols: Sequence[str],
    ours_ci: Mapping[str, tuple[str, str]] | None = None,
    digits: int = 3,
) -> pd.DataFrame:
    """Join the paper's numbers and this run's on ``keys``.

    Columns: the keys, then ``"<metric> (paper)"`` and ``"<metric> (this run)"`` per metric. Rows keep
    the paper's order; rows only this run has are appended in this run's order. Where this run has a
    confidence interval (``ours_ci`` maps metric -> (low col, high col); by default ``<metric>_ci_low`` /
    ``<metric>_ci_high``, or ``ci_low`` / ``ci_high`` when there is one metric) the this-run cell is the
    string ``"0.810 [0.760, 0.860]"`` with ``digits`` decimals; otherwise it stays numeric.
    """
    _check_frame(paper_df)
    _check_frame(ours_df)
    keys, value_cols = list(keys), list(value_cols)
    if not keys or not value_cols:
        raise InputError("side_by_side needs at least one key and one value column")
    for name, frame in (("paper", paper_df), ("this run", ours_df)):
        missing = [c for c in keys + value_cols if c not in frame.columns]
        if missing:
            raise InputError(f"{name} frame lacks columns {missing}; it has {list(frame.columns)}")
        if frame.duplicated(keys).any():
            dups = frame.loc[frame.duplicated(keys, keep=False), keys].drop_duplicates().to_dict("records")
            raise InputError(f"{name} frame has duplicate keys {dups}")
    ci = _ci_columns(ours_df, value_cols, ours_ci)

    ours = ours_df[keys].copy()
    for metric in value_cols:
        if metric in ci:
            low, high = ci[metric]
            ours[f"{metric} {OURS}"] = [
                format_ci(v, lo, hi, digits) for v, lo, hi in zip(ours_df[metric], ours_df[low], ours_df[high])
            ]
        else:
            ours[f"{metric} {OURS}"] = ours_df[metric].to_numpy()
    paper = paper_df[keys].copy()
    for metric in value_cols:
        paper[f"{metric} {PAPER}"] = paper_df[metric].to_numpy()

    merged = paper.merge(ours, on=keys, how="left", sort=False)
    extra = ours.merge(paper[keys], on=keys, how="left", indicator=True, sort=False)
    extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
    if len(extra):
        merged = pd.concat([merged, extra], ignore_index=True, sort=False)
    order = keys + [c for m in value_cols for c in (f"{m} {PAPER}", f"{m} {OURS}")]
    return merged[order].reset_index(drop=True)


# --------------------------------------------------------------------------- Markdown
def _escape_md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _cells(df: pd.DataFrame, float_format) -> tuple[list[str], list[list[str]], list[bool]]:
    header = [" ".join(str(c).split()) for c in df.columns]
    numeric = [_is_numeric_column(df[c]) for c in df.columns]
    rows = [[format_cell(v, float_format) for v in row] for row in df.itertuples(index=False, name=None)]
    return header, rows, numeric


def to_markdown(df: pd.DataFrame, caption: str, float_format: str | Callable[[float], str] | None = None) -> str:
    """Pipe table preceded by ``Table: <caption>`` and a blank line; ends with a newline.

    Cells are padded to the column width; numeric columns are right-aligned (``---:``), others left.
    """
    _check_frame(df)
    if df.shape[1] == 0:
        raise InputError("cannot render a table without columns")
    header, rows, numeric = _cells(df, float_format)
    header = [_escape_md(h) for h in header]
    rows = [[_escape_md(c) for c in row] for row in rows]
    widths = [max([3, len(header[j])] + [len(r[j]) for r in rows]) for j in range(len(header))]

    def line(cells):
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else ("-" * w) for w, num in zip(widths, numeric)) + " |"
    lines = [f"Table: {' '.join(str(caption).split())}", "", line(header), rule] + [line(r) for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- LaTeX
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape_latex(text: str) -> str:
    """Escape LaTeX special characters ``\\ & % $ # _ { } ~ ^``."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(
    df: pd.DataFrame,
    caption: str,
    label: str,
    float_format: str | Callable[[float], str] | None = None,
) -> str:
    """A booktabs ``table`` environment (``\\toprule``/``\\midrule``/``\\bottomrule``); needs ``\\usepackage{booktabs}``."""
    _check_frame(df)
    if df.shape[1] == 0:
        raise InputError("cannot render a table without columns")
    if not label or any(ch.isspace() or ch in "{}\\%#" for ch in label):
        raise InputError(f"LaTeX label {label!r} must be non-empty without spaces, braces, backslashes, % or #")
    header, rows, numeric = _cells(df, float_format)
    spec = "".join("r" if num else "l" for num in numeric)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + escape_latex(" ".join(str(caption).split())) + "}",
        r"\label{" + label + "}",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(escape_latex(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape_latex(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files
def full_caption(caption: str, scale: str, paper_table: str | None = None) -> str:
    """Caption plus the run's scale and where the paper numbers come from."""
    if scale not in SCALES:
        raise InputError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    text = " ".join(str(caption).split())
    if text and not text.endswith("."):
        text += "."
    text += f" Scale of this run: {SCALES[scale]}."
    if paper_table:
        text += f" Paper numbers are from {paper_table}."
    return text.strip()


def write_table(
    df: pd.DataFrame,
    out_stem: str | os.PathLike,
    caption: str,
    scale: str,
    paper_table: str | None = None,
    label: str | None = None,
    float_format: str | Callable[[float], str] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex`` atomically.

    ``scale`` is ``"miniature"`` or ``"paper"``; ``paper_table`` (e.g. ``"Chambon et al. 2022, Table 3"``,
    see :func:`cxrgen.render.reference.paper_table_label`) is required when the frame has ``(paper)``
    columns, so the caption always says where the published numbers come from.
    Returns the written paths keyed by ``csv``/``md``/``tex``.
    """
    _check_frame(df)
    has_paper = any(str(c).endswith(PAPER) for c in df.columns)
    if has_paper and not paper_table:
        raise InputError("write_table: the frame has '(paper)' columns, so paper_table (e.g. 'chambon2022, Table 3') is required")
    stem = Path(out_stem)
    text = " ".join([full_caption(caption, scale, paper_table), *CAPTION_NOTES.get().get(stem.name, ())])
    label = label or f"tab:{stem.name}"
    paths = {ext: stem.with_name(stem.name + "." + ext) for ext in ("csv", "md", "tex")}
    write_csv_atomic(df, paths["csv"])
    write_text_atomic(paths["md"], to_markdown(df, text, float_format))
    write_text_atomic(paths["tex"], to_latex(df, text, label, float_format))
    return paths
