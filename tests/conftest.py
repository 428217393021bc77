"""Fixtures shared by several test modules. Modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""

import copy

import datasets
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

pytest_plugins = ["hf_explvec.testing.pytest_plugin"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the whole module, from before its models are built: the tiny models gain nothing from
    more, a second thread on a busy core slows them 10-30x, and a forward pass's bits (hence weight hashes, e.g. of a
    head built by `from_clip`) depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    """A datasets cache of the test's own: label_dataset puts its shards there when no output_dir is given."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state (mixed precision, gradient accumulation)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    """Each test starts and ends with no Accelerate state."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def fine_tune(model, seed: int, scale: float = 0.02):
    """A copy of `model` with seeded noise on every weight (`scale` times a standard normal): a stand-in for a model
    fine-tuned from it (it descends from `model`, so the base check accepts it)."""
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=scale)
    return tuned
