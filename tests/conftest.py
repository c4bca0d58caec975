import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# the suite runs in ``PYTEST_XDIST_WORKER_COUNT`` processes (pytest-xdist, README's test command):
# the cores are shared among them, so that torch's threads do not oversubscribe the machine
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def tiny_cfg():
    """A small ResNet-18 cut at stride 16 with a tiny LIT: fast on CPU."""
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig

    return ModelConfig(
        backbone=BackboneConfig("resnet18", 3),
        lit=LITConfig(T=2, N=8, dim=32),
        reduction_dim=16,
        runtime=RuntimeConfig(image_size=96, features_num=20, scales=(1.0, 0.707, 0.5)),
    )


@pytest.fixture
def tiny_model(tiny_cfg):
    from lit.models import SuperFeatureModel

    torch.manual_seed(0)
    model = SuperFeatureModel(tiny_cfg)
    # random, non-trivial batch-norm statistics so that frozen BN matters
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    """``tiny_model`` saved as a checkpoint file."""
    from lit.models import save_checkpoint

    path = tmp_path / "model.pt"
    save_checkpoint(tiny_model, path)
    return path


@pytest.fixture
def fake_device():
    """A fake accelerator for catching device mix-ups on the CPU (``tests/device_mixup.py``):
    ``fake_device.device`` is where lit's ``device`` arguments point."""
    from device_mixup import fake_device as _fake_device

    with _fake_device() as state:
        yield state



@pytest.fixture
def cli():
    """``lit ARGS`` in this process: :func:`cli_runner.run_lit` (module-scoped fixtures import it)."""
    from cli_runner import run_lit

    return run_lit
