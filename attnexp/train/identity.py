"""A training run's identity: the key two runs share when training one would repeat the other.

One digest per part, so that the part that differs can be named (`attnexp <overrides> --cfg key`):
- config: the composed config without its bookkeeping keys (attnexp.config.compose), the seed kept;
- runtime: the device (`cpu`, or the CUDA device's name and capability), the precision the trainer
  uses, on the CPU the thread count, and whether the run trains packed (packed and unpacked runs drift
  apart, docs/speed.md; not the pack's size: no measurement shows a member's numbers depend on it);
- code: every module of attnexp, and of each `_target_`'s own package, that the training entry point
  and the targets import, found with `ast` (imports inside functions too); a package whose version is
  in the versions part is not hashed;
- versions: torch (with its build suffix), CUDA, cuDNN, torchvision, Lightning, timm;
- data: size and modification time of each file the data layouts list, of GloVe vectors and of
  `model.pretrained`'s file.
Runs written before this module have no key and are never reused.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from attnexp.assemble.objects import on_gpu, trainer_precision
from attnexp.config.compose import is_bookkeeping
from attnexp.data.files import LAYOUTS
from attnexp.data.text import TEXT_LAYOUTS

ENTRY_POINT = "attnexp.train.modes"  # what a training job runs (attnexp.sweep.launch calls it)
PACK_ENTRY_POINT = "attnexp.pack.run"
KEPT = ("seed",)  # bookkeeping for a run's name, but it decides the weights
# packages whose code the versions part stands for: their modules are not hashed
VERSIONED = {"torch": "torch", "torchvision": "torchvision", "pytorch_lightning": "pytorch-lightning",
             "lightning": "lightning", "timm": "timm"}  # fmt: skip
ATTNEXP_ROOT = Path(__file__).resolve().parent.parent.parent  # the folder holding the attnexp package


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- config


def config_part(cfg: DictConfig) -> dict:
    """The config as composed (interpolations as written: what they point at is in it too), without
    bookkeeping keys and the hydra node."""

    def keep(node, prefix: str):
        if not isinstance(node, dict):
            return node
        return {k: keep(v, f"{prefix}{k}.") for k, v in node.items()
                if f"{prefix}{k}" in KEPT or not is_bookkeeping(f"{prefix}{k}")}  # fmt: skip

    node = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    node.pop("hydra", None)
    return keep(node, "")


# ---------------------------------------------------------------- runtime


def runtime_part(cfg: DictConfig, packed: bool = False) -> dict:
    """Where and how the job computes; call it where the job runs, after its threads are set."""
    if on_gpu(cfg):
        device = {"name": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0))}
        threads = None  # a GPU run's numbers do not depend on the CPU's threads
    else:
        device, threads = "cpu", torch.get_num_threads()
    return {"device": device, "precision": str(trainer_precision(cfg)), "threads": threads, "packed": packed}


# ---------------------------------------------------------------- code


def targets(node) -> list[str]:
    """Every `_target_` of a config (a container), in order of appearance."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_" and isinstance(v, str):
                found.append(v)
            else:
                found += targets(v)
    elif isinstance(node, list):
        for v in node:
            found += targets(v)
    return found


def package_folder(top: str, root: Path) -> Path | None:
    """The folder holding package (or module) `top`: `root` for attnexp, else where Python finds it."""
    if top == "attnexp" or (root / top).is_dir() or (root / f"{top}.py").is_file():
        return root
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    origin = Path(spec.origin)
    return origin.parent.parent if origin.name == "__init__.py" else origin.parent


