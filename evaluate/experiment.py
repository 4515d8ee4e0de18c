"""One QUASAR experiment (the reference's ``main.py``): anchors from prompt data (or text),
scores of a target dataset, SRCC / KRCC / PLCC per fold.

Random streams follow the reference run of one seed: a fresh :class:`ReferenceRandom`
per experiment; the anchors draw first, then the fold permutation.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from quasar.errors import BundleError, DatasetError
from quasar.bundle.io import bundle_anchor_set
from quasar.runtime.scoring import quasar_scores
from quasar.models.preprocess import RESOLUTIONS

from .anchors import (AGGREGATIONS, DEFAULT_N_CLUSTERS, DEFAULT_SEED, PROMPT_DATA_SPLIT,
                      ReferenceRandom, build_anchor_set)
from .datasets.base import DatasetSamples
from .metrics import CVMetrics, cross_validated, fmt

log = logging.getLogger(__name__)

PROMPT_CHOICES = ("text",) + tuple(PROMPT_DATA_SPLIT)
TARGET_CHOICES = ("TID2013", "KonIQ10k", "KADID10k", "LIVEitW", "SPAQ", "TAD66k", "AADB", "PieAPP")


@dataclass(frozen=True)
class ExperimentConfig:
    """The reference's ``main.py`` flags (plus ``n_clusters``, resolutions, ``anchor_set``).

    ``anchor_set`` names a set stored in the bundle (e.g. one added by ``quasar anchors``) and
    then replaces ``prompt_data``'s anchors; the random draws recorded with it are replayed
    first, so the folds are those of the run that builds the anchors.

    Resolutions (``224``, ``512``, ``native``): ``prompt_resolution`` embeds the prompt
    images, ``target_resolution`` the target images; each falls back to ``resolution``, then
    to the bundle's default. The reference extracts every dataset on its own
    (``generate_embeddigs.py --resolution``), so prompt and target may differ.
    """

    prompt_data: str = "text"
    target_data: str = "KonIQ10k"
    target_data_subset: Optional[str] = None
    target_cv_folds: Optional[int] = None
    aggregation_type: str = "mean"
    prompt_ratio: float = 1.0
    median_offset_ratio: Optional[float] = None
    n_clusters: int = DEFAULT_N_CLUSTERS
    resolution: Optional[str] = None
    seed: int = DEFAULT_SEED
    prompt_data_subset: Optional[str] = None
    anchor_set: Optional[str] = None
    prompt_resolution: Optional[str] = None
    target_resolution: Optional[str] = None

    @property
    def prompt_res(self) -> Optional[str]:
        """Resolution of the prompt images (None: the bundle's default)."""
        return self.prompt_resolution or self.resolution

    @property
    def target_res(self) -> Optional[str]:
        """Resolution of the target images (None: the bundle's default)."""
        return self.target_resolution or self.resolution

    def __post_init__(self) -> None:
        for name in ("resolution", "prompt_resolution", "target_resolution"):
            value = getattr(self, name)
            if value is not None and str(value) not in RESOLUTIONS:
                raise ValueError(f"{name} must be one of {RESOLUTIONS}, got {value!r}")
        if self.anchor_set is None and self.prompt_data not in PROMPT_CHOICES:
            raise ValueError(f"prompt_data must be one of {PROMPT_CHOICES}, got {self.prompt_data!r}")
        if self.aggregation_type not in AGGREGATIONS:
            raise ValueError(f"aggregation_type must be one of {AGGREGATIONS}, "
                             f"got {self.aggregation_type!r}")
        if not 0.0 < float(self.prompt_ratio) <= 1.0:
            raise ValueError(f"prompt_ratio must be in (0, 1], got {self.prompt_ratio}")
        if self.median_offset_ratio is not None and not 0.0 <= float(self.median_offset_ratio) < 1.0:
            raise ValueError(f"median_offset_ratio must be in [0, 1), got {self.median_offset_ratio}")
        if int(self.n_clusters) < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {self.n_clusters}")
        if self.target_cv_folds is not None and int(self.target_cv_folds) < 1:
            raise ValueError(f"target_cv_folds must be a positive integer, got {self.target_cv_folds}")


@dataclass(frozen=True)
class ExperimentResult:
    """Scores' agreement with the subjective scores of one target dataset."""

    prompt_data: str
    target_data: str
    target_subset: str
    model: str
    resolution: str
    n_images: int
    cv_folds: Optional[int]
    seed: int
    higher_is_better: bool
    anchors: Dict[str, Any]
    metrics: CVMetrics
    predictions: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    prompt_resolution: Optional[str] = None  # None for text anchors / a stored set

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("metrics", "predictions")}
        d["metrics"] = self.metrics.to_dict()
        return d

    def report(self) -> str:
        """Human-readable report: one line per fold, then mean ± std."""
        m = self.metrics
        head = (f"prompt {self.prompt_data} -> target {self.target_data} ({self.target_subset}, "
                f"{self.n_images} images), model {self.model} @ {self.resolution}"
                + (f" (prompt @ {self.prompt_resolution})" if self.prompt_resolution else "")
                + ", "
                f"seed {self.seed}, folds {self.cv_folds or 1}")
        cols = ("srcc", "abs_srcc", "krcc", "plcc", "plcc_logistic")
        names = ("SRCC", "|SRCC|", "KRCC", "PLCC", "PLCC-logistic")
        lines = [head, "fold      n  " + "  ".join(f"{n:>13}" for n in names)]
        for i, f in enumerate(m.folds, 1):
            lines.append(f"{i:>4} {f.n:>6}  " + "  ".join(f"{fmt(getattr(f, c)):>13}" for c in cols))
        lines.append("mean±std     " + "  ".join(
            f"{fmt(m.mean[c]) + '±' + fmt(m.std[c], 3):>13}" for c in cols))
        if not self.higher_is_better:
            lines.append("(lower subjective scores mean better images here: expect a negative "
                         "signed correlation)")
        return "\n".join(lines)


