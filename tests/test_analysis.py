"""robustness.analysis: each experiment's defining property on tiny models and generated data, and
`lkrobust analyze` end to end (killed and rerun, report tables and figures)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
pytest.importorskip("torchattacks")

import robustness.analysis as A  # noqa: E402
from lkconv.models.replknet import RepLKNet  # noqa: E402
from robustness_data import WNIDS, class_folders  # noqa: E402


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=4, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=_gen(seed))


class Linear(nn.Module):
    """A classifier whose input gradient is known: logits = W · flatten(x)."""

    def __init__(self, pixels, classes=5, seed=0):
        super().__init__()
        self.fc = nn.Linear(pixels, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, pixels, generator=_gen(seed)))
        self.num_classes = classes

    def forward(self, x):
        return self.fc(x.flatten(1))


def _raw(model):
    """A pixel-space wrapper without normalisation, so gradients are the model's own."""
    return A.PixelSpaceModel(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


# ---- occlusion ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_random_occlusion_drops_exactly_round_r_n_patches(ratio):
    x = _images()
    occluded, mask = A.occlude(x, ratio, generator=_gen(1))
    assert mask.shape == (4, 4, 4) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == round(ratio * 16)).all()
    pixels = mask.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None].expand_as(x)
    assert (occluded[pixels] == 0).all() and torch.equal(occluded[~pixels], x[~pixels])
    # different images get different patches
    if 0 < ratio < 1:
        assert not all(torch.equal(mask[0], m) for m in mask[1:])


@pytest.mark.parametrize("mode", ["salient", "non_salient"])
@pytest.mark.parametrize("ratio", [0.2, 0.7, 1.0])
def test_salient_occlusion_takes_patches_by_mass_until_the_ratio_is_reached(mode, ratio):
    x = _images(3)
    saliency = torch.rand(3, 4, 4, generator=_gen(2)) ** 3
    _, mask = A.occlude(x, ratio, mode, saliency)
    for s, m in zip(saliency.flatten(1).double(), mask.flatten(1)):
        total, dropped = s.sum(), s[m]
        assert dropped.sum() >= ratio * total * (1 - 1e-9)
        kept = s[~m]
        if len(kept):  # the right end of the order: every dropped patch is as (non-)salient as any kept one
            assert (dropped.min() >= kept.max()) if mode == "salient" else (dropped.max() <= kept.min())
        # minimal: without its last patch the dropped mass would fall short
        last = dropped.min() if mode == "salient" else dropped.max()
        assert dropped.sum() - last < ratio * total


def test_salient_occlusion_may_take_few_pixels_for_much_mass():
    saliency = torch.zeros(1, 4, 4)
    saliency[0, 1, 1], saliency[0, 2, 2] = 10.0, 10.0
    saliency += 0.01
    _, mask = A.occlude(_images(1), 0.7, "salient", saliency)
    assert int(mask.sum()) == 2  # 70% of the mass is 12.5% of the patches


def test_occlusion_rejects_bad_input():
    x = _images()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        A.occlude(torch.rand(1, 3, 50, 64), 0.5)
    with pytest.raises(ValueError, match="needs a saliency"):
        A.occlude(x, 0.5, "salient")
    with pytest.raises(ValueError, match="shape"):
        A.occlude(x, 0.5, "salient", torch.rand(4, 2, 2))
    with pytest.raises(ValueError, match="non-negative"):
        A.occlude(x, 0.5, "salient", -torch.rand(4, 4, 4))
    with pytest.raises(ValueError, match="ratio"):
        A.occlude(x, 1.5)
    with pytest.raises(ValueError, match="mode"):
        A.occlude(x, 0.5, "centre")


def test_vit_cls_attention_is_the_last_blocks_cls_row_averaged_over_heads():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5).eval()
    x = _images(2)
    got = A.vit_cls_attention(vit, x)
    # the same attention from timm's own unfused path, captured at its softmax
    attn = vit.blocks[-1].attn
    attn.fused_attn = False
    rows = []
    handle = attn.attn_drop.register_forward_hook(lambda m, a, out: rows.append(out))
    with torch.no_grad():
        A.pixel_space(vit)(x)
    handle.remove()
    want = rows[0][:, :, 0, 1:].mean(1).reshape(2, 4, 4)
    assert got.shape == (2, 4, 4) and torch.allclose(got, want, atol=1e-6)
    with pytest.raises(TypeError, match="VisionTransformer"):
        A.vit_cls_attention(timm.create_model("test_convnext"), x)


