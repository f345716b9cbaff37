"""Seeding and the deterministic mode of ``training.deterministic``.

Off (the default): every RNG is seeded (Python, NumPy, torch on CPU and every GPU; the training
sampler and the data loader workers draw from the seed too), but kernels are free to pick fast
non-deterministic algorithms (cuDNN autotuning, atomic adds). On: PyTorch's deterministic
algorithms, cuDNN without autotuning, and a fixed cuBLAS workspace, so two runs of the same config
on the same machine and software give the same losses bit for bit. Operations that have no
deterministic implementation on the device (some CUDA backward passes of interpolation) warn
instead of failing (``warn_only=True``): those runs may still differ in the last bits.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from accelerate.utils import set_seed

#: The cuBLAS workspace that makes its GEMMs reproducible (CUDA >= 10.2; NVIDIA's documented value).
CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int, deterministic: bool = False) -> Callable[[], None]:
    """Seed every RNG (Accelerate's ``set_seed``); with ``deterministic`` also switch to
    deterministic kernels.

    Returns:
        A function that restores the previous deterministic-algorithm and cuDNN settings (the
        trainer calls it when the run ends, so that the process is left as it was found).
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if deterministic:
        # Read by cuBLAS when its handle is created: before the model's first GEMM on the GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    set_seed(seed, deterministic=deterministic)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    def restore() -> None:
        enabled, warn_only, cudnn_deterministic, cudnn_benchmark = previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark

    return restore