class EmbeddingSource:
    """Embeddings of datasets: through the runtime (cached), or the authors' released files.
    Keeps what it computed in memory for reuse within a run (``quasar reproduce``).

    ``make_scorer(resolution)`` builds a scorer of the same bundle at another resolution
    (needed when prompt and target resolutions differ); each is built once.
    """

    def __init__(self, scorer, *, cache: bool = True, cache_root=None,
                 progress: Optional[bool] = None, chunk_size: Optional[int] = None,
                 make_scorer: Optional[Callable[[str], Any]] = None) -> None:
        self.scorer = scorer
        self.cache, self.cache_root, self.progress = cache, cache_root, progress
        self.chunk_size = chunk_size
        self._make_scorer = make_scorer
        self._scorers: Dict[str, Any] = {}
        if scorer is not None:
            self._scorers[str(scorer.resolution)] = scorer
        self._memo: Dict[Tuple[str, str, str, str], np.ndarray] = {}

    def scorer_for(self, resolution: Optional[str] = None):
        """The scorer at ``resolution`` (None: the main scorer's)."""
        if resolution is None or self.scorer is None:
            return self.scorer
        resolution = str(resolution)
        if resolution not in self._scorers:
            if self._make_scorer is None:
                raise ValueError(f"no scorer at resolution {resolution!r} (this source has "
                                 f"{sorted(self._scorers)}; pass make_scorer)")
            self._scorers[resolution] = self._make_scorer(resolution)
        return self._scorers[resolution]

    def __call__(self, samples: DatasetSamples, reference_file=None,
                 resolution: Optional[str] = None) -> np.ndarray:
        scorer = None if reference_file is not None else self.scorer_for(resolution)
        res = "" if reference_file is not None else str(scorer.resolution)
        key = (samples.name, samples.subset, str(reference_file or ""), res)
        if key not in self._memo:
            if reference_file is not None:
                from .reference_embeddings import align, load_reference_embeddings

                ref = load_reference_embeddings(reference_file)
                rows = samples.extra.get("embedding_rows")  # samples read from this file
                self._memo[key] = ref.embeddings[rows if rows is not None
                                                 else align(ref, samples.paths)]
            else:
                from .embeddings import DEFAULT_CHUNK, dataset_embeddings

                self._memo[key] = dataset_embeddings(
                    scorer, samples, cache=self.cache, cache_root=self.cache_root,
                    chunk_size=self.chunk_size or DEFAULT_CHUNK, progress=self.progress)
        return self._memo[key]


def replay_anchor_draws(rng: ReferenceRandom, recipe: Dict[str, Any], name: str) -> None:
    """Advance ``rng`` by the draws recorded when the stored set ``name`` was built, so the
    folds that follow are those of the reference's run (which draws its anchors first)."""
    draws = recipe.get("rng_draws")
    if draws is None:
        if recipe.get("source") == "images":
            log.warning("anchor set %r records no random draws (built by an older version); "
                        "the fold permutation may differ from the reference's run", name)
        return
    if recipe.get("seed") is not None and int(recipe["seed"]) != rng.seed:
        log.warning("anchor set %r was built with seed %s, this run uses seed %d: the folds "
                    "are the reference's for seed %d, the anchors are those of seed %s",
                    name, recipe["seed"], rng.seed, rng.seed, recipe["seed"])
    rng.replay(draws)