# ---- attacks -----------------------------------------------------------------------------------------------
def test_fgsm_moves_every_pixel_by_eps_in_the_gradient_sign():
    x = _images(4, 8)
    model = Linear(3 * 64)
    y = torch.tensor([0, 1, 2, 3])
    eps = 8 / 255
    adv = A.fgsm(_raw(model), x, y, eps)
    xr = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xr), y).backward()
    want = (x + eps * xr.grad.sign()).clamp(0, 1)
    assert torch.allclose(adv, want, atol=1e-6)
    moved = (adv - x).abs()
    at_bound = (adv == 0) | (adv == 1)
    assert ((moved - eps).abs() < 1e-6)[~at_bound & (xr.grad != 0)].all()


@pytest.mark.parametrize("steps", [1, 5])
def test_pgd_stays_in_the_eps_ball_and_lowers_accuracy(steps):
    torch.manual_seed(0)
    x = _images(8, 8)
    model = Linear(3 * 64)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct before the attack
    eps = 4 / 255
    adv = A.pgd(_raw(model), x, y, eps, steps, seed=0)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    again = A.pgd(_raw(model), x, y, eps, steps, seed=0)
    assert torch.equal(adv, again)  # seeded random start
    big = A.pgd(_raw(model), x, y, 0.3, 10, seed=0)
    with torch.no_grad():
        assert (model(big).argmax(1) != y).float().mean() > 0.5


def test_attacks_refuse_images_outside_pixel_space():
    with pytest.raises(ValueError, match="pixel space"):
        A.fgsm(Linear(3 * 64), _images(2, 8) * 3, torch.tensor([0, 1]), 4 / 255)
    with pytest.raises(ValueError, match="eps"):
        A.pgd(Linear(3 * 64), _images(2, 8), torch.tensor([0, 1]), 4.0, 3)


def test_autoattack_runs_through_torchattacks_within_the_budget():
    x = _images(4, 8)
    model = Linear(3 * 64)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = A.autoattack(_raw(model), x, y, 2 / 255, version="standard")
    assert (adv - x).abs().max() <= 2 / 255 + 1e-6


@pytest.mark.parametrize("path", ["straight", "random"])
def test_integrated_gradients_are_complete(path):
    model = timm.create_model("test_convnext", num_classes=5).eval()
    x = _images(2, 32)
    y = torch.tensor([1, 3])
    f = A.pixel_space(model)
    with torch.no_grad():
        gap = (f(x) - f(torch.zeros_like(x))).gather(1, y[:, None])[:, 0]
    errors = []
    for steps in (4, 64):  # the same path (same generator), finer quadrature
        ig = A.integrated_gradients(model, x, y, steps=steps, path=path, generator=_gen(0))
        errors.append((ig.sum((1, 2, 3)) - gap).abs().max().item())
    assert errors[1] < 0.01 * gap.abs().max().item() + 1e-5
    assert errors[1] < errors[0] / 4 or errors[0] < 1e-5  # the trapezoid error shrinks ~ 1/steps^2


def test_ig_of_a_linear_model_is_exact():
    model = Linear(3 * 64)
    x, y = _images(2, 8), torch.tensor([0, 4])
    ig = A.integrated_gradients(_raw(model), x, y, steps=1)
    want = model.fc.weight[y].view(2, 3, 8, 8) * x
    assert torch.allclose(ig, want, atol=1e-6)


def test_taig_stays_in_the_ball_and_transfer_rate_counts_only_correct_images():
    x = _images(6, 8)
    surrogate, target = Linear(3 * 64, seed=0), Linear(3 * 64, seed=0)
    with torch.no_grad():
        y = target(x).argmax(1)
    for path in ("straight", "random"):
        adv = A.taig(_raw(surrogate), x, y, 16 / 255, steps=3, ig_steps=4, path=path, generator=_gen(0))
        assert (adv - x).abs().max() <= 16 / 255 + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    adv = A.taig(_raw(surrogate), x, y, 0.5, steps=10, ig_steps=2)
    rate = A.transfer_success_rate(_raw(target), adv, x, y)
    assert rate > 0.5  # the same model is fooled by its own attack
    wrong = (y + 1) % 5
    assert math.isnan(A.transfer_success_rate(_raw(target), adv, x, wrong))  # none correct: undefined
    half = y.clone()
    half[:3] = (y[:3] + 1) % 5  # 3 misclassified images do not count
    adv_half = torch.where(torch.arange(6).view(6, 1, 1, 1) < 3, adv, x)  # the 3 correct ones unattacked
    assert A.transfer_success_rate(_raw(target), adv_half, x, half) == 0.0


