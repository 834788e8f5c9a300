"""model=timm: timm ViTs with attnexp's attention, weights through timm's loader, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import attnexp_main

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'attnexp[timm]')")

FAMILIES = ("vit_tiny_patch16_224", "deit_tiny_patch16_224")
# a tiny ViT at CIFAR size, for the runs: 2 blocks, 8-pixel patches (timm.create_model's own arguments)
TINY = ["model=timm", "model.image_size=32", "+model.kwargs.patch_size=8", "+model.kwargs.depth=2"]


def save_random(tmp_path, name: str, num_classes: int, **kwargs) -> str:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes, **kwargs).eval()
    from safetensors.torch import save_file

    path = tmp_path / f"{name}_{num_classes}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path), model


@pytest.mark.numeric
@pytest.mark.parametrize("name", FAMILIES)
def test_attention_variants_carry_timm_weights_exactly(tmp_path, name):
    import attnexp

    path, reference = save_random(tmp_path, name, num_classes=10, depth=3)  # the family's blocks, fewer of them
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)

    def logits(*overrides):
        family = ["model=timm", f"model.name={name}", "+model.kwargs.depth=3", f"model.pretrained={path}"]
        model = attnexp.build_model([*family, *overrides])
        with torch.no_grad():
            return model.double().eval()(x)

    # float64, so the function is compared, not float32's rounding: three blocks of dot products of
    # ≤ 768 terms (γ₇₆₈ = 8.5e-14) on values ≤ 1e2 and softmaxes over 197 tokens keep two kernels'
    # logits within 1e-10 of each other on any CPU
    f64 = dict(rtol=0, atol=1e-10)
    with torch.no_grad():
        expected = reference.double()(x)
    softmax = logits("attention=softmax")
    torch.testing.assert_close(softmax, expected, **f64)
    torch.testing.assert_close(logits("attention=remix", "alpha=constant", "alpha.value=0"), expected, **f64)
    softmax_v = logits("attention=softmax_v")
    assert (softmax_v - softmax).abs().max() > 1e-2
    remix_1 = logits("attention=remix", "alpha=constant", "alpha.value=1")
    torch.testing.assert_close(remix_1, softmax_v, **f64)


def test_a_head_of_other_classes_is_reinitialised_the_body_loaded(tmp_path):
    import attnexp

    path, reference = save_random(tmp_path, "vit_tiny_patch16_224", num_classes=1000, depth=2)
    model = attnexp.build_model(["model=timm", "+model.kwargs.depth=2", f"model.pretrained={path}"])
    net = model.net
    assert net.head.out_features == 10
    for key, value in reference.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(net.state_dict()[key], value), key


def test_bad_weights_and_families_are_one_line_before_any_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    other, _ = save_random(tmp_path, "vit_tiny_patch16_224", num_classes=10, depth=2)  # 12 blocks expected
    cases = [
        (["model.pretrained=missing.safetensors"], "model.pretrained=missing.safetensors: no such file"),
        ([f"model.pretrained={other}"], "does not fit model.name=vit_tiny_patch16_224"),
        (["model.pretrained=true"], "timm's weights for vit_tiny_patch16_224 cannot be fetched"),
        (["model.name=deit_tiny_distilled_patch16_224"], "distilled DeiT"),
        (["model.name=resnet18"], "not a ViT"),
        (["+model.kwargs.qk_norm=true"], "q/k normalisation"),
        (["model.name=vit_nonexistent_patch3"], "not a timm model"),
    ]
    for overrides, needle in cases:
        proc = attnexp_main("model=timm", "data=digits", *overrides, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("attnexp: error: ") and needle in lines[0], lines
    assert not (tmp_path / "outputs").exists()


def test_without_timm_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    proc = attnexp_main("model=timm", "data=digits", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["attnexp: error: model=timm: needs timm: pip install 'attnexp[timm]'"]
    assert not (tmp_path / "outputs").exists()


def test_a_short_remix_fine_tune_runs_through_the_cli(tmp_path):
    from tbparse import SummaryReader

    import attnexp

    path, _ = save_random(tmp_path, "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2)
    run_dir = tmp_path / "run"
    proc = attnexp_main(
        *TINY,
        f"model.pretrained={path}",
        "model.backbone_lr_scale=0.1",
        "data=digits",
        "data.train_size=96",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_epochs=0",
        "attention=remix",
        "alpha=linear",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "done"
    assert metrics["weights"]["sha256"] and metrics["weights"]["file"] == path
    scalars = SummaryReader(str(run_dir / "tb")).scalars
    alpha = scalars[scalars.tag == "alpha"].sort_values("step")["value"].tolist()
    assert alpha[0] == 0.0 and alpha == sorted(alpha) and alpha[-1] == pytest.approx(5 / 6)  # step 5 of 6
    # the pretrained body trains at 0.1 × the head's rate
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    body, head = (group["lr"] for group in state["optimizer_states"][0]["param_groups"])
    assert body == pytest.approx(0.1 * head)
    # the run loads back as any other, and the report draws accuracy against α
    run = attnexp.load_run(run_dir)
    assert run.model.net.head.out_features == 10
    from attnexp.tools.report import main as report

    assert report([str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "alpha.png").is_file()


def test_pretrained_true_reads_timms_cache_first_and_asks_an_unreachable_hub_once(tmp_path, monkeypatch):
    """model.pretrained=true: weights in the hub's cache load as a file, without asking the hub; not
    cached, one short probe of an unreachable hub gives the one line at once (no client retries)."""
    import socket

    import huggingface_hub

    import attnexp

    path, reference = save_random(tmp_path, "vit_tiny_patch16_224", num_classes=1000, depth=2)
    asked = []
    monkeypatch.setattr(
        socket, "create_connection", lambda *a, **k: asked.append(a) or (_ for _ in ()).throw(OSError())
    )
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda repo, f: path if f == "model.safetensors" else None
    )
    model = attnexp.build_model(["model=timm", "+model.kwargs.depth=2", "model.pretrained=true"])
    assert not asked and model.weights["file"] == path
    assert torch.equal(model.net.patch_embed.proj.weight, reference.patch_embed.proj.weight)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: None)
    from attnexp.errors import StartupError

    with pytest.raises(StartupError, match="cannot be fetched: not cached, huggingface.co unreachable"):
        attnexp.build_model(["model=timm", "+model.kwargs.depth=2", "model.pretrained=true"])
    assert len(asked) == 1


def test_unreachable_pretrained_weights_are_said_before_lightning_is_imported(tmp_path):
    """The one line comes from the torch-free checks plus timm, before the preflight imports Lightning
    (≈ 4 s of a 5 s budget); nothing else reaches the console and no run folder is made."""
    probe = (
        "import sys\nfrom attnexp.cli import main\ntry:\n    main(['model=timm', 'model.pretrained=true', 'data=fake'])\n"
        "except SystemExit as e:\n    print(e.code, 'pytorch_lightning' in sys.modules)"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "https://127.0.0.1"}  # nothing cached, refused
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "attnexp: error: model.pretrained=true: timm's weights for vit_tiny_patch16_224 cannot be fetched: "
        "not cached, 127.0.0.1 unreachable"
    ]
    assert not (tmp_path / "outputs").exists()
