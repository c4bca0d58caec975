"""lit.data.revisited: the revisited Oxford/Paris layouts (images, queries, boxes, ground truth) and the R1M image list."""

import os
import pickle
import shutil

import numpy as np
import pytest
from paths import GND_DIR
from pickle_payloads import SystemPayload

from lit._pickle import UnsafePickleError
from lit.data import (
    RevisitedDataset,
    r1m_image_list,
)
from lit.evaluate import revisited_map


# --------------------------------------------------------------------------- revisited datasets
@pytest.fixture
def revisited_root(tmp_path):
    for name in ("roxford5k", "rparis6k"):
        (tmp_path / name / "jpg").mkdir(parents=True)
        shutil.copy(os.path.join(GND_DIR, f"gnd_{name}.pkl"), tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name,n_images", [("roxford5k", 4993), ("rparis6k", 6322)])
def test_revisited_dataset_lists_images_queries_and_boxes(revisited_root, name, n_images):
    ds = RevisitedDataset(name, revisited_root)
    assert len(ds) == ds.n_images == n_images and ds.n_queries == 70
    assert ds.images[0] == revisited_root / name / "jpg" / f"{ds.imlist[0]}.jpg"
    assert ds.queries[3] == revisited_root / name / "jpg" / f"{ds.qimlist[3]}.jpg"
    boxes = ds.bboxes
    assert boxes.shape == (70, 4) and np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert ds.query_bbox(0) == tuple(float(v) for v in ds.gnd[0]["bbx"])
    # query images sit next to the database images but are not in imlist; none was copied
    assert len(ds.missing_images()) == len(set(ds.images) | set(ds.queries))
    ranks = np.tile(np.arange(n_images)[:, None], (1, 70))
    assert ds.evaluate(ranks)["medium"]["map"] == pytest.approx(revisited_map(ranks, ds.gnd)["medium"]["map"])
    assert name in repr(ds)


def test_revisited_dataset_missing_ground_truth_says_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_dataset"):
        RevisitedDataset("roxford5k", tmp_path)


def test_revisited_dataset_refuses_a_malicious_ground_truth(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "roxford5k").mkdir()
    (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(SystemPayload(marker)))
    with pytest.raises(UnsafePickleError):
        RevisitedDataset("roxford5k", tmp_path)
    assert not marker.exists()


def test_r1m_image_list_reads_the_list_file(tmp_path):
    base = tmp_path / "revisitop1m"
    base.mkdir()
    (base / "revisitop1m.txt").write_text("a/b/one.jpg\nc/two.jpg\n\n")
    assert r1m_image_list(tmp_path) == [base / "jpg" / "a/b/one.jpg", base / "jpg" / "c/two.jpg"]
    other = tmp_path / "other.txt"
    other.write_text("x.jpg\n")
    assert r1m_image_list(tmp_path, list_file=other) == [base / "jpg" / "x.jpg"]


def test_r1m_image_list_falls_back_to_scanning_with_a_warning(tmp_path):
    with pytest.raises(FileNotFoundError, match="revisitop1m"):
        r1m_image_list(tmp_path)
    jpg = tmp_path / "revisitop1m" / "jpg"
    (jpg / "b").mkdir(parents=True)
    for p in ("b/2.jpg", "1.jpg", "b/readme.txt"):
        (jpg / p).write_bytes(b"x")
    with pytest.warns(UserWarning, match="sorted order"):
        assert r1m_image_list(tmp_path) == [jpg / "1.jpg", jpg / "b" / "2.jpg"]
