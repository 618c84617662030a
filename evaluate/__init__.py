"""Evaluation of colorization models (issue 5): per-image metrics, the semantic-interpretability
classifier and the report.

    metrics.py     scores of one output image against its colour truth, and their means
    classifier.py  a small CIFAR-10 classifier the project trains itself (`python -m evaluate.classifier`)
    report.py      `evaluate(models, images, out_dir, ...)`: baseline + models -> reports/<name>/
    stability.py   how steady a colorized sequence's colours are from frame to frame (`python -m evaluate.stability`)
"""

import preprocess  # noqa: F401  (before TensorFlow: its oneDNN setting)
