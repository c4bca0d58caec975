"""Text models by name (lit.text.factory), and the text package's imports."""

import ast
import importlib
from pathlib import Path

import pytest

import lit.text
from lit.errors import MissingDependencyError
from lit.text import BaseTextModel, TextModel, image_tower_of, load_text_model

TEXT = Path(lit.text.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules of lit.text that ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lit.text."):
            out.add(node.module.split(".")[2])
    return out


def test_text_package_imports_form_no_circle():
    graph = {p.stem: _imports(p) for p in TEXT.glob("*.py") if p.stem != "__init__"}
    assert "factory" not in graph["model"] | graph["clip"] | graph["base"]  # the factory is on top

    def visit(node, path):
        for nxt in graph.get(node, ()):
            assert nxt not in path, f"import circle: {' -> '.join([*path, nxt])}"
            visit(nxt, [*path, nxt])

    for module in graph:
        visit(module, [module])


def test_names_give_the_right_kind_of_model(text_model):
    assert isinstance(text_model, TextModel) and isinstance(text_model, BaseTextModel)
    assert text_model.name == "lit-text-effl0" and text_model.tower_name == "effl0"
    conse = load_text_model("conse-effl0")
    assert conse.head is None and conse.class_keys.shape == (1000, 384)
    assert conse.image_tower is text_model.image_tower  # towers are cached per device
    assert image_tower_of("conse-effl0") is text_model.image_tower
    assert image_tower_of() is text_model.image_tower


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="neither a registered text model.*lit-text-effl0.*conse-effl0"):
        load_text_model("no-such-text-model")
    with pytest.raises(ValueError, match="unknown image-tower name 'effl9'"):
        image_tower_of("conse-effl9")


def test_missing_open_clip_is_one_line_saying_what_to_install(monkeypatch):
    real = importlib.import_module

    def import_module(name, *args):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(MissingDependencyError) as err:
        load_text_model("open_clip:ViT-B-32:none")
    msg = str(err.value)
    assert "open_clip_torch" in msg and "pip install 'lit[clip]'" in msg and "\n" not in msg
