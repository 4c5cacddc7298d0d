"""Captured training steps: record a step once, replay it every step.

A numba launch costs tens of microseconds of host time, and a small
network's step is a few dozen launches, so on a GPU the host, not the
kernels, sets the pace. A captured step is one CUDA graph launch plus the
tiny copies of its step inputs (gpudl/backend/capture.py says what a step
may and may not do while it is captured, and how the simulator twin lets CI
check replay against eager bit for bit).

    step = GraphedStep(lambda: trainer.train_on_batch(xb, yb), model.backend)
    step(); step(); step()     # eager (warm-up), captured (and run), replayed

``Trainer.fit(graph=...)`` does this per distinct batch shape: ``True``
captures (and raises, saying why, when the run has something a graph cannot
hold), ``False`` runs eagerly, ``"auto"`` captures where graphs are switched
on for the device (AUTO) and nothing blocks them, else runs eagerly.
"""
from __future__ import annotations

from .errors import CaptureError

#: Where graph="auto" captures. Graphs stay off by default until the GPU check
#: (benchmarks/gpu_check.sh) has passed and timed them on real hardware: they
#: have so far run only in the simulator twin. The simulator is off too: its
#: replays cost as much as eager steps, so there is nothing to gain there.
AUTO = {"gpu": False, "simulator": False}

__all__ = ["AUTO", "CaptureError", "GraphedStep", "blockers", "plan", "fingerprint"]


class GraphedStep:
    """``fn`` (no arguments: one step's device work) run eagerly on the first
    call, captured on the second (and run once by replaying the capture), and
    replayed on every later call. ``mode`` says which the last call did. On a
    backend that cannot capture (the CPU) every call is eager.

    A failure while capturing leaves the host state the step's producers
    advanced (optimizer step counts, dropout counters) one step ahead of the
    device: the run should stop, as the Trainer's does."""

    def __init__(self, fn, backend):
        if not callable(fn):
            raise TypeError(f"GraphedStep: fn must be callable, got {type(fn).__name__}")
        self.fn, self.backend = fn, backend
        self.calls = 0
        self.capture = None
        self.mode = None

    def __call__(self):
        if not getattr(self.backend, "can_capture", False):
            self.fn()
            self.mode = "eager"
        elif self.capture is None and self.calls == 0:
            self.fn()
            self.mode = "eager"
        elif self.capture is None:
            self.capture = self.backend.capture(self.fn)
            self.capture.replay(first=True)
            self.mode = "captured"
        else:
            self.capture.replay()
            self.mode = "replayed"
        self.calls += 1


def _batch_hooks(cb) -> list:
    """The per-batch hooks a callback really has (overridden, or given to a
    LambdaCallback): they need the batch's loss on the host."""
    from .callbacks import Callback
    found = []
    for hook in ("on_batch_begin", "on_batch_end"):
        own = cb.__dict__.get(hook)
        if own is not None or getattr(type(cb), hook) is not getattr(Callback, hook):
            found.append(hook)
    return found


def _profiled(backend) -> bool:
    """gpudl.profile wraps a backend by shadowing its op methods on the instance."""
    cls = type(backend)
    return any(callable(v) and hasattr(cls, k) for k, v in vars(backend).items())


def blockers(trainer) -> list:
    """Why the Trainer's step cannot be captured, one phrase each (empty: it can)."""
    from .augment import Augment
    out = []
    for cb in getattr(trainer, "callbacks", ()):
        hooks = _batch_hooks(cb)
        if hooks:
            out.append(f"callback {type(cb).__name__} runs every batch ({', '.join(hooks)}) "
                       f"and reads the batch's loss on the host")
    if getattr(trainer, "_feed", None) is not None:
        out.append("the batches stream from a data set (gpudl.stream): each is a new "
                   "upload, not the fixed device arrays a captured step reads")
    if trainer.distributed is not None:
        out.append("distributed training averages gradients through the host (MPI)")
    if _profiled(trainer.model.backend):
        out.append("gpudl.profile is timing every op")
    from .precision import needs_loss_scaling
    if needs_loss_scaling(getattr(trainer, "precision", None)):
        out.append("fp16-mixed loss scaling reads whether the gradients overflowed on the "
                   "host every step")
    aug = trainer.augment
    if aug is not None and not isinstance(aug, Augment):
        out.append(f"augment {aug!r} is a plain callable, not a gpudl.augment.Augment "
                   f"(its per-step host work would not be replayed)")
    return out


def plan(graph, trainer) -> tuple[bool, str]:
    """(capture?, why) for Trainer.fit's ``graph`` argument; ValueError for
    graph=True when something blocks capture."""
    if graph not in (True, False, "auto"):
        raise ValueError(f"fit: graph must be True, False or 'auto', got {graph!r}")
    be = trainer.model.backend
    if graph is False:
        return False, "graph=False: every step runs eagerly"
    if not getattr(be, "can_capture", False):
        return False, f"the {be.name} backend launches no kernels: nothing to capture"
    found = blockers(trainer)
    if found:
        if graph is True:
            raise ValueError("fit(graph=True): the training step cannot be captured: "
                             + "; ".join(found) + ". Use graph='auto' (eager here) or False")
        return False, "graph='auto' runs eagerly: " + "; ".join(found)
    kind = "simulator" if getattr(be, "simulator", False) else "gpu"
    if graph == "auto" and not AUTO[kind]:
        return False, (f"graph='auto' runs eagerly: captured steps are not yet switched on "
                       f"for the {kind} (gpudl.graph.AUTO) until the GPU check has passed "
                       f"them on hardware; pass graph=True to capture")
    return True, ("captured: the first step of each batch shape runs eagerly, the second is "
                  "captured, later ones replay it; the last, smaller batch of an epoch gets "
                  "its own graph (eager in epoch 1, captured in epoch 2)")


def fingerprint(trainer) -> tuple:
    """What a captured step has baked in besides its batch shape: every
    layer's configuration and trainability, the identity of every parameter,
    buffer and optimizer-state array, and the optimizer's and loss's
    settings. A change (a callback that sets dropout's p, freezes a layer or
    swaps in new weight arrays) makes the Trainer capture again; the
    learning rate and step counts are step inputs and never do."""
    model, opt = trainer.model, trainer.optimizer
    parts = []
    for layer in model.walk():
        cfg = layer.get_config() if hasattr(layer, "get_config") else None
        parts.append((type(layer).__name__, repr(cfg), bool(layer.trainable),
                      getattr(layer, "weight_decay", None), getattr(layer, "l1", None),
                      tuple((k, id(v)) for k, v in layer.params.items()),
                      tuple((k, id(v)) for k, v in getattr(layer, "buffers", {}).items())))
    try:
        ocfg = {k: v for k, v in opt.get_config().items() if k != "lr"}
    except ValueError:  # a plain-callable lr cannot be saved; its identity will do
        ocfg = {"lr_fn": id(opt._lr)}
    state = tuple((key, slot, id(v)) for key, slots in opt.state.items()
                  for slot, v in slots.items() if hasattr(v, "shape"))
    parts += [type(opt).__name__, repr(sorted(ocfg.items())), state, repr(trainer.loss),
              repr(trainer.augment)]
    return tuple(parts)
