"""The README's Python example, verbatim, wherever users write Python: a script with and without a main
guard, code piped to `python -`, `python -c`. Each must finish with the same summary; none may die with a
BrokenProcessPool (the local engine's spawned workers re-run the main script)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no ```python block"
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("python-api")
    run_cli("demo", "demo-data", cwd=folder)
    return folder


def _run(folder, args, stdin=None):
    return subprocess.run([sys.executable, *args], cwd=folder, input=stdin, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("way", ["script", "guarded script", "stdin", "-c"])
def test_readme_python_example_runs_as_users_write_it(demo_folder, way):
    code = readme_python()
    folder = demo_folder / way.replace(" ", "-")
    folder.mkdir()
    (folder / "demo-data").symlink_to(demo_folder / "demo-data")
    if way == "script":
        (folder / "example.py").write_text(code)
        result = _run(folder, ["example.py"])
    elif way == "guarded script":
        (folder / "example.py").write_text(
            'if __name__ == "__main__":\n' + "".join(f"    {line}\n" for line in code.splitlines())
        )
        result = _run(folder, ["example.py"])
    elif way == "stdin":
        result = _run(folder, ["-"], stdin=code)
    else:
        result = _run(folder, ["-c", code])
    assert result.returncode == 0, result.stderr
    assert "BrokenProcessPool" not in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "17 kept of 44"
    threads_warning = "runs its 2 workers as threads" in result.stderr
    assert threads_warning == (way in ("script", "stdin")), result.stderr  # processes wherever they can start


def test_the_cli_gets_worker_processes(demo_folder):
    """`python -m dedup.cli` and the `dedup` script both guard their call, so workers start as processes."""
    result = _run(
        demo_folder, ["-m", "dedup.cli", "run", "demo-data/shards", "--config", "offline", "--run-dir", "cli-run"]
    )
    assert result.returncode == 0, result.stderr
    assert "as threads" not in result.stderr


def test_the_threshold_check_holds_for_python_callers_as_for_the_cli(tmp_path):
    """The default's threshold is a cosine of the copy detector: carried to the pixels embedder from Python,
    `run` stops with the message and exit code the CLI gives, before reading anything; a threshold given for
    it, or the preset made for it, goes through validation."""
    from conftest import FLICKR, run_cli

    from dedup import load_settings, run
    from dedup.errors import SettingsError

    settings = load_settings("default", ["embed.embedder=pixels"])
    settings.shards, settings.run_dir = [str(FLICKR / "flickr8k-224-00008.tar")], str(tmp_path / "run")
    with pytest.raises(SettingsError) as caught:
        run(settings)
    assert caught.value.exit_code == 3 and not (tmp_path / "run").exists()
    cli = run_cli(
        "run",
        FLICKR / "flickr8k-224-00008.tar",
        "--config",
        "default",
        "--embedder",
        "pixels",
        "--run-dir",
        tmp_path / "c",
        check=False,
    )
    assert cli.returncode == 3 and f"error: {caught.value}" in cli.stderr
    load_settings("default", ["embed.embedder=pixels", "find.threshold=0.97"]).validate()
    load_settings("offline").validate()
