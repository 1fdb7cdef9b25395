"""RepLKNet (keys, loading, re-parameterisation, checkpointing) and the timm-registered model families."""

import pytest
import torch

timm = pytest.importorskip("timm")

import lkconv.models as M  # noqa: E402
from lkconv import LKConv2d  # noqa: E402

TINY = dict(large_kernel_sizes=[13, 11, 9, 7], layers=[1, 1, 2, 1], channels=[8, 16, 24, 32], drop_path_rate=0.1,
            small_kernel=5, num_classes=10)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def official_key_layout(large_kernel_sizes, layers, channels, small_kernel, dw_ratio=1, ffn_ratio=4,
                        num_classes=1000, in_channels=3):
    """The state-dict keys and shapes of the official RepLKNet release, written from its documented
    structure (independently of lkconv's module tree)."""
    sd = {}

    def bn(prefix, c):
        for name, shape in (("weight", (c,)), ("bias", (c,)), ("running_mean", (c,)), ("running_var", (c,))):
            sd[f"{prefix}.{name}"] = torch.rand(shape) + (0.5 if name == "running_var" else 0.0)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    def conv_bn(prefix, cin, cout, k, groups=1):
        sd[f"{prefix}.conv.weight"] = torch.randn(cout, cin // groups, k, k) * 0.1
        bn(f"{prefix}.bn", cout)

    w = channels[0]
    conv_bn("stem.0", in_channels, w, 3)
    conv_bn("stem.1", w, w, 3, groups=w)
    conv_bn("stem.2", w, w, 1)
    conv_bn("stem.3", w, w, 3, groups=w)
    for s, (k, depth, c) in enumerate(zip(large_kernel_sizes, layers, channels)):
        dw = int(c * dw_ratio)
        for b in range(depth):
            p = f"stages.{s}.blocks.{2 * b}"
            bn(f"{p}.prelkb_bn", c)
            conv_bn(f"{p}.pw1", c, dw, 1)
            conv_bn(f"{p}.pw2", dw, c, 1)
            conv_bn(f"{p}.large_kernel.lkb_origin", dw, dw, k, groups=dw)
            if small_kernel:
                conv_bn(f"{p}.large_kernel.small_conv", dw, dw, small_kernel, groups=dw)
            p = f"stages.{s}.blocks.{2 * b + 1}"
            bn(f"{p}.preffn_bn", c)
            conv_bn(f"{p}.pw1", c, int(c * ffn_ratio), 1)
            conv_bn(f"{p}.pw2", int(c * ffn_ratio), c, 1)
        if s < len(layers) - 1:
            conv_bn(f"transitions.{s}.0", c, channels[s + 1], 1)
            conv_bn(f"transitions.{s}.1", channels[s + 1], channels[s + 1], 3, groups=channels[s + 1])
    bn("norm", channels[-1])
    sd["head.weight"] = torch.randn(num_classes, channels[-1]) * 0.01
    sd["head.bias"] = torch.zeros(num_classes)
    return sd


def _arch(cfg):
    return {k: cfg[k] for k in ("large_kernel_sizes", "layers", "channels", "small_kernel")}


def test_official_layout_loads_strict_from_containers(tmp_path):
    sd = official_key_layout(**_arch(TINY), num_classes=10)
    wrapped = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    model = M.RepLKNet(**TINY)
    M.load_checkpoint(model, path)
    assert torch.equal(model.state_dict()["stages.0.blocks.0.large_kernel.lkb_origin.conv.weight"],
                       sd["stages.0.blocks.0.large_kernel.lkb_origin.conv.weight"])
    assert isinstance(model.stages[0].blocks[0].large_kernel.lkb_origin.conv, LKConv2d)
    M.load_checkpoint(M.RepLKNet(**TINY), {"state_dict": sd})


def test_wrong_or_missing_keys_are_named():
    sd = official_key_layout(**_arch(TINY), num_classes=10)
    broken = dict(sd)
    broken["stages.0.blocks.0.large_kernel.lkb_origin.conv.weights"] = broken.pop(
        "stages.0.blocks.0.large_kernel.lkb_origin.conv.weight")
    with pytest.raises(KeyError, match=r"lkb_origin\.conv\.weight\b.*lkb_origin\.conv\.weights"):
        M.load_checkpoint(M.RepLKNet(**TINY), broken)
    del sd["head.bias"]
    with pytest.raises(KeyError, match="head.bias"):
        M.load_checkpoint(M.RepLKNet(**TINY), sd)


def test_merged_checkpoint_loads_into_merged_model():
    model = M.RepLKNet(**TINY).eval()
    _randomise_bn(model)
    merged_sd = M.reparameterize_model(model).state_dict()
    assert any("lkb_reparam" in k for k in merged_sd)
    with pytest.raises(KeyError, match="small_kernel_merged=True"):
        M.load_checkpoint(M.RepLKNet(**TINY), merged_sd)
    merged = M.RepLKNet(**TINY, small_kernel_merged=True).eval()
    M.load_checkpoint(merged, merged_sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("small_kernel", [5, None])
def test_structural_reparam_keeps_outputs(small_kernel):
    torch.manual_seed(0)
    model = M.RepLKNet(**{**TINY, "small_kernel": small_kernel}).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        copy = M.reparameterize_model(model, inplace=False)
        assert any(hasattr(m, "lkb_origin") for m in model.modules())  # original untouched
        model.structural_reparam()
        model.structural_reparam()  # idempotent
        after = model(x)
        rel = ((after - before).norm() / before.norm()).item()
        assert rel <= 1e-5, rel
        torch.testing.assert_close(copy(x), after, rtol=0, atol=0)
    assert not any(hasattr(m, "lkb_origin") or hasattr(m, "small_conv") for m in model.modules())
    assert isinstance(model.stages[0].blocks[0].large_kernel.lkb_reparam, LKConv2d)


def test_activation_checkpointing_matches():
    torch.manual_seed(0)
    a = M.RepLKNet(**{**TINY, "drop_path_rate": 0.0})
    b = M.RepLKNet(**{**TINY, "drop_path_rate": 0.0}, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    a(x).sum().backward()
    b(x).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name,params", [("replknet_31b", 79.86e6), ("replknet_31l", 172.67e6),
                                         ("replknet_xl", 335.44e6)])
def test_registered_replknets_match_official_sizes(name, params):
    model = timm.create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) - params) < 0.01e6
    assert sum(isinstance(m, LKConv2d) for m in model.modules()) == 24  # one large kernel per RepLK block


