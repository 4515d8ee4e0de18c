"""``quasar bench``: the runtime vs the PyTorch reference path, end to end, in one run."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="bench",
    summary="Speed: the runtime (ONNX Runtime + numpy/Pillow) vs the PyTorch reference path.",
    description="Both paths score the same 1024x768 JPEG files end to end (decode + "
                "preprocess + inference + score), each (case, path) in a fresh process: "
                "images/s, latency per batch, cold start, peak RSS, installed sizes. Without "
                "--rn50-bundle / --vit-bundle, random-init bundles are exported into the work "
                "folder (random weights are fine for speed; needs the export extra, as does the "
                "torch path). Prints a markdown table. See docs/benchmark.md.",
    target="quasar.bench.speed:bench",
    extra="cpu",
    requires=("onnxruntime",),
    user_errors=(ValueError,),
    options=[
        opt("rn50_bundle", "clip-rn50-nopos.openai bundle for the rn50-* cases", metavar="DIR",
            default_text="a random-init export in the work folder"),
        opt("vit_bundle", "vit-b-32.openai bundle for the vitb32-224 case", metavar="DIR",
            default_text="a random-init export in the work folder"),
        opt("cases", "comma-separated cases: rn50-224, rn50-native, vitb32-224",
            metavar="NAMES"),
        opt("n_images", "images per case (224 cases)", metavar="N", type=O.integer, minimum=1),
        O.BATCH_SIZE.but(help="images per inference batch (224 cases)"),
        O.THREADS.but(help="intra-op threads of ONNX Runtime and torch",
                      default_text="each library's default"),
        O.DEVICE.but(help="where the runtime paths run (cuda: IO binding on)", default_text="cpu"),
        O.OUT.but(help="also write the markdown table to this file"),
        opt("workdir", "folder for the images and exported bundles (kept)", metavar="DIR",
            default_text="a temporary folder, removed afterwards"),
        opt("paths", "comma-separated paths to measure: torch, runtime", metavar="NAMES"),
        opt("repeats", "timed passes over the images (224 cases; the median is reported)",
            metavar="N", type=O.integer, minimum=1),
        opt("native_images", "images for the rn50-native case", metavar="N", type=O.integer,
            minimum=1, default_text="4; 16 with --variants"),
        opt("native_batch_size", "batch size of the rn50-native case", metavar="N",
            type=O.integer, minimum=1),
        opt("variants", "precision-variant table instead: comma-separated variants to build "
            "and time, e.g. int8-openvino,int8-onnxruntime,bf16-openvino,fast-decode (needs "
            "the export and optimize extras; docs/precision.md)", metavar="NAMES",
            default_text="none: runtime fp32 vs torch"),
        opt("rounds", "--variants: interleaved rounds (medians reported)", metavar="N",
            type=O.integer, minimum=1),
        opt("calibration_images", "--variants: calibration photos for quasar optimize (half "
            "held out for its gate)", metavar="N", type=O.integer, minimum=2),
        opt("native_calibration_images", "--variants: of those, how many the rn50-native "
            "case calibrates and gates on", metavar="N", type=O.integer, minimum=2),
        opt("min_srcc", "--variants: gate threshold, minimum SRCC vs fp32", metavar="X",
            type=float, default_text="0.999"),
        opt("max_p99_dscore", "--variants: gate threshold, maximum p99 |score difference|",
            metavar="X", type=float, default_text="0.01"),
    ],
    examples=["quasar bench --cases rn50-224 --n-images 32 -o bench.md"],
)
