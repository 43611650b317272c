import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# numpy 2 refuses what numpy 1 only warns about, so the suite (numpy 1, for lava) errors on it:
# in its own process (pytest_configure) and in those it starts (torchrun, CLI children)
NUMPY2_REFUSES = "error:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), NUMPY2_REFUSES]))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config) -> None:
    config.addinivalue_line("filterwarnings", NUMPY2_REFUSES)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    import numpy as np

    d = np.load(FIXTURES / "digits.npz")
    return {k: d[k] for k in d.files}
