"""From a trained run to colour photos: SavedModels for TF Serving, `colorize`, and a web page.

    python -m export --run=runs/<name>     exports/<model>/<version>/ (make export)
    python -m export.colorize ...          colour photos from an export (the `colorize` command)
    python -m export.web --model ...       the web app (make serve)
    python -m export.bench                 export size, load time, 12-megapixel latency -> BENCHMARKS.md

Modules, in the order a photo meets them: `savedmodel` (the graph inside every export and
its signatures), `serving` (TF Serving's warm-up file and models.config), `__main__` (the
export command), `images` (reading any photo), `guidance` (a guided model's hints and
reference photo), `sequence` (frame folders and videos), `inference` (loading an export),
`colorize`, `client` (TF Serving's REST API), `web`. Nothing here imports `train/`.
"""

from pathlib import Path

import preprocess  # noqa: F401  (before TensorFlow: its oneDNN setting)

# The colorizer that ships with the project (export/pretrained/README.md says how it was
# made): what `colorize`, `make serve` and `make demo` use when no model is named.
PRETRAINED = Path(__file__).parent / "pretrained" / "colorizer"
# Its guided companion (MODEL=guided: a reference photo's colours and colour hints): what
# `colorize --reference/--hints` uses when no model is named, since the colorizer takes neither.
PRETRAINED_GUIDED = Path(__file__).parent / "pretrained" / "guided"

# How `colorize`, `make serve` and `make evaluate` run an export (export.inference.Colorizer).
# "auto": on a CPU with bf16 units (AVX512-BF16, AMX), a float32 graph computes in bfloat16
# by TensorFlow's oneDNN rewrite (auto_mixed_precision_onednn_bfloat16), at the speed of an
# export made with --precision=mixed_bfloat16 and with its colours (BENCHMARKS.md, "bf16
# where the export runs"), while the export stays float32 for machines without them, where
# bfloat16 is emulated and slow. "exported": the precision it was exported with, everywhere.
PRECISIONS = ("auto", "exported")
PRECISION_HELP = ("auto (default): a float32 export computes in bfloat16 on a CPU with bf16 units (AVX512-BF16, "
                  "AMX), about twice as fast; exported: in the precision it was exported with, on every CPU")