def test_replknet_31b_forward_backward_small_input():
    model = timm.create_model("replknet_31b", num_classes=5)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    assert out.shape == (1, 5)
    out.sum().backward()
    assert model.stages[0].blocks[0].large_kernel.lkb_origin.conv.weight.grad is not None


@pytest.mark.parametrize("name", M.ablation_model_names())
def test_convnext_kernel_family(name):
    model = timm.create_model(name, num_classes=3)
    k = int(name.rsplit("_k", 1)[1])
    dws = [m for m in model.modules() if getattr(m, "groups", 1) > 1 and m.groups == m.in_channels]
    assert dws and all(m.kernel_size == (k, k) for m in dws)
    assert all(isinstance(m, LKConv2d) for m in dws) == (k >= 7)
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3)
    out.sum().backward()


def test_create_model_any_kernel_size():
    model = M.create_model("convnext_atto", kernel_size=(3, 7, 13, 51), num_classes=4)  # per stage
    dws = [m for m in model.modules() if isinstance(m, LKConv2d)]
    assert len(dws) == 2 + 6 + 2 and dws[0].kernel_size == (7, 7) and dws[-1].kernel_size == (51, 51)
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    with pytest.raises(ValueError, match="kernel_sizes"):
        M.create_model("resnet18", kernel_size=7)


def test_pretrained_overlay_from_local_file_and_data_config(tmp_path):
    source = timm.create_model("replknet_31b")
    path = tmp_path / "RepLKNet-31B_ImageNet-1K_224.pth"
    torch.save({"model": source.state_dict()}, path)
    model = timm.create_model("replknet_31b", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.head.weight, source.head.weight)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    cfg384 = timm.data.resolve_data_config({}, model=timm.create_model("replknet_31b.in1k_384"))
    assert cfg384["input_size"] == (3, 384, 384) and cfg384["crop_pct"] == 1.0


def test_features_only():
    model = timm.create_model("replknet_31b", features_only=True, out_indices=(1, 3))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 1024]
    assert [f.shape[-1] for f in feats] == [8, 2]
    assert model.feature_info.channels() == [256, 1024]


def test_dense_backbone_out_indices():
    model = M.RepLKNet(**{**TINY, "num_classes": None}, out_indices=(0, 2), norm_intermediate_features=True)
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [8, 24]


def test_decomposed_kernel_reparam():
    torch.manual_seed(0)
    block = M.DecomposedLargeKernelConv(6, kernel_size=13, small_kernel=3).eval()
    _randomise_bn(block)
    assert block.lkb_tall.conv.kernel_size == (13, 3) and isinstance(block.lkb_tall.conv, LKConv2d)
    x = torch.randn(2, 6, 20, 17)
    with torch.no_grad():
        before = block(x)
        merged = M.reparameterize_model(block)
        after = merged(x)
    assert merged.lkb_reparam.kernel_size == (13, 13) and not hasattr(merged, "lkb_tall")
    assert ((after - before).norm() / before.norm()).item() <= 1e-5
    merged.merge_kernel()  # idempotent
