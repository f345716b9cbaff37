"""N processes on CPU (gloo), launched as the README says: the same run as one process, one set
of outputs, resume, two "machines" on the loopback address, and a dead process ending the run.

Tolerance of the loss comparison: Meta's batch scale sqrt(B) is per process, so the loss a
2-process run logs (the mean over its processes, batch 1 each) is the 1-process loss (batch 2)
divided by sqrt(2). The first step matches to float precision; later steps drift slightly
(gradients are sqrt(2) smaller under the same clipping and AdamW), hence 2 %.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TIMEOUT = 240  # seconds any launch may take before the test fails (and kills it)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sam3_lora.data.synthetic import generate_shapes_dataset

    root = tmp_path_factory.mktemp("distributed") / "shapes"
    return generate_shapes_dataset(
        root, num_train=8, num_val=4, seed=0, image_size=128, progress=False
    )


def _train_args(shapes: Path, output: Path, steps: int = 4, batch_size: int = 1) -> list[str]:
    return [
        "train",
        "--model", "tiny-random",
        "--set", f"data.train={shapes / 'train'}",
        "--set", f"data.valid={shapes / 'valid'}",
        "--set", "data.num_negative_prompts=1",
        "--lora_rank", "4",
        "--lora_dropout", "0",
        "--batch_size", str(batch_size),
        "--steps", str(steps),
        "--set", "training.num_workers=0",
        "--set", "training.logging_steps=1",
        "--set", "training.eval_steps=2",
        "--set", "training.save_steps=2",
        "--set", "training.save_total_limit=3",
        "--set", "training.distributed_timeout_s=30",
        "--set", "output.tensorboard=false",
        "--output_dir", str(output),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE"))}
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "sam3_lora.cli"]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        command, stdout=handle, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
    )


def _wait(process: subprocess.Popen, log: Path, timeout: float = TIMEOUT) -> tuple[int, str]:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process.pid)
        process.wait()
        pytest.fail(f"launch did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


def _run(command: list[str], log: Path) -> str:
    code, text = _wait(_start(command, log), log)
    assert code == 0, text[-4000:]
    return text


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def _kill_tree(pid: int) -> None:
    for member in _tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rows(output: Path) -> list[dict[str, str]]:
    with open(output / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _train_losses(output: Path) -> list[float]:
    return [float(r["train/loss"]) for r in _rows(output) if r.get("train/loss")]


def test_two_processes_run_like_one_write_once_and_resume(shapes: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run(
        [sys.executable, "-m", "sam3_lora.cli", *_train_args(shapes, one, batch_size=2)],
        tmp_path / "one.log",
    )
    # The convenience flag: `sam3-lora train --num_gpus 2` starts the torchrun launch itself.
    printed = _run(
        [sys.executable, "-m", "sam3_lora.cli", *_train_args(shapes, two), "--num_gpus", "2"],
        tmp_path / "two.log",
    )

    # The same trajectory, up to the per-process sqrt(B) scale.
    single, double = _train_losses(one), _train_losses(two)
    assert len(single) == len(double) == 4
    assert single[0] == pytest.approx(double[0] * math.sqrt(2), rel=1e-3)
    for a, b in zip(single, double, strict=True):
        assert a == pytest.approx(b * math.sqrt(2), rel=0.02)
    # Validation is sharded and gathered: the base model's numbers are those of one process.
    base = [{k: float(v) for k, v in r.items() if k.startswith("val/") and v} for r in
            (_rows(one)[0], _rows(two)[0])]  # fmt: skip
    assert base[0] and base[0].keys() == base[1].keys()
    for key, value in base[0].items():
        assert base[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # One set of outputs, each step logged once, the summary printed once.
    assert {p.name for p in one.iterdir()} == {p.name for p in two.iterdir()}
    steps = [int(r["step"]) for r in _rows(two) if r.get("train/loss")]
    assert steps == [1, 2, 3, 4]
    assert printed.count("training summary") == 1
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (two / "checkpoints" / "step-4" / "random_states_1.pkl").is_file()

    # Killed after step 2: resume on two processes reaches the uninterrupted weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    shutil.rmtree(resumed / "final")
    _run(
        [*_torchrun("--nproc_per_node", "2"), *_train_args(shapes, resumed), "--resume"],
        tmp_path / "resumed.log",
    )
    expected = load_file(str(two / "final" / "adapter_model.safetensors"))
    found = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6)
    assert _train_losses(resumed) == pytest.approx(double, rel=1e-5)


def _node(rank: int, port: int, shapes: Path, output: Path, steps: int) -> list[str]:
    options = ("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1")
    address = ("--master_addr", "127.0.0.1", "--master_port", str(port))
    return [*_torchrun(*options, *address), *_train_args(shapes, output, steps=steps)]


def test_two_machines_on_loopback_finish_one_run(shapes: Path, tmp_path: Path) -> None:
    port, output = _free_port(), tmp_path / "run"
    nodes = [
        _start(_node(rank, port, shapes, output, steps=4), tmp_path / f"node{rank}.log")
        for rank in (0, 1)
    ]
    results = [_wait(node, tmp_path / f"node{rank}.log") for rank, node in enumerate(nodes)]
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert _train_losses(output) and len(_train_losses(output)) == 4
    assert (output / "final" / "adapter_model.safetensors").is_file()
    assert results[0][1].count("training summary") == 1
    assert "training summary" not in results[1][1]


def test_a_dead_process_ends_the_run_with_a_message(shapes: Path, tmp_path: Path) -> None:
    port, output = _free_port(), tmp_path / "run"
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [_start(_node(r, port, shapes, output, steps=400), logs[r]) for r in (0, 1)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (output / "metrics.csv").is_file() or len(_train_losses(output)) < 3:
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            assert nodes[0].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.5)
        _kill_tree(nodes[1].pid)  # the second machine goes away mid-run
        started = time.monotonic()
        code, text = _wait(nodes[0], logs[0], timeout=120)
    finally:
        for node in nodes:
            _kill_tree(node.pid)
            node.wait()
    assert code != 0
    assert time.monotonic() - started < 90
    assert "another process of the distributed run stopped" in text, text[-3000:]


def test_evaluate_on_two_processes_gives_the_numbers_of_one(shapes: Path, tmp_path: Path) -> None:
    import json

    from tests.adapters import make_tiny_adapter

    adapter = make_tiny_adapter(tmp_path / "adapter")
    args = [
        "evaluate",
        "--adapter", str(adapter),
        "--model", "tiny-random",
        "--set", f"data.valid={shapes / 'valid'}",
        "--compare-base",
        "--negative_prompts", "2",
        "--threshold", "0.2",
    ]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "sam3_lora.cli", *args, "--output_dir", str(one)], tmp_path / "1")
    _run([*_torchrun("--nproc_per_node", "2"), *args, "--output_dir", str(two)], tmp_path / "2")
    single = json.loads((one / "metrics.json").read_text())
    double = json.loads((two / "metrics.json").read_text())
    for name in ("base", "adapter"):
        for key, value in single["models"][name]["overall"].items():
            assert double["models"][name]["overall"][key] == pytest.approx(value, abs=1e-6), key
    assert (one / "predictions.coco.json").read_text() == (
        two / "predictions.coco.json"
    ).read_text()


def test_a_non_finite_loss_on_one_process_is_skipped_by_all(tmp_path: Path) -> None:
    probe = Path(__file__).with_name("distributed_probe.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(probe),
        str(tmp_path),
    ]  # fmt: skip
    _run(command, tmp_path / "probe.log")
    for rank in (0, 1):
        written = (tmp_path / f"finite-{rank}.txt").read_text()
        assert written == f"rank {rank} of 2: finite everywhere = False"


def test_a_launch_accelerate_does_not_see_stops_with_the_right_command(
    shapes: Path, tmp_path: Path
) -> None:
    env = _env()
    env.pop("ACCELERATE_USE_CPU")  # plain torchrun on a machine without GPUs
    command = [*_torchrun("--nproc_per_node", "2"), *_train_args(shapes, tmp_path / "run")]
    log = tmp_path / "launch.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    code, text = _wait(process, log)
    if torch.cuda.is_available():
        pytest.skip("with GPUs Accelerate sees the torchrun launch")
    assert code != 0
    assert "WORLD_SIZE=2" in text and "ACCELERATE_USE_CPU=1 torchrun" in text, text[-3000:]
    assert not (tmp_path / "run" / "metrics.csv").exists()


VERIFY_SCRIPT = """
import json, sys
from sam3_lora.data.coco import CocoDataset
from sam3_lora.models import load_sam3
from sam3_lora.tasks.concept import negatives
from sam3_lora.tasks.concept.module import ConceptModel

