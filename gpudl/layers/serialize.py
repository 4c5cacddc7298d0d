"""A layer as a JSON-able spec (type, config, trainable) and back; used by
model files and by containers, whose config holds their children's specs."""
from __future__ import annotations

from ..errors import ModelFileError


def layer_spec(layer) -> dict:
    return {"type": type(layer).__name__, "config": layer.get_config(),
            "trainable": layer.trainable}


def layer_from_spec(spec: dict):
    from . import LAYER_TYPES
    cls = LAYER_TYPES.get(spec.get("type"))
    if cls is None:
        raise ModelFileError(f"unknown layer type {spec.get('type')!r} "
                             f"(known: {', '.join(sorted(LAYER_TYPES))})")
    layer = cls(**spec["config"])
    layer.trainable = spec.get("trainable", True)
    return layer
