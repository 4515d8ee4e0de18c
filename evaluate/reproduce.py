"""The paper's grid: every prompt data × every target dataset -> CSV, JSON and a markdown table.

Each cell is an independent reference run of the same seed (fresh random streams: anchors
draw first, then the folds). Embeddings are computed once per dataset and resolution (and
cached on disk); a dataset that is missing or unreadable is reported and its cells skipped.

Resolutions may differ per dataset (``resolutions={"TID2013": "224", ...}``), as in the
reference, which extracts every dataset on its own. :data:`RESOLUTION_PRESETS` ``["paper"]``
is the configuration behind the paper's numbers; see :data:`PAPER_RESOLUTIONS`.
"""
from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from quasar.bundle.atomic import atomic_write, atomic_write_text
from quasar.errors import QuasarError
from quasar.models.preprocess import RESOLUTIONS

from .experiment import (PROMPT_CHOICES, TARGET_CHOICES, EmbeddingSource, ExperimentConfig,
                         ExperimentResult, run_experiment)
from .metrics import fmt

log = logging.getLogger(__name__)

#: The resolution of each dataset's embeddings in the reference's runs, read from the
#: released embedding archives that ``main.py`` downloads: ``configs/data_config.yml`` of
#: github.com/photosynthesis-team/QUASAR (commit 4a6eb26), ``dataset_path`` on the line noted.
#: ``generate_embeddigs.py`` (lines 160-187) names its output folder ``<dataset>`` at native
#: resolution (``--resolution`` unset: no resize), ``<dataset>_224`` (open_clip eval transform:
#: shortest side 224, centre crop) or ``<dataset>_512`` (shortest side 512); the archive names
#: keep that suffix. Backbone: ``CLIP-RN50_no-pos`` (main.py, ``--prompt_backbone`` /
#: ``--target_backbone`` choices, lines 35 and 47), the only one that accepts 512 / native.
PAPER_RESOLUTIONS: Dict[str, str] = {
    "KADIS700k": "native",  # data_config.yml line 3: Google Drive archive, kadis700k (no suffix)
    "PIPAL": "native",      # line 8: pipal.zip
    "TID2013": "224",       # line 13: tid2013_224.zip
    "KonIQ10k": "native",   # line 18: koniq10k.zip
    "KADID10k": "224",      # line 23: kadid10k_224.zip
    "LIVEitW": "224",       # line 28: liveitw_224.zip
    "SPAQ": "native",       # line 33: spaq.zip (line 38: spaq_512.zip, the SPAQ512 entry)
    "TAD66k": "224",        # line 43: tad66k_224.zip
    "AVA": "native",        # line 48: ava.zip
    "AADB": "native",       # line 53: aadb.zip
    "PieAPP": "224",        # line 58: pieapp_224.zip
}
RESOLUTION_PRESETS: Dict[str, Dict[str, str]] = {"paper": PAPER_RESOLUTIONS}