scored = []
original = negatives._score_images
def counting(coco, model, pools, indices, *args, **kwargs):
    scored.extend(indices)
    return original(coco, model, pools, indices, *args, **kwargs)
negatives._score_images = counting
loaded = load_sam3("tiny-random")
check = negatives.verify_negatives(
    CocoDataset.from_split_dir(sys.argv[1]),
    ConceptModel(loaded.model, loaded.processor.tokenizer),
    ["person", "car", "road", "sky"],
    resolution=224, pool_size=3, seed=0, threshold=0.5, timeout_s=30,
)
from sam3_lora.launch import process_state
state = process_state()
result = {"rank": state.process_index, "scored": scored,
          "scores": {str(k): v for k, v in check.scores.items()}}
# One file per process: two processes printing to one pipe can interleave their lines.
with open(sys.argv[2] + f"/result-{state.process_index}.json", "w") as handle:
    json.dump(result, handle)
state.destroy_process_group()
"""


def test_negative_verification_is_split_between_processes(shapes: Path, tmp_path: Path) -> None:
    """Each image is checked by one process; every process gets all scores; one file."""
    split = tmp_path / "train"
    shutil.copytree(shapes / "train", split, ignore=shutil.ignore_patterns(".sam3-lora"))
    script = tmp_path / "verify.py"
    script.write_text(VERIFY_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    _run([*command, str(script), str(split), str(tmp_path)], tmp_path / "verify.log")
    results = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(r["rank"] for r in results) == [0, 1]
    scored = [i for r in results for i in r["scored"]]
    assert sorted(scored) == list(range(8))  # each image once
    assert results[0]["scores"] == results[1]["scores"] and len(results[0]["scores"]) == 8
    caches = list((split / ".sam3-lora").glob("negatives-*.json"))
    assert len(caches) == 1
    assert json.loads(caches[0].read_text())["scores"] == results[0]["scores"]


SYNTHETIC_SCRIPT = """
import json, logging, sys
from sam3_lora.config import load_config
from sam3_lora.data.sources import synthetic_root
from sam3_lora.launch import process_state

