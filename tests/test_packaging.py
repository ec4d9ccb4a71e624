"""dedup as a user installs it: a wheel (not the editable checkout) that finds its presets from any folder,
and the extras' back ends that fsspec looks up for s3:// and gs:// URLs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FLICKR, ROOT


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The project built as a wheel and installed alone (--no-deps: the test environment has the rest)."""
    import shutil

    folder = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources: setuptools builds in SOURCE/build, which two test workers would share
    source = folder / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv*", ".git", "build", "*.egg-info", "test-artifacts", "__pycache__", ".*_cache"
        ),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder / "dist"), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = (folder / "dist").glob("dedup-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(folder / "site"), str(wheel)], check=True, timeout=300
    )
    return folder / "site"


def _python(site, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_every_module_and_preset(installed_wheel):
    """The editable install's finder would serve a module the wheel lacks from the checkout: compare files."""
    source = {p.relative_to(ROOT / "dedup") for p in (ROOT / "dedup").rglob("*.py")}
    installed = {p.relative_to(installed_wheel / "dedup") for p in (installed_wheel / "dedup").rglob("*.py")}
    assert source <= installed, sorted(map(str, source - installed))
    presets = {p.name for p in (ROOT / "configs").glob("*.toml")}
    assert presets and presets <= {p.name for p in (installed_wheel / "dedup" / "presets").glob("*.toml")}


def test_installed_wheel_runs_with_its_shipped_preset_from_another_folder(installed_wheel, tmp_path):
    where = _python(
        installed_wheel,
        tmp_path,
        "-c",
        "import dedup.cli; from dedup.settings import preset_path; print(dedup.cli.__file__); print(preset_path('offline'))",
    )
    assert where.returncode == 0, where.stderr
    module, preset = where.stdout.split()
    assert module.startswith(str(installed_wheel)) and preset.startswith(str(installed_wheel)), where.stdout
    shard = FLICKR / "flickr8k-224-00008.tar"  # the smallest shard: 91 photos
    result = _python(
        installed_wheel,
        tmp_path,
        "-m",
        "dedup.cli",
        "--quiet",
        "run",
        str(shard),
        "--config",
        "offline",
        "--run-dir",
        "run",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").is_file() and list((tmp_path / "run" / "shards").glob("*.tar"))


def test_unknown_preset_names_the_shipped_ones(installed_wheel, tmp_path):
    result = _python(installed_wheel, tmp_path, "-m", "dedup.cli", "run", "x.tar", "--config", "no-such-preset")
    assert result.returncode == 3
    assert "offline" in result.stderr and "no-such-preset" in result.stderr


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_remote_extras_give_fsspec_its_back_ends(protocol):
    import fsspec

    assert fsspec.get_filesystem_class(protocol).protocol  # s3fs / gcsfs, from the s3 and gcs extras


@pytest.mark.parametrize(
    ("missing", "command", "extra"),
    [
        ("matplotlib", ["report", "RUN"], "report"),
        ("skimage", ["demo", "out"], "demo"),
        ("diffusers", ["verify", "RUN", "--preset", "cifar-quick"], "attack"),
    ],
)
def test_a_missing_extra_is_named_with_its_install_line(tmp_path, missing, command, extra):
    """A core-only install: the command stops at once (exit 3) with the pip line, not a traceback."""
    code = f"import sys; sys.modules[{missing!r}] = None; from dedup.cli import app; app()"  # None: not installed
    args = [str(tmp_path) if part == "RUN" else part for part in command]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    assert f"pip install 'dedup[{extra}]'" in result.stderr and "Traceback" not in result.stderr
