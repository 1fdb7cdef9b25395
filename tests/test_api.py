"""The functional API's contract beyond numerics: F.conv2d's shapes, padding rules, errors, empty tensors,
unbatched inputs, autocast."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import lkconv


def _both(fn):
    """Run fn with F.conv2d-like callables: ours and the reference; return both results."""
    return fn(lkconv.depthwise_conv2d), fn(lambda x, w, b=None, s=1, p=0, d=1: F.conv2d(x, w, b, s, p, d,
                                                                                      x.shape[-3]))


@pytest.mark.parametrize("padding", [0, 1, (2, 3), "same", "valid"])
@pytest.mark.parametrize("kernel", [(3, 3), (4, 4), (2, 5), (6, 3)])
def test_padding_forms_match_conv2d(padding, kernel):
    x = torch.randn(2, 4, 9, 10)
    w = torch.randn(4, 1, *kernel)
    ours, ref = _both(lambda f: f(x, w, None, 1, padding))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("stride,dilation", [(2, 1), ((1, 2), 1), (1, 2), (2, (2, 1))])
def test_strided_and_dilated_fall_back_with_same_results(stride, dilation):
    x = torch.randn(2, 3, 11, 12, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, requires_grad=True)
    y = lkconv.depthwise_conv2d(x, w, None, stride, 2, dilation)
    ref = F.conv2d(x, w, None, stride, 2, dilation, 3)
    torch.testing.assert_close(y, ref)
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    rx, rw = torch.autograd.grad(ref.sum(), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_unbatched_input():
    x = torch.randn(3, 8, 8)
    w = torch.randn(3, 1, 3, 3)
    torch.testing.assert_close(lkconv.depthwise_conv2d(x, w, padding=1), F.conv2d(x, w, None, 1, 1, 1, 3))


def test_channel_multiplier_goes_to_reference():
    """weight (2C, 1, k, k) is legal for F.conv2d(groups=C); we return its result (the fast op refuses it)."""
    x = torch.randn(1, 3, 8, 8)
    w = torch.randn(6, 1, 3, 3)
    torch.testing.assert_close(lkconv.depthwise_conv2d(x, w, padding=1), F.conv2d(x, w, None, 1, 1, 1, 3))
    with lkconv.use_backend("cpu"), pytest.raises(lkconv.BackendNotSupportedError, match="cpu"):
        lkconv.depthwise_conv2d(x, w, padding=1)


def test_empty_batch_like_pytorch():
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    y = lkconv.depthwise_conv2d(x, w, padding=1)
    assert y.shape == F.conv2d(x, w, None, 1, 1, 1, 3).shape == (0, 3, 8, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(w.grad) == 0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(3, 2, 3, 3), None, 0), id="weight-shape"),
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(4, 1, 3, 3), None, 0), id="groups-mismatch"),
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3, dtype=torch.float64), None, 0),
                     id="mixed-dtypes"),
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3), None, 0), id="weight-3d"),
        pytest.param(lambda: (torch.randn(2, 3, 2, 2), torch.randn(3, 1, 5, 5), None, 0), id="kernel-too-large"),
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3), torch.randn(4), 0), id="bias-shape"),
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3), None, -1), id="negative-padding"),
        pytest.param(lambda: (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3), None, "full"), id="bad-padding"),
        pytest.param(lambda: (torch.randn(8, 8), torch.randn(3, 1, 3, 3), None, 0), id="input-2d"),
    ],
)
def test_errors_match_conv2d(make):
    x, w, b, padding = make()
    with pytest.raises(Exception) as theirs:
        F.conv2d(x, w, b, 1, padding, 1, x.shape[-3] if x.dim() >= 3 else 1)
    with pytest.raises(type(theirs.value)) as ours:
        lkconv.depthwise_conv2d(x, w, b, 1, padding)
    assert str(ours.value) == str(theirs.value)


def test_integer_dtype_goes_to_reference():
    x = torch.randint(-5, 5, (1, 2, 6, 6))
    w = torch.randint(-5, 5, (2, 1, 3, 3))
    assert torch.equal(lkconv.depthwise_conv2d(x, w, padding=1), F.conv2d(x, w, None, 1, 1, 1, 2))


def test_strided_same_padding_error():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 1, 3, 3)
    with pytest.raises((RuntimeError, ValueError), match="same"):
        lkconv.depthwise_conv2d(x, w, stride=2, padding="same")


def test_forced_backend_refuses_instead_of_falling_back():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 1, 3, 3)
    with lkconv.use_backend("cpu"), pytest.raises(lkconv.BackendNotSupportedError, match="stride"):
        lkconv.depthwise_conv2d(x, w, stride=2)
    with lkconv.use_backend("torch"):
        torch.testing.assert_close(lkconv.depthwise_conv2d(x, w, stride=2), F.conv2d(x, w, None, 2, 0, 1, 2))


def test_cpu_autocast_runs_in_bfloat16_like_conv2d():
    x, w = torch.randn(1, 4, 10, 10), torch.randn(4, 1, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = lkconv.depthwise_conv2d(x, w, padding=2)
        ref = F.conv2d(x, w, None, 1, 2, 1, 4)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=5e-2)


def test_expanded_gradient():
    """A gradient with zero strides (from .sum()) is read through its strides."""
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w = torch.randn(3, 1, 7, 7, requires_grad=True)
    with lkconv.use_backend("cpu"):
        lkconv.depthwise_conv2d(x, w, padding=3).sum().backward()
    rx, rw = x.detach().requires_grad_(), w.detach().requires_grad_()
    F.conv2d(rx, rw, None, 1, 3, 1, 3).sum().backward()
    torch.testing.assert_close(x.grad, rx.grad)
    torch.testing.assert_close(w.grad, rw.grad, rtol=1e-5, atol=1e-4)


def test_weight_grad_is_deterministic_across_thread_counts():
    x = torch.randn(4, 6, 20, 20)
    g = torch.randn(4, 6, 20, 20)
    w = torch.randn(6, 1, 9, 9)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with lkconv.use_backend("cpu"):
                xr = x.clone().requires_grad_()
                wr = w.clone().requires_grad_()
                lkconv.depthwise_conv2d(xr, wr, padding=4).backward(g)
            results.append(wr.grad)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_eager_inference_fast_path_and_dispatch_modes():
    """CPU inference calls skip the custom op's dispatch (the same kernels, the same result), but under a
    TorchDispatchMode (profilers, FLOP counters) the lkconv op stays visible."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(3, 1, 13, 13), torch.randn(3)
    with torch.inference_mode():
        fast = lkconv.depthwise_conv2d(x, w, b, padding=6)
        with Log():
            logged = lkconv.depthwise_conv2d(x, w, b, padding=6)
    assert any("lkconv" in name for name in seen)
    torch.testing.assert_close(fast, logged, rtol=0, atol=0)
    torch.testing.assert_close(fast, F.conv2d(x, w, b, 1, 6, 1, 3))


