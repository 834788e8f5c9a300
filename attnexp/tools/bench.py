"""`attnexp-bench`: how fast a training step, the whole training path and the data pipeline run here.

For every model × attention choice, on whatever device is present:
  step   train-step throughput (forward, backward, AdamW) of each build variant (VARIANTS: config
         overrides; each module built by the run's factories and fitted by the run's Trainer, as
         the dry run's estimate does), against the eager build;
  path   the attnexp training path (Lightning module, TensorLoader, logger, recorder) against a
         bare PyTorch loop over the same module, batches, optimizer and precision: the framework overhead;
  data   augmented batches from the TensorLoader alone (the official CIFAR-10 recipe: AutoAugment,
         crop, flip), batched and through torchvision per image, against the model's consumption;
         and on the CPU the batched AutoAugment alone: the official CCT script's own policy
         (data.augment.autoaugment=official) beside torchvision's;
  flops  GFLOPs per image (torch.utils.flop_counter), achieved TFLOP/s, the fraction of a known
         GPU's bf16 dense peak, and the projected wall time of the 200-epoch CIFAR-10 recipe;
  memory a training job's footprint (weights, AdamW state, autograd's saved activations).

Timings: warm-up steps first, device synchronised around every timed span, the variants timed
round-robin (so a busy machine slows them alike), medians over the repeats. They are reports,
never test assertions. Prints a table and writes bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from attnexp.errors import StartupError

CIFAR10_TRAIN, CIFAR10_TEST, RECIPE_EPOCHS = 50_000, 10_000, 200
CIFAR10_AUGMENT = {"autoaugment": "cifar10", "padding": 4, "flip": True}  # conf/data/cifar10.yaml

# bf16 dense tensor-core peaks from the vendors' datasheets, TFLOP/s; the first name match wins
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


@dataclass(frozen=True)
class Variant:
    # config overrides: a variant switches the run's knobs, the run's factories build it (the
    # channels-last tokenizer has no knob: every variant has it)
    overrides: tuple[str, ...]
    about: str = ""

    @property
    def compile(self) -> bool:
        return "compute.compile=true" in self.overrides

    @property
    def bf16(self) -> bool:  # on the CPU too (a GPU trains every variant under bf16 autocast)
        return "trainer.precision=bf16-mixed" in self.overrides


VARIANTS = {
    "eager": Variant(("attention.impl=explicit", "optimizer.fused=false"), "explicit attention, unfused AdamW"),
    "sdpa": Variant(("attention.impl=sdpa", "optimizer.fused=false"), "fused scaled_dot_product_attention"),
    "fast": Variant(("attention.impl=sdpa",), "what `attnexp` trains with: sdpa (+ fused AdamW on a GPU)"),
    "compiled": Variant(("attention.impl=sdpa", "compute.compile=true"), "fast + torch.compile"),
    "bf16": Variant(
        ("attention.impl=sdpa", "trainer.precision=bf16-mixed"), "fast + bf16 autocast (a CPU option; changes numerics)"
    ),
}
BASELINE = "eager"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    """Seconds for one call of fn, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def machine(device) -> dict:
    import torch

    info = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compose(model: str, attention: str, *extra: str):
    from attnexp.api import compose_config

    return compose_config([f"model={model}", f"attention={attention}", *extra])


def trainer_preset(device) -> str:
    return "trainer=gpu" if device.type == "cuda" else "trainer=cpu"


