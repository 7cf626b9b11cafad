"""Dataset builders (one module per source), splits, audits and deduplication."""