# ---- lesion ------------------------------------------------------------------------------------------------
def _tiny_replknet():
    torch.manual_seed(0)
    return RepLKNet([7, 5], [2, 1], [8, 16], 0.0, small_kernel=3, num_classes=5).eval()


@pytest.mark.parametrize("name, count", [("replknet", 6), ("test_convnext", 9), ("test_vit", None),
                                         ("resnet18", 5)])
def test_residual_blocks_are_the_shape_preserving_ones(name, count):
    model = _tiny_replknet() if name == "replknet" else timm.create_model(name, num_classes=5).eval()
    blocks = A.residual_blocks(model)
    if count is not None:
        assert len(blocks) == count
    assert blocks
    shapes = {}

    def record(name):
        def hook(module, args, output):
            shapes[name] = (args[0].shape, output.shape)
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in blocks]
    size = 32 if name != "test_vit" else model.patch_embed.img_size[0]
    model(torch.rand(1, 3, size, size))
    for h in hooks:
        h.remove()
    assert all(i == o for i, o in shapes.values())
    if name == "resnet18":  # the first block of stages 2-4 downsamples
        assert "layer2.0" not in dict(blocks) and "layer2.1" in dict(blocks)


def test_drop_blocks_is_identity_with_no_names_and_restores_the_model():
    model = _tiny_replknet()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with drop(model, []):
            assert torch.equal(model(x), before)
        name = A.residual_blocks(model)[0][0]
        with drop(model, [name]):
            dropped = model(x)
        assert not torch.allclose(dropped, before)
        with pytest.raises(RuntimeError):
            with drop(model, [name]):
                raise RuntimeError("interrupted")
        assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="droppable"):
        with drop(model, ["stem"]):
            pass


def drop(model, names):
    return A.drop_blocks(model, names)


def test_lesion_reports_mean_min_max_over_samples():
    model = _tiny_replknet()
    data = [(torch.rand(4, 3, 32, 32, generator=_gen(i)), torch.randint(0, 5, (4,), generator=_gen(i)))
            for i in range(2)]
    full = A.accuracy(A.pixel_space(model), data)
    r0 = A.lesion(A.pixel_space(model), data, 0, samples=5)
    assert r0["accuracies"] == [full] and r0["fraction"] == 0
    r = A.lesion(A.pixel_space(model), data, 2, samples=4, generator=_gen(3))
    assert len(r["accuracies"]) == 4 and r["min"] <= r["mean"] <= r["max"]
    assert all(len(set(d)) == 2 for d in r["dropped"]) and r["fraction"] == 2 / 6
    with pytest.raises(ValueError, match="between 0"):
        A.lesion(model, data, 7)


# ---- noise frequency ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("low, high", [(0.0, 0.1), (0.3, 0.4), (0.9, 1.0)])
def test_band_noise_lives_in_its_band_with_the_given_norm(low, high):
    noise = band_noise = A.band_noise((3, 3, 64, 64), low, high, eps=2.0, generator=_gen(0))
    assert band_noise.dtype == torch.float32
    assert torch.allclose(noise.flatten(1).norm(dim=1), torch.full((3,), 2.0), rtol=1e-5)
    power = torch.fft.fft2(noise.double()).abs() ** 2
    rho = A.radial_frequency(64, 64)
    inside = (rho >= low) & (rho < high)
    assert power[..., inside].sum() / power.sum() > 0.9999


def test_fourier_basis_is_a_unit_real_wave_at_its_frequency():
    b = A.fourier_basis(16, 16, 2, -3)
    assert abs(b.norm().item() - 1) < 1e-6
    spectrum = torch.fft.fft2(b.double()).abs()
    assert set(map(tuple, (spectrum > 1e-6).nonzero().tolist())) == {(2, 13), (14, 3)}


def test_noise_frequency_sweep_zero_noise_drops_nothing():
    model = timm.create_model("test_convnext", num_classes=5).eval()
    data = [(torch.rand(4, 3, 32, 32, generator=_gen(0)), torch.arange(4))]
    rows = A.noise_frequency_sweep(A.pixel_space(model), data, eps=0.0, bands=[(0.0, 0.5), (0.5, 1.0)])
    assert [r["drop"] for r in rows] == [0.0, 0.0]


