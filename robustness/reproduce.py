"""`lkrobust reproduce CONFIG`: every evaluation and analysis of the large-kernel robustness paper for a list of
models, then the paper's tables and figures in one folder with an index.md.

The config (TOML; YAML too when PyYAML is installed) names the results folder, the benchmark folders, the
experiments with their options (the `lkrobust analyze` flags, without dashes), and the models:

    out = "results"                      # eval/analyze results tree (resumable: finished work is skipped)
    paper = "results/paper"              # tables, figures, index.md (default <out>/paper)
    baseline = "resnet50.tv_in1k"        # model whose ImageNet-P values normalise mFR/mT5D
    [benchmarks]
    imagenet-val = "/data/imagenet/val"
    [experiments.pgd]
    eps = ["1/255", "4/255"]
    steps = [1, 5, 10]
    [[models]]
    name = "replknet_31b.in1k"           # timm name
    checkpoint = "weights/RepLKNet-31B_ImageNet-1K_224.pth"
    resolution = 224                     # optional
    label = "RepLKNet-31B"               # optional display name
    tables = ["table5"]                  # optional: kernel ablations (table5: RepLKNet; table7: ConvNeXt-T
    kernel_size = 31                     #   at kernel_size)

An example for the paper's model set ships as `robustness/configs/paper.toml`.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from . import report as R
from .analysis_report import _figure, _tables, load_analysis
from .data import BENCHMARKS, find_splits

log = logging.getLogger(__name__)
CONFIG_KEYS = {"out", "paper", "baseline", "benchmarks", "experiments", "models", "device", "batch_size", "workers",
               "amp", "channels_last", "limit", "seed"}
MODEL_KEYS = {"name", "checkpoint", "resolution", "label", "tables", "kernel_size"}
ABLATION_TABLES = ("table5", "table7")


@dataclass
class ModelEntry:
    name: str
    checkpoint: Optional[str] = None
    resolution: Optional[int] = None
    label: Optional[str] = None
    tables: List[str] = field(default_factory=list)
    kernel_size: Optional[int] = None

    @property
    def display(self) -> str:
        return self.label or self.key

    @property
    def key(self) -> str:
        """The name its results are kept under: the timm name, plus _k<size> when `kernel_size` builds the
        model at a kernel size its name does not already say."""
        return self.name if self._kernel_in_name() else f"{self.name}_k{self.kernel_size}"

    def _kernel_in_name(self) -> bool:
        return self.kernel_size is None or self.name.split(".")[0].endswith(f"_k{self.kernel_size}")

    def build(self, device: str):
        """The model (lkconv's kernels where eligible, weights from `checkpoint`), on `device`, in eval mode."""
        import timm

        import lkconv
        from lkconv.models import load_checkpoint

        from .runner import EvalConfig, create_model

        if self._kernel_in_name():
            return create_model(EvalConfig(self.name, self.checkpoint, device))
        try:
            model = timm.create_model(self.name, kernel_sizes=self.kernel_size)
        except TypeError:
            raise ValueError(f"{self.name} does not take a kernel size; drop kernel_size or use a "
                             "convnext_tiny_k<size> name") from None
        if self.checkpoint:
            load_checkpoint(model, self.checkpoint)
        return lkconv.convert_model(model).eval().to(device)


@dataclass
class ReproduceConfig:
    path: str
    out: str
    paper: str
    models: List[ModelEntry]
    benchmarks: Dict[str, str] = field(default_factory=dict)
    experiments: Dict[str, Dict] = field(default_factory=dict)
    baseline: Optional[str] = None
    device: Optional[str] = None
    batch_size: int = 64
    workers: int = 4
    amp: Optional[str] = None
    channels_last: bool = False
    limit: Optional[int] = None
    seed: int = 0


def _read(path: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ImportError("a YAML config needs PyYAML (pip install pyyaml); or write it as TOML") from None
        with open(path) as f:
            data = yaml.safe_load(f)
    else:
        import tomllib

        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping")
    return data


def load_config(path: str, check_files: bool = True) -> ReproduceConfig:
    """The validated config; every problem named with the file (unknown keys, unknown benchmarks, experiments,
    models or tables, duplicate models, missing folders and checkpoints when `check_files`)."""
    from .analyze import EXPERIMENTS
    from .arguments import check_model_name

    data = _read(path)
    base = os.path.dirname(os.path.abspath(path))
    where = lambda p: p if p is None or os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(CONFIG_KEYS)})")
    if not data.get("models"):
        raise ValueError(f"{path}: no [[models]]")
    models = []
    for i, m in enumerate(data["models"]):
        if not isinstance(m, dict) or "name" not in m:
            raise ValueError(f"{path}: models[{i}] needs a name")
        bad = set(m) - MODEL_KEYS
        if bad:
            raise ValueError(f"{path}: models[{i}] ({m['name']}) has unknown keys {sorted(bad)}")
        entry = ModelEntry(**{**m, "checkpoint": where(m.get("checkpoint"))})
        if set(entry.tables) - set(ABLATION_TABLES):
            raise ValueError(f"{path}: {entry.name}: tables may list {ABLATION_TABLES}, got {entry.tables}")
        if "table7" in entry.tables and not entry.kernel_size:
            raise ValueError(f"{path}: {entry.name} is in table7 (ConvNeXt-T kernel sizes) but has no kernel_size")
        check_model_name(entry.name)
        if check_files and entry.checkpoint and not os.path.isfile(entry.checkpoint):
            raise FileNotFoundError(f"{path}: {entry.name}: checkpoint not found: {entry.checkpoint}")
        models.append(entry)
    names = [m.key for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a model is listed twice ({sorted({n for n in names if names.count(n) > 1})}); "
                         "results are kept per timm name (and kernel_size)")
    benchmarks = {k: where(v) for k, v in (data.get("benchmarks") or {}).items()}
    for name, root in benchmarks.items():
        if name not in BENCHMARKS:
            raise ValueError(f"{path}: unknown benchmark {name!r} (one of {', '.join(BENCHMARKS)})")
        if check_files:
            find_splits(name, root)
    experiments = {name: dict(opts) if isinstance(opts, dict) else opts
                   for name, opts in (data.get("experiments") or {}).items()}
    for name, opts in experiments.items():
        if name not in EXPERIMENTS:
            raise ValueError(f"{path}: unknown experiment {name!r} (one of {', '.join(EXPERIMENTS)})")
        if not isinstance(opts, dict):
            raise ValueError(f"{path}: [experiments.{name}] must be a table of options")
        for key in [k for k in opts if k.endswith("checkpoint")]:  # weight files, relative to the config
            opts[key] = where(opts[key])
            if check_files and not os.path.isfile(opts[key]):
                raise FileNotFoundError(f"{path}: experiments.{name}.{key} not found: {opts[key]}")
        if EXPERIMENTS[name].needs_data and "imagenet-val" not in benchmarks:
            raise ValueError(f"{path}: experiment {name} needs benchmarks.imagenet-val")
    if data.get("baseline") and data["baseline"] not in names:  # a results key (the timm name, usually)
        raise ValueError(f"{path}: baseline {data['baseline']!r} is not one of the models")
    out = where(data.get("out", "results"))
    settings = {k: data[k] for k in ("device", "batch_size", "workers", "amp", "channels_last", "limit", "seed")
                if k in data}
    return ReproduceConfig(path, out, where(data.get("paper")) or os.path.join(out, "paper"), models, benchmarks,
                           experiments, data.get("baseline"), **settings)


