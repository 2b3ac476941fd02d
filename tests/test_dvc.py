"""Publishing results with DVC: `make publish` (dvc add + dvc push of results/<run>/*), then in a fresh clone
`dvc pull` + `snakemake --touch` restores the finished state with nothing to rerun.

Runs in a scratch git repo holding a copy of the workflow, with a local directory remote; and the same push and pull
through a real SSH remote on localhost (a throwaway sshd with its own keys, as docs/data.md sets up a shared one)."""

import getpass
import hashlib
import importlib.util
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix) if (Path(sys.prefix) / "bin" / "dvc").exists() else None  # the venv running pytest
WORKFLOW = ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "configs", "report", "profiles", "envs",
            "Makefile", "requirements.lock", "pyproject.toml", ".gitignore", ".dvcignore")
# a cheap but real slice of the smoke run: phantom data, its table, a sample, a summary, a (shortly) trained model
TARGETS = ["results/smoke/data/smoke/summary/label_counts.csv", "results/smoke/data/smoke/samples/fewshot_chambon",
           "results/smoke/models/foundation"]
TINY = "foundation:\n  overrides: {n_images: 16, vae_steps: 2, unet_steps: 2, preview_per_prompt: 0}\n"
SMOKE = ["--configfile", "configs/smoke.yaml", "tiny.yaml", "--"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}