# ---- kernels, features, ERF --------------------------------------------------------------------------------
def test_kernel_attention_distance_of_known_kernels():
    delta = torch.zeros(2, 1, 5, 5)
    delta[:, :, 2, 2] = 1
    assert torch.equal(A.kernel_attention_distance(delta), torch.zeros(2))
    uniform = A.kernel_attention_distance(-torch.ones(3, 3, 3))  # |w|: the sign does not matter
    assert torch.allclose(uniform, torch.full((3,), (4 + 4 * math.sqrt(2)) / 9))
    corner = torch.zeros(1, 1, 31, 31)
    corner[0, 0, 0, 0] = 1
    assert abs(A.kernel_attention_distance(corner).item() - 15 * math.sqrt(2)) < 1e-5


def test_model_kernel_attention_reads_merged_replknet_kernels():
    model = _tiny_replknet()
    merged = A.model_kernel_attention(model)
    assert [r["kernel_size"] for r in merged] == [[7, 7]] * 2 + [[5, 5]]  # the stem's 3x3 convs left out
    branches = A.model_kernel_attention(model, merged=False)
    assert len(branches) == 6  # large and small branches apart
    layer = merged[0]
    assert layer["distances"] == sorted(layer["distances"]) and layer["channel"][0] == 0 and layer["channel"][-1] == 1
    from lkconv.models import reparameterize_model

    after = A.model_kernel_attention(reparameterize_model(model))
    assert all(torch.allclose(torch.tensor(a["distances"]), torch.tensor(b["distances"]), atol=1e-5)
               for a, b in zip(merged, after))


def test_feature_map_variance_is_per_block_in_depth_order():
    model = _tiny_replknet()
    rows = A.feature_map_variance(model, torch.rand(2, 3, 32, 32))
    assert [r["name"] for r in rows] == [n for n, _ in A.residual_blocks(model)]
    assert rows[0]["depth"] == 0 and rows[-1]["depth"] == 1 and all(r["variance"] > 0 for r in rows)
    norm = A.feature_map_variance(model, torch.rand(2, 3, 32, 32), normalize=True)
    assert all(0 < r["variance"] <= 1 for r in norm)


@pytest.mark.parametrize("k", [3, 7])
def test_erf_of_one_conv_is_its_kernel_support(k):
    conv = nn.Conv2d(3, 4, k, padding=k // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(4, 3, k, k) + 0.1)
    result = A.effective_receptive_field(_raw(conv), _images(2, 33))
    support = result["map"] > 0
    want = torch.zeros(33, 33, dtype=torch.bool)
    want[16 - k // 2:17 + k // 2, 16 - k // 2:17 + k // 2] = True
    assert torch.equal(support, want)
    assert result["area_ratio"][0.99] <= k * k / 33 ** 2 + 1e-12


def test_erf_of_a_vit_reads_its_patch_tokens_as_a_map():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5).eval()
    result = A.effective_receptive_field(vit, _images(1))
    assert result["map"].shape == (64, 64) and result["map"].sum() > 0


# ---- CLI ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    class_folders(str(root / "val"), WNIDS[:3], per_class=2, size=40)
    torch.manual_seed(0)
    torch.save(timm.create_model("test_convnext").state_dict(), root / "c.pth")
    torch.save(timm.create_model("test_vit").state_dict(), root / "v.pth")
    return root


def _analyze(val, out, experiment, *extra):
    return [sys.executable, "-m", "robustness", "analyze", experiment, "--model", "test_convnext",
            "--checkpoint", str(val / "c.pth"), "--data", f"imagenet-val={val / 'val'}", "--out", str(out),
            "--workers", "0", "--batch-size", "2", *extra]


def _points(out):
    found = {}
    for root, _, files in os.walk(out):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(root, f)) as fh:
                    rec = json.load(fh)
                found[(rec["experiment"], rec["point_id"])] = rec["result"]
    return found


def test_cli_analyze_killed_and_rerun_gives_the_uninterrupted_results(val, tmp_path):
    args = ("pgd", "--eps", "1/255", "2/255", "4/255", "--steps", "1", "2")
    clean = tmp_path / "clean"
    run = subprocess.run(_analyze(val, clean, *args), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(_points(clean)) == 6
    out = tmp_path / "killed"
    proc = subprocess.Popen(_analyze(val, out, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_points(out)) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_points(out))
    rerun = subprocess.run(_analyze(val, out, *args), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{6 - partial} point(s) computed" in rerun.stdout
    assert _points(out) == _points(clean)
    again = subprocess.run(_analyze(val, out, *args), capture_output=True, text=True)
    assert "0 point(s) computed" in again.stdout
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".tmp-")]


