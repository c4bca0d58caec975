"""``lit models``: the registry: models (* the default), text models, the text encoder and
image towers, and where each file is on this machine."""

from __future__ import annotations

NAME = "models"
HELP = "list registered models: the default, and where each is on this machine"

_SECTIONS = (("model", "super-feature models (--model)"), ("text-head", "text models (--text-model, default {text})"),
             ("text-encoder", "text encoders"), ("image-tower", "image towers"))


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from .. import hub
    from .._download import cache_dir
    from ..text.base import DEFAULT_TEXT_MODEL
    from ._common import DEFAULT_MODEL

    for kind, title in _SECTIONS:
        names = hub.list_models(kind)
        if not names:
            continue
        print(f"{title.format(text=DEFAULT_TEXT_MODEL)}:")
        for name in names:
            cfg = hub.get_pretrained_cfg(name)
            path, where = hub.locate(name)
            mark = "*" if name == DEFAULT_MODEL else " "
            print(f"{mark} {name:16s} {where if path is None else f'{where} ({path})'}")
            print(f"    {cfg.description} [{cfg.license}]")
    print(f"* the default model (--model); downloaded files are cached in {cache_dir()}")
    return 0
