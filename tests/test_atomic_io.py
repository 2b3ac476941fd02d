"""A writer stopped mid-write leaves nothing beside its output: SIGTERM unwinds a rule's script (its temporaries
are deleted on the way out), and what a SIGKILLed writer left is deleted by the next write of the same path."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from cxrgen.io import atomic_path, remove_stale_temporaries

# a rule's script, as Snakemake runs it: script_context, then a long atomic write of a sample folder
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from cxrgen.io import atomic_path
    from cxrgen.workflow import script_context

    out = Path(sys.argv[1])
    smk = SimpleNamespace(log=[sys.argv[2]], threads=1, config={"seed": 0}, rule="sample", params=SimpleNamespace())
    with script_context(smk):
        with atomic_path(out) as tmp:
            (tmp / "images").mkdir(parents=True)
            (tmp / "images" / "0.png").write_bytes(b"x")
            (out.parent / "writing").touch()
            time.sleep(120)
""")


def _start_writer(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "samples" / "fewshot"
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(tmp_path / "sample.log")])
    deadline = time.time() + 120
    while not (out.parent / "writing").exists():
        assert proc.poll() is None and time.time() < deadline, "the writer never started writing"
        time.sleep(0.1)
    return proc, out


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigterm_to_a_rule_script_leaves_no_temporary(tmp_path):
    proc, out = _start_writer(tmp_path)
    assert _leftovers(out.parent), "the write's temporary folder should exist while it runs"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert _leftovers(out.parent) == [] and not out.exists()
    assert "exited with status 143" in (tmp_path / "sample.log").read_text()


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    proc, out = _start_writer(tmp_path)
    proc.send_signal(signal.SIGKILL)  # no handler runs
    proc.wait(timeout=60)
    stale = _leftovers(out.parent)
    assert len(stale) == 1 and str(proc.pid) in stale[0]
    # a live writer's temporary (this process's) is not touched
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "manifest.csv").write_text("image_id\n")
        mine = [name for name in _leftovers(out.parent) if f"-{os.getpid()}." in name]
        assert len(mine) == 1 and stale[0] not in _leftovers(out.parent)
        assert remove_stale_temporaries(out) == []
    assert _leftovers(out.parent) == [] and (out / "manifest.csv").is_file()
