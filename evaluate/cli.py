"""The bodies of ``quasar anchors`` / ``quasar evaluate`` / ``quasar reproduce``.

Their options (names, help, types, choices and ranges) are declared once, in
quasar/commands/anchors.py, evaluate.py and reproduce.py: the values arrive here parsed and
checked, and are not checked again (what is left here are rules between options and about
the data). Errors become exit codes in quasar/commands/base.py (bad input: ``quasar
<command>: error: ...``, exit 2). Light at import time: onnxruntime, SciPy and scikit-learn
are imported inside the commands.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from quasar.errors import UsageError


def dataset_root(name: str, explicit, data_root, flag: str) -> Path:
    """``explicit`` if given, else ``data_root/<name>``."""
    if explicit:
        return Path(str(explicit)).expanduser()
    if not data_root:
        raise UsageError(f"{name}: pass --data-root DIR (with the dataset in DIR/{name}) "
                         f"or --{flag.replace('_', '-')} DIR")
    return Path(str(data_root)).expanduser() / name


def _scorer(bundle, model, *, resolution, device, batch_size, threads):
    """Scorer of ``--bundle`` (or the cached bundle of ``--model``) and its directory."""
    from quasar.runtime.scorer import Scorer

    if bundle and model:
        raise UsageError("give --bundle or --model, not both")
    scorer = Scorer.from_bundle(bundle or None, model=model or None, device=device,
                                anchors="all", resolution=resolution, batch_size=batch_size,
                                threads=threads)
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
    """The ExperimentConfig of a command's (already checked) options; None: its default."""
    from .experiment import ExperimentConfig

    given = {k: v for k, v in kw.items() if v is not None and v != ""}
    return ExperimentConfig(**given)


# --------------------------------------------------------------------------- anchors

def _custom_anchors(bundle, options: dict) -> None:
    """Anchors from the user's own images (--good/--bad, --scores): every option that
    custom_anchors.anchors_command takes, as parsed ("" given for a text: not given)."""
    import inspect

    from .custom_anchors import anchors_command

    names = [n for n in inspect.signature(anchors_command).parameters if n != "bundle"]
    anchors_command(bundle, **{n: None if options[n] == "" else options[n] for n in names})


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
    median|quantile:Q; see docs/anchors.md. Options: quasar/commands/anchors.py.
    """
    options = dict(locals())

    def go():
        if good or bad or scores:
            return _custom_anchors(bundle, options)
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
        if not prompt_embeddings:
            samples = load_dataset(cfg.prompt_data,
                                   dataset_root(cfg.prompt_data, prompt_root, data_root,
                                                "prompt_root"), cfg.prompt_data_subset)
        scorer, bdir = _scorer(bundle, None, resolution=cfg.prompt_res, device=device,
                               batch_size=batch_size, threads=threads)
        from quasar.bundle.io import check_anchor_name_free  # refuse before the work
        check_anchor_name_free(bdir, name or cfg.prompt_data.lower(),
                               scorer.bundle.anchor_names, overwrite)
        embed = EmbeddingSource(scorer, cache=not no_cache, progress=_progress(quiet))
        arr, recipe = make_anchors(cfg, ReferenceRandom(cfg.seed), bundle_dir=bdir,
                                   prompt_samples=samples, embed=embed,
                                   prompt_embeddings=prompt_embeddings or None)
        recipe.update(model=scorer.manifest.model, resolution=scorer.resolution,
                      prompt_data_subset=samples.subset if samples is not None else None,
                      embeddings=("authors' release " + Path(str(prompt_embeddings)).name)
                      if samples is None else "quasar runtime")
        set_name = name or cfg.prompt_data.lower()
        add_anchor_set(bdir, set_name, arr, recipe, overwrite=bool(overwrite))
        if not quiet:
            print(f"added anchor set {set_name!r} to {bdir}: {json.dumps(recipe, sort_keys=True)}")

    from quasar.bundle.lock import bundle_lock  # one writer of a bundle at a time

    with bundle_lock(bundle or None):
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

    Options: quasar/commands/evaluate.py.
    """
    def go():
        from .datasets import load_dataset
        from .experiment import TARGET_CHOICES, EmbeddingSource, load_target, run_experiment

        if not target_data:
            raise UsageError(f"--target-data is required: one of {TARGET_CHOICES}")
        cfg = _config(prompt_data=prompt_data, target_data=target_data,
                      target_data_subset=target_data_subset, target_cv_folds=target_cv_folds,
                      aggregation_type=aggregation_type, prompt_ratio=prompt_ratio,
                      median_offset_ratio=median_offset_ratio, n_clusters=n_clusters,
                      resolution=resolution, seed=seed, prompt_data_subset=prompt_data_subset,
                      anchor_set=anchors, prompt_resolution=prompt_resolution,
                      target_resolution=target_resolution)
        target = load_target(cfg, lambda: dataset_root(cfg.target_data, target_root, data_root,
                                                        "target_root"),
                             target_embeddings=target_embeddings or None)
        prompt = None
        if cfg.anchor_set is None and cfg.prompt_data != "text" and not prompt_embeddings:
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
                             prompt_embeddings=prompt_embeddings or None,
                             target_embeddings=target_embeddings or None)
        d = res.to_dict()
        if out:
            from quasar.bundle.atomic import atomic_write_text

            atomic_write_text(Path(str(out)).expanduser(),
                              json.dumps(d, indent=2, default=str) + "\n")
        if report:
            from .report import write_evaluation_report
            write_evaluation_report(Path(str(report)).expanduser(), [(res, target.scores)])
        print(json.dumps(d, default=str) if format == "json" else res.report())

    _run("evaluate", go, quiet)


# --------------------------------------------------------------------------- reproduce

def reproduce(bundle=None, data_root=None, out="quasar-reproduce", prompts=None, targets=None,
              target_cv_folds=None, aggregation_type: str = "mean", prompt_ratio=1.0,
              median_offset_ratio=None, n_clusters=10, resolution=None, seed=42, model=None,
              device: str = "auto", batch_size=16, threads=None, no_cache: bool = False,
              quiet: bool = False, resolutions=None, report: bool = False) -> None:
    """The paper's grid (prompt data × target datasets) -> results.csv/.json/.md in --out.

    Missing datasets are reported and their cells skipped. Options:
    quasar/commands/reproduce.py.
    """
    def go():
        from .datasets import load_dataset
        from .experiment import PROMPT_CHOICES, TARGET_CHOICES, EmbeddingSource
        from .reproduce import check_resolutions, resolution_table, run_grid, write_outputs

        if not data_root:
            raise UsageError("--data-root is required (one folder per dataset inside)")
        ps, ts = list(prompts or PROMPT_CHOICES), list(targets or TARGET_CHOICES)
        bad = ([p for p in ps if p not in PROMPT_CHOICES]
               + [t for t in ts if t not in TARGET_CHOICES])
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
        for item in resolutions or ():
            if "=" in item:
                k, v = item.split("=", 1)
                overrides[k.strip()] = v.strip()
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
