"""lkrobust train: learns, resumes exactly after a kill, matches across torchrun ranks and backends, trains
adversarially, and refuses bad input clearly. Tiny models on generated data in the ImageNet layout."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

timm = pytest.importorskip("timm")

from robustness.train import build_model, make_smoke_data  # noqa: E402

import lkconv  # noqa: E402


def _train(out, *extra, data=None):
    cmd = [sys.executable, "-m", "robustness", "train", "--smoke", "--out", str(out), *extra]
    if data is not None:
        cmd += ["--data", f"imagenet={data}"]
    return cmd


def _steps(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [(s["step"], s["loss"]) for s in json.load(f)["steps"]]


def _epochs(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)["epochs"]


def _same_curve(got, want, rtol):
    assert [s for s, _ in got] == [s for s, _ in want]
    got, want = torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want])
    assert torch.allclose(got, want, rtol=rtol, atol=0), (got - want).abs().max()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_smoke_data(str(tmp_path_factory.mktemp("smoke") / "data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("full")
    run = subprocess.run(_train(out, "--epochs", "3", "--checkpoint-every", "2", data=data), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_smoke_run_learns_and_writes_its_files(uninterrupted):
    epochs = _epochs(uninterrupted)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_top1"] > 0.5  # 4 classes: chance is 0.25
    for name in ("last.pth", "model.pth", "model_ema.pth", "metrics.csv"):
        assert (uninterrupted / name).exists()
    # The weights load into the model for evaluation (lkrobust eval --checkpoint).
    model = build_model("test_convnext", 4, kernel_size=13)
    model.load_state_dict(torch.load(uninterrupted / "model.pth"))
    assert any(isinstance(m, lkconv.LKConv2d) for m in model.modules())  # trained on lkconv's kernels


def test_killed_run_resumes_with_the_uninterrupted_loss_curve(tmp_path, data, uninterrupted):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train(out, "--epochs", "3", "--checkpoint-every", "2", data=data),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last.pth").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.pth").exists(), "no checkpoint before the kill"
    resumed = subprocess.run(_train(out, "--epochs", "3", "--checkpoint-every", "2", data=data),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_curve(_steps(out), _steps(uninterrupted), rtol=1e-6)
    assert _epochs(out)[-1]["val_top1"] == _epochs(uninterrupted)[-1]["val_top1"]


def test_resume_in_the_middle_of_an_epoch_continues_exactly(tmp_path, data, uninterrupted):
    out = tmp_path / "stopped"
    for extra in (("--limit-steps", "5"), ()):
        run = subprocess.run(_train(out, "--epochs", "3", "--checkpoint-every", "2", *extra, data=data),
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    _same_curve(_steps(out), _steps(uninterrupted), rtol=1e-6)


def test_two_ranks_train_like_one_process(tmp_path, data):
    single = tmp_path / "single"
    run = subprocess.run(_train(single, "--epochs", "1", "--batch-size", "8", data=data), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    multi = tmp_path / "multi"
    cmd = _train(multi, "--epochs", "1", "--batch-size", "4", data=data)
    cmd[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "robustness"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    _same_curve(_steps(multi), _steps(single), rtol=1e-4)
    assert _epochs(multi)[0]["val_top1"] == _epochs(single)[0]["val_top1"]


def test_backend_torch_trains_the_same_model_on_stock_pytorch(tmp_path, data):
    lk, stock = tmp_path / "lk", tmp_path / "stock"
    for out, backend in ((lk, "lkconv"), (stock, "torch")):
        run = subprocess.run(_train(out, "--epochs", "1", "--backend", backend, data=data), capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    _same_curve(_steps(lk), _steps(stock), rtol=1e-3)
    assert not any(isinstance(m, lkconv.LKConv2d) for m in build_model("test_convnext", 4, 13, backend="torch").modules())


def test_adversarial_training_and_accumulation_run(tmp_path, data):
    out = tmp_path / "adv"
    run = subprocess.run(_train(out, "--epochs", "1", "--adv", "pgd", "--adv-eps", "4/255", "--adv-steps", "2",
                                "--accum-steps", "2", "--mixup", "0.8", "--cutmix", "1.0", data=data),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(_steps(out)) == 4  # 64 images / 8 per batch / 2 accumulation steps


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_distillation_from_a_teacher_checkpoint(tmp_path, data, mode):
    out = tmp_path / mode
    teacher = tmp_path / "teacher.pth"
    torch.save(build_model("test_vit", 4).state_dict(), teacher)
    run = subprocess.run(_train(out, "--epochs", "1", "--teacher", "test_vit", "--teacher-checkpoint",
                                str(teacher), "--distill", mode, "--limit-steps", "3",
                                data=data), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(_steps(out)) == 3


def test_kernel_size_reaches_the_depthwise_convs():
    convs = lambda m: {m.kernel_size for m in m.modules() if isinstance(m, torch.nn.Conv2d)  # noqa: E731
                       and m.groups == m.in_channels > 1}
    assert convs(build_model("test_convnext", 4, kernel_size=5)) == {(5, 5)}
    import lkconv.models  # noqa: F401

    with pytest.raises(ValueError, match="cannot be built|had no effect"):
        build_model("resnet18", 4, kernel_size=5)


@pytest.mark.parametrize("extra, message", [
    (("--data", "imagenet=MISSING"), "folder not found"),
    (("--data", "imagenet=NOVAL"), "no val/ folder"),
    (("--model", "no_such_model"), "unknown model"),
    (("--preset", "nope"), "unknown preset"),
    (("--batch-size", "3", "--mixup", "0.8"), "even --batch-size"),
])
def test_train_errors_are_clear(tmp_path, data, extra, message, capsys):
    from robustness.cli import main

    noval = tmp_path / "noval"
    (noval / "train" / "n0").mkdir(parents=True)
    args = [a.replace("MISSING", str(tmp_path / "nope")).replace("NOVAL", str(noval)) for a in extra]
    if "--data" not in args:
        args += ["--data", f"imagenet={data}"]
    code = main(["train", "--smoke", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err[-2000:]


def test_resume_with_other_settings_is_refused(tmp_path, data, capsys):
    from robustness.cli import main

    out = tmp_path / "run"
    assert main(["train", "--smoke", "--out", str(out), "--data", f"imagenet={data}", "--limit-steps", "1"]) == 0
    code = main(["train", "--smoke", "--out", str(out), "--data", f"imagenet={data}", "--lr", "0.1"])
    assert code == 2 and "other settings" in capsys.readouterr().err


def test_module_entry_point_is_the_train_command(tmp_path, data):
    run = subprocess.run([sys.executable, "-m", "robustness.train", "--smoke", "--out", str(tmp_path / "m"),
                          "--data", f"imagenet={data}", "--limit-steps", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(_steps(tmp_path / "m")) == 1
    bad = subprocess.run([sys.executable, "-m", "robustness.train", "--smoke", "--out", str(tmp_path / "b"),
                          "--data", f"imagenet={tmp_path / 'nope'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "lkrobust train: error" in bad.stderr and "Traceback" not in bad.stderr