def _analyze_args(experiment: str, options: Dict, model: ModelEntry, cfg: ReproduceConfig) -> List[List[str]]:
    """`lkrobust analyze` argument lists for one experiment (occlusion: one per mode when `mode` is a list)."""
    modes = options.get("mode")
    variants = [dict(options, mode=m) for m in modes] if isinstance(modes, list) else [options]
    runs = []
    for opts in variants:
        args = ["analyze", experiment, "--model", model.key, "--out", cfg.out, "--seed", str(cfg.seed),
                "--batch-size", str(cfg.batch_size), "--workers", str(cfg.workers)]
        if "imagenet-val" in cfg.benchmarks:
            args += ["--data", f"imagenet-val={cfg.benchmarks['imagenet-val']}"]
        for key in ("limit", "amp"):
            if getattr(cfg, key):
                args += [f"--{key}", str(getattr(cfg, key))]
        if cfg.channels_last:
            args.append("--channels-last")
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is False or value is None:
                continue
            elif isinstance(value, list):
                args += [flag, *map(str, value)]
            else:
                args += [flag, str(value)]
        runs.append(args)
    return runs


def run_all(cfg: ReproduceConfig, device: str) -> None:
    """eval on every benchmark and every experiment for every model; finished work is skipped."""
    from .analyze import analyze
    import argparse

    from .analyze import add_arguments, config_from_args
    from .runner import EvalConfig, Evaluator

    parser = argparse.ArgumentParser(prog="lkrobust analyze")
    parser.add_argument("command")
    add_arguments(parser)
    splits = {name: find_splits(name, root) for name, root in cfg.benchmarks.items()}
    for entry in cfg.models:
        eval_cfg = EvalConfig(entry.key, entry.checkpoint, device, cfg.batch_size, cfg.workers, cfg.amp,
                              cfg.channels_last, cfg.limit, entry.resolution)
        model = entry.build(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.benchmarks:
            Evaluator(eval_cfg, model).run(cfg.benchmarks, cfg.out, splits)
        for experiment, options in cfg.experiments.items():
            for argv in _analyze_args(experiment, options, entry, cfg):
                try:
                    args = parser.parse_args(argv)
                except SystemExit:
                    raise ValueError(f"{cfg.path}: bad options for experiment {experiment}: {options}") from None
                if entry.checkpoint:
                    args.checkpoint = entry.checkpoint
                analysis = config_from_args(args, device)
                analysis.input_size = entry.resolution
                analyze(analysis, cfg.out, model)


# ---- the paper's tables and figures ------------------------------------------------------------------------------
def _md(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def _summary_table(results, models: List[ModelEntry], keys: List[str], baseline, label=None):
    columns = [(name, key) for name, key in R.COLUMNS if key in keys]
    rows = []
    for m in models:
        if m.key not in results:
            rows.append([label(m) if label else m.display] + ["—"] * len(columns))
            continue
        s = R.summarize(results, m.key, baseline)
        rows.append([label(m) if label else m.display] +
                    ["—" if math.isnan(s[k]) else f"{s[k]:.2f}" for _, k in columns])
    header = ["model"] + [name for name, _ in columns]
    if keys is ALL_KEYS:  # the ablation tables: only the benchmarks that were run
        keep = [0] + [i for i in range(1, len(header)) if any(r[i] != "—" for r in rows)]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    return header, rows


TABLES = [
    ("table1_imagenet_c", "Table 1: ImageNet-C", ["imagenet_top1", "c_mean_acc", "c_mean_err", "c_mce", "c_rel_mce"]),
    ("table2_imagenet_p", "Table 2: ImageNet-P", ["p_mean_fp", "p_mfr", "p_mean_t5d", "p_mt5d"]),
    ("table3_imagenet_9", "Table 3: ImageNet-9 (background robustness)",
     ["in9_original", "in9_mixed_same", "in9_mixed_rand", "in9_bg_gap"]),
    ("table6_more_benchmarks", "Table 6: ImageNet-A/-R/-Sketch, Stylized-ImageNet, ImageNet-O",
     ["imagenet_top1", "a_top1", "r_top1", "sketch_top1", "stylized_top1", "o_aupr"]),
]
ALL_KEYS = [key for _, key in R.COLUMNS]


def _ic_figures(results, models: List[ModelEntry], folder: str) -> Dict[str, str]:
    """Figures 2-4: ImageNet-C error per corruption and accuracy per severity, ImageNet-P flip probability per
    perturbation."""
    import matplotlib.pyplot as plt
    import numpy as np

    written = {}
    present = [m for m in models if m.key in results]
    per_corruption, per_severity, per_perturbation = {}, {}, {}
    for m in present:
        c = results[m.key].get("imagenet-c", {})
        errs, sev = {}, {}
        for rec in c.values():
            corruption, s = rec["split"].split("/")
            errs.setdefault(corruption, []).append(rec["metrics"]["error"])
            sev.setdefault(int(s), []).append(1 - rec["metrics"]["error"])
        if errs:
            per_corruption[m.display] = {k: 100 * float(np.mean(v)) for k, v in errs.items()}
            per_severity[m.display] = {k: 100 * float(np.mean(v)) for k, v in sorted(sev.items())}
        fp = R.p_values(results[m.key], "flip_probability")
        if fp:
            per_perturbation[m.display] = {k: 100 * v for k, v in fp.items()}
    for key, title, data, kind, ylabel in (
            ("fig2_imagenet_c_per_corruption", "ImageNet-C error per corruption", per_corruption, "bar", "error (%)"),
            ("fig3_imagenet_c_per_severity", "ImageNet-C accuracy per severity", per_severity, "line", "top-1 (%)"),
            ("fig4_imagenet_p_flip_probability", "ImageNet-P flip probability", per_perturbation, "bar",
             "flip probability (%)")):
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        cats = sorted({c for v in data.values() for c in v})
        width = 0.8 / len(data)
        for i, (name, values) in enumerate(data.items()):
            ys = [values.get(c, np.nan) for c in cats]
            if kind == "bar":
                ax.bar([j + i * width for j in range(len(cats))], ys, width, label=name)
            else:
                ax.plot(cats, ys, marker="o", label=name)
        if kind == "bar":
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], cats, rotation=45, ha="right", fontsize=7)
        else:
            ax.set_xlabel("severity")
        ax.set(title=title, ylabel=ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(folder, key + ".png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written[key] = title
    return written


ANALYSIS_FIGURES = [("occlusion", "fig6_occlusion", "Figure 6: accuracy vs occlusion ratio"),
                    ("lesion", "fig7_lesion", "Figure 7: block lesion"),
                    ("noise-frequency", "fig8_noise_frequency", "Figure 8: accuracy drop vs noise frequency"),
                    ("kernel-distance", "fig9_kernel_distance", "Figure 9: kernel attention distance"),
                    ("feature-variance", "fig10_feature_variance", "Figure 10: feature-map variance vs depth"),
                    ("fgsm", "extra_fgsm", "FGSM: accuracy vs eps"), ("pgd", "extra_pgd", "PGD: accuracy vs steps"),
                    ("autoattack", "extra_autoattack", "AutoAttack: accuracy vs eps"),
                    ("taig", "extra_taig", "TAIG transfer success vs eps"),
                    ("fourier-heatmap", "extra_fourier_heatmap", "Fourier heat maps"),
                    ("erf", "extra_erf", "Effective receptive fields")]


def write_paper(cfg: ReproduceConfig) -> str:
    """Tables 1-7 (markdown), Figures 2-4 and 6-10 (PNG) and index.md into `cfg.paper`; returns index.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(cfg.paper, exist_ok=True)
    results = R.load_results(cfg.out) if R.has_results(cfg.out) else {}
    analysis = load_analysis(cfg.out)
    index = ["# Paper tables and figures\n", f"Config: `{cfg.path}`; results: `{cfg.out}`; written "
             f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.\n",
             f"Settings: limit={cfg.limit or 'all'} images per split, amp={cfg.amp or 'fp32'}, seed={cfg.seed}, "
             f"baseline={cfg.baseline or '—'}. Models: " +
             ", ".join(f"{m.display} (`{m.name}`{', ' + str(m.resolution) + 'px' if m.resolution else ''})"
                       for m in cfg.models) + ".\n", "## Tables\n"]

    def table(name: str, title: str, header, rows, note: str = "") -> None:
        with open(os.path.join(cfg.paper, name + ".md"), "w") as f:
            f.write(f"# {title}\n\n" + _md(header, rows) + (f"\n{note}\n" if note else ""))
        index.append(f"- [{title}]({name}.md)")

    for name, title, keys in TABLES[:3]:
        table(name, title, *_summary_table(results, cfg.models, keys, cfg.baseline), R.NOTES.replace("\n", " "))
    taig = analysis.get("taig", {})
    if taig:
        title, header, rows, note = _tables("taig", taig)
        table("table4_taig", "Table 4: " + title, header, rows, note)
    else:
        index.append("- Table 4 (TAIG): no taig results")
    ablation = [m for m in cfg.models if "table5" in m.tables]
    if ablation:
        table("table5_kernel_ablation", "Table 5: kernel-size ablation (RepLKNet-31B vs 3x3 kernels)",
              *_summary_table(results, ablation, ALL_KEYS, cfg.baseline))
    name, title, keys = TABLES[3]
    table(name, title, *_summary_table(results, cfg.models, keys, cfg.baseline))
    convnext = sorted((m for m in cfg.models if "table7" in m.tables), key=lambda m: m.kernel_size)
    if convnext:
        table("table7_convnext_kernel_sizes", "Table 7: ConvNeXt-T at kernel sizes",
              *_summary_table(results, convnext, ALL_KEYS, cfg.baseline,
                              label=lambda m: f"k={m.kernel_size} ({m.display})"))
    index.append("\n## Figures\n")
    for key, title in _ic_figures(results, cfg.models, cfg.paper).items():
        index.append(f"- {title}: ![{key}]({key}.png)")
    for experiment, key, title in ANALYSIS_FIGURES:
        if experiment in analysis:
            fig = _figure(experiment, analysis[experiment], cfg.out)
            fig.tight_layout()
            fig.savefig(os.path.join(cfg.paper, key + ".png"), dpi=120)
            plt.close(fig)
            index.append(f"- {title}: ![{key}]({key}.png)")
    index.append("\nFigure 5 of the paper shows example occluded images; `robustness.analysis.occlude` makes "
                 "them. Tables are also in `lkrobust report`'s form: `lkrobust report " + cfg.out + "`.\n")
    path = os.path.join(cfg.paper, "index.md")
    with open(path, "w") as f:
        f.write("\n".join(index) + "\n")
    with open(os.path.join(cfg.paper, "config.json"), "w") as f:
        json.dump(dict(config=cfg.path, models=[vars(m) for m in cfg.models], benchmarks=cfg.benchmarks,
                       experiments=cfg.experiments), f, indent=1, default=str)
    return path
