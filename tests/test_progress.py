"""Progress bars in log files: whole lines, a bounded number of them (cxrgen.progress)."""

import io

import tqdm.std

from cxrgen.progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _drive(monkeypatch, stream, seconds: int, **kwargs) -> str:
    """Run a bar over ``seconds`` items, one simulated second per item (tqdm reads the patched clock)."""
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    for _ in progress_bar(range(seconds), file=stream, desc="steps", **kwargs):
        clock[0] += 1.0
    return stream.getvalue()


def test_a_log_file_gets_whole_lines_at_most_every_interval(monkeypatch):
    minutes = 10
    text = _drive(monkeypatch, io.StringIO(), 60 * minutes)
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    assert 2 <= len(lines) <= 60 * minutes / LOG_INTERVAL_S + 1  # one per interval and the closing line
    assert lines[-1].startswith("steps: 100%") and "600/600" in lines[-1] and all(line.isascii() for line in lines)
    assert text.count("\n") == len(lines)  # no blank lines between frames


def test_a_short_loop_leaves_the_log_alone_and_a_terminal_keeps_tqdm(monkeypatch):
    assert _drive(monkeypatch, io.StringIO(), int(LOG_INTERVAL_S) - 5) == ""
    assert _drive(monkeypatch, io.StringIO(), 600, leave=False).count("\n") <= 600 / LOG_INTERVAL_S
    assert "\r" in _drive(monkeypatch, _Terminal(), 5)  # redrawn in place, as tqdm does
