"""Where a drop-in replacement is judged: every autograd mode, torch.func, meta tensors, deferred init,
TorchScript, ONNX, convert_model's side effects, explain, error messages, and the non-finite rule."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lkconv
from conftest import backend_available
from reference import rule_oracle
from lkconv import ops

BACKENDS = ["cpu", "torch", "triton"]


def _need(backend):
    if not backend_available(backend):
        pytest.skip(f"{backend}: {lkconv.available_backends()[backend]}")


def _inputs(dtype=torch.float64, n=2, c=3, h=7, w=8, k=(3, 4)):
    x = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True)
    wt = torch.randn(c, 1, *k, dtype=dtype, requires_grad=True)
    b = torch.randn(c, dtype=dtype, requires_grad=True)
    return x, wt, b


# ---- autograd modes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("padding", [1, "same", (2, 0)])
def test_forward_ad_and_double_backward(backend, padding):
    _need(backend)
    x, w, b = _inputs()
    fn = lambda x, w, b: lkconv.depthwise_conv2d(x, w, b, padding=padding)  # noqa: E731
    with lkconv.use_backend(backend):
        assert torch.autograd.gradcheck(fn, (x, w, b), check_forward_ad=True, check_backward_ad=True)
        assert torch.autograd.gradgradcheck(fn, (x, w, b), check_fwd_over_rev=True, check_rev_over_rev=True)


def test_jvp_is_the_conv_of_the_tangents():
    """The op is linear in each argument: the tangent is conv(dx, w) + conv(x, dw) + db (was all zeros)."""
    x, w, b = (t.detach() for t in _inputs())
    dx, dw, db = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    _, tangent = torch.func.jvp(lambda x, w, b: lkconv.depthwise_conv2d(x, w, b, padding=1), (x, w, b),
                                (dx, dw, db))
    expected = F.conv2d(dx, w, None, 1, 1, 1, 3) + F.conv2d(x, dw, None, 1, 1, 1, 3) + db.view(1, -1, 1, 1)
    torch.testing.assert_close(tangent, expected)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = lkconv.depthwise_conv2d(fwAD.make_dual(x, dx), w, padding=1)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, F.conv2d(dx, w, None, 1, 1, 1, 3))


def test_hvp_and_gradient_penalty_match_conv2d():
    x, w, _ = (t.detach() for t in _inputs())
    v = torch.randn_like(w)

    def loss(fn):
        return lambda w: fn(x, w).tanh().square().sum()

    ours = loss(lambda x, w: lkconv.depthwise_conv2d(x, w, padding=1))
    ref = loss(lambda x, w: F.conv2d(x, w, None, 1, 1, 1, 3))
    torch.testing.assert_close(torch.autograd.functional.hvp(ours, w, v)[1],
                               torch.autograd.functional.hvp(ref, w, v)[1])
    # A gradient penalty: d/dw |d loss / dx|^2 needs the backward ops' own derivatives.
    def penalty(fn):
        xx = x.clone().requires_grad_()
        ww = w.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(xx, ww).sin().sum(), xx, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), ww)[0]

    torch.testing.assert_close(penalty(lambda x, w: lkconv.depthwise_conv2d(x, w, padding=1)),
                               penalty(lambda x, w: F.conv2d(x, w, None, 1, 1, 1, 3)))


def test_torch_func_transforms_match_conv2d():
    x, w, _ = (t.detach() for t in _inputs(n=2, c=2, h=5, w=5, k=(3, 3)))
    ours = lambda w: lkconv.depthwise_conv2d(x, w, padding=1)  # noqa: E731
    ref = lambda w: F.conv2d(x, w, None, 1, 1, 1, 2)  # noqa: E731
    torch.testing.assert_close(torch.func.jacrev(ours)(w), torch.func.jacrev(ref)(w))
    torch.testing.assert_close(torch.func.jacfwd(ours)(w), torch.func.jacrev(ref)(w))
    scalar = lambda fn: (lambda w: fn(w).pow(3).sum())  # noqa: E731
    torch.testing.assert_close(torch.func.hessian(scalar(ours))(w), torch.func.hessian(scalar(ref))(w))
    torch.testing.assert_close(torch.func.grad(scalar(ours))(w), torch.func.grad(scalar(ref))(w))
    per_sample = torch.func.vmap(torch.func.grad(lambda x: lkconv.depthwise_conv2d(x[None], w, padding=1).pow(2).sum()))
    per_sample_ref = torch.func.vmap(torch.func.grad(lambda x: F.conv2d(x[None], w, None, 1, 1, 1, 2).pow(2).sum()))
    torch.testing.assert_close(per_sample(x), per_sample_ref(x))


@pytest.mark.parametrize("batched", ["input", "weight", "both", "bias"])
def test_vmap_uses_one_op_call(batched, monkeypatch):
    """vmap reaches the ops' batching rules: one kernel call for the whole vmapped batch (no per-sample loop)."""
    from lkconv.backends import BACKENDS

    calls = []
    real = BACKENDS["cpu"].forward
    monkeypatch.setattr(BACKENDS["cpu"], "forward", lambda *a: calls.append(1) or real(*a))
    xs = torch.randn(4, 2, 3, 9, 9)
    ws = torch.randn(4, 3, 1, 5, 5)
    bs = torch.randn(4, 3)
    x, w, b = xs[0], ws[0], bs[0]
    fn = lambda x, w, b: lkconv.depthwise_conv2d(x, w, b, padding=2)  # noqa: E731
    ref = lambda x, w, b: F.conv2d(x, w, b, 1, 2, 1, 3)  # noqa: E731
    args, dims = {"input": ((xs, w, b), (0, None, None)), "weight": ((x, ws, b), (None, 0, None)),
                  "both": ((xs, ws, bs), (0, 0, 0)), "bias": ((x, w, bs), (None, None, 0))}[batched]
    with lkconv.use_backend("cpu"):
        out = torch.func.vmap(fn, in_dims=dims)(*args)
    torch.testing.assert_close(out, torch.func.vmap(ref, in_dims=dims)(*args))
    assert len(calls) == 1


