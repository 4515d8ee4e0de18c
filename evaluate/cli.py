"""The bodies of ``quasar anchors`` / ``quasar evaluate`` / ``quasar reproduce``.

Their options (names, help, parsing) are declared in quasar/commands/anchors.py,
evaluate.py and reproduce.py; errors become exit codes in quasar/commands/base.py (bad
input: ``quasar <command>: error: ...``, exit 2). Light at import time: onnxruntime, SciPy
and scikit-learn are imported inside the commands.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from quasar.errors import UsageError


def _none(v) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null"))


def _opt_int(name: str, v, minimum: int = 1) -> Optional[int]:
    if _none(v):
        return None
    try:
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ValueError
        i = int(float(v))
    except (TypeError, ValueError):
        raise UsageError(f"--{name} must be an integer, got {v!r}") from None
    if i < minimum:
        raise UsageError(f"--{name} must be at least {minimum}, got {i}")
    return i


def _opt_float(name: str, v) -> Optional[float]:
    if _none(v):
        return None
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise UsageError(f"--{name} must be a number, got {v!r}") from None


def _opt_str(v) -> Optional[str]:
    return None if _none(v) else str(v)


def _names(v, default) -> list:
    if _none(v):
        return list(default)
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(",") if s.strip()]


def _resolution(v) -> Optional[str]:
    v = _opt_str(v)
    if isinstance(v, str) and v.isdigit():
        v = str(int(v))
    if v is not None and v not in ("224", "512", "native"):
        raise UsageError(f"--resolution must be 224, 512 or native, got {v!r}")
    return v


def dataset_root(name: str, explicit, data_root, flag: str) -> Path:
    """``explicit`` if given, else ``data_root/<name>``."""
    if not _none(explicit):
        return Path(str(explicit)).expanduser()
    if _none(data_root):
        raise UsageError(f"{name}: pass --data-root DIR (with the dataset in DIR/{name}) "
                         f"or --{flag.replace('_', '-')} DIR")
    return Path(str(data_root)).expanduser() / name


def _scorer(bundle, model, *, resolution, device, batch_size, threads):
    """Scorer of ``--bundle`` (or the cached bundle of ``--model``) and its directory."""
    from quasar.runtime.scorer import Scorer

    if not _none(bundle) and not _none(model):
        raise UsageError("give --bundle or --model, not both")
    device = str(device).lower()
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {device!r}")
    scorer = Scorer.from_bundle(_opt_str(bundle), model=_opt_str(model), device=device,
                                anchors="all", resolution=resolution,
                                batch_size=_opt_int("batch-size", batch_size) or 16,
                                threads=_opt_int("threads", threads))
    return scorer, Path(scorer.bundle.path)


def _scorer_factory(bdir: Path, *, device, batch_size, threads):
    """make_scorer(resolution) for EmbeddingSource: the same bundle at another resolution."""
    def make(resolution: str):
        return _scorer(str(bdir), None, resolution=resolution, device=device,
                       batch_size=batch_size, threads=threads)[0]
    return make


def _run(command: str, fn, quiet: bool) -> Any:
    """Run a command body with logging set up; errors propagate to the command layer."""
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format=f"quasar {command}: %(levelname)s: %(message)s", stream=sys.stderr)
    return fn()


def _progress(quiet: bool) -> Optional[bool]:
    return False if quiet else None


def _config(**kw):
    from .experiment import ExperimentConfig

    return ExperimentConfig(
        prompt_data=str(kw["prompt_data"]),
        target_data=str(kw.get("target_data") or "KonIQ10k"),
        target_data_subset=_opt_str(kw.get("target_data_subset")),
        target_cv_folds=_opt_int("target-cv-folds", kw.get("target_cv_folds")),
        aggregation_type=str(kw["aggregation_type"]),
        prompt_ratio=1.0 if _none(kw["prompt_ratio"]) else _opt_float("prompt-ratio",
                                                                        kw["prompt_ratio"]),
        median_offset_ratio=_opt_float("median-offset-ratio", kw["median_offset_ratio"]),
        n_clusters=_opt_int("n-clusters", kw["n_clusters"]) or 10,
        resolution=_resolution(kw["resolution"]),
        seed=_opt_int("seed", kw["seed"], minimum=0) if not _none(kw["seed"]) else 42,
        prompt_data_subset=_opt_str(kw.get("prompt_data_subset")),
        anchor_set=_opt_str(kw.get("anchor_set")),
        prompt_resolution=_resolution(kw.get("prompt_resolution")),
        target_resolution=_resolution(kw.get("target_resolution")),
    )


# --------------------------------------------------------------------------- anchors

def anchors(bundle, prompt_data: str = "KADIS700k", data_root=None, prompt_root=None,
            prompt_data_subset=None, aggregation_type: str = "mean", prompt_ratio=1.0,
            median_offset_ratio=None, n_clusters=10, seed=42, name=None, resolution=None,
            prompt_embeddings=None, device: str = "auto", batch_size=16, threads=None,
            no_cache: bool = False, quiet: bool = False, prompt_resolution=None, good=None,
            bad=None, scores=None, split=None, quantile=0.25, score_column=None,
            path_column=None, root=None, holdout=None, folds=None, skip_failed: bool = False,
            overwrite: bool = False) -> None:
    """Build image anchors from prompt data (or your own images) and add them to a bundle.

    Your own images: --good DIR|@list --bad DIR|@list, or --scores FILE with --split
    median|quantile:Q; see docs/anchors.md.

    Args:
        bundle: bundle directory (from `quasar export`); modified in place, atomically.
        prompt_data: KADIS700k | PIPAL (full-reference split) | AVA (median split).
        data_root: folder holding one folder per dataset (data_root/KADIS700k, ...).
        prompt_root: the prompt dataset's folder (overrides data_root/<prompt_data>).
        prompt_data_subset: subset of the prompt dataset (default: the reader's).
        aggregation_type: mean | clustering (k-means, scikit-learn, seeded).
        prompt_ratio: fraction of the references (KADIS700k/PIPAL) or of each side (AVA).
        median_offset_ratio: AVA: drop this fraction nearest the median on each side.
        n_clusters: k-means clusters per side for clustering.
        seed: seed of the reference's random streams (default 42).
        name: anchor set name (default: prompt_data in lower case, e.g. kadis700k).
        resolution: 224 | 512 | native (default: the bundle's).
        prompt_embeddings: use the authors' released <name>.pt/.json instead of the images.
        device: auto | cpu | cuda.
        batch_size: images per inference batch.
        threads: ONNX Runtime intra-op threads.
        no_cache: do not read or write the embeddings cache.
        quiet: no progress bar.
        prompt_resolution: same as resolution (the prompt images' resolution).
        good: your good images: a folder, @list.txt or image files (with --bad).
        bad: your bad images: a folder, @list.txt or image files (with --good).
        scores: a CSV/JSONL/Parquet with a path and a score column (your ratings, or a
            `quasar score` output) to split into good and bad.
        split: median | quantile:Q (good = top Q, bad = bottom Q) for --scores.
        quantile: Q of --split quantile (default 0.25).
        score_column: the score column of --scores (default: the one score_* / score / mos).
        path_column: the path column of --scores (default: path).
        root: folder that relative paths in --scores are relative to.
        holdout: fraction of --scores images held out to report SRCC (default 0.2).
        folds: report K-fold SRCC instead (anchors then use all images).
        skip_failed: leave out images that cannot be decoded instead of failing.
        overwrite: replace an existing anchor set of the same --name.
    """
    def go():
        if not all(_none(v) for v in (good, bad, scores)):
            from .custom_anchors import anchors_command
            return anchors_command(
                bundle, name=_opt_str(name), good=None if _none(good) else good,
                bad=None if _none(bad) else bad, scores=_opt_str(scores), split=_opt_str(split),
                quantile=_opt_float("quantile", quantile), score_column=_opt_str(score_column),
                path_column=_opt_str(path_column), root=_opt_str(root),
                holdout=_opt_float("holdout", holdout), folds=_opt_int("folds", folds, 2),
                skip_failed=skip_failed, overwrite=overwrite, aggregation_type=aggregation_type,
                prompt_ratio=_opt_float("prompt_ratio", prompt_ratio),
                median_offset_ratio=_opt_float("median_offset_ratio", median_offset_ratio),
                n_clusters=_opt_int("n_clusters", n_clusters), seed=_opt_int("seed", seed, 0),
                resolution=_resolution(resolution), device=str(device).lower(),
                batch_size=_opt_int("batch_size", batch_size) or 16,
                threads=_opt_int("threads", threads), quiet=quiet) and None
        from quasar.bundle.io import add_anchor_set
        from .anchors import PROMPT_DATA_SPLIT

        from .datasets import load_dataset
        from .experiment import EmbeddingSource, make_anchors
        from .anchors import ReferenceRandom

        cfg = _config(prompt_data=prompt_data, aggregation_type=aggregation_type,
                      prompt_ratio=prompt_ratio, median_offset_ratio=median_offset_ratio,
                      n_clusters=n_clusters, resolution=resolution, seed=seed,
                      prompt_data_subset=prompt_data_subset, prompt_resolution=prompt_resolution)
        if cfg.prompt_data not in PROMPT_DATA_SPLIT:
            raise UsageError(f"--prompt-data must be one of {sorted(PROMPT_DATA_SPLIT)} "
                             "(text anchors come with the bundle)")
        samples = None
        if _none(prompt_embeddings):
            samples = load_dataset(cfg.prompt_data,
                                   dataset_root(cfg.prompt_data, prompt_root, data_root,
                                                "prompt_root"), cfg.prompt_data_subset)
        scorer, bdir = _scorer(bundle, None, resolution=cfg.prompt_res, device=device,
                               batch_size=batch_size, threads=threads)
        embed = EmbeddingSource(scorer, cache=not no_cache, progress=_progress(quiet))
        arr, recipe = make_anchors(cfg, ReferenceRandom(cfg.seed), bundle_dir=bdir,
                                   prompt_samples=samples, embed=embed,
                                   prompt_embeddings=_opt_str(prompt_embeddings))
        recipe.update(model=scorer.manifest.model, resolution=scorer.resolution,
                      prompt_data_subset=samples.subset if samples is not None else None,
                      embeddings=("authors' release " + Path(str(prompt_embeddings)).name)
                      if samples is None else "quasar runtime")
        set_name = _opt_str(name) or cfg.prompt_data.lower()
        add_anchor_set(bdir, set_name, arr, recipe)
        if not quiet:
            print(f"added anchor set {set_name!r} to {bdir}: {json.dumps(recipe, sort_keys=True)}")

    _run("anchors", go, quiet)


# --------------------------------------------------------------------------- evaluate

def evaluate(prompt_data: str = "text", target_data: Optional[str] = None, bundle=None,
             data_root=None, target_data_subset=None, target_cv_folds=None,
             aggregation_type: str = "mean", prompt_ratio=1.0, median_offset_ratio=None,
             n_clusters=10, resolution=None, seed=42, target_root=None, prompt_root=None,
             prompt_data_subset=None, anchors=None, model=None, prompt_embeddings=None,
             target_embeddings=None, device: str = "auto", batch_size=16, threads=None,
             no_cache: bool = False, format: str = "text", out=None,
             quiet: bool = False, prompt_resolution=None, target_resolution=None,
             report=None) -> None:
    """SRCC (signed and |SRCC|), KRCC, PLCC of QUASAR scores on a target dataset.

    Args:
        prompt_data: text | KADIS700k | PIPAL | AVA (anchors: the bundle's text set, or built
            from the prompt images' embeddings).
        target_data: TID2013 | KonIQ10k | KADID10k | LIVEitW | SPAQ | TAD66k | AADB | PieAPP.
        bundle: bundle directory (or --model for a cached bundle).
        data_root: folder holding one folder per dataset, named as the paper writes it.
        target_data_subset: all | train | test (default: the dataset's usual subset).
        target_cv_folds: folds of the reference's split (default: one fold of all images).
        aggregation_type: mean | clustering.
        prompt_ratio: fraction of the prompt data used for the anchors.
        median_offset_ratio: AVA: drop this fraction nearest the median.
        n_clusters: k-means clusters per side (clustering).
        resolution: 224 | 512 | native (default: the bundle's).
        seed: seed of the reference's random streams (default 42).
        target_root: the target dataset's folder (overrides data_root/<target_data>).
        prompt_root: the prompt dataset's folder (overrides data_root/<prompt_data>).
        prompt_data_subset: subset of the prompt dataset.
        anchors: use this anchor set stored in the bundle instead of prompt_data.
        model: model id of a cached bundle (instead of --bundle).
        prompt_embeddings: the authors' released prompt embeddings (<name>.pt + .json).
        target_embeddings: the authors' released target embeddings (matched by file name).
        device: auto | cpu | cuda.
        batch_size: images per inference batch.
        threads: ONNX Runtime intra-op threads.
        no_cache: do not read or write the embeddings cache.
        format: text | json (what is printed on stdout).
        out: also write the result as JSON to this file.
        quiet: no progress bar.
        prompt_resolution: resolution of the prompt images (default: --resolution).
        target_resolution: resolution of the target images (default: --resolution).
        report: also write an HTML report (predicted-vs-subjective scatter) to this file.
    """
    def go():
        from .datasets import load_dataset
        from .experiment import TARGET_CHOICES, EmbeddingSource, load_target, run_experiment

        if _none(target_data):
            raise UsageError(f"--target-data is required: one of {TARGET_CHOICES}")
        fmt_ = str(format).lower()
        if fmt_ not in ("text", "json"):
            raise UsageError(f"--format must be text or json, got {format!r}")
        cfg = _config(prompt_data=prompt_data, target_data=target_data,
                      target_data_subset=target_data_subset, target_cv_folds=target_cv_folds,
                      aggregation_type=aggregation_type, prompt_ratio=prompt_ratio,
                      median_offset_ratio=median_offset_ratio, n_clusters=n_clusters,
                      resolution=resolution, seed=seed, prompt_data_subset=prompt_data_subset,
                      anchor_set=anchors, prompt_resolution=prompt_resolution,
                      target_resolution=target_resolution)
        target = load_target(cfg, lambda: dataset_root(cfg.target_data, target_root, data_root,
                                                        "target_root"),
                             target_embeddings=_opt_str(target_embeddings))
        prompt = None
        if cfg.anchor_set is None and cfg.prompt_data != "text" and _none(prompt_embeddings):
            prompt = load_dataset(cfg.prompt_data, dataset_root(cfg.prompt_data, prompt_root,
                                                                data_root, "prompt_root"),
                                  cfg.prompt_data_subset)
        scorer, bdir = _scorer(bundle, model, resolution=cfg.target_res, device=device,
                               batch_size=batch_size, threads=threads)
        embed = EmbeddingSource(scorer, cache=not no_cache, progress=_progress(quiet),
                                make_scorer=_scorer_factory(bdir, device=device,
                                                            batch_size=batch_size,
                                                            threads=threads))
        res = run_experiment(cfg, bundle_dir=bdir, scorer=scorer, target_samples=target,
                             prompt_samples=prompt, embed=embed,
                             prompt_embeddings=_opt_str(prompt_embeddings),
                             target_embeddings=_opt_str(target_embeddings))
        d = res.to_dict()
        if not _none(out):
            from quasar.bundle.atomic import atomic_write_text

            atomic_write_text(Path(str(out)).expanduser(),
                              json.dumps(d, indent=2, default=str) + "\n")
        if not _none(report):
            from .report import write_evaluation_report
            write_evaluation_report(Path(str(report)).expanduser(), [(res, target.scores)])
        print(json.dumps(d, default=str) if fmt_ == "json" else res.report())

    _run("evaluate", go, quiet)


# --------------------------------------------------------------------------- reproduce

def reproduce(bundle=None, data_root=None, out="quasar-reproduce", prompts=None, targets=None,
              target_cv_folds=None, aggregation_type: str = "mean", prompt_ratio=1.0,
              median_offset_ratio=None, n_clusters=10, resolution=None, seed=42, model=None,
              device: str = "auto", batch_size=16, threads=None, no_cache: bool = False,
              quiet: bool = False, resolutions=None, report: bool = False) -> None:
    """The paper's grid (prompt data × target datasets) -> results.csv/.json/.md in --out.

    Missing datasets are reported and their cells skipped.

    Args:
        bundle: bundle directory (or --model for a cached bundle).
        data_root: folder holding one folder per dataset, named as the paper writes it.
        out: output folder (default ./quasar-reproduce).
        prompts: comma-separated prompt data (default text,KADIS700k,PIPAL,AVA).
        targets: comma-separated targets (default all eight).
        target_cv_folds: folds of the reference's split (default one fold).
        aggregation_type: mean | clustering.
        prompt_ratio: fraction of the prompt data used for the anchors.
        median_offset_ratio: AVA: drop this fraction nearest the median.
        n_clusters: k-means clusters per side (clustering).
        resolution: 224 | 512 | native (default: the bundle's).
        seed: seed of the reference's random streams (default 42).
        model: model id of a cached bundle (instead of --bundle).
        device: auto | cpu | cuda.
        batch_size: images per inference batch.
        threads: ONNX Runtime intra-op threads.
        no_cache: do not read or write the embeddings cache.
        quiet: no progress bar, no table on stdout.
        resolutions: per-dataset resolutions: a preset name (``paper``: the reference's
            configs/data_config.yml), and/or NAME=RES pairs, comma-separated
            (``paper,SPAQ=512``).
        report: also write report.html (a scatter per cell, the grid as a table) in --out.
    """
    def go():
        from .datasets import load_dataset
        from .experiment import PROMPT_CHOICES, TARGET_CHOICES, EmbeddingSource
        from .reproduce import check_resolutions, resolution_table, run_grid, write_outputs

        if _none(data_root):
            raise UsageError("--data-root is required (one folder per dataset inside)")
        ps, ts = _names(prompts, PROMPT_CHOICES), _names(targets, TARGET_CHOICES)
        bad = [p for p in ps if p not in PROMPT_CHOICES] + [t for t in ts if t not in TARGET_CHOICES]
        if bad:
            raise UsageError(f"unknown dataset(s) {bad}: prompts {PROMPT_CHOICES}, "
                             f"targets {TARGET_CHOICES}")
        base = _config(prompt_data="text", target_data=ts[0] if ts else None,
                       target_cv_folds=target_cv_folds, aggregation_type=aggregation_type,
                       prompt_ratio=prompt_ratio, median_offset_ratio=median_offset_ratio,
                       n_clusters=n_clusters, resolution=resolution, seed=seed)
        scorer, bdir = _scorer(bundle, model, resolution=base.resolution, device=device,
                               batch_size=batch_size, threads=threads)
        preset, overrides = None, {}
        for item in _names(resolutions, ()):
            if "=" in item:
                k, v = item.split("=", 1)
                overrides[k.strip()] = _resolution(v.strip())
            else:
                preset = item
        table = resolution_table(preset, overrides)
        check_resolutions(table, list(scorer.manifest.preprocess), scorer.manifest.model)
        root = Path(str(data_root)).expanduser()
        grid = run_grid(base, prompts=ps, targets=ts,
                        load=lambda n: load_dataset(n, root / n), bundle_dir=bdir,
                        scorer=scorer, embed=EmbeddingSource(
                            scorer, cache=not no_cache, progress=_progress(quiet),
                            make_scorer=_scorer_factory(bdir, device=device,
                                                        batch_size=batch_size, threads=threads)),
                        progress=_progress(quiet), resolutions=table)
        header = (f"QUASAR reproduction: model {scorer.manifest.model} @ "
                  + (", ".join(f"{k} {v}" for k, v in table.items()) + f", others "
                     if table else "") + f"{scorer.resolution}, "
                  f"seed {base.seed}, folds {base.target_cv_folds or 1}, aggregation "
                  f"{base.aggregation_type}, prompt_ratio {base.prompt_ratio}. Signed SRCC "
                  "(mean ± std over folds).")
        paths = write_outputs(grid, out, ps, ts, header)
        if report:
            from .report import write_evaluation_report
            cells = [c for c in grid.cells if c.result is not None]
            tgt = {t: load_dataset(t, root / t).scores for t in {c.target_data for c in cells}}
            paths["html"] = write_evaluation_report(
                Path(str(out)) / "report.html", [(c.result, tgt[c.target_data]) for c in cells],
                grid_markdown=paths["md"].read_text(), title="QUASAR reproduction")
        if not quiet:
            print(paths["md"].read_text(), end="")
            print(f"written: {', '.join(str(p) for p in paths.values())}")

    _run("reproduce", go, quiet)
