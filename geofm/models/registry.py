"""Build encoders by name, as timm does.

A model file registers factory functions with :func:`register_model`; :func:`create_model` calls
one by name with keyword overrides and stamps the result with ``model_name`` and
``model_config`` so a checkpoint can rebuild exactly the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from geofm.errors import GeofmError
from geofm.models.encoder import Encoder

ModelFactory = TypeVar("ModelFactory", bound=Callable[..., Encoder])

_MODELS: dict[str, Callable[..., Encoder]] = {}


def register_model(factory: ModelFactory) -> ModelFactory:
    """Register ``factory`` under its function name.

    Args:
        factory: A function ``(**overrides) -> Encoder`` (an ``nn.Module`` with the
            :class:`~geofm.models.encoder.Encoder` calls).

    Returns:
        The factory, unchanged, so this works as a decorator.

    Raises:
        ValueError: A model of that name is already registered.
    """
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = factory
    return factory


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing ``pattern``, sorted."""
    return sorted(n for n in _MODELS if pattern in n)


def create_model(name: str, **overrides: Any) -> Encoder:
    """Build a registered model.

    Args:
        name: A name from :func:`list_models` (``"channelvit_tiny"``, ``"vit_base"``, ...).
        **overrides: Constructor arguments that replace the registered defaults
            (``bands=[...]``, ``patch_size=16``, ``depth=6``, ...).

    Returns:
        The encoder, with ``model_name`` set and ``model_config`` holding the resolved
        constructor arguments (JSON-serialisable), so ``create_model(model.model_name,
        **model.model_config)`` rebuilds it.

    Raises:
        GeofmError: ``name`` is not registered, or ``overrides`` has an argument the model
            lacks or a value it cannot use.
    """
    if name not in _MODELS:
        raise GeofmError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        model = _MODELS[name](**overrides)
    except (TypeError, ValueError, AssertionError) as err:
        raise GeofmError(f"bad settings for model {name!r}: {err or type(err).__name__}") \
            from None
    model.model_name = name
    return model
