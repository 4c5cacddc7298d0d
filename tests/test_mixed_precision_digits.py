"""Mixed precision trains as well as FP32: lenet and resnet on the digits data
set, on the CPU reference (which rounds matmul/conv inputs to BF16/FP16 as a
tensor core reads them), reach the FP32 run's test accuracy within 0.5 points.

Each model trains with a cosine schedule, so the last epochs move the weights
little and the comparison is of converged runs, not of where two noisy
trajectories happen to stop."""
import pytest

import gpudl
from gpudl import schedules, zoo
from gpudl.data import load_digits

#: model -> (epochs, lr, batch size, digits upscale factor)
RECIPES = {"lenet": (12, 0.05, 32, 4), "resnet": (8, 0.1, 32, 1)}


@pytest.fixture(autouse=True)
def fp32_after():
    yield
    gpudl.set_precision("fp32")


def train(name, policy):
    epochs, lr, bs, up = RECIPES[name]
    (xt, yt), (xv, yv) = load_digits(test_fraction=0.2, seed=0, flatten=False, upscale=up)
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    model = zoo.MODELS[name][0](xt.shape[1:], 10)
    steps = schedules.epochs_to_steps(epochs, schedules.steps_per_epoch(len(xt), bs))
    opt = gpudl.optim.SGD(schedules.CosineDecay(lr, steps), momentum=0.9)
    tr = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), opt, precision=policy)
    tr.fit(xt, yt, epochs=epochs, batch_size=bs, seed=0, verbose=False)
    return tr.evaluate(xv, yv)["accuracy"], tr


def check_mixed_reaches_fp32(name):
    fp32, _ = train(name, "fp32")
    assert fp32 > 0.95, f"{name}: the FP32 recipe itself is off ({fp32:.4f})"
    for policy in ("bf16-mixed", "fp16-mixed"):
        acc, tr = train(name, policy)
        assert acc >= fp32 - 0.005, (f"{name} {policy}: test accuracy {acc:.4f} is more than "
                                     f"0.5 points below FP32's {fp32:.4f}")
        if policy == "fp16-mixed":  # the scaler ran, and did not skip the run away
            assert tr.loss_scaler.skipped < 0.05 * tr.step, tr.loss_scaler


# One class per model: pytest-xdist's loadscope (make test) runs them on different workers.
class TestLenet:
    def test_mixed_precision_reaches_fp32_accuracy(self):
        check_mixed_reaches_fp32("lenet")


class TestResnet:
    def test_mixed_precision_reaches_fp32_accuracy(self):
        check_mixed_reaches_fp32("resnet")
