"""Inputs a new user gets wrong, each answered up front with an error that
names the argument and the value (issue 13): labels, the Trainer's arguments,
losses that do not fit the model, seeds, shapes and files."""
import numpy as np
import pytest

import gpudl


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


@pytest.mark.parametrize("bad", [4, 9, -1, -4])
def test_cross_entropy_labels_out_of_range(bad):
    """NumPy would raise its own IndexError for 4 and wrap -1 to the last class."""
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(IndexError, match=rf"softmax_cross_entropy: label {bad} \(row 1\) is out "
                                         rf"of range for 4 classes: labels must lie in \[0, 4\)"):
        gpudl.losses.CrossEntropy()(logits, np.array([0, bad, 1]))
