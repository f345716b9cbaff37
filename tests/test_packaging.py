"""A plain ``pip install .`` (a wheel, not the source tree) has everything the code needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO / "src").parts)
        for init in (REPO / "src").rglob("__init__.py")
    }
    assert found | {"sam3_lora.presets", "sam3_lora.assets"} == listed


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    # Build from a copy of what the project declares, so no build/ is left in the checkout.
    source = tmp_path / "source"
    local = {REPO / name for name in (".git", "build", "dist", "outputs", "data", ".venv")}
    shutil.copytree(
        REPO,
        source,
        ignore=lambda folder, names: (
            [n for n in names if Path(folder) / n in local]
            + [n for n in names if n.endswith(".egg-info") or n == "__pycache__"]
        ),
    )
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        tmp_path,
        env,
        600,
    )
    (wheel,) = wheels.glob("sam3_lora-*.whl")
    # The dependencies (torch, transformers ...) come from this environment; the package itself
    # only from the wheel.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env, 120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path, env, 300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run(
        [
            str(python),
            "-c",
            "import sam3_lora, sam3_lora.paths as p; "
            "print(sam3_lora.__file__); print(p.presets_dir()); print(p.asset_dir('tiny-sam3'))",
        ],
        work,
        env,
        60,
    ).split()
    assert all(str(venv) in line for line in where), where
    cli = str(venv / "bin" / "sam3-lora")
    table = _run([cli, "lora-info", "--config", "minimal", "--model", "tiny"], work, env, 300)
    assert "vision_encoder" in table and "total" in table
    _run(
        [
            cli,
            "train",
            "--steps",
            "2",
            "--set",
            "data.synthetic.num_train=4",
            "--set",
            "data.synthetic.num_val=2",
            "--set",
            "training.eval_at_start=false",
            "--set",
            "training.batch_size=2",
        ],
        work,
        env,
        600,
    )
    assert (work / "outputs" / "quickstart" / "final" / "adapter_model.safetensors").is_file()
