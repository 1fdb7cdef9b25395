"""Backend declaration, selection, forcing and explanations."""

import dataclasses
import subprocess
import sys

import pytest
import torch

import lkconv
from lkconv import dispatch
from lkconv.geometry import describe


def test_available_backends_names_and_reasons():
    backends = lkconv.available_backends()
    assert set(backends) == {"cpu", "cuda", "tensorcore", "triton", "torch", "cuda_emu"}
    assert backends["torch"] == "available"
    assert backends["cpu"] == "available"  # the extension is built by the README's install
    if not torch.cuda.is_available():
        assert "CUDA" in backends["cuda"] or "cuda" in backends["cuda"]


def test_cpu_calls_run_on_the_cpu_kernels_unforced():
    x, w = torch.randn(1, 4, 16, 16), torch.randn(4, 1, 7, 7)
    assert dispatch.select(describe(x, w, padding=3)).name == "cpu"
    # Unsupported by the fast kernels: the reference.
    assert dispatch.select(describe(x, w, stride=2, padding=3)).name == "torch"


def test_explain_names_the_choice_and_every_refusal():
    x, w = torch.randn(1, 4, 16, 16), torch.randn(4, 1, 7, 7)
    text = lkconv.explain(x, w, stride=2, padding=3)
    assert "runs on: forward -> torch, backward_input -> torch, backward_weight -> torch" in text
    assert "stride" in text  # why cpu refused
    for name in ("cpu", "cuda", "tensorcore", "triton"):
        assert f"  forward {name}:" in text
    text = lkconv.explain(x, w, padding=3)
    assert "runs on: forward -> cpu, backward_input -> cpu, backward_weight -> cpu" in text