def bench_steps(model_name, attention, variants, args, device, data_overrides) -> dict:
    from attnexp.assemble import objects  # through the modules: a test's spy on a factory sees the call
    from attnexp.sweep.estimate import example_batch, step_seconds
    from attnexp.train import module as run_module

    built, results = {}, {}
    for name in variants:
        start = time.perf_counter()
        try:
            cfg = compose(model_name, attention, *data_overrides, trainer_preset(device), *VARIANTS[name].overrides)
            objects.seed_and_threads(cfg)
            model = objects.build_model(cfg)
            module = run_module.build_module(cfg, model)
            batch = example_batch(cfg, model, args.batch_size)
            step_seconds(cfg, module, batch, steps=0, warmup=args.warmup)  # compiles, autotunes, fills caches
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        built[name] = (cfg, module, batch)
        results[name] = {"warmup_s": round(time.perf_counter() - start, 2), "times": []}
    for _ in range(args.repeats):  # round-robin: a busy machine slows every variant alike
        for name, (cfg, module, batch) in built.items():  # one step more: a fresh fit's first one is warm-up
            results[name]["times"].append(statistics.mean(step_seconds(cfg, module, batch, args.steps)))
    for name in built:
        times = results[name].pop("times")
        results[name]["img_per_s"] = args.batch_size / statistics.median(times)
        results[name]["spread_ms"] = [round(1e3 * min(times), 2), round(1e3 * max(times), 2)]
    base = results.get(BASELINE, {}).get("img_per_s")
    for name in built:
        if base:
            results[name]["speedup"] = results[name]["img_per_s"] / base
    return results


def bench_path(model_name, attention, args, device, data_overrides) -> dict:
    """Per-step time of the runner's training path against a bare loop over the same pieces.

    Both are timed from the end of the warm-up steps to the end of the last step, so
    each timed interval holds one batch fetch (with augmentation) and one step.
    """
    from omegaconf import open_dict

    from attnexp.assemble import objects
    from attnexp.sweep.estimate import step_clock
    from attnexp.train import module as run_module
    from attnexp.train.callbacks import RunRecorder
    from attnexp.train.lifecycle import Lifecycle

    n = args.warmup + args.path_steps
    cfg = compose(
        model_name,
        attention,
        *data_overrides,
        "data.augment=" + _hydra_dict(CIFAR10_AUGMENT),
        f"data.batch_size={args.batch_size}",
        f"data.train_size={n * args.batch_size}",
        trainer_preset(device),
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={n}",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
    )
    # the module exactly as attnexp.train.modes.train builds it
    objects.seed_and_threads(cfg)
    datamodule = objects.build_data(cfg)
    module = run_module.build_module(cfg, objects.build_model(cfg))
    lightning, bare = [], []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            with open_dict(cfg):
                cfg.paths.output_dir = f"{root}/{repeat}"
            clock, logger = step_clock(args.warmup), objects.make_logger(cfg)
            recorder = RunRecorder(Lifecycle(cfg, logger, None, False))
            trainer = objects.make_trainer(cfg, [recorder, clock], logger, cfg.paths.output_dir)
            trainer.fit(module, datamodule=datamodule)
            lightning.append(statistics.mean(clock.durations()))
            bare.append(_bare_loop(module, datamodule, trainer.precision_plugin, args.warmup, args.path_steps, device))
    step_lightning, step_bare = statistics.median(lightning), statistics.median(bare)
    return {
        "steps": args.path_steps,
        "attnexp_img_per_s": args.batch_size / step_lightning,
        "bare_img_per_s": args.batch_size / step_bare,
        "ratio": step_bare / step_lightning,  # ≥ 0.95: framework overhead ≤ 5 %
        "precision": str(trainer.precision),
    }


