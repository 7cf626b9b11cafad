"""Evaluating image–text aligned models: zero-shot classification, retrieval, leakage check.

``zeroshot`` scores every class of a store with prompts made from templates (``"a satellite
image of {}"``, the class name in caption form) and reports top-1 accuracy and mAP against their
chance levels. ``retrieval`` ranks a split's captions for each image and its images for each
caption and reports recall at 1, 5 and 10 by the RemoteCLIP protocol: an image has several
captions; image→text is a hit when any of its captions is among the top k, text→image when its
image is. Both reports (JSON and Markdown) record the templates, seeds, split, checkpoint and
caption provenance, and a perceptual-hash check for near-duplicate images between the evaluated
chips and the chips the model was trained on (RemoteCLIP's retrieval benchmarks leaked test
images into training in exactly this way).
"""

from __future__ import annotations

from geofm.evaluation.aligned.inputs import (
    ZEROSHOT_TEMPLATES,
    captions_for,
    check_templates,
    load_templates,
)
from geofm.evaluation.aligned.leakage import DUPLICATE_RADIUS, chip_hashes, duplicate_check
from geofm.evaluation.aligned.metrics import (
    RECALL_KS,
    expected_random_ap,
    retrieval_metrics,
    zeroshot_metrics,
)
from geofm.evaluation.aligned.reports import retrieval, zeroshot

__all__ = [
    "DUPLICATE_RADIUS",
    "RECALL_KS",
    "ZEROSHOT_TEMPLATES",
    "captions_for",
    "check_templates",
    "chip_hashes",
    "duplicate_check",
    "expected_random_ap",
    "load_templates",
    "retrieval",
    "retrieval_metrics",
    "zeroshot",
    "zeroshot_metrics",
]
