"""Composition: overrides → the config a job runs with, torch-free.

Types, unknown keys, unknown choices and values outside a fixed set fail here, in ~0.3 s: the
schemas (attnexp/config/schema.py, generated; attnexp/config/nodes.py) ride along in every yaml,
and Hydra's exceptions carry the key, the value and the expected type as fields, which become
one `ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from contextlib import contextmanager
from enum import Enum
from importlib.resources import files
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

import attnexp.config.nodes  # noqa: F401  (registers the schemas the yamls name, nodes and generated ones)
from attnexp.errors import ConfigError

CONFIG_MODULE = "attnexp.conf"

# Keys that never tell two variants apart: where the data lives, how fast it is read, threads,
# progress bars, the seed, resuming and sweep bookkeeping. One list for the job folders' names
# (hydra.job.config.override_dirname.exclude_keys reads it), attnexp-report's grouping and a run's
# identity (attnexp/train/identity.py, which keeps the seed).
BOOKKEEPING_KEYS = (
    "seed", "ckpt_path", "experiment", "data.root", "data.num_workers", "data.download",
    "paths.data_dir", "paths.output_dir", "logger.save_dir", "compute.num_threads", "trainer.enable_progress_bar", "sweep.resume", "sweep.dry_run", "sweep.swept",
    "sweep.pack", "sweep.members", "sweep.seeds", "sweep.pilot", "sweep.max_seeds", "sweep.precision", "sweep.metric",
    "sweep.statistic", "sweep.baseline", "sweep.reuse", "paths.reuse_roots",
)  # fmt: skip
BOOKKEEPING_PREFIXES = ("hydra.", "hydra/", "sweep.", "paths.", "timing.")


def is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING_KEYS or key.startswith(BOOKKEEPING_PREFIXES)


def split_override(override: str) -> tuple[str, str]:
    """(key, value) of an override as typed: `+key=value`, `~key` and `key=value` alike."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


NAME_MAX = 255  # bytes in one path component (Linux and macOS file systems)


def job_dir(override_dirname: str) -> str:
    """A sweep job's folder name from its overrides; path separators in values must not nest folders.
    A name too long for the file system keeps its start and ends in a hash of the whole."""
    name = override_dirname.replace("/", "_").replace(os.sep, "_") or "default"
    if len(name.encode()) <= NAME_MAX:
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return name.encode()[: NAME_MAX - len(digest) - 1].decode(errors="ignore") + "~" + digest


def first_set(*values):
    """The first value that is not null (`multirun/<date>/<time>_<experiment or sweep>`)."""
    return next((v for v in values if v is not None), None)


OmegaConf.register_new_resolver("attnexp_bookkeeping", lambda: list(BOOKKEEPING_KEYS), replace=True)
OmegaConf.register_new_resolver("attnexp_job_dir", job_dir, replace=True)
OmegaConf.register_new_resolver("attnexp_first_set", first_set, replace=True)
TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


NOT_GROUPS = ("hydra", "anchors", "__pycache__")  # Hydra's own node; attnexp-report's published numbers


def group_options(group: str) -> list[str]:
    """The choices of a config group: its yaml files (the schema/ tree is not a group users pick from)."""
    folder = files(CONFIG_MODULE).joinpath(group)
    try:
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def groups() -> list[str]:
    """The user-facing config groups (folders of conf/), hydra's own left out."""
    root = files(CONFIG_MODULE)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in NOT_GROUPS and group_options(p.name))


def _expected(schema: Any, key: Any) -> str:
    kind = typing.get_type_hints(schema).get(str(key)) if dataclasses.is_dataclass(schema) else None
    kinds = [k for k in typing.get_args(kind) if k is not type(None)]
    optional = typing.get_origin(kind) is typing.Union and len(kinds) == 1
    inner = kinds[0] if optional else kind
    if isinstance(inner, type) and issubclass(inner, Enum):
        return f"one of {', '.join(m.value for m in inner)}" + (" (or null)" if optional else "")
    origin = typing.get_origin(inner)
    name = "a list" if origin is list else TYPE_NAMES.get(getattr(inner, "__name__", ""), "another type")
    return f"expected {name}" + (" or null" if optional else "")


