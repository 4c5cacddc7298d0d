"""A small CNN (convolution, ReLU, dense) learns the digits on the CPU."""
import time

import pytest

import gpudl
from gpudl.layers import Conv2D, Dense, Flatten
from gpudl.zoo import small_cnn


@pytest.mark.slow
def test_small_cnn_reaches_95_percent_on_digits():
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = gpudl.data.load_digits(flatten=False)
    model = small_cnn((1, 8, 8), 10)
    kinds = [type(l) for l in model.layers]
    assert Conv2D in kinds and Flatten in kinds and kinds[-1] is Dense
    assert model.output_shape() == (10,)
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05, 0.9))
    t0 = time.perf_counter()
    trainer.fit(x_train, y_train, epochs=12, batch_size=32, seed=0, verbose=False)
    seconds = time.perf_counter() - t0
    result = trainer.evaluate(x_test, y_test)
    assert result["accuracy"] >= 0.95, result
    print(f"CNN on digits: test accuracy {result['accuracy']:.4f} in {seconds:.1f} s")
