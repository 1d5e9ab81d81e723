"""The settings of a model's config that a port or a converter may read otherwise, each as the change it makes.

A converter that does not know a field computes with what it assumes instead: RoPE's base left at
10000 where transformers 5 moved it into `rope_parameters` (mlx-lm 0.32), a norm's epsilon at 1e-6
(keras-hub 0.32's converter), no sliding window and no final soft-cap (CTranslate2 4.8's Gemma 2).
Each such reading is a `Setting`: the field, a sentence saying what it tries, and the changes to the
config's top-level fields that make it. The settings are found from the config's own fields (any
field spelled as transformers spells it), never from its model type; the reference is run again with
them by `parity check` (commands/check/settings.py).

    for setting in settings_to_try(model.config.to_dict()):
        config = copy.deepcopy(model.config)
        for field, value in setting.changes:
            setattr(config, field, value)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterator, Mapping

from parity.core.config_shape import config_shape

ROPE_BASE_ASSUMED = 10000.0          # the base a port that finds none uses (Meta's, and most converters')
EPSILONS_ASSUMED = (1e-5, 1e-6)      # the two every RMSNorm port defaults to
# an activation for the one a port confuses it with: the tanh approximation for erf's, and the reverse
ACTIVATIONS_CONFUSED = {"gelu_pytorch_tanh": "gelu", "gelu_new": "gelu", "gelu_fast": "gelu",
                        "gelu": "gelu_pytorch_tanh"}
ACTIVATION_FIELDS = ("hidden_act", "hidden_activation")
FULL, SLIDING = "full_attention", "sliding_attention"
GENERIC = "config_setting"           # the cause of a setting no more specific detector names


@dataclass(frozen=True)
class Setting:
    """One config field read otherwise: `changes` sets top-level fields of the config to these values."""

    field: str                              # as config.json spells it: "rope_parameters.rope_theta"
    text: str                               # what it tries, beside what the config says
    changes: tuple[tuple[str, Any], ...]
    cause: str                              # the diagnosis that names it alone

    def __repr__(self) -> str:
        return f"<Setting {self.field}: {self.text}>"

    @property
    def fields(self) -> frozenset[str]:
        """The top-level config fields it changes (two settings that share one cannot be tried together)."""
        return frozenset(field for field, _ in self.changes)


def changes_of(settings: tuple[Setting, ...]) -> tuple[tuple[str, Any], ...]:
    """The changes that make `settings` together (no two of them set the same field)."""
    return tuple(change for setting in settings for change in setting.changes)


def settings_to_try(fields: Mapping[str, Any]) -> tuple[Setting, ...]:
    """Every reading of `fields` (a config's `to_dict()`) a port or converter is known to make otherwise."""
    return tuple(chain(_epsilons(fields), _rope(fields), _windows(fields), _soft_caps(fields),
                       _attention_scalar(fields), _multipliers(fields), _activations(fields)))


def _epsilons(fields: Mapping[str, Any]) -> Iterator[Setting]:
    for field, value in fields.items():
        if _is_float(value) and value > 0 and (field.endswith("_eps") or field.endswith("epsilon")):
            for assumed in EPSILONS_ASSUMED:
                if not math.isclose(assumed, value, rel_tol=1e-3):
                    yield Setting(field, f"{field} {assumed:g} where the config says {value:g}",
                                  ((field, assumed),), "norm_epsilon")


def _rope(fields: Mapping[str, Any]) -> Iterator[Setting]:
    """RoPE's base left at 10000 and its scaling left out: in `rope_parameters` (transformers 5, one set per
    layer type where a model keeps several) and in the older top-level `rope_theta` and `rope_scaling`."""
    parameters = fields.get("rope_parameters")
    if isinstance(parameters, Mapping) and parameters and all(isinstance(v, Mapping) for v in parameters.values()):
        for kind, one in parameters.items():
            yield from _rope_parameters(one, f"rope_parameters.{kind}",
                                        lambda changed, kind=kind: {**parameters, kind: changed})
    elif isinstance(parameters, Mapping):
        yield from _rope_parameters(parameters, "rope_parameters", lambda changed: changed)
    theta = fields.get("rope_theta")
    if _is_float(theta) and not math.isclose(theta, ROPE_BASE_ASSUMED):
        yield Setting("rope_theta", f"rope_theta {ROPE_BASE_ASSUMED:g} where the config says {theta:g}",
                      (("rope_theta", ROPE_BASE_ASSUMED),), "rope_theta")
    scaling = fields.get("rope_scaling")
    if isinstance(scaling, Mapping) and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        kind = scaling.get("rope_type", scaling.get("type"))
        yield Setting("rope_scaling", f"no RoPE scaling where the config says {kind}", (("rope_scaling", None),),
                      "rope_scaling")


def _rope_parameters(parameters: Mapping[str, Any], field: str, placed) -> Iterator[Setting]:
    """The settings of one set of RoPE parameters at `field`; `placed(changed)` is the whole new field value."""
    top = field.split(".", 1)[0]
    theta = parameters.get("rope_theta")
    if _is_float(theta) and not math.isclose(theta, ROPE_BASE_ASSUMED):
        yield Setting(f"{field}.rope_theta", f"RoPE's base {ROPE_BASE_ASSUMED:g} where the config says {theta:g} "
                      f"({field}.rope_theta)", ((top, placed({**parameters, "rope_theta": ROPE_BASE_ASSUMED})),),
                      "rope_theta")
    kind = parameters.get("rope_type")
    if kind not in (None, "default") and _is_float(theta):
        yield Setting(f"{field}.rope_type", f"no RoPE scaling where the config says {kind} ({field})",
                      ((top, placed({"rope_type": "default", "rope_theta": theta})),), "rope_scaling")
    factor = parameters.get("partial_rotary_factor")
    if _is_float(factor) and factor < 1:
        yield Setting(f"{field}.partial_rotary_factor", f"every dimension rotated where the config rotates "
                      f"{factor:g} of them ({field}.partial_rotary_factor)",
                      ((top, placed({**parameters, "partial_rotary_factor": 1.0})),), GENERIC)


def _windows(fields: Mapping[str, Any]) -> Iterator[Setting]:
    """No sliding window (every layer attending to every earlier key), or the window one key off."""
    window = fields.get("sliding_window")
    types = fields.get("layer_types")
    sliding = [kind for kind in types if kind == SLIDING] if isinstance(types, (list, tuple)) else []
    if sliding:
        yield Setting("layer_types", f"no sliding window where the config has {len(sliding)} of {len(types)} layers "
                      f"sliding{f' (window {window})' if isinstance(window, int) else ''}",
                      (("layer_types", [FULL if kind == SLIDING else kind for kind in types]),), "sliding_window")
    elif isinstance(window, int) and not isinstance(window, bool) and fields.get("use_sliding_window") is not False:
        yield Setting("sliding_window", f"no sliding window where the config says {window}",
                      (("sliding_window", None),), "sliding_window")
    if (sliding or fields.get("use_sliding_window") is not False) and isinstance(window, int) and window > 1 \
            and not isinstance(window, bool):
        for off in (-1, 1):
            yield Setting("sliding_window", f"a window of {window + off} where the config says {window}",
                          (("sliding_window", window + off),), "sliding_window")


def _soft_caps(fields: Mapping[str, Any]) -> Iterator[Setting]:
    for field, value in fields.items():
        if field.endswith("softcapping") and _is_float(value) and value > 0:
            yield Setting(field, f"no soft-cap where the config's {field} is {value:g}",
                          ((field, None),), GENERIC)


def _attention_scalar(fields: Mapping[str, Any]) -> Iterator[Setting]:
    """Gemma's `query_pre_attn_scalar` read as the head size (scores scaled by 1/sqrt(head_dim))."""
    scalar, head_dim = fields.get("query_pre_attn_scalar"), config_shape(dict(fields)).head_dim
    if _is_float(scalar) and head_dim and not math.isclose(scalar, head_dim):
        yield Setting("query_pre_attn_scalar", f"scores scaled by 1/sqrt({head_dim}) (the head size) where the "
                      f"config says 1/sqrt({scalar:g}) (query_pre_attn_scalar)",
                      (("query_pre_attn_scalar", head_dim),), "attention_scale")


def _multipliers(fields: Mapping[str, Any]) -> Iterator[Setting]:
    """Granite's multipliers left out: each 1, and the attention's the usual 1/sqrt(head_dim)."""
    head_dim = config_shape(dict(fields)).head_dim
    for field, value in fields.items():
        if not _is_float(value) or not (field.endswith("_multiplier") or field == "logits_scaling"):
            continue
        plain = head_dim ** -0.5 if field == "attention_multiplier" and head_dim else 1.0
        if not math.isclose(value, plain, rel_tol=1e-6):
            yield Setting(field, f"{field} {plain:g} where the config says {value:g}", ((field, plain),),
                          "attention_scale" if field == "attention_multiplier" else GENERIC)


def _activations(fields: Mapping[str, Any]) -> Iterator[Setting]:
    for field in ACTIVATION_FIELDS:
        value = fields.get(field)
        if isinstance(value, str) and value in ACTIVATIONS_CONFUSED:
            other = ACTIVATIONS_CONFUSED[value]
            yield Setting(field, f"{field} {other} where the config says {value}", ((field, other),),
                          "activation_variant")


def _is_float(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