def _bare_loop(module, datamodule, precision, warmup, steps, device) -> float:
    """The same module, batches, optimizer and precision (the Trainer's plugin), its own training_step,
    stepped by hand: what the path costs without Lightning's loop and hooks."""
    loader = datamodule.train_dataloader()
    module.to(device).train()  # the Trainer's teardown may have moved it back to the CPU
    optimizer = module.configure_optimizers()  # after the move: a fused optimizer wants its tensors in place
    marks = []
    for i in range(warmup + steps):
        images, labels = loader.batch(0, i)
        batch = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with precision.forward_context():
            loss = module.training_step(batch, i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup - 1:
            sync(device)
            marks.append(time.perf_counter())
    return (marks[-1] - marks[0]) / (len(marks) - 1)


def bench_data(args, device) -> dict:
    from attnexp.data.augment import build_augment
    from attnexp.data.loader import TensorLoader
    from attnexp.data.sources import Split, fake

    train, _ = fake(train_size=args.batch_size * max(args.data_batches, 2), test_size=1)
    split = Split(train.images.to(device), train.labels.to(device))  # device-resident, as on a GPU run
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    out = {}
    for impl, batches in (("batched", args.data_batches), ("torchvision", args.reference_batches)):
        if batches <= 0:
            continue
        loader = TensorLoader(
            split, args.batch_size, mean, std, shuffle=True, augment=build_augment(CIFAR10_AUGMENT, impl)
        )
        loader.batch(0, 0)  # warm-up
        times = [timed(lambda i=i: loader.batch(1, i % len(loader)), device) for i in range(batches)]
        per_batch = statistics.median(times)
        out[impl] = {"batches_per_s": 1 / per_batch, "img_per_s": args.batch_size / per_batch, "batches": batches}
    return out


def bench_autoaugment_cpu(args) -> dict:
    """img/s of the batched AutoAugment policies alone on the CPU: torchvision's CIFAR-10 policy (the
    recipe's today) and the official script's PIL policy (`official`), timed round-robin."""
    import torch

    from attnexp.data.autoaugment import BatchAutoAugment
    from attnexp.data.official_policy import OfficialCIFAR10Policy
    from attnexp.data.sources import fake

    images = fake(train_size=args.batch_size, test_size=1)[0].images
    policies = {"torchvision": BatchAutoAugment("cifar10", fill=128), "official": OfficialCIFAR10Policy(fill=128)}
    g = torch.Generator().manual_seed(0)
    for policy in policies.values():
        policy(images, g)  # warm-up: builds each policy's tables
    cpu = torch.device("cpu")
    times: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(max(args.data_batches, 3)):
        for name, policy in policies.items():
            times[name].append(timed(lambda p=policy: p(images, g), cpu))
    out = {name: {"img_per_s": args.batch_size / statistics.median(t), "batches": len(t)} for name, t in times.items()}
    out["official_vs_torchvision"] = out["official"]["img_per_s"] / out["torchvision"]["img_per_s"]
    return out


def count_flops(model_name: str, attention: str, data_overrides) -> dict:
    """GFLOPs per image: forward, and a training step's forward + backward (explicit attention, so
    every matmul is an op the counter knows)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from attnexp.assemble.objects import build_model

    cfg = compose(model_name, attention, "attention.impl=explicit", *data_overrides)
    model = build_model(cfg).train()
    x = torch.randn(2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    with FlopCounterMode(display=False) as forward:
        logits = model(x)
    with FlopCounterMode(display=False) as backward:
        logits.sum().backward()
    fwd, bwd = forward.get_total_flops() / 2, backward.get_total_flops() / 2
    return {"forward_gflops": fwd / 1e9, "train_gflops": (fwd + bwd) / 1e9}


def training_memory(model_name: str, attention: str, batch: int, data_overrides) -> dict:
    """Bytes of one training job at this batch size under bf16 autocast: fp32 weights and grads,
    AdamW's two fp32 moments, and the activations autograd saves for backward (measured on the
    CPU with the explicit attention, whose saved maps make it the larger of the two paths)."""
    import torch

    from attnexp.assemble.objects import build_model, trainable_parameters

    cfg = compose(model_name, attention, "attention.impl=explicit", *data_overrides)
    model = build_model(cfg).train()
    params = trainable_parameters(model)
    seen: dict[tuple, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    x = torch.randn(batch, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    activations = sum(seen.values())
    return {
        "params": params,
        "weights_grads_adamw_bytes": 16 * params,  # 4 B each: weight, grad, exp_avg, exp_avg_sq
        "activation_bytes": activations,
        "total_gib": (16 * params + activations) / 2**30,
    }


def eval_img_per_s(model_name, attention, batch, device, data_overrides, repeats: int) -> float:
    import torch

    from attnexp.assemble.objects import build_model

    cfg = compose(model_name, attention, "attention.impl=sdpa", *data_overrides)
    model = build_model(cfg).to(device).eval()
    x = torch.randn(batch, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size, device=device)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward():
        with torch.no_grad(), torch.autocast(**amp):
            model(x)

    forward()
    return batch / statistics.median(timed(forward, device) for _ in range(repeats))


def targets(report: dict, gpu: bool) -> list[dict]:
    """The issue's targets, checked against this run: framework overhead, build speed-ups, and on a
    GPU the projected 200-epoch time of cct7 (≤ 5 min) and cct2 (≤ 1 min, the stretch)."""
    rows = []
    for key, entry in report["models"].items():
        steps = {k: r for k, r in entry["steps"].items() if "img_per_s" in r}
        if "path" in entry:
            rows.append({"what": f"{key} training path / bare loop", "value": entry["path"]["ratio"], "target": 0.95})
        if not gpu and steps:
            fp32 = max(r.get("speedup", 0) for k, r in steps.items() if not VARIANTS[k].bf16)
            any_numerics = max(r.get("speedup", 0) for r in steps.values())
            rows.append({"what": f"{key} best fp32 build / eager", "value": fp32, "target": 1.2})
            rows.append({"what": f"{key} best build / eager (bf16 allowed)", "value": any_numerics, "target": 1.2})
        if gpu and steps:
            limit = {"cct7": 300.0, "cct2": 60.0}.get(key.split("/")[0])
            if limit:
                best = min(r["projected_200_epochs_s"] for r in steps.values())
                rows.append(
                    {"what": f"{key} projected 200 epochs, s", "value": best, "target": limit, "lower_is_better": True}
                )
    for row in rows:
        row["met"] = row["value"] <= row["target"] if row.get("lower_is_better") else row["value"] >= row["target"]
    return rows


def fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def print_report(report: dict) -> None:
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores, {m['threads']} threads)"
    print(
        f"\nattnexp-bench on {where}, torch {m['torch']}, batch {report['batch_size']}, load average at start {m['load_average']}"
    )
    for key, entry in report["models"].items():
        print(
            f"\n== {key}: {entry['flops']['forward_gflops']:.3f} GFLOPs/img forward, {entry['flops']['train_gflops']:.3f} train"
        )
        print(
            f"   {'variant':10s} {'img/s':>9s} {'× eager':>8s} {'TFLOP/s':>8s} {'% peak':>7s} {'200 ep':>9s}  warm-up"
        )
        for name, r in entry["steps"].items():
            if "error" in r:
                print(f"   {name:10s} unavailable: {r['error']}")
                continue
            peak = f"{100 * r['peak_fraction']:.1f}" if r.get("peak_fraction") is not None else "-"
            print(
                f"   {name:10s} {r['img_per_s']:9.1f} {r.get('speedup', float('nan')):8.2f} {r['tflops']:8.3f} "
                f"{peak:>7s} {fmt_time(r['projected_200_epochs_s']):>9s}  {r['warmup_s']:.1f} s"
            )
        if "path" in entry:
            p = entry["path"]
            print(
                f"   training path: attnexp {p['attnexp_img_per_s']:.1f} img/s vs bare loop {p['bare_img_per_s']:.1f} img/s "
                f"→ {p['ratio']:.3f}× the bare loop ({p['precision']})"
            )
        if "data_vs_model" in entry:
            print(
                f"   data pipeline / fastest model step: {entry['data_vs_model']:.1f}× (above 1: the model is the bottleneck)"
            )
        if "memory" in entry:
            print(
                f"   memory per training job at batch {report['memory_batch']}: {entry['memory']['total_gib']:.2f} GiB + the CUDA context"
            )
    for impl, d in report.get("data", {}).items():
        print(
            f"\ndata pipeline ({impl}, CIFAR-10 recipe): {d['batches_per_s']:.1f} batches/s = {d['img_per_s']:.0f} img/s"
        )
    policies = report.get("autoaugment_cpu")
    if policies:
        print(
            f"AutoAugment alone on the CPU, batched: official policy {policies['official']['img_per_s']:.0f} img/s "
            f"vs torchvision policy {policies['torchvision']['img_per_s']:.0f} img/s "
            f"(official at {policies['official_vs_torchvision']:.2f}× the torchvision policy's rate)"
        )
    print("\ntargets:")
    for row in report.get("targets", []):
        sign = "≤" if row.get("lower_is_better") else "≥"
        print(
            f"   {row['what']:48s} {row['value']:8.3f}  (target {sign} {row['target']:g}: {'met' if row['met'] else 'NOT met'})"
        )
    print(f"\nwrote {report['out']}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="attnexp-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cct2,cct7", help="model choices, comma-separated (default: cct2,cct7)")
    p.add_argument("--attention", default="softmax,softmax_v", help="attention choices (default: softmax,softmax_v)")
    p.add_argument("--variants", help=f"build variants of {','.join(VARIANTS)} (default: all but bf16 on a GPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, help="default: 128 on a GPU (the recipe), 32 on the CPU")
    p.add_argument("--warmup", type=int, help="warm-up steps per variant (default: 1 CPU, 10 GPU)")
    p.add_argument("--steps", type=int, help="timed steps per repeat (default: 1 CPU, 50 GPU)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)")
    p.add_argument(
        "--path-steps", type=int, help="timed steps of the training-path comparison (default: 4 CPU, 100 GPU)"
    )
    p.add_argument("--data-batches", type=int, help="batches timed for the data pipeline (default: 5 CPU, 50 GPU)")
    p.add_argument(
        "--reference-batches", type=int, default=1, help="batches through torchvision's per-image pipeline (0: skip)"
    )
    p.add_argument(
        "--compile",
        default="first",
        choices=("first", "all", "none"),
        help="compiled variant for the first attention choice of each model, for all, or none (default: first)",
    )
    p.add_argument("--no-path", action="store_true", help="skip the training-path comparison")
    p.add_argument(
        "--pack",
        help="only the packed-run comparison: one packed step of K members vs K unpacked steps, for each K "
        "(comma-separated, e.g. 1,4; a GPU: 1,2,4,8,16)",
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default="bench.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    try:
        run(argv)
    except StartupError as e:  # a bad model or attention name: one line, before any timing
        print(f"attnexp-bench: error: {e}", file=sys.stderr)
        return 2
    return 0


def run(argv=None) -> dict:
    """The bench as a function: the report dict (also written to --out)."""
    args = parse_args(argv)
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401  (imported first: its import sets its loggers to INFO)
    import torch

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):  # its banners would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    gpu = device.type == "cuda"
    if gpu:
        torch.set_float32_matmul_precision("high")
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.warmup = max(1, args.warmup if args.warmup is not None else (10 if gpu else 1))
    args.steps = args.steps or (50 if gpu else 1)
    args.path_steps = max(2, args.path_steps or (100 if gpu else 4))
    args.data_batches = args.data_batches if args.data_batches is not None else (50 if gpu else 5)
    variants = args.variants.split(",") if args.variants else [v for v in VARIANTS if not (gpu and v == "bf16")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise StartupError(f"--variants {','.join(unknown)}: one of {', '.join(VARIANTS)}")
    models, attentions = args.models.split(","), args.attention.split(",")
    data_overrides = ["data=fake"]  # CIFAR-10's shapes and classes, synthetic pixels: no dataset needed
    for model_name in models:  # every choice composes before anything is timed
        for attention in attentions:
            compose(model_name, attention, *data_overrides)

    if args.pack:
        return bench_pack(models, [int(k) for k in args.pack.split(",")], device, data_overrides, args)
    report = {
        "machine": machine(device),
        "batch_size": args.batch_size,
        "args": vars(args),
        "variants": {k: asdict(v) for k, v in VARIANTS.items()},
    }
    peak = peak_tflops(report["machine"]["gpu"]) if gpu else None
    report["memory_batch"] = 128
    report["models"] = {}
    report["data"] = bench_data(args, device)
    report["autoaugment_cpu"] = bench_autoaugment_cpu(args)
    for model_name in models:
        for k, attention in enumerate(attentions):
            key = f"{model_name}/{attention}"
            print(f"attnexp-bench: {key} ...", file=sys.stderr, flush=True)
            compiled_here = args.compile == "all" or (args.compile == "first" and k == 0)
            chosen = [v for v in variants if compiled_here or not VARIANTS[v].compile]
            entry = {"flops": count_flops(model_name, attention, data_overrides)}
            entry["steps"] = bench_steps(model_name, attention, chosen, args, device, data_overrides)
            eval_ips = eval_img_per_s(model_name, attention, 2 * args.batch_size, device, data_overrides, args.repeats)
            entry["eval_img_per_s"] = eval_ips
            for r in entry["steps"].values():
                if "img_per_s" not in r:
                    continue
                r["tflops"] = entry["flops"]["train_gflops"] * r["img_per_s"] / 1e3
                r["peak_fraction"] = r["tflops"] / peak if peak else None
                # the recipe: 200 epochs of 50k training images, each followed by the 10k test images
                r["projected_200_epochs_s"] = RECIPE_EPOCHS * (CIFAR10_TRAIN / r["img_per_s"] + CIFAR10_TEST / eval_ips)
            if k == 0 and not args.no_path:
                entry["path"] = bench_path(model_name, attention, args, device, data_overrides)
            fastest = max((r["img_per_s"] for r in entry["steps"].values() if "img_per_s" in r), default=None)
            if fastest and "batched" in report["data"]:
                entry["data_vs_model"] = report["data"]["batched"]["img_per_s"] / fastest
            if k == 0:
                entry["memory"] = training_memory(model_name, attention, report["memory_batch"], data_overrides)
            report["models"][key] = entry
    report["targets"] = targets(report, gpu)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["out"] = str(Path(args.out).resolve())
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    return report


def bench_pack(models: list[str], sizes: list[int], device, data_overrides, args) -> dict:
    """sweep.pack's gain: seconds of one packed train step of K members (each its own batch of
    --batch-size images, attnexp.pack.module) against K unpacked steps; the ratio is printed, not asserted."""
    from attnexp.sweep.estimate import measure

    rows = []
    for model_name in models:
        cfg = compose(
            model_name, "softmax", *data_overrides, trainer_preset(device), f"data.batch_size={args.batch_size}"
        )
        print(f"attnexp-bench: {model_name} ...", file=sys.stderr, flush=True)
        single = measure(cfg, probe_batch=args.batch_size)["s_per_image"] * args.batch_size  # K=1: unpacked
        for k in sizes:
            step = (
                single if k == 1 else measure(cfg, pack=k, probe_batch=args.batch_size)["s_per_image"] * args.batch_size
            )
            rows.append({"model": model_name, "k": k, "packed_step_s": step, "unpacked_steps_s": k * single})
    report = {"machine": machine(device), "batch_size": args.batch_size, "pack": rows}
    print(f"\npacked steps ({device.type}, batch {args.batch_size} per member):")
    print(f"  {'model':<8} {'K':>3} {'packed step':>12} {'K unpacked':>11} {'speed-up':>9}")
    for r in rows:
        print(
            f"  {r['model']:<8} {r['k']:>3} {r['packed_step_s']:>11.4f}s {r['unpacked_steps_s']:>10.4f}s "
            f"{r['unpacked_steps_s'] / r['packed_step_s']:>8.2f}×"
        )
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {Path(args.out).resolve()}")
    return report


def _hydra_dict(d: dict) -> str:
    return "{" + ",".join(f"{k}:{str(v).lower() if isinstance(v, bool) else v}" for k, v in d.items()) + "}"


if __name__ == "__main__":
    main()
