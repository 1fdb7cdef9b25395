"""Loaders on every published layout, preprocessing per benchmark, and the lkrobust CLI end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("av")
pytest.importorskip("sklearn")

from robustness import data as D  # noqa: E402
from robustness_data import WNIDS, make_all  # noqa: E402


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return make_all(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "test_convnext.pth")
    torch.save({"model": timm.create_model("test_convnext").state_dict()}, path)
    return path


def test_loaders_find_their_splits(datasets):
    val = D.find_splits("imagenet-val", datasets["imagenet-val"])
    assert [s.name for s in val] == ["val"] and len(val[0].samples) == 7
    assert {label for _, label in val[0].samples} == {0, 1, 2}
    c = D.find_splits("imagenet-c", datasets["imagenet-c"])
    assert sorted(s.name for s in c) == ["gaussian_noise/1", "gaussian_noise/2", "motion_blur/1", "motion_blur/2"]
    p = {s.name: s for s in D.find_splits("imagenet-p", datasets["imagenet-p"])}
    assert p["gaussian_noise"].meta == dict(perturbation="gaussian_noise", difficulty=1, noise=True)
    assert p["translate_2"].meta == dict(perturbation="translate", difficulty=2, noise=False)
    in9 = {s.name: s for s in D.find_splits("imagenet-9", datasets["imagenet-9"])}
    assert set(in9) == {"original", "mixed_same", "mixed_rand"}
    assert sorted({label for _, label in in9["original"].samples}) == list(range(9))
    a = D.find_splits("imagenet-a", datasets["imagenet-a"])[0]
    subset = D.class_subset("imagenet-a")
    assert len(subset) == 200 and all(label in subset for _, label in a.samples)
    assert len(D.class_subset("imagenet-r")) == 200 and len(D.class_subset("imagenet-o")) == 200
    assert (D.imagenet9_mapping() >= -1).all() and set(D.imagenet9_mapping()) == set(range(-1, 9))


def test_wrong_folder_shows_expected_layout(tmp_path):
    with pytest.raises(D.LayoutError, match=r"Expected layout:\n.*<corruption>/<severity 1..5>"):
        D.find_splits("imagenet-c", str(tmp_path))
    (tmp_path / "cats").mkdir()
    with pytest.raises(D.LayoutError, match="not ImageNet WordNet ids"):
        D.find_splits("imagenet-val", str(tmp_path))
    with pytest.raises(D.LayoutError, match="no such folder"):
        D.find_splits("imagenet-a", str(tmp_path / "missing"))


def test_preprocessing_per_benchmark(datasets):
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("test_convnext"))
    val = D.SplitDataset(D.find_splits("imagenet-val", datasets["imagenet-val"])[0], D.transform_for("imagenet-val", cfg))
    good = [i for i, (p, _) in enumerate(val.samples) if not p.endswith("broken.JPEG")][0]
    assert val[good][0].shape == (3, 160, 160)  # resize + centre crop to the model's input size
    c = D.find_splits("imagenet-c", datasets["imagenet-c"])[0]
    item = D.SplitDataset(c, D.transform_for("imagenet-c", cfg))[0]
    x = item[0]
    assert x.shape == (3, 224, 224) and not item[3]  # no resize or crop, only normalisation
    raw = np.asarray(D.load_image(c.samples[0][0]), dtype=np.float32) / 255
    expected = (torch.from_numpy(raw).permute(2, 0, 1) - 0.5) / 0.5
    torch.testing.assert_close(x, expected)
    broken = [i for i, (p, _) in enumerate(val.samples) if p.endswith("broken.JPEG")][0]
    assert val[broken][0] is None  # unreadable: reported, not raised


def _eval(out, datasets, checkpoint, benches, extra=()):
    args = [sys.executable, "-m", "robustness", "eval", "--model", "test_convnext", "--checkpoint", checkpoint,
            "--out", str(out), "--batch-size", "4", "--workers", "0", *extra]
    for b in benches:
        args += ["--bench", f"{b}={datasets[b]}"]
    return args


def _results(out):
    found = {}
    for root, _, files in os.walk(out):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(root, f)) as fh:
                    rec = json.load(fh)
                found[(rec["benchmark"], rec["split"])] = (rec["metrics"], rec["counts"])
    return found


def test_cli_eval_rerun_report(tmp_path, datasets, checkpoint):
    out = tmp_path / "results"
    benches = list(datasets)
    run = subprocess.run(_eval(out, datasets, checkpoint, benches), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = _results(out)
    assert len(results) == 1 + 1 + 1 + 1 + 1 + 1 + 4 + 2 + 3
    metrics, counts = results[("imagenet-val", "val")]
    assert counts == dict(total=7, evaluated=6, unreadable=1) and 0 <= metrics["top1"] <= 1
    fp = results[("imagenet-p", "translate_2")][0]
    assert 0 <= fp["flip_probability"] <= 1 and fp["top5_distance"] >= 0
    assert (out / "test_convnext" / "imagenet-o" / "imagenet-o.npz").exists()
    # A rerun finds every split finished.
    rerun = subprocess.run(_eval(out, datasets, checkpoint, benches), capture_output=True, text=True)
    assert rerun.returncode == 0 and "0 split(s) evaluated" in rerun.stdout
    # Reports.
    md = subprocess.run([sys.executable, "-m", "robustness", "report", str(out), "--format", "md",
                         "--baseline", "test_convnext", "--plot", str(tmp_path / "r.png")],
                        capture_output=True, text=True)
    assert md.returncode == 0, md.stderr
    for col in ("IN top-1", "IN-A top-1", "IN-C mean acc", "IN-O AUPR", "IN-P mFR", "IN-9 BG-Gap"):
        assert col in md.stdout
    assert "| test_convnext |" in md.stdout and (tmp_path / "r.png").exists()
    mfr_col = md.stdout.splitlines()[0].split(" | ").index("IN-P mFR")
    assert md.stdout.splitlines()[2].split(" | ")[mfr_col].strip() == "100.00"  # its own baseline
    csv_out = subprocess.run([sys.executable, "-m", "robustness", "report", str(out), "--format", "csv"],
                             capture_output=True, text=True)
    assert csv_out.stdout.startswith("model,")


def test_interrupted_run_resumes_with_identical_results(tmp_path, datasets, checkpoint):
    benches = ["imagenet-c", "imagenet-9"]
    clean = tmp_path / "clean"
    assert subprocess.run(_eval(clean, datasets, checkpoint, benches), capture_output=True).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(_eval(out, datasets, checkpoint, benches), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_results(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_results(out))
    rerun = subprocess.run(_eval(out, datasets, checkpoint, benches), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _results(out) == _results(clean)
    assert f"{7 - partial} split(s) evaluated" in rerun.stdout or partial == 7
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".tmp-")]


def test_torchrun_data_parallel_matches_single_process(tmp_path, datasets, checkpoint):
    """Two ranks (gloo on the CPU) shard each split; rank 0 writes the same results as one process."""
    benches = ["imagenet-val", "imagenet-9"]
    single = tmp_path / "single"
    assert subprocess.run(_eval(single, datasets, checkpoint, benches), capture_output=True).returncode == 0
    multi = tmp_path / "multi"
    args = _eval(multi, datasets, checkpoint, benches)
    args[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "robustness"]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _results(multi) == _results(single)


def test_cli_errors_are_clear(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "robustness", "eval", "--model", "test_convnext", "--out",
                          str(tmp_path), "--bench", f"imagenet-c={tmp_path / 'nope'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Expected layout" in bad.stderr
    unknown = subprocess.run([sys.executable, "-m", "robustness", "eval", "--model", "x", "--out", str(tmp_path),
                              "--bench", "imagenet-z=/x"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "NAME=PATH" in unknown.stderr


def test_corrupt_command(tmp_path):
    from robustness_data import class_folders

    src = tmp_path / "src"
    class_folders(str(src), WNIDS[:1], per_class=1, size=40)
    dst = tmp_path / "dst"
    args = [sys.executable, "-m", "robustness", "corrupt", str(src), str(dst), "--corruptions", "fog",
            "glass_blur", "gaussian_noise", "--severities", "1", "5"]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "written 6" in run.stdout
    splits = D.find_splits("imagenet-c", str(dst))
    assert sorted(s.name for s in splits) == ["fog/1", "fog/5", "gaussian_noise/1", "gaussian_noise/5",
                                              "glass_blur/1", "glass_blur/5"]
    again = subprocess.run(args, capture_output=True, text=True)
    assert "already there 6" in again.stdout


def test_plasma_fractal_is_normalised():
    from robustness.corrupt import plasma_fractal

    a = plasma_fractal(64, 2.0, np.random.default_rng(0))
    assert a.shape == (64, 64) and a.min() == 0.0 and a.max() == 1.0 and a.std() > 0.05


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    from robustness.runner import remove_stale_temps

    (tmp_path / "m" / "b").mkdir(parents=True)
    dead = tmp_path / "m" / "b" / ".tmp-999999999-abc"  # no such process
    alive = tmp_path / "m" / ".tmp-{}-abc".format(os.getpid())
    legacy = tmp_path / ".tmp-xyz"
    for f in (dead, alive, legacy):
        f.write_text("partial")
    (tmp_path / "m" / "b" / "split.json").write_text("{}")
    remove_stale_temps(str(tmp_path))
    assert not dead.exists() and not legacy.exists() and alive.exists()
    assert (tmp_path / "m" / "b" / "split.json").exists()