logging.basicConfig(level=logging.INFO)
overrides = {"data.synthetic.output_dir": sys.argv[1], "data.synthetic.num_train": 24,
             "data.synthetic.num_val": 4, "training.distributed_timeout_s": 60}
root = synthetic_root(load_config("quickstart", overrides))
state = process_state()
files = sorted(p.name for p in (root / "train").iterdir())
with open(sys.argv[2] + f"/synthetic-{state.process_index}.json", "w") as handle:
    json.dump(files, handle)
state.destroy_process_group()
"""


def test_a_synthetic_dataset_is_generated_once_in_a_distributed_launch(tmp_path: Path) -> None:
    """Every process asks for the quick start's dataset: the main one writes it, the others
    wait and reuse it (before, both wrote the same folder and one read a half-written file)."""
    script = tmp_path / "synthetic.py"
    script.write_text(SYNTHETIC_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    printed = _run([*command, str(script), str(tmp_path / "shapes"), str(tmp_path)],
                   tmp_path / "synthetic.log")  # fmt: skip
    listed = [json.loads((tmp_path / f"synthetic-{rank}.json").read_text()) for rank in (0, 1)]
    assert listed[0] == listed[1] and len([f for f in listed[0] if f.endswith(".png")]) == 24
    assert printed.count("Generating synthetic dataset") == 1, printed[-2000:]
    assert printed.count("Reusing synthetic dataset") == 1, printed[-2000:]
