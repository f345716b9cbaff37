"""Count what a training forward keeps for the backward pass, without computing anything.

The task's forward runs under ``torch._subclasses.FakeTensorMode``: every tensor has its real
shape, dtype and (CPU) device but no data, so SAM3 at 1008 px "runs" in seconds on a laptop.
``torch.autograd.graph.saved_tensors_hooks`` sees each tensor autograd saves; deduplicated by
storage and minus the parameters, their bytes are the activations a GPU must hold until the
backward pass frees them. CUDA's behaviour is reproduced on the CPU (:class:`Precision`
``target="cuda"``): dropout keeps a bool mask (the fused CUDA kernel; the CPU kernel keeps a
float one), autocast runs layer / group norms, softmax, exp, log, pow and sums in float32, as
CUDA's autocast does (the CPU's keeps them in bf16). Autocast's
bf16 copies of frozen weights are counted apart (:attr:`SavedTensors.weight_copy_bytes`):
QLoRA does not keep them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch._subclasses.fake_tensor as fake_tensor
import torch.nn.functional as F
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sam3_lora.tasks.checkpointing import disable_activation_checkpointing

#: Fake tensors up to this many elements keep their values: SAM3's DETR decoder reads its
#: feature-map size from a small tensor (``spatial_shapes``).
FAKE_CONSTANT_ELEMENTS = 16


def storage_key(tensor: Tensor) -> int:
    """An identity of the memory a tensor lives in (views share it)."""
    return tensor.untyped_storage()._cdata


class FakeSession:
    """One ``FakeTensorMode`` for a model and its runs; it keeps the values of tiny tensors
    (see :data:`FAKE_CONSTANT_ELEMENTS`), and real CPU tensors entering it become constants."""

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)

    @contextmanager
    def active(self) -> Iterator[FakeTensorMode]:
        previous = fake_tensor.CONSTANT_NUMEL_LIMIT
        fake_tensor.CONSTANT_NUMEL_LIMIT = FAKE_CONSTANT_ELEMENTS
        clear_transformers_caches()
        try:
            with self.mode:
                yield self.mode
        finally:
            fake_tensor.CONSTANT_NUMEL_LIMIT = previous
            clear_transformers_caches()


def clear_transformers_caches() -> None:
    """Empty the ``lru_cache`` s of ``transformers`` model classes: some keep tensors by shape
    (SAM's sine position embeddings, coordinate grids), and a fake one must not reach a real
    run, nor a real one a fake run."""
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("transformers.models."):
            continue
        for value in list(vars(module).values()):
            if not isinstance(value, type) or value.__module__ != name:
                continue
            for attribute in vars(value).values():
                function = getattr(attribute, "__func__", attribute)
                for cell in getattr(function, "__closure__", None) or ():
                    try:
                        contents = cell.cell_contents
                    except ValueError:  # an empty cell
                        continue
                    if hasattr(contents, "cache_clear"):
                        contents.cache_clear()


def make_fake(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """Replace every parameter and buffer of ``module`` (meta or CPU) by a fake CPU tensor of
    the same shape, dtype and ``requires_grad``, in place."""
    cpu = torch.device("cpu")

    def fake(tensor: Tensor) -> Tensor:
        if isinstance(tensor, FakeTensor):
            return tensor
        meta = tensor.detach() if tensor.is_meta else tensor.detach().to("meta")
        return FakeTensor(mode, meta, cpu)

    for submodule in module.modules():
        for name, parameter in list(submodule._parameters.items()):
            if parameter is not None:
                submodule._parameters[name] = torch.nn.Parameter(
                    fake(parameter), requires_grad=parameter.requires_grad
                )
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None:
                submodule._buffers[name] = fake(buffer)
    return module


class _CudaDropout(TorchFunctionMode):
    """Dropout as CUDA runs it in training: the fused kernel, which saves a bool mask."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout:
            names = ("input", "p", "training", "inplace")
            bound = {**dict(zip(names, args, strict=False)), **kwargs}
            p, training = bound.get("p", 0.5), bound.get("training", True)
            if training and 0 < p < 1 and not bound.get("inplace", False):
                return torch.native_dropout(bound["input"], p, True)[0]
        return func(*args, **kwargs)


#: Functions CUDA's autocast runs in float32 (the "ops that can autocast to float32" of the
#: PyTorch AMP docs that these models call; the CPU's autocast keeps most of them in bf16).
_CUDA_FLOAT32_FUNCTIONS = {
    F.layer_norm,
    F.group_norm,
    F.softmax,
    F.log_softmax,
    F.softplus,
    F.normalize,
    torch.softmax,
    torch.log_softmax,
    torch.Tensor.softmax,
    torch.Tensor.log_softmax,
    torch.exp,
    torch.Tensor.exp,
    torch.log,
    torch.Tensor.log,
    torch.pow,
    torch.Tensor.pow,
    torch.Tensor.__pow__,
    torch.sum,
    torch.Tensor.sum,
    torch.cumsum,
    torch.Tensor.cumsum,
    torch.rsqrt,
    torch.Tensor.rsqrt,
    torch.reciprocal,
    torch.Tensor.reciprocal,
}


class _CudaFloat32Ops(TorchFunctionMode):
    """CUDA autocast's float32 policy: lower-precision float inputs of those functions are cast
    to float32 first (so their outputs, and what they save, are float32 as on a GPU)."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs=None):
        kwargs = kwargs or {}
        if func in _CUDA_FLOAT32_FUNCTIONS and torch.is_autocast_enabled("cpu"):
            args = tuple(_to_float32(a) for a in args)
            kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _to_float32(value: Any) -> Any:
    if isinstance(value, Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value


@dataclass(frozen=True)
class Precision:
    """How the counted step runs.

    Attributes:
        dtype: the autocast dtype (bf16 / fp16), or None for float32.
        target: ``cuda``: as a GPU runs it (dropout keeps a bool mask, CUDA's float32 autocast
            ops), emulated on the CPU; ``cpu``: as this CPU runs it (to compare with real runs
            here).
    """

    dtype: torch.dtype | None = torch.bfloat16
    target: str = "cuda"


class _WeightCopies(TorchDispatchMode):
    """Records the storages of casts of the given tensors (autocast's bf16 weight copies)."""

    def __init__(self, sources: set[int]) -> None:
        super().__init__()
        self.sources = sources
        self.copies: dict[int, Any] = {}  # key -> storage, held so that keys stay unique

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs=None):
        out = func(*args, **(kwargs or {}))
        copy = func is torch.ops.aten._to_copy.default and isinstance(out, Tensor)
        if copy and isinstance(args[0], Tensor) and storage_key(args[0]) in self.sources:
            self.copies[storage_key(out)] = out.untyped_storage()
        return out


@dataclass(frozen=True)
class Count:
    """Bytes a step keeps: all (weight copies included), autocast weight copies, the largest
    single tensor and the most that one checkpointable layer saves (what its recomputation
    brings back in the backward pass under checkpointing; counted without checkpointing)."""

    bytes: int
    weight_copy_bytes: int
    largest: int
    largest_layer: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(
            self.bytes + other.bytes,
            self.weight_copy_bytes + other.weight_copy_bytes,
            max(self.largest, other.largest),
            max(self.largest_layer, other.largest_layer),
        )

    def per_images(self, images: int) -> Count:
        """This count of one image, for ``images`` images (the weight copies once)."""
        activations = (self.bytes - self.weight_copy_bytes) * images
        return Count(
            activations + self.weight_copy_bytes,
            self.weight_copy_bytes,
            self.largest * images,
            self.largest_layer * images,
        )


class SavedTensors:
    """Bytes of the tensors autograd saves inside the ``with`` block, plus those added with
    :meth:`keep` (outputs alive until the backward pass), each storage once, parameters not.

    Args:
        parameters: tensors that are already counted (the model's weights).
        precision: the autocast dtype and the device whose behaviour is reproduced.
    """

    def __init__(self, parameters: Iterable[Tensor], precision: Precision) -> None:
        self.parameter_keys = {storage_key(p) for p in parameters}
        self.precision = precision
        self.storages: dict[int, Any] = {}  # key -> storage (held: keys stay unique)
        self._copies = _WeightCopies(self.parameter_keys)
        self._stack = ExitStack()
        self.largest_layer = 0

    def __enter__(self) -> SavedTensors:
        if self.precision.target == "cuda":
            self._stack.enter_context(_CudaDropout())
            self._stack.enter_context(_CudaFloat32Ops())
        self._stack.enter_context(self._copies)
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack))
        if self.precision.dtype is not None:
            self._stack.enter_context(torch.autocast("cpu", dtype=self.precision.dtype))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _pack(self, tensor: Tensor) -> Tensor:
        self.keep(tensor)
        return tensor

    def keep(self, *tensors: Tensor | None) -> None:
        """Count these tensors too (once per storage; parameters never)."""
        for tensor in tensors:
            if tensor is None:
                continue
            key = storage_key(tensor)
            if key not in self.parameter_keys and key not in self.storages:
                self.storages[key] = tensor.untyped_storage()

    @property
    def bytes(self) -> int:
        """All counted bytes (weight copies included)."""
        return sum(s.nbytes() for s in self.storages.values())

    @property
    def weight_copy_bytes(self) -> int:
        """Bytes of autocast's low-precision copies of parameters among them."""
        return sum(s.nbytes() for k, s in self.storages.items() if k in self._copies.copies)

    @property
    def largest(self) -> int:
        """The largest single storage (activation gradients of its size appear in backward)."""
        return max((s.nbytes() for s in self.storages.values()), default=0)

    @contextmanager
    def layer(self) -> Iterator[None]:
        """Inside: one checkpointable layer's forward; what it saves updates
        :attr:`largest_layer`."""
        before = self.bytes
        yield
        self.largest_layer = max(self.largest_layer, self.bytes - before)

    def count(self) -> Count:
        return Count(self.bytes, self.weight_copy_bytes, self.largest, self.largest_layer)


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


