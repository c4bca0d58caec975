"""`lit features merge`: the model is checked and names are rebased on the common root."""

import torch
from photo_folders import random_photos

from lit.models import save_checkpoint


def test_features_merge_checks_model_and_rebases_names(tmp_path, tiny_model, cli):
    from lit.features import FeatureStore
    from lit.pipeline import extract_to_file

    a, b = tmp_path / "set" / "a", tmp_path / "set" / "b"
    random_photos(a, 2), random_photos(b, 3)
    extract_to_file(tiny_model, sorted(a.iterdir()), tmp_path / "a.h5", progress=False)
    extract_to_file(tiny_model, sorted(b.iterdir()), tmp_path / "b.h5", progress=False)
    extract_to_file(tiny_model, sorted(b.iterdir())[:1], tmp_path / "b1.h5", progress=False)
    proc = cli("features", "merge", tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "b1.h5", "--out", tmp_path / "all.h5", ok=False)
    assert proc.returncode == 0, proc.stderr
    assert "5 images, 1 duplicates stored once" in proc.stdout
    with FeatureStore(tmp_path / "all.h5") as m, FeatureStore(tmp_path / "b.h5") as sb:
        assert m.names == ["a/p00.png", "a/p01.png", "b/p00.png", "b/p01.png", "b/p02.png"]
        assert m.root == str(tmp_path / "set") and m.fingerprint == sb.fingerprint
        torch.testing.assert_close(m["b/p02.png"].descriptors, sb["p02.png"].descriptors)
    assert cli("features", "merge", tmp_path / "a.h5", "--out", tmp_path / "all.h5", ok=False).returncode == 2  # exists
    torch.manual_seed(1)
    other = type(tiny_model)(tiny_model.cfg).eval()
    extract_to_file(other, sorted(a.iterdir()), tmp_path / "other.h5", progress=False)
    proc = cli("features", "merge", tmp_path / "a.h5", tmp_path / "other.h5", "--out", tmp_path / "bad.h5", ok=False)
    assert proc.returncode == 2 and "made by another model or with other extraction settings" in proc.stderr
    assert not (tmp_path / "bad.h5").exists()
    save_checkpoint(tiny_model, tmp_path / "m.pt")
