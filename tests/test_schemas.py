"""The code is the schema: attnexp/config/schema.py is what scripts/gen_schema.py writes from the
constructors, every yaml rides on it, and each value a yaml sets fits its constructor's annotation."""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib.util
import inspect
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from attnexp.config import schema
from attnexp.config.compose import compose, group_options, groups, hydra_config, set_hydra_key, split_hydra
from attnexp.config.nodes import Mode, RootSchema

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gen_schema", REPO / "scripts" / "gen_schema.py")
gen = sys.modules["gen_schema"] = importlib.util.module_from_spec(_spec)  # dataclasses need their module there
_spec.loader.exec_module(gen)

# values attnexp turns into Lightning's own before the Trainer sees them (build.objects.make_trainer)
ATTNEXP_VALUES = {"precision": ("auto",)}


def test_the_committed_schema_is_what_the_generator_writes():
    assert gen.render() == gen.TARGET.read_text(), "stale: run `python scripts/gen_schema.py`"


# ---------------------------------------------------------------- every yaml against its constructor


def fits(value, kind) -> bool:
    """Whether a yaml value is one the annotation accepts (a yaml list for a tuple or list)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind in (typing.Any, inspect.Parameter.empty):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(fits, value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if origin is collections.abc.Callable:
        return False  # a scalar is never a factory (a nested _target_ node is skipped)
    return isinstance(value, origin or kind)


def annotations(node: DictConfig, path: str) -> dict:
    """{key: annotation} for a node: its target's parameters (and those its **kwargs hand on to), the keys
    another object reads (the generator's table), null allowed where the backbone passes the value."""
    entry = gen.TABLE[path]
    out = {}
    for target in filter(None, (entry.forwards_to, node._target_)):  # the node's own target wins
        cls = get_class(target)
        hints = typing.get_type_hints(cls.__init__)
        out |= {p: hints.get(p, typing.Any) for p in inspect.signature(cls).parameters}
    out |= {key: eval(kind, vars(typing)) for key, kind in entry.routed.items()}
    out |= {key: typing.Optional[out[key]] for key in entry.filled if key in out}
    return out


def checked_values(node: DictConfig, path: str) -> list[str]:
    """Check each scalar and list the node sets; the keys accounted for. Left to others: nested `_target_`
    nodes (their own yamls are checked). Skipped: `???` (the user's to set) and interpolations into keys
    the round's other groups lack (a text model beside image data: other compositions pair them)."""
    kinds, done = annotations(node, path), []
    for key in node:
        if str(key).startswith("_") or OmegaConf.is_missing(node, key):
            continue
        assert key in kinds, f"{path}: {key} is not a parameter of {node._target_}"
        try:
            value = node[key]
            if isinstance(value, DictConfig) and "_target_" in value:
                done.append(key)
                continue
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except (InterpolationResolutionError, MissingMandatoryValue):
            continue
        ok = fits(value, kinds[key]) or value in ATTNEXP_VALUES.get(key, ())
        assert ok, f"{path} ({node._target_}): {key}={value!r} does not fit {kinds[key]}"
        done.append(key)
    return done


def compositions():
    """Every choice of every group, in few compositions: each takes the next choice of every group at once;
    a preset (`@package _global_`: it sets other groups' keys) is composed alone."""
    presets = [
        g for g in groups() if "@package _global_" in (REPO / "conf" / g / f"{group_options(g)[0]}.yaml").read_text()
    ]
    rounds = {g: group_options(g) for g in groups() if g not in presets}
    for i in range(max(map(len, rounds.values()))):
        yield [f"{g}={options[i % len(options)]}" for g, options in rounds.items()]
    for g in presets:
        for choice in group_options(g):
            yield [f"{g}={choice}"]


def test_every_yaml_value_fits_its_constructor_and_every_schema_is_used():
    paths = {cls: path for path, cls in schema.SCHEMAS.items()}
    seen: dict[str, set] = {}
    for overrides in compositions():
        cfg = compose(overrides, return_hydra_config=True)
        set_hydra_key(cfg, "hydra.runtime.output_dir", "outputs/job")  # what Hydra sets as the job starts
        body, _ = split_hydra(cfg)
        with hydra_config(cfg):  # paths.output_dir reads ${hydra:runtime.output_dir}
            for group in groups():
                node = body.get(group)
                if not isinstance(node, DictConfig) or "_target_" not in node:
                    continue
                kind = OmegaConf.get_type(node)
                assert kind in paths, f"{overrides}: {group} rides on no generated schema ({kind})"
                seen.setdefault(paths[kind], set()).update(checked_values(node, paths[kind]))
    assert set(seen) == set(schema.SCHEMAS), f"schemas no yaml attaches: {set(schema.SCHEMAS) - set(seen)}"
    for path, cls in schema.SCHEMAS.items():  # every field, a yaml's value or the schema's default, somewhere
        fields = {f.name for f in dataclasses.fields(cls)} - {"_target_", "_partial_"}
        assert fields <= seen[path], f"{path}: never checked: {fields - seen[path]}"


def test_the_checks_find_what_they_look_for():
    assert fits([0.9, 0.999], tuple[float, float]) and not fits([0.9], tuple[float, float])
    assert fits(3, float) and not fits(3.0, int) and not fits(True, int) and not fits("x", int | None)
    assert fits(None, typing.Optional[typing.Callable[..., object]]) and not fits("x", typing.Callable[..., object])
    node = OmegaConf.create(OmegaConf.to_container(compose(["data=fake"]).data))  # untyped: what a loose schema lets by
    assert "batch_size" in checked_values(node, "data/image")
    node.eval_batch_size = 12.5
    with pytest.raises(AssertionError, match="eval_batch_size=12.5"):
        checked_values(node, "data/image")
    node.eval_batch_size, node.evalbatch = 12, 1
    with pytest.raises(AssertionError, match="evalbatch is not a parameter"):
        checked_values(node, "data/image")


# ---------------------------------------------------------------- the override table and the enums


def test_loose_annotations_take_their_config_type_from_the_override_table():
    import torch

    lr = typing.get_type_hints(torch.optim.AdamW.__init__)["lr"]  # float | Tensor
    with pytest.raises(TypeError, match="OVERRIDES"):
        gen.config_type(lr)
    assert typing.get_type_hints(schema.AdamWSchema)["lr"] is float
    assert [a.value for a in schema.Accelerator] == list(gen.OVERRIDES["accelerator"])
    fields = set().union(*(typing.get_type_hints(cls) for cls in schema.SCHEMAS.values()))
    assert set(gen.OVERRIDES) <= fields, f"overrides no target has: {set(gen.OVERRIDES) - fields}"


def test_the_enum_keys_read_as_their_strings():
    cfg = compose(["mode=summary", "trainer=cpu", "sweep.pack=alpha"])
    mode = cfg.mode
    assert isinstance(mode, Mode) and mode == "summary" and {"summary": 1}[mode] == 1
    assert (str(mode), f"{mode}", f"{cfg.trainer.accelerator}", f"{cfg.sweep.pack}") == (
        "summary",
        "summary",
        "cpu",
        "alpha",
    )
    assert json.dumps([mode]) == '["summary"]'
    assert OmegaConf.to_container(cfg, enum_to_str=True)["mode"].__class__ is str
    assert "mode: summary\n" in OmegaConf.to_yaml(cfg)


def test_a_value_outside_a_fixed_set_fails_while_composing_without_torch():
    code = (
        "import sys, io, contextlib\n"
        "from attnexp.cli import main\n"
        "for argv in (['trainer.accelerator=tpu'], ['mode=fit'], ['-m', 'seed=0,1', 'sweep.pack=seeds']):\n"
        "    err = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stderr(err):\n"
        "            main(argv)\n"
        "    except SystemExit as e:\n"
        "        print(e.code, err.getvalue().strip())\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "2 attnexp: error: trainer.accelerator=tpu: one of auto, cpu, gpu, cuda",
        "2 attnexp: error: mode=fit: one of train, eval, summary",
        "2 attnexp: error: sweep.pack=seeds: one of seed, alpha (or null)",
    ]


def test_the_schema_modules_import_no_torch():
    code = "import sys, attnexp.config.nodes; assert not {'torch', 'pytorch_lightning'} & set(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- composing


def test_the_schema_tree_is_not_a_choice_users_see():
    assert "schema" not in groups()
    assert all("schema" not in group_options(g) for g in groups())


def test_a_wrong_type_fails_while_composing_from_the_exception_fields():
    from attnexp.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose(["attention=convnn", "attention.K=nine"])
    assert (err.value.key, err.value.value, err.value.reason) == ("attention.K", "nine", "expected an integer")
    with pytest.raises(ConfigError) as err:
        compose(["data.train_size=abc"])
    assert (err.value.key, err.value.reason) == ("data.train_size", "expected an integer or null")
    with pytest.raises(ConfigError) as err:
        compose(["model.dimm=3"])
    assert err.value.key == "model.dimm" and "unknown key" in err.value.reason
    for override in ("trainer.accelerator=tpu", "mode=fit", "sweep.pack=seeds"):  # composing alone refuses them
        with pytest.raises(ConfigError, match="one of"):
            compose([override])


def test_the_root_node_is_typed_too():
    cfg = compose([])
    assert isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is RootSchema
    assert cfg.timing.inference is False and OmegaConf.get_type(cfg.timing).__name__ == "TimingSchema"