def test_measured_cpu_rule_per_pass(monkeypatch):
    """Forward and input gradient run on lkconv's cores in both layouts (the channel cores read 3x3/5x5
    channels_last sources in place: nowhere measurably slower than oneDNN); the 3x3 weight gradient runs on
    PyTorch's kernel on NCHW maps up to 14 wide and in channels_last where lkconv's channel core does not apply
    (a channel count that is not a multiple of the vector width), every other weight gradient on lkconv's. An
    entry of ONEDNN_CHANNELS_LAST sends the forward and input gradient of the calls it covers to oneDNN, and says
    so."""
    from lkconv.backends import cpu

    large = torch.randn(4, 128, 56, 56).contiguous(memory_format=torch.channels_last)
    odd = torch.randn(4, 24 if lkconv._ext._C.cpu_channel_lanes() != 24 else 20, 56, 56).contiguous(
        memory_format=torch.channels_last)
    text = lkconv.explain(odd, torch.randn(odd.shape[1], 1, 3, 3), padding=1)
    assert "backward_weight -> torch" in text and "PyTorch's weight gradient is faster" in text
    for k in (3, 5, 7):
        text = lkconv.explain(large, torch.randn(128, 1, k, k), padding=k // 2)
        assert "forward -> cpu, backward_input -> cpu, backward_weight -> cpu" in text
    nchw = large.contiguous()
    assert "forward -> cpu, backward_input -> cpu, backward_weight -> cpu" in lkconv.explain(
        nchw, torch.randn(128, 1, 3, 3), padding=1)  # 56x56: on par with PyTorch's NCHW kernels
    assert "backward_weight -> torch" in lkconv.explain(nchw[:, :, :14, :14], torch.randn(128, 1, 3, 3), padding=1)
    assert "backward_weight -> torch" in lkconv.explain(nchw[:, :, :28, :28], torch.randn(128, 1, 3, 3), padding=1)
    assert "backward_weight -> cpu" in lkconv.explain(nchw[:1, :, :28, :28], torch.randn(128, 1, 3, 3), padding=1)
    # NCHW forwards: oneDNN for 3x3/5x5 on mid-sized maps of large activations whose rows are not whole vectors.
    stage2 = torch.randn(4, 256, 28, 28)
    text = lkconv.explain(stage2, torch.randn(256, 1, 5, 5), padding=2)
    assert "forward -> torch, backward_input -> cpu" in text and "oneDNN (torch backend) is faster for NCHW" in text
    lanes = lkconv._ext._C.cpu_channel_lanes()
    whole = torch.randn(4, 256, 2 * lanes, 2 * lanes)
    for x, k in ((stage2, 7), (stage2[:1], 3), (stage2.contiguous(memory_format=torch.channels_last), 3),
                 (whole, 3), (torch.randn(4, 256, 14, 14), 3)):
        assert "forward -> cpu" in lkconv.explain(x, torch.randn(256, 1, k, k), padding=k // 2), (x.shape, k)
    monkeypatch.setattr(cpu, "ONEDNN_CHANNELS_LAST", ((3, 1_000_000),))
    text = lkconv.explain(large, torch.randn(128, 1, 3, 3), padding=1)
    assert "forward -> torch, backward_input -> torch, backward_weight -> cpu" in text and "oneDNN" in text
    assert "forward -> cpu" in lkconv.explain(large, torch.randn(128, 1, 5, 5), padding=2)
    small = torch.randn(1, 128, 56, 56).contiguous(memory_format=torch.channels_last)
    assert "forward -> cpu, backward_input -> cpu" in lkconv.explain(small, torch.randn(128, 1, 3, 3), padding=1)


def test_cpu_rule_follows_its_evidence():
    """Every row of bench/results/cpu-rules.json (both layouts, all three passes) where one side is more than 15%
    faster: the rule sends that call to it (PyTorch = the torch backend, else lkconv's faster core). The NCHW rows
    count since the timings hold glibc's allocator steady (bench.timing.steady_allocator): before, PyTorch's NCHW
    kernels swung up to 15x between runs of one shape with the page faults of their buffers."""
    import json
    import os

    from lkconv.backends import BACKENDS
    from lkconv.geometry import ConvCall

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results",
                        "cpu-rules.json")
    with open(path) as f:
        data = json.load(f)
    assert data["environment"].get("allocator", "").startswith("glibc"), "evidence without a steady allocator"
    rows = data["rows"]
    assert {r["layout"] for r in rows} == {"nchw", "channels_last"}
    assert {r["k"] for r in rows} >= {3, 5, 7, 9, 13}
    assert {r["pass"] for r in rows} == {"forward", "backward_input", "backward_weight"}
    for r in rows:
        p = r["k"] // 2
        call = ConvCall(r["n"], r["c"], r["size"], r["size"], r["k"], r["k"], (p, p, p, p), (1, 1), (1, 1),
                        torch.device("cpu"), torch.float32, r["layout"] == "channels_last", r["pass"])
        to_torch = bool(BACKENDS["cpu"].auto_refusals(call))
        ours = min(t for t in (r["planes_ms"], r["channels_ms"], r.get("in_place_ms")) if t is not None)
        where = f"{r['pass']} n={r['n']} c={r['c']} {r['size']}x{r['size']} k={r['k']} {r['layout']}"
        if r["torch_ms"] * 1.15 < ours:
            assert to_torch, f"{where}: PyTorch {r['torch_ms']:.3f} ms vs lkconv {ours:.3f} ms"
        elif ours * 1.15 < r["torch_ms"]:
            assert not to_torch, f"{where}: lkconv {ours:.3f} ms vs PyTorch {r['torch_ms']:.3f} ms"


def test_channel_cores_read_in_place_where_their_evidence_says():
    """Every channels_last row of bench/results/cpu-rules.json where reading the source in place or gathering it
    is more than 15% faster: the channel cores' rule (`read_in_place` in csrc/cpu/depthwise_cpu.cpp) picks it."""
    import json
    import os

    from lkconv import _ext

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results",
                        "cpu-rules.json")
    with open(path) as f:
        rows = [r for r in json.load(f)["rows"] if r["layout"] == "channels_last" and r["pass"] != "backward_weight"]
    assert all(r.get("in_place_ms") for r in rows), "the evidence predates the in-place reading: re-measure"
    for r in rows:
        cropped = min(r["k"], 2 * r["size"] - 1)  # the taps that can touch the map ("same" padding)
        in_place = _ext._C.cpu_channels_read_in_place(cropped, r["size"], r["n"], r["size"] * r["c"] * 4)
        where = f"{r['pass']} n={r['n']} c={r['c']} {r['size']}x{r['size']} k={r['k']}"
        if r["in_place_ms"] * 1.15 < r["channels_ms"]:
            assert in_place, f"{where}: in place {r['in_place_ms']:.3f} ms vs gathered {r['channels_ms']:.3f} ms"
        elif r["channels_ms"] * 1.15 < r["in_place_ms"]:
            assert not in_place, f"{where}: gathered {r['channels_ms']:.3f} ms vs in place {r['in_place_ms']:.3f} ms"


