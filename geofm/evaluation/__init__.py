"""Evaluating models on chip stores: finetuned models (``finetuned``: metrics, split audit,
band robustness) and image–text aligned models (``aligned``: zero-shot, retrieval, leakage)."""
