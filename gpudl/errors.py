"""Errors gpudl raises on bad input; each message names the argument or layer and the values."""


class GpudlError(Exception):
    """Base class of gpudl's own errors."""


class ShapeError(GpudlError, ValueError):
    """An array has the wrong shape for the layer, loss or call it was given to."""


class DeviceError(GpudlError, RuntimeError):
    """An unknown device was asked for, or the device asked for is not available."""


class ModelFileError(GpudlError, OSError):
    """A model file is missing, truncated or not a gpudl model."""


class DataError(GpudlError, OSError):
    """A data set file is unreadable, truncated, corrupt or not in the expected format."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set file is missing; the message names it and where to get it."""


class CaptureError(GpudlError, RuntimeError):
    """An op that needs the host (a read back, a synchronize, a host-to-device
    copy) was attempted while a training step was being captured as a graph."""