def test_cpu_inference_plans_never_conflate_calls(monkeypatch):
    """Unforced CPU inference calls are planned once per signature; calls that differ only in what plain
    equality hides (True == 1, 1.0 == 1), in layout, in a malformed bias or in a forced backend still go their own
    way."""
    x, w = torch.randn(2, 32, 9, 9), torch.randn(32, 1, 3, 3)
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = F.conv2d(x, w, None, 1, 1, 1, 32)
        for _ in range(2):
            torch.testing.assert_close(lkconv.depthwise_conv2d(x, w, padding=1), ref)
            out = lkconv.depthwise_conv2d(cl, w, padding=(1, 1))
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, ref)
        for padding in (1.0, True):
            try:
                expected = F.conv2d(x, w, None, 1, padding, 1, 32)
            except (TypeError, RuntimeError) as exc:
                with pytest.raises(type(exc)):
                    lkconv.depthwise_conv2d(x, w, padding=padding)
            else:
                torch.testing.assert_close(lkconv.depthwise_conv2d(x, w, padding=padding), expected)
        with pytest.raises(RuntimeError):
            lkconv.depthwise_conv2d(x, w, torch.randn(5), padding=1)
        calls = []
        torch_backend = lkconv.backends.BACKENDS["torch"]
        monkeypatch.setattr(torch_backend, "forward", lambda *a: calls.append(1) or F.conv2d(x, w, None, 1, 1, 1, 32))
        with lkconv.use_backend("torch"):
            lkconv.depthwise_conv2d(x, w, padding=1)
        assert calls


def test_jit_trace_records_the_op_not_its_result():
    """Traced inference calls go through the custom op, so the trace computes new inputs (a call the tracer
    cannot see would be frozen into the trace as a constant)."""
    m = lkconv.LKConv2d(6, 6, 5, padding=2, groups=6).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, torch.randn(2, 6, 9, 9))
        x = torch.randn(2, 6, 9, 9)
        torch.testing.assert_close(traced(x), F.conv2d(x, m.weight, m.bias, 1, 2, 1, 6))


def test_first_order_cpu_backward_runs_the_gradient_ops_directly(monkeypatch):
    """A plain backward skips the gradient ops' Functions and custom-op dispatch (same kernels, same results);
    create_graph keeps them, so double backward still works."""
    from lkconv import autograd

    applied = []
    for fn in (autograd.DepthwiseConv2dBackwardInput, autograd.DepthwiseConv2dBackwardWeight):
        monkeypatch.setattr(fn, "apply", (lambda original: lambda *a: applied.append(1) or original(*a))(fn.apply))
    x = torch.randn(2, 5, 11, 9, requires_grad=True)
    w = torch.randn(5, 1, 7, 3, requires_grad=True)
    g = torch.randn(2, 5, 11, 9)
    gx, gw = torch.autograd.grad(lkconv.depthwise_conv2d(x, w, padding=(3, 1)), (x, w), g)
    assert not applied
    rx, rw = torch.autograd.grad(F.conv2d(x, w, None, 1, (3, 1), 1, 5), (x, w), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)
    gx2, _ = torch.autograd.grad(lkconv.depthwise_conv2d(x, w, padding=(3, 1)), (x, w), g, create_graph=True)
    assert len(applied) == 2
    (hx,) = torch.autograd.grad(gx2.square().sum(), w)
    (rhx,) = torch.autograd.grad(torch.autograd.grad(F.conv2d(x, w, None, 1, (3, 1), 1, 5), x, g,
                                                     create_graph=True)[0].square().sum(), w)
    torch.testing.assert_close(hx, rhx, rtol=1e-4, atol=1e-3)
