"""Every CLI validates before the work and fails with one line and exit status 2, never a traceback; results
files keep the user's umask; --limit samples across classes."""

import json
import os
import stat

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("sklearn")

from robustness import cli as rcli  # noqa: E402
from robustness import data as D  # noqa: E402
from robustness_data import WNIDS, class_folders, image  # noqa: E402


def _run(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert lines and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("val") / "val")
    class_folders(root, WNIDS[:4], per_class=3, size=40)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "c.pth")
    torch.save(timm.create_model("test_convnext").state_dict(), path)
    return path


def _eval_args(out, val, *extra, model="test_convnext"):
    return ["eval", "--model", model, "--out", str(out), "--bench", f"imagenet-val={val}", "--workers", "0",
            "--batch-size", "4", *extra]


@pytest.mark.parametrize("extra,expected", [
    (["--limit", "-1"], "--limit"), (["--limit", "0"], "--limit"), (["--batch-size", "0"], "--batch-size"),
    (["--device", "cuda:7"], "device"), (["--device", "tpu"], "device"),
    (["--checkpoint", "/nonexistent/c.pth"], "checkpoint file not found"),
])
def test_eval_rejects_bad_arguments_before_work(tmp_path, val_folder, capsys, extra, expected):
    code, err = _run(rcli.main, _eval_args(tmp_path / "out", val_folder, *extra), capsys)
    assert code == 2 and expected in _one_error_line(err)
    assert not (tmp_path / "out" / "test_convnext").exists()


def test_eval_unknown_model_unreadable_checkpoint_and_bad_out(tmp_path, val_folder, capsys):
    code, err = _run(rcli.main, _eval_args(tmp_path / "o", val_folder, model="convnext_tinyy"), capsys)
    assert code == 2 and "unknown model 'convnext_tinyy'" in _one_error_line(err)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    code, err = _run(rcli.main, _eval_args(tmp_path / "o", val_folder, "--checkpoint", str(broken)), capsys)
    assert code == 2 and "cannot load checkpoint" in _one_error_line(err) and str(broken) in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = _run(rcli.main, _eval_args(afile, val_folder), capsys)
    assert code == 2 and "not a folder" in _one_error_line(err)
    code, err = _run(rcli.main, _eval_args(tmp_path / "o", val_folder, "--bench", f"imagenet-c={tmp_path}/none"),
                     capsys)
    assert code == 2 and "imagenet-c" in err and not (tmp_path / "o" / "test_convnext").exists()


def test_limit_takes_images_across_classes(tmp_path, val_folder, checkpoint, capsys):
    split = D.find_splits("imagenet-val", val_folder)[0]
    picked = D.spread(split.samples, 4)
    assert sorted({label for _, label in picked}) == [0, 1, 2, 3]  # one image of each of the four classes
    assert D.spread(split.samples, 4) == picked and D.spread(split.samples, 100) == split.samples
    out = tmp_path / "res"
    code, err = _run(rcli.main, _eval_args(out, val_folder, "--limit", "5", "--checkpoint", checkpoint), capsys)
    assert code == 0, err
    with open(out / "test_convnext" / "imagenet-val" / "val.json") as f:
        rec = json.load(f)
    assert rec["counts"]["total"] == rec["counts"]["evaluated"] == 5


def test_results_files_keep_the_umask(tmp_path, val_folder, checkpoint, capsys):
    old = os.umask(0o022)
    try:
        code, _ = _run(rcli.main, _eval_args(tmp_path / "r", val_folder, "--limit", "2", "--checkpoint", checkpoint),
                       capsys)
    finally:
        os.umask(old)
    assert code == 0
    mode = stat.S_IMODE(os.stat(tmp_path / "r" / "test_convnext" / "imagenet-val" / "val.json").st_mode)
    assert mode == 0o644


def test_fixed_size_benchmark_with_other_sizes_is_resized_and_reported(tmp_path, checkpoint, capsys, caplog):
    root = tmp_path / "stylized"
    class_folders(str(root), WNIDS[:2], per_class=1, size=224, ext=".png")
    image(str(root / WNIDS[0] / "photo.png"), size=300)  # e.g. a photo folder run through `lkrobust corrupt`
    out = tmp_path / "o"
    code, err = _run(rcli.main, ["eval", "--model", "test_convnext", "--checkpoint", checkpoint, "--out", str(out),
                                 "--bench", f"stylized-imagenet={root}", "--workers", "0"], capsys)
    assert code == 0, err
    assert "resized" in caplog.text and "photo.png" in caplog.text
    with open(out / "test_convnext" / "stylized-imagenet" / "stylized.json") as f:
        counts = json.load(f)["counts"]
    assert counts["evaluated"] == 3 and counts["resized"] == 1


def test_imagenet_a_folder_outside_its_classes_warns(tmp_path, caplog):
    root = tmp_path / "a"
    class_folders(str(root), [WNIDS[0]], per_class=1, size=40)  # n01440764 is not an ImageNet-A class
    with caplog.at_level("WARNING"):
        D.find_splits("imagenet-a", str(root))
    assert "outside its 200 classes" in caplog.text and WNIDS[0] in caplog.text


def test_report_errors(tmp_path, val_folder, checkpoint, capsys):
    out = tmp_path / "rep"
    assert _run(rcli.main, _eval_args(out, val_folder, "--limit", "2", "--checkpoint", checkpoint), capsys)[0] == 0
    code, err = _run(rcli.main, ["report", str(out), "--baseline", "resnet50"], capsys)
    assert code == 2 and "--baseline 'resnet50' has no results" in _one_error_line(err)
    code, err = _run(rcli.main, ["report", str(out), "--plot", "/nonexistent/dir/r.png"], capsys)
    assert code == 2 and "--plot" in _one_error_line(err)
    bad = out / "test_convnext" / "imagenet-val" / "val.json"
    bad.write_text(bad.read_text()[:40])  # truncated
    code, err = _run(rcli.main, ["report", str(out)], capsys)
    assert code == 2 and str(bad) in _one_error_line(err)


@pytest.mark.parametrize("argv,expected", [
    (["--batch-size", "0"], "--batch-size"), (["--kernel-sizes", "7,x"], "--kernel-sizes"),
    (["--shapes", "foo"], "--shapes"), (["--device", "nodevice"], "--device"),
    (["--compare", "/nonexistent.json"], "--compare"), (["--extra-impl", "nosuchmodule:f"], "--extra-impl"),
    (["--extra-impl", "math:pi"], "--extra-impl"), (["--dtype", "float8"], "--dtype"),
    (["--passes", "fwd"], "--passes"), (["--out", "/proc/nonexistent/x.json"], "--out"),
])
def test_bench_rejects_bad_arguments(argv, expected, capsys):
    from bench.__main__ import main

    code, err = _run(main, argv, capsys)
    assert code == 2 and expected in _one_error_line(err)


def test_bench_compare_rejects_a_file_that_is_not_results(tmp_path, capsys):
    from bench.__main__ import main

    path = tmp_path / "x.json"
    path.write_text(json.dumps({"a": 1}))
    code, err = _run(main, ["--compare", str(path)], capsys)
    assert code == 2 and "not a results file" in _one_error_line(err)


@pytest.mark.parametrize("argv,expected", [(["--models", "resnet"], "--models"), (["--modes", "trian"], "--modes"),
                                           (["--image-size", "0"], "--image-size")])
def test_bench_models_rejects_bad_arguments(argv, expected, capsys):
    from bench.models import main

    code, err = _run(main, argv, capsys)
    assert code == 2 and expected in _one_error_line(err)
