"""AdamW parameter groups from plain data: per-component learning rates, layer-wise decay, no
weight decay on biases and norms. Imports no task: a task passes its names and rules.

A group is an AdamW param-group dict: ``params``, ``lr``, ``weight_decay`` and ``name`` (for
reports). The schedulers scale each group's ``lr`` by the same factor, so ratios between groups
hold for the whole run, as in Meta's SAM3 trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

#: The key of :attr:`GroupRule.learning_rates` for every component without its own rate.
DEFAULT = "default"

#: ``parameter name -> (component, layer index, layers)`` in a layered trunk, or None outside.
#: Index 0 is the embedding, ``k + 1`` block ``k``; lr multiplier ``decay^(layers + 1 - index)``.
LayerOf = Callable[[str], "tuple[str, int, int] | None"]

NamedParameters = Iterable[tuple[str, torch.nn.Parameter]]


def no_decay_by_ndim(_name: str, parameter: torch.nn.Parameter) -> bool:
    """Biases and norm weights by shape: every parameter with fewer than two dimensions."""
    return parameter.ndim < 2


@dataclass(frozen=True)
class GroupRule:
    """How named parameters become AdamW groups.

    Attributes:
        component_of: parameter name -> its component (a task's component map).
        learning_rates: component -> base learning rate; :data:`DEFAULT` for the others.
        lr_scale: multiplies every base learning rate (Meta's ``lr_scale``).
        weight_decay: of the parameters that ``no_decay`` does not pick.
        no_decay: ``(name, parameter) -> True`` for parameters without weight decay.
        layer_of: the layer of a parameter in a layered trunk, for layer-wise decay (or None).
        layer_decay: the per-layer factor (1 = off).
    """

    component_of: Callable[[str], str]
    learning_rates: Mapping[str, float]
    lr_scale: float = 1.0
    weight_decay: float = 0.0
    no_decay: Callable[[str, torch.nn.Parameter], bool] = no_decay_by_ndim
    layer_of: LayerOf | None = None
    layer_decay: float = 1.0

    def base_learning_rate(self, component: str) -> float:
        if component in self.learning_rates:
            return self.learning_rates[component]
        if DEFAULT not in self.learning_rates:
            raise KeyError(f"no learning rate for `{component}` and no `{DEFAULT}` one")
        return self.learning_rates[DEFAULT]

    def layer_scale(self, name: str) -> tuple[int | None, float]:
        """``(layer index or None, learning-rate multiplier)`` of a parameter."""
        layer = self.layer_of(name) if self.layer_of is not None else None
        if layer is None:
            return None, 1.0
        _, index, layers = layer
        return index, self.layer_decay ** (layers + 1 - index)


def parameter_groups(named_parameters: NamedParameters, rule: GroupRule) -> list[dict]:
    """The trainable parameters grouped by (component, trunk layer, weight decay or not).

    Groups come in the order of their first parameter, so the same model always gives the same
    groups (an optimizer checkpoint loads into them). Frozen parameters are left out.

    Returns:
        AdamW param groups ``{"name", "params", "lr", "weight_decay"}``; names look like
        ``detr_decoder``, ``vision_encoder.layer32`` or ``mask_decoder.no_wd``.
    """
    groups: dict[tuple[str, int | None, bool], dict] = {}
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        component = rule.component_of(name)
        index, scale = rule.layer_scale(name)
        decays = not rule.no_decay(name, parameter)
        key = (component, index, decays)
        if key not in groups:
            label = component if index is None else f"{component}.layer{index}"
            groups[key] = {
                "name": label if decays else f"{label}.no_wd",
                "params": [],
                "lr": rule.base_learning_rate(component) * rule.lr_scale * scale,
                "weight_decay": rule.weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(parameter)
    return list(groups.values())


def decay_groups(
    named_parameters: NamedParameters, learning_rate: float, weight_decay: float
) -> list[dict]:
    """The two groups of a LoRA run (what the trainer has always built): ``decay`` (parameters
    with two or more dimensions) and ``no_decay`` (biases, norms), both at ``learning_rate``.
    Both groups are always there (an empty one included), so old optimizer checkpoints load."""
    trainable = [p for _, p in named_parameters if p.requires_grad]
    return [
        {
            "name": "decay",
            "params": [p for p in trainable if p.ndim >= 2],
            "lr": learning_rate,
            "weight_decay": weight_decay,
        },
        {
            "name": "no_decay",
            "params": [p for p in trainable if p.ndim < 2],
            "lr": learning_rate,
            "weight_decay": 0.0,
        },
    ]


def group_summary(groups: list[dict]) -> list[tuple[str, int, int, float, float]]:
    """``(name, tensors, parameters, lr, weight_decay)`` per group, for tables and logs."""
    return [
        (
            group["name"],
            len(group["params"]),
            sum(p.numel() for p in group["params"]),
            group["lr"],
            group["weight_decay"],
        )
        for group in groups
    ]
