"""Curating chip stores: geography-aware splits and their audit, deduplication, captions.

Evaluation depends on this package (it reads a store's split and audits it); nothing here
depends on the dataset builders.
"""