def module_file(name: str, folder: Path) -> Path | None:
    base = folder.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(tree: ast.Module, name: str, is_package: bool, functions: bool = True) -> set[str]:
    """What an `import` in the module names: `a.b`, or `a.b.c` for `from a.b import c` (a module, or a
    name of a.b), relative ones made absolute; `functions`: the imports inside functions too."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if functions or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield child
                yield from walk(child)

    for node in walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def closure(start: list[str], root: Path) -> dict[str, Path]:
    """Module name → file, for the modules `start` names and everything they import, within attnexp
    and the starting modules' own top-level packages (the versioned ones left out). A package entered
    only on the way to one of its modules counts with what it imports when imported (not in functions:
    attnexp/__init__.py's lazy entry points would pull in everything)."""
    tops = {m.split(".")[0] for m in start} - set(VERSIONED)
    tops.add("attnexp")
    folders = {t: package_folder(t, root) for t in tops}
    seen: dict[str, Path] = {}
    entered: set[str] = set()  # followed with their function-level imports
    todo = [(m, True) for m in start]
    while todo:
        name, functions = todo.pop()
        top = name.split(".")[0]
        if name in entered or (name in seen and not functions) or top not in tops or folders.get(top) is None:
            continue
        path = module_file(name, folders[top])
        if path is None:  # `from a import b` where b is a name of a: a, with its functions
            name, _, _ = name.rpartition(".")
            path = module_file(name, folders[top]) if name and name not in entered else None
            if path is None:
                continue
        seen[name] = path
        if functions:
            entered.add(name)
        parts = name.split(".")
        todo += [(".".join(parts[:i]), False) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        found = imported(ast.parse(path.read_bytes()), name, path.name == "__init__.py", functions)
        todo += [(m, True) for m in sorted(found)]
    return seen


def code_files(start: tuple[str, ...], root: Path) -> dict[str, str]:
    """{module: sha256 of its file} of the closure (read each time: ~40 small files)."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in closure(list(start), root).items()}


def code_part(cfg: DictConfig, root: Path = ATTNEXP_ROOT, packed: bool = False) -> dict:
    start = [ENTRY_POINT] + ([PACK_ENTRY_POINT] if packed else [])
    node = OmegaConf.to_container(cfg, resolve=False)
    node.pop("hydra", None)  # Hydra's own launcher and sweeper: the same run whichever ran it
    for target in targets(node):
        start.append(target.rpartition(".")[0] or target)
    return code_files(tuple(dict.fromkeys(start)), Path(root))


# ---------------------------------------------------------------- versions and data


def versions_part() -> dict:
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    for module, dist in VERSIONED.items():
        if module != "torch":
            try:
                versions[module] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[module] = None
    return versions


def stat(path: str) -> list:
    try:
        s = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, s.st_size, s.st_mtime_ns]


def files_under(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


def data_part(cfg: DictConfig) -> list:
    """(file, size, mtime) of what the run reads from disk, relative to the data root."""
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    name, root = data.get("name"), str(data.get("root") or "")
    files = []
    if name in LAYOUTS:
        files = [os.path.join(LAYOUTS[name].folder, f) for f in LAYOUTS[name].files]
    elif name in TEXT_LAYOUTS:
        layout = TEXT_LAYOUTS[name]
        parts = [os.path.join(root, layout.folder, p) for p in layout.train + layout.test]
        files = [os.path.relpath(f, root) for p in parts for f in files_under(p)]
    found = [[f, *stat(os.path.join(root, f))[1:]] for f in files]
    for key in ("embeddings_path", "pretrained"):  # GloVe vectors, a weights file
        value = model.get(key) if model.get(key) is not True else None
        if isinstance(value, str) and os.path.isfile(value):
            found.append(stat(os.path.abspath(value)))
    return found


# ---------------------------------------------------------------- the key


def identity(cfg: DictConfig, packed: bool = False, root: Path = ATTNEXP_ROOT) -> dict:
    """{"key": ..., "parts": {part: digest}} of the job `cfg` as it runs here, now."""
    parts = {
        "config": digest(config_part(cfg)),
        "runtime": digest(runtime_part(cfg, packed)),
        "code": digest(code_part(cfg, root, packed)),
        "versions": digest(versions_part()),
        "data": digest(data_part(cfg)),
    }
    return {"key": digest(parts), "parts": parts}


def describe(cfg: DictConfig) -> str:
    """`--cfg key`: the key, each part's digest, and the readable parts."""
    ident = identity(cfg)
    lines = [f"key: {ident['key']}"] + [f"  {part}: {d}" for part, d in ident["parts"].items()]
    lines.append(f"runtime: {json.dumps(runtime_part(cfg))}")
    lines.append(f"versions: {json.dumps(versions_part())}")
    lines.append(f"code: {len(code_part(cfg))} modules; data: {len(data_part(cfg))} files")
    return "\n".join(lines)