def run(cmd, cwd, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def snakemake(cwd, *args):
    return run([sys.executable, "-m", "snakemake", *args], cwd)


def tree_hash(root: Path) -> dict:
    """Content of every file under ``root`` except the .dvc pointers."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".dvc"}


@pytest.mark.slow
@pytest.mark.skipif(VENV is None or shutil.which("make") is None, reason="needs the project venv (with dvc) and make")
def test_publish_then_pull_and_touch_restores_without_rerun(tmp_path):
    src = tmp_path / "lab"
    src.mkdir()
    for name in WORKFLOW:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    (src / ".dvc").mkdir()
    for name in ("config", ".gitignore"):  # the default remote: ../dvc-remote from .dvc/, i.e. lab/dvc-remote
        shutil.copy(REPO / ".dvc" / name, src / ".dvc" / name)
    (src / "tiny.yaml").write_text(TINY)
    (src / ".venv").symlink_to(VENV)  # the Makefile's $(BIN); -o below keeps make from reinstalling it
    run(["git", "init", "-q"], src)
    (src / ".git" / "info" / "exclude").write_text(".venv\n")
    run(["git", "add", "-A"], src)
    run(["git", "commit", "-qm", "workflow"], src)

    snakemake(src, "--cores", "2", *SMOKE, *TARGETS)
    assert sorted(p.name for p in (src / "results").iterdir()) == ["smoke"]  # the smoke run's folder only
    published = tree_hash(src / "results")
    t0 = time.monotonic()
    run(["make", "-o", ".venv/.installed", "publish", "CONFIG=configs/smoke.yaml"], src)
    run_dir = src / "results" / "smoke"
    entries = sorted(p.name for p in run_dir.iterdir() if not p.name.endswith(".dvc") and p.name != ".gitignore")
    assert {"data", "models", "phantom"} <= set(entries)
    for name in entries:  # one pointer per entry of results/smoke/, ignored by git, the pointer is not
        assert (run_dir / f"{name}.dvc").is_file(), name
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], src)
    assert "results/smoke/models.dvc" in status  # the pointer is for git (the data stays ignored by .gitignore)
    assert "results/smoke/models/" not in status and "results/smoke/data/" not in status
    assert any((src / "dvc-remote").rglob("*")), "nothing pushed to the default remote"
    # a publish that fails says why (DVC's own error, not only make's exit status)
    bad = subprocess.run(["make", "-o", ".venv/.installed", "publish", "PUBLISH=results/default/models"], cwd=src,
                         capture_output=True, text=True, env=_env())
    assert bad.returncode != 0 and "results/default' does not exist" in bad.stderr, bad.stdout + bad.stderr
    run(["git", "add", "results"], src)  # adds only the .dvc pointers
    run(["git", "commit", "-qm", "publish results"], src)

    # a fresh clone: code from git, artefacts from the remote (credentials/overrides go to .dvc/config.local)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(src), str(clone)], tmp_path)
    assert not (clone / "results" / "smoke" / "models").exists()
    run([str(VENV / "bin" / "dvc"), "remote", "modify", "--local", "local", "url", str(src / "dvc-remote")], clone)
    run([str(VENV / "bin" / "dvc"), "pull", "--quiet"], clone)
    assert tree_hash(clone / "results") == published
    snakemake(clone, "--touch", "--cores", "1", *SMOKE, *TARGETS)
    plan = snakemake(clone, "-n", *SMOKE, *TARGETS)
    assert "Nothing to be done" in plan, plan
    assert tree_hash(clone / "results") == published  # --touch changed mtimes only
    print(f"\nDVC publish + clone + pull + touch: {time.monotonic() - t0:.1f} s")


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSHD_CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
AuthorizedKeysFile {root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {root}/sshd.pid
Subsystem sftp internal-sftp
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ssh_remote(tmp_path):
    """(ssh:// URL of an empty remote folder, client key file) served by an sshd of this test on a free port."""
    if not Path(SSHD).is_file():
        pytest.skip("needs sshd: apt-get install openssh-server (.ci/run does)")
    if importlib.util.find_spec("dvc_ssh") is None:
        pytest.skip("needs dvc-ssh (pinned in requirements.lock)")
    privsep = Path("/run/sshd")  # sshd refuses to start without it; Debian's ssh service creates it
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.skip("sshd needs /run/sshd, which only root can create")
        privsep.mkdir(mode=0o755, parents=True)
    root = tmp_path / "sshd"
    root.mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    port = _free_port()
    (root / "sshd_config").write_text(SSHD_CONFIG.format(port=port, root=root))
    log = open(root / "sshd.log", "w")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert sshd.poll() is None and time.monotonic() < deadline, (root / "sshd.log").read_text()
                time.sleep(0.2)
        yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}{tmp_path / 'remote'}", root / "client_key"
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_push_to_an_ssh_remote_and_pull_in_a_fresh_clone(tmp_path, ssh_remote):
    url, key = ssh_remote
    dvc = [sys.executable, "-m", "dvc"]
    lab = tmp_path / "lab"
    (lab / ".dvc").mkdir(parents=True)
    for name in (".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(REPO / name, lab / name)
    rng = random.Random(0)
    for rel in ("results/default/models/a/weights.bin", "results/default/models/b/weights.bin",
                "results/default/tables/t.csv"):
        (lab / rel).parent.mkdir(parents=True, exist_ok=True)
        (lab / rel).write_bytes(rng.randbytes(20_000))
    published = tree_hash(lab / "results")
    run(["git", "init", "-q"], lab)
    # docs/data.md: the shared remote in .dvc/config (committed, no credentials), the key in .dvc/config.local
    run([*dvc, "remote", "add", "-d", "shared", url], lab)
    run([*dvc, "remote", "modify", "--local", "shared", "keyfile", str(key)], lab)
    run([*dvc, "add", "-q", "results/default/models", "results/default/tables"], lab)  # what `make publish` runs
    run([*dvc, "push", "-q"], lab)
    assert any((tmp_path / "remote").rglob("*")), "nothing arrived on the SSH remote"
    run(["git", "add", "-A"], lab)
    run(["git", "commit", "-qm", "results on the shared remote"], lab)
    assert "config.local" not in run(["git", "ls-files", ".dvc"], lab)  # the key stays out of git

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(lab), str(clone)], tmp_path)
    assert not (clone / "results" / "default" / "models").exists()
    run([*dvc, "remote", "modify", "--local", "shared", "keyfile", str(key)], clone)
    run([*dvc, "pull", "-q"], clone)
    assert tree_hash(clone / "results") == published
    assert "up to date" in run([*dvc, "status"], clone)
