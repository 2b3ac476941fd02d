"""Progress bars that read well in a terminal and in a rule's log file.

In a terminal, :func:`progress_bar` is plain tqdm. Where the bar's stream is not a terminal (a Snakemake rule's
log, a SLURM output file, a pipe), tqdm's carriage-return redraws would pile up as one unreadable line; there the
bar writes whole ASCII lines instead: nothing for the first :data:`LOG_INTERVAL_S` seconds (short loops stay
silent), then at most one line per :data:`LOG_INTERVAL_S` and a last line when a ``leave`` bar closes.
"""

from __future__ import annotations

import re
import sys

from tqdm import tqdm

#: seconds before a bar's first line, and between two lines, where the stream is not a terminal
LOG_INTERVAL_S = 30.0
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # what tqdm writes to stack nested bars


class _WholeLines:
    """A stream for tqdm that writes each redraw as its own line (no carriage returns, no cursor moves)."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        for frame in re.split(r"[\r\n]", _CURSOR_MOVES.sub("", text)):
            frame = frame.rstrip()
            if frame.strip() and frame != self.last:  # closing a bar redraws its last frame
                self.stream.write(frame + "\n")
                self.last = frame

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, file=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on ``file`` (default: the current ``sys.stderr``, which a rule's script
    redirects into its log), log-friendly where ``file`` is not a terminal (see the module docstring)."""
    stream = sys.stderr if file is None else file
    if not _is_terminal(stream):
        # maxinterval too: tqdm's monitor thread otherwise redraws a fast loop's bar every 10 s
        kwargs.update({key: max(LOG_INTERVAL_S, float(kwargs.get(key, 0.0))) for key in ("mininterval", "maxinterval", "delay")})
        kwargs.update(file=_WholeLines(stream), ascii=True, dynamic_ncols=False)
    else:
        kwargs["file"] = stream
    return tqdm(iterable, **kwargs)
