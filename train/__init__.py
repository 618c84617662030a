"""Training: `python -m train --model=cgan --data=DATA --run=RUN --steps=N` (what `make train` runs).

config.py   the training config and the command line
steps.py    one step per model (same names as models.MODELS)
loop.py     strategy, compiled step, checkpoints and resume, validation, NaN guard
summaries.py  TensorBoard, metrics.jsonl, loss_curves.png, sample grids
workers.py  one run trained by N local worker processes (make train WORKERS=N)
"""

import preprocess  # noqa: F401  (before TensorFlow: its oneDNN setting)
