"""Fixtures of the search-service tests: a small index of the bundled photos made with a tiny
random model (fast on CPU) and the shipped text tower (text search works), and the service
over a fresh copy of it."""

import os
import shutil

import pytest
import torch

PHOTOS = ("sacre_coeur", "street", "terrace", "warsaw")


def _tiny_model():
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel

    cfg = ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
                      runtime=RuntimeConfig(image_size=96, features_num=20, scales=(1.0, 0.707, 0.5)))
    torch.manual_seed(0)
    return SuperFeatureModel(cfg).eval()


@pytest.fixture(scope="session")
def serve_model():
    return _tiny_model()


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, serve_model):
    """``(photo_root, index_file)``: 8 bundled photos of 4 scenes, indexed with the tiny model."""
    from lit._image import list_images
    from lit._resources import asset_photos
    from lit.pipeline import extract_to_file, make_index
    from lit.text.search import image_embedder

    base = tmp_path_factory.mktemp("serve_index")
    root = base / "photos"
    for scene in PHOTOS:
        shutil.copytree(asset_photos() / scene, root / scene)
    feats, index = base / "f.h5", base / "i.h5"
    extract_to_file(serve_model, list_images(root), feats, root=root, progress=False, embedder=image_embedder(None))
    make_index(feats, index, size=16)
    return root, index


#: Names that are not valid UTF-8 or hold a control character (``odd_index``).
LATIN1 = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name: Python holds it with a lone surrogate
NEWLINE = "new\nline.jpg"


@pytest.fixture
def odd_index(tmp_path, built_index, serve_model):
    """``(photo_root, index_file)``: terrace0 as ``LATIN1``, terrace1 as ``NEWLINE`` and a
    street photo as street.jpg, indexed with the tiny model."""
    from lit._image import list_images
    from lit.pipeline import extract_to_file, make_index

    root = tmp_path / "odd_photos"
    root.mkdir()
    photos = built_index[0]
    shutil.copyfile(photos / "terrace" / "terrace0.jpg", os.path.join(root, LATIN1))
    shutil.copyfile(photos / "terrace" / "terrace1.jpg", root / NEWLINE)
    shutil.copyfile(photos / "street" / "DSC_0410.JPG", root / "street.jpg")
    feats, index = tmp_path / "odd_f.h5", tmp_path / "odd_i.h5"
    extract_to_file(serve_model, list_images(root), feats, root=root, progress=False)
    make_index(feats, index, size=8)
    return root, index


@pytest.fixture
def index_copy(tmp_path, built_index):
    """A copy of the built index (the tests add and remove photos), with the same photo root."""
    root, index = built_index
    copy = tmp_path / "i.h5"
    shutil.copyfile(index, copy)
    return root, copy


@pytest.fixture
def service(index_copy, serve_model):
    from lit.serve import open_service

    svc = open_service(index_copy[1], model=serve_model, device="cpu", warm_up=False)
    yield svc
    svc.close()


@pytest.fixture
def client(service):
    """The app over ``service`` through Starlette's test client (no socket)."""
    from fastapi.testclient import TestClient

    from lit.serve import create_app

    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def shared_service(built_index, serve_model):
    """One service over the built index for tests that only read."""
    from lit.serve import open_service

    svc = open_service(built_index[1], model=serve_model, device="cpu", warm_up=False)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def shared_client(shared_service):
    from fastapi.testclient import TestClient

    from lit.serve import create_app

    with TestClient(create_app(shared_service, close=False), raise_server_exceptions=False) as c:
        yield c