def leaf_like(tensor: Tensor, batch: int) -> Tensor:
    """A leaf shaped as ``tensor`` with ``batch`` rows that requires grad as it did (the
    vision features of ``batch`` images, standing in for the encoder's output)."""
    leaf = tensor.new_zeros((batch, *tensor.shape[1:]))
    return leaf.requires_grad_(tensor.requires_grad)


@contextmanager
def counted_checkpointing(
    network: torch.nn.Module,
    layers: tuple[type[torch.nn.Module], ...],
    enable: Callable[[torch.nn.Module], int],
    on: bool,
    counter: SavedTensors,
) -> Iterator[None]:
    """Inside: ``network`` as training runs it with ``training.gradient_checkpointing`` ``on``.

    On: ``enable`` checkpoints the task's ``layers`` and their inputs are counted (the
    checkpoint keeps them). Off: what each of those layers saves is measured
    (:attr:`Count.largest_layer`, the recomputation's workspace under checkpointing).
    """
    with ExitStack() as stack:
        if on:
            enable(network)
            stack.callback(disable_activation_checkpointing, network)
        for layer in network.modules():
            if isinstance(layer, layers):
                if on:
                    handle = layer.register_forward_pre_hook(
                        _keep_inputs(counter), with_kwargs=True
                    )
                    stack.callback(handle.remove)
                else:
                    stack.enter_context(_measure_layer(layer, counter))
        yield


def _keep_inputs(counter: SavedTensors) -> Callable[..., None]:
    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tensors = tree_leaves([args, kwargs])  # e.g. the pixel decoder takes a list of maps
        counter.keep(*(t for t in tensors if isinstance(t, Tensor) and t.requires_grad))

    return hook


@contextmanager
def _measure_layer(layer: torch.nn.Module, counter: SavedTensors) -> Iterator[None]:
    """While inside, each forward of ``layer`` runs in :meth:`SavedTensors.layer`."""
    active: list[ExitStack] = []

    def enter(*_args: object) -> None:
        stack = ExitStack()
        stack.enter_context(counter.layer())
        active.append(stack)

    def leave(*_args: object) -> None:
        active.pop().close()

    handles = [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