def _known_keys(schema: Any) -> str:
    if not dataclasses.is_dataclass(schema):
        return ""
    names = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    return f" (known: {', '.join(names)})"


def composition_error(exc: Exception) -> ConfigError:
    """Hydra's or OmegaConf's exception → ConfigError, from the exception's own fields."""
    from hydra.errors import MissingConfigException, OverrideParseException

    cause = exc
    while not isinstance(cause, (OmegaConfBaseException, MissingConfigException)) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, MissingConfigException) and cause.missing_cfg_file:
        group, _, choice = cause.missing_cfg_file.rpartition("/")
        options = group_options(group)
        if options:
            return ConfigError(group, choice, f"unknown choice; available: {', '.join(options)}")
        return ConfigError(cause.missing_cfg_file, ..., "no such config group or file")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return ConfigError(
            cause.full_key,
            ...,
            f"unknown key{_known_keys(cause.object_type)}; add ++{cause.full_key}=VALUE only on purpose",
        )
    if isinstance(cause, ValidationError) and cause.full_key:
        return ConfigError(cause.full_key, cause.value, _expected(cause.object_type, cause.key))
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return ConfigError(cause.full_key, ..., str(cause.msg).splitlines()[0])
    if isinstance(exc, OverrideParseException):
        return ConfigError("override", ..., str(exc).splitlines()[0])
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return ConfigError("config", ..., first)


def split_hydra(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """(the job's own config, without the hydra node; the group choices that made it)."""
    from omegaconf import open_dict, read_write

    choices = dict(cfg.hydra.runtime.choices)
    body = copy.deepcopy(cfg)  # as Hydra hands a job its config: typed, without the hydra node
    with read_write(body), open_dict(body):
        del body["hydra"]
    return body, choices


_loader = None  # the config loader of the attnexp.conf tree, made once per process


def config_loader():
    """Hydra's config loader for attnexp.conf (Hydra's public API), initialised once per process;
    launchers get the same one, so a job is composed by the rule that planned it."""
    global _loader
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if _loader is None or not hydra.is_initialized() or hydra.config_loader() is not _loader:
        hydra.clear()
        initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name="attnexp")
        _loader = hydra.config_loader()
    return _loader


def compose(
    overrides: list[str],
    return_hydra_config: bool = False,
    *,
    master: DictConfig | None = None,
    mode: str | None = None,
) -> DictConfig:
    """The config `attnexp <overrides>` runs with; ConfigError on a type, key or choice error.

    The one composer of attnexp (CLI, API, bench, sweep plan, tests). With `master` (a sweep's
    own config), `overrides` are one job's, composed as Hydra's launchers compose it. `mode`
    ("RUN" or "MULTIRUN", as Hydra's `hydra.mode`) is set for what the CLI launches; a
    MULTIRUN config may hold sweeps (`seqpool=x,softmax`).
    """
    from hydra.types import RunMode

    loader = config_loader()
    overrides = list(overrides) + ([f"hydra.mode={mode}"] if mode else [])
    try:
        if master is not None:
            cfg = loader.load_sweep_config(master, overrides)
        else:
            cfg = loader.load_configuration("config", overrides, RunMode[mode or "RUN"])
    except Exception as exc:  # Hydra's composition errors come in several types, all user-facing
        raise composition_error(exc) from None
    return cfg if return_hydra_config else split_hydra(cfg)[0]


@contextmanager
def hydra_config(cfg: DictConfig):
    """Hydra's global config set to `cfg` (what `${hydra:...}` values read), then put back."""
    from hydra.core.hydra_config import HydraConfig

    holder = HydraConfig.instance()
    saved = holder.cfg
    holder.set_config(cfg)
    try:
        yield
    finally:
        holder.cfg = saved


def set_hydra_key(cfg: DictConfig, key: str, value) -> None:
    """Set a key of Hydra's (read-only) node in the composed config."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)
    with read_write(node):
        node[leaf] = value
