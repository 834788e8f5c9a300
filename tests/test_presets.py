"""Every seed-000/001 preset as a real Hydra multirun, shrunk (debug=tiny, one seed, two α values); every
preset's header states its expected time."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO, attnexp_main

import attnexp

PRESETS = sorted((REPO / "conf" / "experiment").glob("*.yaml"))
EXPECTED_TIME = re.compile(
    r"# Expected time: (?P<duration>[^()]*?\d[^()]*?) on (?P<machine>[^()]+?) \((?P<kind>measured|estimated): (?P<how>.+)\)"
)


def expected_time_lines(text: str) -> list[re.Match | str]:
    """The header's (the comments before the first yaml line) `# Expected time:` lines, parsed where well-formed."""
    lines = text.splitlines()
    header = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
    lines = [line for line in header if line.startswith("# Expected time")]
    return [EXPECTED_TIME.fullmatch(line) or line for line in lines]


def test_the_header_check_tells_a_well_formed_line_from_others():
    good = "# Expected time: ~1 min on a 2-core CPU (measured: attnexp experiment=demo)"
    assert isinstance(expected_time_lines(f"# @package _global_\n{good}\ndefaults: []\n")[0], re.Match)
    for bad in (
        "# Expected time (estimated, not measured): ~3–5 min per job on one H100.",  # the old free-form line
        "# Expected time: seconds on a GPU (estimated: it is small)",  # no number
        "# Expected time: ~1 min on a 2-core CPU",  # neither measured nor estimated
    ):
        assert expected_time_lines(f"{bad}\ndefaults: []\n") == [bad]
    assert expected_time_lines(f"defaults: []\n{good}\n") == []  # below the header: not the header's


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_states_its_expected_time(preset):
    """One `# Expected time: <duration> on <machine> (measured: <command> | estimated: <how>)` header line."""
    (line,) = expected_time_lines(preset.read_text())
    assert isinstance(line, re.Match), f"{preset.name}: not well-formed: {line}"
    assert re.search(r"\d\s*(s|min|h)\b", line["duration"]), line["duration"]
    if line["kind"] == "measured":
        assert line["how"].startswith("attnexp ") and f"experiment={preset.stem}" in line["how"], line["how"]


def test_the_presets_are_found():  # an empty glob would leave the test above with nothing to check
    assert {"demo", "text_demo", "seed003_vit", "convnn_ablation"} <= {p.stem for p in PRESETS}


def job_dirs(workdir):
    (sweep,) = list((workdir / "multirun").glob("*/*"))
    return sweep, sorted(p.parent for p in sweep.rglob("metrics.json"))


def run_preset(workdir, *args):
    proc = attnexp_main("-m", *args, "debug=tiny", "seed=0", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep, jobs = job_dirs(workdir)
    assert all(json.loads((j / "metrics.json").read_text())["status"] == "done" for j in jobs)
    return sweep, {str(j.relative_to(sweep)) for j in jobs}


def test_seqpool_lines(workdir):
    sweep, jobs = run_preset(workdir, "experiment=seqpool_lines")
    assert sweep.name.endswith("_seqpool_lines")
    lines = ["x", "softmax_dim0", "softmax", "softmax_x10", "softmax_plus_x", "x_minus_softmax"]
    assert jobs == {f"debug=tiny,seqpool={line}/seed_0" for line in lines}
    config = json.loads((sweep / "debug=tiny,seqpool=softmax_x10" / "seed_0" / "metrics.json").read_text())["choices"]
    assert config["model"] == "cct2" and config["seqpool"] == "softmax_x10"


def test_attention_rfp_with_attention_stats(workdir):
    _, jobs = run_preset(workdir, "experiment=attention_rfp", "callbacks=attention_stats")
    assert jobs == {
        f"attention={a},callbacks=attention_stats,debug=tiny,model={m}/seed_0"
        for a in ("softmax", "softmax_v")
        for m in ("cct2", "cct7")
    }
    from tbparse import SummaryReader

    job = next((workdir / "multirun").rglob("attention=softmax_v,*model=cct2/seed_0"))
    scalars = SummaryReader(str(job / "tb")).scalars
    stats = scalars[scalars.tag.str.startswith("attention/layer1/")]
    values = dict(zip(stats.tag, stats.value))
    # softmaxᵀ(V) lies in (0, 1); V itself does not
    assert 0 < values["attention/layer1/fv_min"] <= values["attention/layer1/fv_max"] < 1
    assert values["attention/layer1/v_min"] < 0 < values["attention/layer1/v_max"]
    assert 0 < values["attention/layer1/attn_entropy"] <= torch.log(torch.tensor(64.0)).item() + 1e-4
    # SeqPool (seqpool=x: f(x) = x) and the entropy of its weights over cct2's 64 tokens
    pool = {t: v for t, v in zip(scalars.tag, scalars.value) if t.startswith("seqpool/")}
    assert pool["seqpool/x_min"] <= pool["seqpool/x_mean"] <= pool["seqpool/x_max"]
    assert [pool[f"seqpool/fx_{s}"] for s in ("min", "mean", "max")] == [
        pool[f"seqpool/x_{s}"] for s in ("min", "mean", "max")
    ]
    assert 0 < pool["seqpool/weight_entropy"] <= torch.log(torch.tensor(64.0)).item() + 1e-4


@pytest.mark.parametrize("preset,swept", [("alpha_grid", "seqpool"), ("alpha_grid_attention", "attention")])
def test_alpha_grids(workdir, preset, swept):
    _, jobs = run_preset(workdir, f"experiment={preset}", "alpha.value=-1.0,0.5")
    assert jobs == {f"alpha.value={a},debug=tiny/seed_0" for a in ("-1.0", "0.5")}
    for job in (workdir / "multirun").rglob("seed_0"):
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["alpha"] == float(job.parent.name.split(",")[0].split("=")[1])
        node = ckpt["attnexp_config"][swept]
        assert node.get("value_map", node)["_target_"].endswith("Shift")


def test_remix_finetune_starts_from_the_pretrained_weights(workdir):
    source = attnexp.build_model(["model=cct7", "data=fake"])
    path = workdir / "cct7.pth"
    torch.save(source.state_dict(), path)
    _, jobs = run_preset(workdir, "experiment=remix_finetune", f"model.pretrained={path}", "alpha.ramp_end=1")
    assert len(jobs) == 2 and all(f"model.pretrained={str(path).replace('/', '_')}" in j for j in jobs)
    remix = next(j for j in (workdir / "multirun").rglob("seed_0") if "attention=remix" in j.parent.name)
    ckpt = torch.load(remix / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["alpha"] == pytest.approx(0.5)  # step 1 of a 0 → 1 ramp over the 2-step epoch
    assert ckpt["attnexp_config"]["optimizer"]["lr"] == 5e-5
