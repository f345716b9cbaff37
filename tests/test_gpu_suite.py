"""benchmarks/gpu_suite.sh: every command line of the GPU run parses (arguments and the config
keys they set), checked on the CPU in one process without measuring anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _suite(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def test_every_suite_command_parses() -> None:
    result = _suite("--parse-only")
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line for line in result.stdout.splitlines() if line.startswith("ok: ")]
    assert len(commands) >= 20
    for needed in ("sam2.1-large-size", "'quantization': '4bit'", "'compare_compile': True"):
        assert any(needed in line for line in commands), needed


def test_a_bad_command_line_is_named() -> None:
    # QLoRA with a full fine-tuning preset: a config error, caught without loading a model
    bad = "60 train_step.py --model tiny --preset decoder_only --quantization 4bit"
    lines = f"60 train_step.py --model tiny --steps 1\n{bad}\n60 train_step.py --model nope\n"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "parse_commands.py")],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'benchmarks'}"},
    )
    assert result.returncode == 1
    assert f"bad suite command: {bad}" in result.stderr
    assert "finetune.mode" in result.stderr


def test_a_bf16_step_row_carries_the_prediction_and_trains_as_training_does(
    tmp_path: Path,
) -> None:
    """One tiny bf16 step on the CPU: the benchmark's model stores its frozen weights in bf16
    (as a bf16 LoRA run does), the naive variant keeps its own fp32 model, and the row has
    lora-info --memory's prediction beside the measurement."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    output = tmp_path / "rows.json"
    argv = ["--model", "tiny", "--steps", "1", "--batch_size", "1", "--prompts_per_image", "2"]
    argv += ["--precision", "bf16", "--compare", "--predict_memory", "--json", str(output)]
    naive, optimised = train_step.main(argv)
    assert naive.predicted_peak_memory_gb is None
    assert optimised.predicted_peak_memory_gb and optimised.predicted_peak_memory_gb > 0
    assert optimised.weights_gb < 0.6 * naive.weights_gb  # frozen weights in bf16
    rows = json.loads(output.read_text())
    assert [r["variant"] for r in rows] == ["naive", "optimised"]
    assert rows[1]["predicted_peak_memory_gb"] == optimised.predicted_peak_memory_gb
