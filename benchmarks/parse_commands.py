"""Check benchmark command lines in one process: each line of stdin is ``<timeout_s> <script>
<args...>`` as ``gpu_suite.sh`` lists them; every script's ``main(args + ["--parse_only"])`` runs
(arguments and the config keys they set validated, nothing measured). Exit 1 at the first bad
line, naming it.

    printf '60 train_step.py --model tiny\\n' | python benchmarks/parse_commands.py
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path

SCRIPTS = ("train_step.py", "inference_latency.py")


def check(line: str) -> str | None:
    """None when ``line`` parses, else why not."""
    words = shlex.split(line)
    if len(words) < 2 or not words[0].isdigit():
        return "expected `<timeout_s> <script> <args...>`"
    script, args = words[1], words[2:]
    if script not in SCRIPTS:
        return f"unknown script {script} (known: {', '.join(SCRIPTS)})"
    module = importlib.import_module(script.removesuffix(".py"))
    try:
        module.main([*args, "--parse_only"])
    except SystemExit as error:  # argparse: a bad flag or value
        return f"argument error (exit {error.code})"
    except Exception as error:  # a config key the flags set is invalid
        return f"{type(error).__name__}: {error}"
    return None


def main() -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    for line in lines:
        problem = check(line)
        if problem:
            print(f"bad suite command: {line}\n  {problem}", file=sys.stderr)
            return 1
    print(f"{len(lines)} commands parse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
