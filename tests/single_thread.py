"""A fixture for tests that run many tiny-model steps: one torch thread.

Intra-op threads gain nothing on TinyWorld-tiny and cost ~8x when other processes share the cores
(measured on the 2-core machine: 0.10 s vs 0.84 s per 2-step episode). Import it into a test module
(``from single_thread import one_torch_thread  # noqa: F401``) to apply it to every test there.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
