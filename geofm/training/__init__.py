"""Lightning tasks: the only place Lightning lives.

``datamodule.py`` (the one generic datamodule over chip stores), ``pretrain.py`` (encoder +
self-supervised objective), ``config.py`` (run configs: YAML + command-line overrides).
"""
