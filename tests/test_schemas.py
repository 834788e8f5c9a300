"""The code is the schema: each structured-config dataclass holds exactly its constructor's parameters,
and every yaml of every group rides on one."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from attnexp.config.compose import compose, group_options, groups, split_hydra
from attnexp.config.schema import SCHEMAS

HYDRA_KEYS = {"_target_", "_partial_"}
BUILT_GROUPS = ("data", "model", "attention", "seqpool", "alpha", "optimizer", "scheduler")


def constructor_parameters(cls: type) -> set[str]:
    if cls.__init__ is torch.nn.Module.__init__:  # a module without arguments of its own
        return set()
    params = inspect.signature(cls).parameters.values()
    return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def forwards_keywords(cls: type) -> bool:
    return cls.__init__ is not torch.nn.Module.__init__ and any(
        p.kind == p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()
    )


def expected_fields(schema: type, target: str) -> set[str]:
    """What the schema must hold for this target: its constructor's parameters (and, where it hands
    **kwargs on, those of the class it hands them to), minus what the code injects, plus routed keys."""
    cls = get_class(target)
    params = constructor_parameters(cls)
    if forwards_keywords(cls):
        params |= constructor_parameters(get_class(schema.FORWARDS_TO))
    return params - set(getattr(schema, "INJECTED", ())) | set(getattr(schema, "ROUTED", ()))


def yaml_nodes():
    """(group, choice, node) for every yaml of every group whose objects the job builds."""
    for group in BUILT_GROUPS:
        for choice in group_options(group):
            body, _ = split_hydra(
                compose(
                    [f"{group}={choice}", "alpha=constant"] if group != "alpha" else [f"alpha={choice}"],
                    return_hydra_config=True,
                )
            )
            yield group, choice, body[group]


@pytest.fixture(scope="module")
def nodes():
    return list(yaml_nodes())


def test_every_built_yaml_rides_on_a_schema_that_matches_its_target(nodes):
    for group, choice, node in nodes:
        if not node:  # alpha=none: no schedule
            continue
        schema = OmegaConf.get_type(node)
        assert dataclasses.is_dataclass(schema), f"{group}={choice} has no schema"
        fields = {f.name for f in dataclasses.fields(schema)} - HYDRA_KEYS
        assert fields == expected_fields(schema, node._target_), (
            f"{group}={choice}: {schema.__name__} ≠ {node._target_}"
        )


def test_every_schema_is_used_by_a_yaml_and_matches_its_default_target(nodes):
    used = {OmegaConf.get_type(node) for _, _, node in nodes if node}
    for path, schema in SCHEMAS.items():
        if path in PLAIN_NODES or path in LIGHTNING_NODES:
            continue
        assert schema in used, f"schema/{path} is used by no yaml"
        target = next(f.default for f in dataclasses.fields(schema) if f.name == "_target_")
        fields = {f.name for f in dataclasses.fields(schema)} - HYDRA_KEYS
        assert fields == expected_fields(schema, target), path


PLAIN_NODES = ("root", "paths/paths")  # no constructor
LIGHTNING_NODES = {"trainer/trainer": "trainer", "logger/tensorboard": "logger"}  # (schema, the group using it)


def test_lightning_nodes_hold_only_arguments_of_their_class():
    """The Trainer and the logger are Lightning's: their schemas hold a subset of the class's
    arguments (the rest keep Lightning's defaults), and what attnexp injects is an argument too."""
    cfg = compose([], return_hydra_config=False)
    for path, group in LIGHTNING_NODES.items():
        schema = SCHEMAS[path]
        assert OmegaConf.get_type(cfg[group]) is schema, group
        target = next(f.default for f in dataclasses.fields(schema) if f.name == "_target_")
        params = constructor_parameters(get_class(target))
        fields = {f.name for f in dataclasses.fields(schema)} - HYDRA_KEYS
        assert fields <= params, (path, fields - params)
        assert set(getattr(schema, "INJECTED", ())) <= params - fields, path


def test_the_schema_tree_is_not_a_choice_users_see():
    assert "schema" not in groups()
    assert all("schema" not in group_options(g) for g in groups())


def test_a_wrong_type_fails_while_composing_from_the_exception_fields():
    from attnexp.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose(["attention=convnn", "attention.K=nine"])
    assert (err.value.key, err.value.value, err.value.reason) == ("attention.K", "nine", "expected an integer")
    with pytest.raises(ConfigError) as err:
        compose(["model.dimm=3"])
    assert err.value.key == "model.dimm" and "unknown key" in err.value.reason


def test_the_root_node_is_typed_too():
    cfg = compose([])
    assert isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg).__name__ == "RootSchema"
