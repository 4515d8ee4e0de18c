"""``quasar optimize``: a reduced-precision variant of a bundle, gated on score agreement."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="optimize",
    summary="Write an int8 / bf16 / fp16 variant (or gate fast JPEG decoding) into BUNDLE, "
            "gated on agreement with fp32.",
    description="The variant is built from calibration images of your own data and measured "
                "on held-out images: embedding cosine, max / p99 |score difference| and SRCC / "
                "KRCC vs fp32 per anchor set. It is written into the bundle only when every "
                "anchor set passes the gate; otherwise the bundle is unchanged (exit 4). The "
                "report is printed and stored either way. See docs/precision.md.",
    target="quasar.export.precision:optimize",
    extra="optimize",  # not export: int8 / fp16 are built without torch ([cpu,optimize])
    requires=("onnxruntime", "onnx", "scipy"),
    user_errors=(ValueError,),
    options=[
        O.BUNDLE.but(help="bundle directory (from quasar export); changed in place, atomically",
                     default_text=None),
        opt("precision", "precision of the variant (auto: each one this machine runs fast)",
            metavar="P", choices=O.VARIANT_PRECISIONS + ("auto",)),
        opt("calibration", "your own images (required): a folder, a glob or @list.txt",
            metavar="INPUT", default_text="none"),
        opt("holdout", "separate held-out images for the agreement report", metavar="INPUT",
            default_text="a seeded split of --calibration"),
        opt("backend", "where the variant runs: openvino (int8 via NNCF, bf16), onnxruntime "
            "(int8 QDQ, fp16 on CUDA)",
            metavar="NAME", choices=O.BACKENDS,
            default_text="openvino for int8 and bf16, onnxruntime for fp16"),
        O.RESOLUTION.but(help="resolution to calibrate and measure at"),
        opt("holdout_fraction", "share of --calibration held out when no --holdout is given",
            metavar="X", type=O.number, above=0, below=1),
        opt("min_srcc", "gate: minimum SRCC of fp32 vs variant scores, per anchor set",
            metavar="X", type=float),
        opt("max_p99_dscore", "gate: maximum p99 |score difference|, per anchor set",
            metavar="X", type=float),
        opt("fast_decode", "measure and gate DCT-scaled JPEG decoding instead of a precision "
            "variant"),
        O.BATCH_SIZE,
        O.THREADS,
        O.SEED.but(help="seed of the calibration / held-out split"),
        opt("max_calibration", "use at most this many calibration images", metavar="N",
            type=O.integer, minimum=1),
        opt("verbose", "also show the quantisation libraries' own output (NNCF, torch)"),
    ],
    examples=["quasar optimize B --precision int8 --calibration photos/",
              "quasar score photos/ -b B --precision auto -o scores.csv"],
)