EXPERIMENT_ARGS = {
    "occlusion": ("--ratios", "0", "0.5"),
    "fgsm": ("--eps", "0", "2/255"),
    "autoattack": ("--eps", "1/255", "--limit", "2"),
    "taig": ("--surrogate", "test_convnext", "--eps", "8/255", "--taig-steps", "1", "--ig-steps", "2"),
    "lesion": ("--blocks", "0", "3", "--samples", "2"),
    "noise-frequency": ("--band-width", "0.5"),
    "fourier-heatmap": ("--size", "2", "--limit", "2"),
    "kernel-distance": (),
    "feature-variance": ("--images", "4"),
    "erf": ("--images", "2"),
}


def test_every_experiment_end_to_end_with_report_tables_and_figures(val, tmp_path):
    out = tmp_path / "out"
    for experiment, extra in EXPERIMENT_ARGS.items():
        run = subprocess.run(_analyze(val, out, experiment, *extra), capture_output=True, text=True)
        assert run.returncode == 0, (experiment, run.stderr[-3000:])
    salient = ("--mode", "salient", "--ratios", "0.5", "--saliency-model", "test_vit", "--saliency-checkpoint",
               str(val / "v.pth"))
    run = subprocess.run(_analyze(val, out, "occlusion", *salient), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    points = _points(out)
    assert ("occlusion", "salient_r0.5") in points
    assert {e for e, _ in points} == set(EXPERIMENT_ARGS)
    assert points[("fgsm", "eps0")]["top1"] >= points[("fgsm", "eps2")]["top1"]
    assert (out / "test_convnext" / "analysis" / "erf" / "result.npz").exists()
    report = subprocess.run([sys.executable, "-m", "robustness", "report", str(out), "--plot",
                             str(tmp_path / "fig.png")], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    for title in ("Occlusion", "FGSM", "AutoAttack", "TAIG", "Lesion", "Band noise", "Fourier heat map",
                  "Kernel attention distance", "Feature-map variance", "Effective receptive field"):
        assert title in report.stdout
    for experiment in EXPERIMENT_ARGS:
        assert (tmp_path / f"fig-{experiment}.png").exists()
    csv_report = subprocess.run([sys.executable, "-m", "robustness", "report", str(out), "--format", "csv"],
                                capture_output=True, text=True)
    assert csv_report.returncode == 0 and "# Lesion" in csv_report.stdout


@pytest.mark.parametrize("extra, message", [
    (("fgsm",), "needs validation images"),
    (("taig", "--data", "imagenet-val=VAL"), "--surrogate"),
    (("occlusion", "--mode", "salient", "--data", "imagenet-val=VAL"), "--saliency-checkpoint"),
    (("fgsm", "--data", "imagenet-val=VAL", "--eps", "4/0"), "fraction"),
    (("lesion", "--data", "imagenet-val=VAL", "--blocks", "99"), "droppable"),
    (("fgsm", "--data", "imagenet-val=MISSING"), "imagenet-val"),
])
def test_cli_analyze_errors_are_clear(val, tmp_path, extra, message, capsys):
    from robustness.cli import main

    args = [a.replace("VAL", str(val / "val")).replace("MISSING", str(tmp_path / "nope")) for a in extra]
    try:
        code = main(["analyze", *args, "--model", "test_convnext", "--out", str(tmp_path / "o"), "--workers", "0"])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err[-2000:]


def test_torchrun_shards_the_images_and_sums_the_counts(val, tmp_path):
    """Two ranks (gloo on the CPU) give the single process's accuracies; rank 0 alone writes."""
    args = ("lesion", "--blocks", "0", "2", "--samples", "2")
    single = tmp_path / "single"
    run = subprocess.run(_analyze(val, single, *args), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    multi = tmp_path / "multi"
    cmd = _analyze(val, multi, *args)
    cmd[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "robustness"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _points(multi) == _points(single) and len(_points(single)) == 2


# ---- lkrobust reproduce --------------------------------------------------------------------------------------
def test_reproduce_writes_every_table_and_figure(tmp_path):
    from robustness_data import make_all

    data = make_all(str(tmp_path / "data"))
    torch.manual_seed(0)
    weights = {}
    for name, kwargs in (("test_convnext", {}), ("test_convnext_k3", dict(kernel_sizes=3)),
                         ("test_convnext_k9", dict(kernel_sizes=9))):
        weights[name] = tmp_path / f"{name}.pth"
        torch.save(timm.create_model("test_convnext", **kwargs).state_dict(), weights[name])
    config = tmp_path / "paper.toml"
    config.write_text(f'''
out = "results"
baseline = "test_convnext"
batch_size = 4
workers = 0
[benchmarks]
imagenet-val = "{data['imagenet-val']}"
imagenet-c = "{data['imagenet-c']}"
imagenet-p = "{data['imagenet-p']}"
imagenet-9 = "{data['imagenet-9']}"
imagenet-a = "{data['imagenet-a']}"
[experiments.occlusion]
mode = ["random"]
ratios = [0, 0.5]
[experiments.taig]
surrogate = "test_convnext"
surrogate_checkpoint = "{weights['test_convnext']}"
eps = ["8/255"]
taig_steps = 1
ig_steps = 2
[experiments.lesion]
blocks = [0, 2]
samples = 2
[experiments.noise-frequency]
band_width = 0.5
[experiments.kernel-distance]
[experiments.feature-variance]
images = 2
[[models]]
name = "test_convnext"
checkpoint = "test_convnext.pth"
[[models]]
name = "test_convnext"
checkpoint = "test_convnext_k3.pth"
kernel_size = 3
tables = ["table7"]
[[models]]
name = "test_convnext"
checkpoint = "test_convnext_k9.pth"
kernel_size = 9
tables = ["table7", "table5"]
''')
    run = subprocess.run([sys.executable, "-m", "robustness", "reproduce", str(config)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    paper = tmp_path / "results" / "paper"
    for name in ("table1_imagenet_c", "table2_imagenet_p", "table3_imagenet_9", "table4_taig",
                 "table5_kernel_ablation", "table6_more_benchmarks", "table7_convnext_kernel_sizes"):
        assert (paper / f"{name}.md").exists(), name
    for name in ("fig2_imagenet_c_per_corruption", "fig3_imagenet_c_per_severity", "fig4_imagenet_p_flip_probability",
                 "fig6_occlusion", "fig7_lesion", "fig8_noise_frequency", "fig9_kernel_distance",
                 "fig10_feature_variance"):
        assert (paper / f"{name}.png").exists(), name
    index = (paper / "index.md").read_text()
    assert "table7_convnext_kernel_sizes.md" in index and "fig9_kernel_distance.png" in index
    table7 = (paper / "table7_convnext_kernel_sizes.md").read_text()
    rows = [line for line in table7.splitlines() if line.startswith("| k=")]
    assert [r.split(" ")[1] for r in rows] == ["k=3", "k=9"]  # one row per kernel size, in order
    assert "—" not in rows[0].split("|")[2]  # IN top-1 was evaluated
    # Kernel sizes really differ: the distances of the k=3 model are those of 3x3 kernels.
    with open(tmp_path / "results" / "test_convnext_k3" / "analysis" / "kernel-distance" / "result.json") as f:
        layers = json.load(f)["result"]["layers"]
    assert {tuple(layer["kernel_size"]) for layer in layers} == {(3, 3)}
    # A rerun finds everything done and rewrites the tables.
    again = subprocess.run([sys.executable, "-m", "robustness", "reproduce", str(config)], capture_output=True,
                           text=True, cwd=tmp_path)
    assert again.returncode == 0 and "index.md" in again.stdout


def test_reproduce_config_errors_are_clear(tmp_path, capsys):
    from robustness.cli import main
    from robustness.reproduce import load_config

    assert len(load_config("robustness/configs/paper.toml", check_files=False).models) == 15
    for text, message in (('out = "r"\n', "no [[models]]"),
                          ('[[models]]\nname = "no_such_model"\n', "unknown model"),
                          ('colour = 1\n[[models]]\nname = "test_convnext"\n', "unknown keys"),
                          ('[[models]]\nname = "test_convnext"\n[experiments.lesion]\n', "needs benchmarks.imagenet-val"),
                          ('[[models]]\nname = "test_convnext"\ncheckpoint = "missing.pth"\n', "checkpoint not found"),
                          ('[[models]]\nname = "test_convnext"\n[[models]]\nname = "test_convnext"\n', "listed twice"),
                          ("[[models]\n", "not valid TOML")):
        config = tmp_path / "c.toml"
        config.write_text(text)
        assert main(["reproduce", str(config)]) == 2
        assert message in capsys.readouterr().err