# ---- meta tensors, deferred initialisation, TorchScript, ONNX -------------------------------------------------
def test_meta_inputs_and_deferred_init():
    with torch.device("meta"):
        model = nn.Sequential(lkconv.LKConv2d(4, 4, 7, padding=3, groups=4), nn.ReLU())
    y = model(torch.randn(2, 4, 10, 9, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 4, 10, 9)
    model.to_empty(device="cpu")
    nn.init.normal_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    x = torch.randn(2, 4, 10, 9)
    torch.testing.assert_close(model(x), F.conv2d(x, model[0].weight, model[0].bias, 1, 3, 1, 4).relu())
    assert lkconv.depthwise_conv2d(torch.randn(1, 3, 6, 6, device="meta"), torch.randn(3, 1, 3, 3, device="meta"),
                                   padding="same").shape == (1, 3, 6, 6)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_torchscript(padding_mode):
    m = lkconv.LKConv2d(6, 6, 5, padding=2, groups=6, padding_mode=padding_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        scripted = torch.jit.script(m)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(scripted(x), m(x))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lkconv.models import RepLKNet

    model = RepLKNet([7, 5], [1, 1], [8, 16], 0.0, small_kernel=3, num_classes=5).eval()
    model.structural_reparam()  # what users deploy
    x = torch.randn(1, 3, 64, 64)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=True)
    assert "Conv" in {n.op_type for n in onnx.load(path).graph.node}
    session = ort.InferenceSession(path)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


# ---- torch.compile and use_backend ---------------------------------------------------------------------------
def test_use_backend_wraps_compiled_calls_and_explains_misuse():
    torch._dynamo.reset()
    w = torch.randn(4, 1, 7, 7)
    compiled = torch.compile(lambda x: lkconv.depthwise_conv2d(x, w, padding=3), fullgraph=True,
                             backend="aot_eager")
    x = torch.randn(1, 4, 8, 8)
    with lkconv.use_backend("torch"):
        torch.testing.assert_close(compiled(x), F.conv2d(x, w, None, 1, 3, 1, 4))

    def inside(x):
        with lkconv.use_backend("torch"):
            return lkconv.depthwise_conv2d(x, w, padding=3)

    with pytest.raises(Exception, match="wrap the call of the compiled function"):
        torch.compile(inside, fullgraph=True, backend="aot_eager")(x)


# ---- convert_model -------------------------------------------------------------------------------------------
def test_convert_model_keeps_hooks_sharing_and_identity():
    shared = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    seen = []
    shared.register_forward_pre_hook(lambda m, a: seen.append("pre"))
    shared.register_forward_hook(lambda m, a, out: seen.append("post"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(1, 4, 9, 9)
    before = model(x)
    seen.clear()
    lkconv.convert_model(model)
    assert model[0] is model[2] is shared and isinstance(shared, lkconv.LKConv2d)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert seen == ["pre", "post", "pre", "post"]
    assert opt.param_groups[0]["params"][0] is shared.weight
    assert len(list(model.parameters())) == 2


def test_convert_model_top_level_and_type_error():
    conv = nn.Conv2d(3, 3, 9, padding=4, groups=3)
    assert lkconv.convert_model(conv) is conv and isinstance(conv, lkconv.LKConv2d)
    with pytest.raises(TypeError, match="nn.Module"):
        lkconv.convert_model("resnet50")


def test_to_stock_undoes_convert_model():
    model = nn.Sequential(nn.Conv2d(4, 4, 9, padding=4, groups=4), nn.Conv2d(4, 4, 1))
    lkconv.convert_model(model)
    stock = lkconv.to_stock(model)
    assert type(stock[0]) is nn.Conv2d and isinstance(model[0], lkconv.LKConv2d)  # a copy by default
    x = torch.randn(2, 4, 12, 12)
    torch.testing.assert_close(stock(x), model(x), rtol=1e-5, atol=1e-5)
    assert stock.state_dict().keys() == model.state_dict().keys()
    assert lkconv.to_stock(model, inplace=True) is model and type(model[0]) is nn.Conv2d
    with pytest.raises(TypeError, match="nn.Module"):
        lkconv.to_stock(None)


# ---- explain and errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,why", [
    (lambda: (torch.randn(0, 4, 8, 8), torch.randn(4, 1, 3, 3)), "empty input"),
    (lambda: (torch.randint(0, 3, (1, 4, 8, 8)), torch.randint(0, 3, (4, 1, 3, 3))), "floating"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(6, 1, 3, 3)), "depthwise weight"),
])
def test_explain_calls_the_op_does_not_take(make, why):
    x, w = make()
    text = lkconv.explain(x, w, padding=1)
    assert "runs on: torch" in text and why in text