def resolution_table(preset: Optional[str] = None,
                     overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Per-dataset resolutions: a named preset (``paper``) updated by ``overrides``."""
    table: Dict[str, str] = {}
    if preset is not None:
        if preset not in RESOLUTION_PRESETS:
            raise ValueError(f"unknown resolution preset {preset!r}; known: "
                             f"{sorted(RESOLUTION_PRESETS)}")
        table.update(RESOLUTION_PRESETS[preset])
    for name, res in (overrides or {}).items():
        if str(res) not in RESOLUTIONS:
            raise ValueError(f"resolution of {name} must be one of {RESOLUTIONS}, got {res!r}")
        table[str(name)] = str(res)
    return table


def check_resolutions(table: Mapping[str, str], accepted: Sequence[str], model: str) -> None:
    """Refuse a table the bundle cannot follow (e.g. native on a fixed-size ViT)."""
    bad = sorted({r for r in table.values() if r not in accepted})
    if bad:
        raise ValueError(f"{model} accepts resolutions {list(accepted)}, the table asks for "
                         f"{bad}; the paper's per-dataset resolutions need a bundle with "
                         "dynamic input size (clip-rn50-nopos.openai)")


CSV_FIELDS = ("prompt_data", "target_data", "target_subset", "status", "n_images", "folds",
              "srcc_mean", "srcc_std", "abs_srcc_mean", "abs_srcc_std", "krcc_mean", "krcc_std",
              "plcc_mean", "plcc_std", "plcc_logistic_mean", "plcc_logistic_std", "model",
              "resolution", "prompt_resolution", "seed", "message")


@dataclass
class Cell:
    prompt_data: str
    target_data: str
    status: str = "ok"  # ok | missing | error
    message: str = ""
    result: Optional[ExperimentResult] = None

    def row(self) -> Dict[str, object]:
        r: Dict[str, object] = {k: "" for k in CSV_FIELDS}
        r.update(prompt_data=self.prompt_data, target_data=self.target_data, status=self.status,
                 message=self.message)
        if self.result is not None:
            res, m = self.result, self.result.metrics
            r.update(target_subset=res.target_subset, n_images=res.n_images,
                     folds=res.cv_folds or 1, model=res.model, resolution=res.resolution,
                     prompt_resolution=res.prompt_resolution or "", seed=res.seed)
            for k in ("srcc", "abs_srcc", "krcc", "plcc", "plcc_logistic"):
                r[f"{k}_mean"], r[f"{k}_std"] = m.mean[k], m.std[k]
        return r


@dataclass
class Grid:
    cells: List[Cell] = field(default_factory=list)
    missing: Dict[str, str] = field(default_factory=dict)  # dataset -> reason

    def markdown(self, prompts: Sequence[str], targets: Sequence[str]) -> str:
        """Signed SRCC mean ± std (population std over folds), targets × prompts."""
        by = {(c.prompt_data, c.target_data): c for c in self.cells}
        lines = ["| target | " + " | ".join(prompts) + " |",
                 "|---|" + "---|" * len(prompts)]
        for t in targets:
            row = []
            for p in prompts:
                c = by.get((p, t))
                if c is None or c.result is None:
                    row.append("—" if c is None or c.status == "missing" else "error")
                else:
                    m = c.result.metrics
                    cell = fmt(m.mean["srcc"], 3)
                    if len(m.folds) > 1:
                        cell += " ± " + fmt(m.std["srcc"], 3)
                    row.append(cell)
            lines.append(f"| {t} | " + " | ".join(row) + " |")
        if self.missing:
            lines.append("")
            lines.append("Skipped (— above): " + "; ".join(
                f"{k}: {v}" for k, v in sorted(self.missing.items())))
        return "\n".join(lines) + "\n"


def run_grid(base: ExperimentConfig, *, prompts: Sequence[str], targets: Sequence[str],
             load: Callable[[str], object], bundle_dir, scorer, embed: EmbeddingSource,
             progress: Optional[bool] = None,
             resolutions: Optional[Mapping[str, str]] = None) -> Grid:
    """Run every prompt × target cell; ``load(name)`` returns DatasetSamples or raises.

    ``resolutions`` maps dataset names to the resolution their images are embedded at
    (see :func:`resolution_table`); datasets not in it use ``base``'s resolutions.
    """
    resolutions = dict(resolutions or {})
    from tqdm.auto import tqdm

    grid = Grid()
    samples: Dict[str, object] = {}

    def get(name: str):
        if name in grid.missing:
            return None
        if name not in samples:
            try:
                samples[name] = load(name)
            except (QuasarError, FileNotFoundError, NotADirectoryError, OSError) as e:
                grid.missing[name] = str(e).splitlines()[0][:300]
                log.warning("skipping %s: %s", name, grid.missing[name])
                return None
        return samples[name]

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    cells = [(p, t) for p in prompts for t in targets]
    for p, t in tqdm(cells, desc="reproduce", unit="cell", disable=disable):
        prompt_samples = None
        if p != "text":
            prompt_samples = get(p)
            if prompt_samples is None:
                grid.cells.append(Cell(p, t, "missing", f"prompt data {p}: {grid.missing[p]}"))
                continue
        target_samples = get(t)
        if target_samples is None:
            grid.cells.append(Cell(p, t, "missing", f"target {t}: {grid.missing[t]}"))
            continue
        cfg = replace(base, prompt_data=p, target_data=t,
                      prompt_resolution=resolutions.get(p, base.prompt_resolution),
                      target_resolution=resolutions.get(t, base.target_resolution))
        try:
            res = run_experiment(cfg, bundle_dir=bundle_dir, scorer=scorer,
                                 target_samples=target_samples, prompt_samples=prompt_samples,
                                 embed=embed)
        except QuasarError as e:
            log.warning("cell %s -> %s failed: %s", p, t, e)
            grid.cells.append(Cell(p, t, "error", str(e).splitlines()[0][:300]))
            continue
        grid.cells.append(Cell(p, t, "ok", "", res))
    return grid


def write_outputs(grid: Grid, out_dir, prompts: Sequence[str], targets: Sequence[str],
                  header: str = "") -> Dict[str, Path]:
    """results.csv, results.json and results.md in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md"}
    with atomic_write(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for c in grid.cells:
            w.writerow(c.row())
    atomic_write_text(paths["json"], json.dumps({
        "cells": [dict(c.row(), result=c.result.to_dict() if c.result else None)
                  for c in grid.cells],
        "missing": grid.missing}, indent=2, default=str) + "\n")
    md = (header + "\n\n" if header else "") + grid.markdown(prompts, targets)
    atomic_write_text(paths["md"], md)
    return paths


__all__ = ["Cell", "Grid", "run_grid", "write_outputs", "PROMPT_CHOICES", "TARGET_CHOICES",
           "PAPER_RESOLUTIONS", "RESOLUTION_PRESETS", "resolution_table", "check_resolutions"]
