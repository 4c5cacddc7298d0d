"""A layer as a JSON-able spec (type, config, trainable) and back; used by
model files and by containers, whose config holds their children's specs."""
from __future__ import annotations

from ..errors import ModelFileError


def layer_spec(layer) -> dict:
    return {"type": type(layer).__name__, "config": layer.get_config(),
            "trainable": layer.trainable}


#: custom_objects of the loads under way, innermost last (see layer_from_spec)
_SCOPES: list = []


def _check_layer_class(cls, what):
    from .base import Layer
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"{what}: expected a gpudl.layers.Layer subclass, got {cls!r}")


def register(cls=None, *, name=None):
    """Class decorator: make a Layer subclass known to gpudl.load (and to
    checkpoints), under its class name or ``name``. The class must rebuild
    itself from its get_config(), i.e. ``cls(**layer.get_config())``:

        @gpudl.layers.register
        class Scale(gpudl.layers.Layer):
            def __init__(self, factor=2.0, name=None):
                super().__init__(name)
                self.factor = factor
            def get_config(self):
                return {**super().get_config(), "factor": self.factor}
            ...

    Registering another class under a name already taken is an error (a
    class given again, as when a module is reloaded, replaces itself)."""
    def add(cls):
        from . import LAYER_TYPES
        _check_layer_class(cls, "register")
        key = name or cls.__name__
        old = LAYER_TYPES.get(key)
        if old is not None and old is not cls and \
                (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"register: the layer name {key!r} is taken by "
                             f"{old.__module__}.{old.__qualname__}; pass name=")
        LAYER_TYPES[key] = cls
        return cls
    return add if cls is None else add(cls)


def layer_from_spec(spec: dict, custom_objects=None):
    """The layer a spec describes. Types are looked up in ``custom_objects``
    ({name: Layer subclass}, also for layers nested in containers), then
    among the built-in and registered ones (gpudl.layers.register)."""
    if custom_objects:
        if not isinstance(custom_objects, dict):
            raise TypeError(f"custom_objects must be a dict of name: Layer subclass, "
                            f"got {type(custom_objects).__name__}")
        for key, cls in custom_objects.items():
            _check_layer_class(cls, f"custom_objects[{key!r}]")
        _SCOPES.append(custom_objects)
        try:
            return layer_from_spec(spec)
        finally:
            _SCOPES.pop()
    from . import LAYER_TYPES
    kind = spec.get("type")
    cls = next((scope[kind] for scope in reversed(_SCOPES) if kind in scope),
               LAYER_TYPES.get(kind))
    if cls is None:
        known = sorted(set(LAYER_TYPES).union(*_SCOPES))
        raise ModelFileError(f"unknown layer type {kind!r} (known: {', '.join(known)}); "
                             f"a layer of your own: decorate its class with "
                             f"@gpudl.layers.register or pass custom_objects={{{kind!r}: "
                             f"TheClass}}")
    layer = cls(**spec["config"])
    layer.trainable = spec.get("trainable", True)
    return layer
