"""The revisited benchmark with re-ranking, on a tiny dataset in the real on-disk formats."""

import numpy as np
import pytest
from photo_folders import revisited_dataset

from lit.bench.revisited import RevisitedConfig, run_revisited
from lit.errors import UsageError
from lit.models import save_checkpoint


@pytest.fixture
def tiny_dataset(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    revisited_dataset(root, rng)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(tiny_model, ckpt)
    np.save(tmp_path / "codebook.npy", rng.standard_normal((8, tiny_model.cfg.reduction_dim)).astype(np.float32))
    return root, ckpt, tmp_path / "codebook.npy"


def test_reranked_benchmark_moves_only_the_top_n_of_each_ranking(tiny_dataset, tmp_path):
    root, ckpt, codebook = tiny_dataset
    common = dict(dataset="tinyox", data_root=str(root), model=str(ckpt), device="cpu", codebook=str(codebook),
                  workers=0, progress=False)
    plain = run_revisited(RevisitedConfig(**common, save_ranks=str(tmp_path / "plain.npy")))
    reranked = run_revisited(RevisitedConfig(**common, rerank=5, save_ranks=str(tmp_path / "rr.npy")))
    a, b = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "rr.npy")
    assert a.shape == b.shape
    assert np.array_equal(a[:, 5:], b[:, 5:])  # ranks below N untouched
    assert np.array_equal(np.sort(a[:, :5], axis=1), np.sort(b[:, :5], axis=1))
    assert reranked["rerank"] == 5 and "rerank_s" in reranked["timings"]
    assert set(reranked["results"]) == set(plain["results"])
    with pytest.raises(UsageError, match="R1M"):
        run_revisited(RevisitedConfig(**common, rerank=5, distractors="r1m"))
