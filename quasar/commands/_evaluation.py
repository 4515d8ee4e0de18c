"""What ``quasar anchors``, ``evaluate`` and ``reproduce`` have in common."""
from . import options as O

USER_ERRORS = (FileNotFoundError, ValueError, ImportError)  # dataset readers, bad values
INTERRUPT_HINT = "finished embedding chunks are cached; run again to resume"
REQUIRES = ("onnxruntime", "scipy", "sklearn")
# what the three evaluation commands declare alike
COMMAND_KW = dict(extra="evaluate", requires=REQUIRES, user_errors=USER_ERRORS,
                  interrupt_hint=INTERRUPT_HINT)
TARGETS = "TID2013 | KonIQ10k | KADID10k | LIVEitW | SPAQ | TAD66k | AADB | PieAPP"

RECIPE = [  # how anchors are built from prompt data
    O.AGGREGATION_TYPE, O.PROMPT_RATIO, O.MEDIAN_OFFSET_RATIO, O.N_CLUSTERS, O.SEED,
]
ENGINE = [O.DEVICE, O.BATCH_SIZE, O.THREADS, O.NO_CACHE]
BUNDLE = O.BUNDLE.but(default_text="the cached bundle of --model")