def make_anchors(cfg: ExperimentConfig, rng: ReferenceRandom, *, bundle_dir,
                 prompt_samples: Optional[DatasetSamples], embed: Optional[EmbeddingSource],
                 prompt_embeddings=None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Anchors [2, D] and their recipe for ``cfg`` (drawing from ``rng`` as the reference)."""
    if cfg.anchor_set is not None:
        anchors, recipe = bundle_anchor_set(bundle_dir, cfg.anchor_set)
        replay_anchor_draws(rng, recipe, cfg.anchor_set)
        return anchors, recipe
    if cfg.prompt_data == "text":
        return bundle_anchor_set(bundle_dir, "text")
    if prompt_embeddings is not None:  # the authors' file, in its own order (as the reference)
        from .reference_embeddings import load_reference_embeddings

        ref = load_reference_embeddings(prompt_embeddings)
        emb, paths, scores = ref.embeddings, ref.paths, ref.scores
        is_ref = groups = None
    else:
        if prompt_samples is None or embed is None:
            raise ValueError("image prompt data needs its samples and an embedding source")
        emb = embed(prompt_samples, None, cfg.prompt_res)
        paths, scores = prompt_samples.paths, prompt_samples.scores
        is_ref = prompt_samples.extra.get("is_reference")
        groups = prompt_samples.extra.get("group", prompt_samples.extra.get("reference"))
        if is_ref is None or groups is None:
            is_ref = groups = None
    aset = build_anchor_set(emb, paths, scores, prompt_data=cfg.prompt_data,
                            aggregation_type=cfg.aggregation_type, prompt_ratio=cfg.prompt_ratio,
                            median_offset_ratio=cfg.median_offset_ratio,
                            n_clusters=cfg.n_clusters, rng=rng, is_reference=is_ref,
                            groups=groups)
    return aset.anchors, aset.recipe


def _resolution_used(embed, scorer, resolution: Optional[str], reference_file) -> str:
    if reference_file is not None:
        return "authors' embeddings"
    if isinstance(embed, EmbeddingSource):
        return str(embed.scorer_for(resolution).resolution)
    return str(resolution or scorer.resolution)


def load_target(cfg: ExperimentConfig, root: Union[Callable[[], Any], Any, None], *,
                target_embeddings=None, **options) -> DatasetSamples:
    """The target dataset of ``cfg``: read from ``root`` (a folder, or a callable returning
    one), or - for AADB with the authors' embeddings, as the reference - from the files."""
    from .datasets import load_dataset, resolve_name
    from .reference_embeddings import SELF_CONTAINED_TARGETS, target_samples_from_reference

    if target_embeddings is not None and resolve_name(cfg.target_data) in SELF_CONTAINED_TARGETS:
        if cfg.target_data_subset not in (None, "all"):
            raise DatasetError(f"{cfg.target_data} from the authors' embeddings has one subset, "
                               f"'all' (as the reference), not {cfg.target_data_subset!r}")
        return target_samples_from_reference(cfg.target_data, target_embeddings)
    folder = root() if callable(root) else root
    return load_dataset(cfg.target_data, folder, cfg.target_data_subset, **options)


def run_experiment(cfg: ExperimentConfig, *, bundle_dir, scorer, target_samples: DatasetSamples,
                   prompt_samples: Optional[DatasetSamples] = None,
                   embed: Optional[EmbeddingSource] = None, prompt_embeddings=None,
                   target_embeddings=None) -> ExperimentResult:
    """Run one prompt × target experiment on already-read datasets."""
    embed = embed or EmbeddingSource(scorer)
    rng = ReferenceRandom(cfg.seed)
    anchors, recipe = make_anchors(cfg, rng, bundle_dir=bundle_dir, prompt_samples=prompt_samples,
                                   embed=embed, prompt_embeddings=prompt_embeddings)
    if anchors.shape[1] != scorer.embed_dim:
        raise BundleError(f"anchors have dim {anchors.shape[1]} but {scorer.manifest.model} "
                          f"embeds to {scorer.embed_dim}")
    emb = embed(target_samples, target_embeddings, cfg.target_res)
    pred = quasar_scores(emb, anchors)
    target = np.asarray(target_samples.scores, dtype=np.float64)
    ok = np.isfinite(target)
    if not ok.all():
        raise DatasetError(f"{target_samples.name}: {int((~ok).sum())} images without a score")
    metrics = cross_validated(pred, target, cfg.target_cv_folds, rng.np)
    return ExperimentResult(
        prompt_data=cfg.anchor_set or cfg.prompt_data, target_data=target_samples.name,
        target_subset=target_samples.subset, model=scorer.manifest.model,
        resolution=_resolution_used(embed, scorer, cfg.target_res, target_embeddings),
        prompt_resolution=(None if cfg.anchor_set is not None or cfg.prompt_data == "text"
                           else _resolution_used(embed, scorer, cfg.prompt_res,
                                                 prompt_embeddings)),
        n_images=len(target_samples),
        cv_folds=cfg.target_cv_folds, seed=cfg.seed,
        higher_is_better=bool(target_samples.higher_is_better), anchors=recipe,
        metrics=metrics, predictions=pred)
