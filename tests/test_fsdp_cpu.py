"""Full fine-tuning under FSDP2 on CPU (gloo): two processes, bounded, no stray processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fsdp2_step_equals_the_unsharded_step_and_saves_the_gathered_model(
    shapes_dir: Path, tmp_path: Path
) -> None:
    result = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(REPO / "tests" / "fsdp_worker.py"),
        str(shapes_dir),
        str(result),
        str(tmp_path / "saved"),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO), environment.get("PYTHONPATH", "")]
    )
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the FSDP run did not finish in 240 s")
    assert process.returncode == 0, output[-3000:]
    found = json.loads(result.read_text())
    assert found["same_parameters"] and found["gradients"] > 200, found
    assert found["max_gradient"] > 0.1, found
    assert found["max_difference"] < 1e-5 * found["max_gradient"], found
    # The trainer's FSDP save path: gathered state dict -> from_pretrained folder, exact.
    assert found["saved_parameters"] and found["saved_max_difference"] == 0.0, found
