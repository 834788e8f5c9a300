"""Which config key an exception is about.

Objects are built group by group (attnexp.assemble.objects), each inside `blamed(group)`.
When something raises, the key is found by rule, not by reading messages:
- the group is that of the innermost object whose constructor or forward was
  running: an `AttentionLayer` is the attention group's (even when the model
  built it), a `ValueMap` the SeqPool group's (or `attention.value_map` inside
  an attention module), anything else the group being built;
- an `ArgumentError` names its argument: the key is `<group>.<arg>` (a contract
  keyword the attention config leaves null is the backbone's: `model.<arg>`);
- any other exception (torch's, Lightning's) is pinned to the one knob of that
  group whose value its message quotes, else to the group itself.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from attnexp.errors import ArgumentError, ConfigError, StartupError


def root_cause(exc: BaseException) -> BaseException:
    """Hydra's InstantiationException wraps the constructor's own exception."""
    from hydra.errors import InstantiationException

    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _selves(exc: BaseException) -> list[Any]:
    """The `self` of every frame the exception passed through, innermost first."""
    selves, tb = [], exc.__traceback__
    while tb is not None:
        selves.append(tb.tb_frame.f_locals.get("self"))
        tb = tb.tb_next
    return selves[::-1]


def owning_group(group: str, exc: BaseException) -> str:
    from attnexp.layers.contract import AttentionLayer
    from attnexp.layers.value_maps import ValueMap

    in_map = False
    for obj in _selves(exc):
        if isinstance(obj, AttentionLayer):
            return "attention.value_map" if in_map else "attention"
        in_map = in_map or isinstance(obj, ValueMap)
    if in_map:
        return {"model": "seqpool", "attention": "attention.value_map"}.get(group, group)
    return group


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if not str(key).startswith("_"):
                yield from _leaves(value, f"{prefix}{key}.")
    elif node is not None and not isinstance(node, (bool, list)):
        yield prefix[:-1], node


def quoted_knob(node: Any, message: str) -> tuple[str, Any] | None:
    """The one knob of `node` whose value the message quotes (as a whole token), if exactly one."""
    if not isinstance(node, DictConfig):
        return None
    try:
        leaves = dict(_leaves(OmegaConf.to_container(node, resolve=True)))
    except Exception:  # an unresolvable interpolation elsewhere in the node
        return None
    hits = [
        (key, value)
        for key, value in leaves.items()
        if str(value) and re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message)
    ]
    return hits[0] if len(hits) == 1 else None


def _supplier(owner: str, arg: str, cfg: DictConfig | None) -> str:
    """A contract keyword the attention config leaves null came from the backbone: the model's key."""
    from attnexp.layers.contract import CONTRACT

    if (
        owner == "attention"
        and arg in CONTRACT
        and cfg is not None
        and OmegaConf.select(cfg, f"attention.{arg}") is None
    ):
        return "model"
    return owner


def config_error(group: str, exc: BaseException, node: Any = None, cfg: DictConfig | None = None) -> StartupError:
    exc = root_cause(exc)
    if isinstance(exc, StartupError):
        return exc
    owner = owning_group(group, exc)
    if isinstance(exc, ArgumentError):
        return ConfigError(f"{exc.group or _supplier(owner, exc.arg, cfg)}.{exc.arg}", exc.value, exc.reason)
    if owner != group:
        node = OmegaConf.select(cfg, owner) if cfg is not None else None
    message = str(exc).strip()
    reason = message.splitlines()[0] if message else type(exc).__name__
    if isinstance(exc, TypeError):
        reason = f"{type(exc).__name__}: {reason}"
    knob = quoted_knob(node, message)
    if knob is not None:
        return ConfigError(f"{owner}.{knob[0]}", knob[1], reason)
    return ConfigError(owner, ..., reason)


@contextmanager
def blamed(group: str, node: Any = None, cfg: DictConfig | None = None) -> Iterator[None]:
    """Turn whatever the body raises into a StartupError naming the key of `group` it is about.
    `cfg` (the whole config) lets an error of another group (attention built by the model) name its own node."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # constructors raise anything; all of it is about the config
        raise config_error(group, exc, node, cfg) from exc