def test_explain_unbatched_input():
    text = lkconv.explain(torch.randn(4, 8, 8), torch.randn(4, 1, 3, 3), padding=1)
    assert "runs on: forward -> cpu" in text


def test_module_channel_mismatch_message_matches_conv2d():
    x = torch.randn(1, 7, 8, 8)
    with pytest.raises(RuntimeError) as ours:
        lkconv.LKConv2d(6, 6, 3, groups=6)(x)
    with pytest.raises(RuntimeError) as theirs:
        nn.Conv2d(6, 6, 3, groups=6)(x)
    assert str(ours.value) == str(theirs.value)


# ---- the non-finite rule -------------------------------------------------------------------------------------
CASES = [((3, 3), (4, 4), (1, 1, 1, 1)), ((7, 7), (5, 6), (3, 3, 3, 3)), ((5, 2), (9, 7), (2, 2, 0, 1)),
         ((13, 13), (4, 4), (6, 6, 6, 6))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel,size,pads", CASES, ids=lambda v: "x".join(map(str, v)))
def test_non_finite_rule_every_backend_and_pass(backend, layout, kernel, size, pads):
    """Non-finite weights and output gradients reach exactly the positions the rule says (the finite/non-finite
    pattern of a float64 oracle), in every pass; finite values stay within the usual error."""
    _need(backend)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    padding = (pads[0], pads[2]) if pads[0] == pads[1] and pads[2] == pads[3] else None
    if padding is None:
        padding = "same"
    resolved = lkconv.geometry.resolve_padding(padding, kernel, (1, 1), (1, 1))
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    w = torch.randn(3, 1, *kernel, dtype=torch.float64)
    w[0, 0, 0, 0] = float("nan")
    w[1, 0, -1, -1] = float("inf")
    w[2, 0, kernel[0] // 2, 0] = -float("inf")
    x32 = x.float().contiguous(memory_format=fmt).requires_grad_()
    w32 = w.float().requires_grad_()
    with lkconv.use_backend(backend):
        y = lkconv.depthwise_conv2d(x32, w32, padding=padding)
    x64 = x.clone().requires_grad_()
    ref = rule_oracle(x64, w, resolved)
    assert torch.equal(torch.isfinite(y), torch.isfinite(ref)), "forward"
    g = torch.randn(ref.shape, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x32, g.float())
    (rgx,) = torch.autograd.grad(ref, x64, g)
    assert torch.equal(torch.isfinite(gx), torch.isfinite(rgx)), "backward-input"

    # A non-finite output gradient, finite weights: the weight gradient.
    wf = torch.randn(3, 1, *kernel, dtype=torch.float64)
    g[0, 0, 0, 0] = float("nan")
    g[1, 2, -1, 0] = float("inf")
    w32 = wf.float().requires_grad_()
    with lkconv.use_backend(backend):
        y = lkconv.depthwise_conv2d(x.float().contiguous(memory_format=fmt), w32, padding=padding)
    (gw,) = torch.autograd.grad(y, w32, g.float().contiguous(memory_format=fmt))
    w64 = wf.clone().requires_grad_()
    (rgw,) = torch.autograd.grad(rule_oracle(x, w64, resolved), w64, g)
    assert torch.equal(torch.isfinite(gw), torch.isfinite(rgw)), "backward-weight"
    finite = torch.isfinite(rgw)
    torch.testing.assert_close(gw.double()[finite], rgw[finite], rtol=1e-4, atol=1e-4)
    # The channels holding a non-finite gradient get non-finite weight gradients, the other one does not.
    assert not torch.isfinite(gw[0]).all() and not torch.isfinite(gw[2]).all() and torch.isfinite(gw[1]).all()


def test_tap_reading_only_padding_gets_zero_gradient_under_nan():
    """N=1, C=1, 2x2 map, 7x7 kernel, padding 3, NaN at grad_out[0,0,0,0]: taps that only ever read padding
    get a zero gradient (they multiply nothing), taps that meet the NaN through a real pixel get NaN."""
    x = torch.randn(1, 1, 2, 2)
    w = torch.randn(1, 1, 7, 7, requires_grad=True)
    g = torch.randn(1, 1, 2, 2)
    g[0, 0, 0, 0] = float("nan")
    for backend in ("cpu", "torch"):
        with lkconv.use_backend(backend):
            (gw,) = torch.autograd.grad(lkconv.depthwise_conv2d(x, w, padding=3), w, g)
        assert (gw[0, 0, :2] == 0).all() and (gw[0, 0, :, :2] == 0).all()  # rows/cols 0-1 read padding only
        assert torch.isnan(gw[0, 0, 3:5, 3:5]).all()