def test_nchw_core_choice_follows_its_evidence():
    """Every NCHW forward/input-gradient row of bench/results/cpu-rules.json where the plane cores or the channel
    cores are more than 15% faster: the automatic choice (`prefer_channels` in csrc/cpu/depthwise_cpu.cpp) picks
    that one."""
    import json
    import os

    from lkconv import _ext

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results",
                        "cpu-rules.json")
    with open(path) as f:
        rows = [r for r in json.load(f)["rows"] if r["layout"] == "nchw" and r["pass"] != "backward_weight"]
    assert {r["size"] for r in rows} >= {7, 14, 28, 56}
    for r in rows:
        channels = _ext._C.cpu_prefers_channel_cores(False, r["size"], r["k"])
        where = f"{r['pass']} n={r['n']} c={r['c']} {r['size']}x{r['size']} k={r['k']}"
        if r["channels_ms"] * 1.15 < r["planes_ms"]:
            assert channels, f"{where}: channel cores {r['channels_ms']:.3f} ms vs planes {r['planes_ms']:.3f} ms"
        elif r["planes_ms"] * 1.15 < r["channels_ms"]:
            assert not channels, f"{where}: planes {r['planes_ms']:.3f} ms vs channel cores {r['channels_ms']:.3f} ms"


def test_use_backend_forces_and_restores():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 1, 3, 3)
    call = describe(x, w, padding=1)
    with lkconv.use_backend("torch"):
        assert dispatch.select(call).name == "torch"
        with lkconv.use_backend("cpu"):
            assert dispatch.select(call).name == "cpu"
        assert dispatch.select(call).name == "torch"
    assert dispatch.select(call).name == "cpu"


def test_forcing_an_unavailable_backend_raises_with_reason():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 1, 3, 3)
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with lkconv.use_backend("cuda"), pytest.raises(lkconv.BackendNotSupportedError) as err:
        lkconv.depthwise_conv2d(x, w, padding=1)
    assert "cuda" in str(err.value)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown lkconv backend"):
        with lkconv.use_backend("fast"):
            pass


def test_env_var_forces_backend(monkeypatch):
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 1, 3, 3)
    monkeypatch.setenv("LKCONV_BACKEND", "torch")
    assert dispatch.select(describe(x, w, padding=1)).name == "torch"
    monkeypatch.setenv("LKCONV_BACKEND", "cpu")
    with pytest.raises(lkconv.BackendNotSupportedError):
        lkconv.depthwise_conv2d(x, w, stride=2)


def test_info_command_lists_backends():
    out = subprocess.run([sys.executable, "-m", "lkconv.info"], capture_output=True, text=True, check=True).stdout
    for word in ("torch", "triton", "lkconv._C", "backends:", "cpu", "cuda"):
        assert word in out


def _static_evidence():
    import json
    import os

    evidence = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results",
                            "sass-static.json")
    assert "sass-static.json" in dispatch.CUDA_RULE and os.path.exists(evidence)
    with open(evidence) as f:
        data = json.load(f)
    assert data["kind"] == "predicted (static)"
    best = {}
    for p in data["predictions"]:
        best.setdefault((p["shape"], p["pass_"], p["dtype"]), {})[p["impl"]] = p["predicted_useful_tflops"]
    return best


def test_cuda_order_follows_the_static_prediction():
    """On CUDA, per pass and shape: the tensor-core kernels first exactly where the static report predicts them
    faster than the CUDA-core kernels (bf16, and float32 as opted-in TF32), the CUDA-core kernels before the
    Triton ones everywhere, as no Triton prediction leads by dispatch.TRITON_MARGIN."""
    from bench.sass import SHAPES

    best = _static_evidence()
    assert best and all(v["cuda"] * dispatch.TRITON_MARGIN > v["triton"]
                        for v in best.values() if "triton" in v and "cuda" in v)
    sizes = {name: (size, kh, kw) for name, _, _, size, kh, kw in SHAPES}
    checked = 0
    for (shape, pass_, dtype), by_impl in best.items():
        if "cuda" not in by_impl or "tensorcore" not in by_impl:
            continue
        size, kh, kw = sizes[shape]
        dt = getattr(torch, dtype)
        call = describe(torch.empty(1, 1, size, size, dtype=dt), torch.empty(1, 1, kh, kw, dtype=dt),
                        padding=(kh // 2, kw // 2))
        call = dataclasses.replace(call, pass_name=pass_)
        faster = by_impl["tensorcore"] > by_impl["cuda"]
        assert dispatch.tensorcore_first(call) == faster, (shape, pass_, dtype, by_impl)
        order = dispatch._cuda_order(call)
        assert order.index("cuda") < order.index("triton") and order[-1] == "torch"
        assert order[0] == ("tensorcore" if faster else "cuda")
        checked += 1
    assert checked >= 2 * 3 * len(SHAPES)
    # channels_last: the CUDA-core kernels first (the tensor-core predictions are for NCHW's vector loads).
    x = torch.empty(1, 4, 56, 56, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    cl = describe(x, torch.empty(4, 1, 31, 31, dtype=torch.bfloat16), padding=15)
    assert cl.channels_last and not dispatch.tensorcore_first(cl) and dispatch._cuda_order(cl)[0] == "cuda"
