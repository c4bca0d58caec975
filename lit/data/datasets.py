"""Registry of the public retrieval datasets, and their download.

Each dataset is a frozen :class:`DatasetInfo` listing :class:`RemoteFile` s: a URL, where
the file goes inside the dataset directory, its sha256 when one was published (none of
these datasets publishes hashes, so they are ``None`` and downloads are only checked for
completeness), and for archives the directory to extract them into.

URLs are those of the original distributions (revisitop, cirtorch, the Oxford VGG
pages). Those marked "unverified" below were written from memory of the download
scripts' conventions and could not be checked from here; the others are the documented
locations. Nothing here is fetched by the tests.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from .._download import download_url, file_sha256
from ..errors import UsageError

__all__ = ["DATASETS", "DatasetInfo", "RemoteFile", "download_dataset", "extract_archive", "list_datasets"]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Attributes:
        url: where to download it from.
        path: where it goes, relative to the dataset directory.
        sha256: full sha256 when published, else ``None`` (not checked).
        extract_to: for a ``.tar``/``.tgz``/``.tar.gz`` archive, the directory (relative
            to the dataset directory) to extract it into; the archive is deleted after
            extraction and a ``.<name>.extracted`` marker is left instead. ``None`` keeps
            the file as is.
        flatten: extract regular files without their directories (``a/b/c.jpg`` ->
            ``c.jpg``).
        hoist: after extraction, if the target directory holds a single directory of its
            own name (``ims/ims/``), move that directory's content up one level.
    """

    url: str
    path: str
    sha256: str | None = None
    extract_to: str | None = None
    flatten: bool = False
    hoist: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """A downloadable dataset.

    Attributes:
        name: registry name (lowercase).
        directory: its directory under the datasets root.
        files: the files to download.
        description: one line.
        license: terms of use, as stated by the distributors.
        requires: datasets downloaded first (e.g. images shared with another dataset).
        links: ``(link, target)`` symbolic links created inside the dataset directory,
            with ``target`` relative to the link's directory.
    """

    name: str
    directory: str
    files: tuple[RemoteFile, ...]
    description: str = ""
    license: str = ""
    requires: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()


_REVISITOP = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
_CNNIR = "http://cmp.felk.cvut.cz/cnnimageretrieval/data"
_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_R1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"

_INFOS = (
    DatasetInfo(
        name="roxford5k",
        directory="roxford5k",
        files=(
            RemoteFile(f"{_REVISITOP}/roxford5k/gnd_roxford5k.pkl", "gnd_roxford5k.pkl"),
            # The Oxford Buildings images. The VGG pages have moved over the years; a mirror
            # of this archive may be needed if the URL no longer answers (unverified).
            RemoteFile(f"{_VGG}/oxbuildings/oxbuild_images.tgz", "oxbuild_images.tgz",
                       extract_to="jpg", flatten=True),
        ),
        description="Revisited Oxford (ROxford5k): 4993 images, 70 queries, Easy/Medium/Hard",
        license="images: Flickr, research use (Oxford Buildings); ground truth: revisitop",
    ),
    DatasetInfo(
        name="rparis6k",
        directory="rparis6k",
        files=(
            RemoteFile(f"{_REVISITOP}/rparis6k/gnd_rparis6k.pkl", "gnd_rparis6k.pkl"),
            # The archives hold paris/<landmark>/<image>.jpg: flattened into jpg/.
            RemoteFile(f"{_VGG}/parisbuildings/paris_1.tgz", "paris_1.tgz", extract_to="jpg", flatten=True),
            RemoteFile(f"{_VGG}/parisbuildings/paris_2.tgz", "paris_2.tgz", extract_to="jpg", flatten=True),
        ),
        description="Revisited Paris (RParis6k): 6322 images, 70 queries, Easy/Medium/Hard",
        license="images: Flickr, research use (Paris Buildings); ground truth: revisitop",
    ),
    DatasetInfo(
        name="revisitop1m",
        directory="revisitop1m",
        files=(
            # unverified: list file name and location follow the revisitop download script
            RemoteFile(f"{_R1M}/revisitop1m.txt", "revisitop1m.txt"),
        ) + tuple(
            RemoteFile(f"{_R1M}/jpg/revisitop1m.{i}.tar.gz", f"jpg/revisitop1m.{i}.tar.gz", extract_to="jpg")
            for i in range(1, 101)
        ),
        description="R1M: 1,001,001 distractor images for ROxford/RParis (about 500 GB extracted)",
        license="images: YFCC100M, Creative Commons (per image)",
    ),
    DatasetInfo(
        name="retrieval-sfm-120k",
        directory="retrieval-SfM-120k",
        files=(
            RemoteFile(f"{_CNNIR}/train/dbs/retrieval-SfM-120k.pkl", "retrieval-SfM-120k.pkl"),
            # unverified: whether the archive's members start with "ims/" (hoisted if so)
            RemoteFile(f"{_CNNIR}/train/ims/ims.tar.gz", "ims.tar.gz", extract_to="ims", hoist=True),
        ),
        description="SfM-120k training set (Radenović et al.): 117k train + 6.4k val images",
        license="images: Flickr, research use",
    ),
    DatasetInfo(
        name="retrieval-sfm-30k",
        directory="retrieval-SfM-30k",
        files=(
            # unverified: named by analogy with the 120k database file
            RemoteFile(f"{_CNNIR}/train/dbs/retrieval-SfM-30k.pkl", "retrieval-SfM-30k.pkl"),
        ),
        description="SfM-30k training set (a subset of the SfM-120k images)",
        license="images: Flickr, research use",
        requires=("retrieval-sfm-120k",),
        links=(("ims", "../retrieval-SfM-120k/ims"),),
    ),
)

#: name -> :class:`DatasetInfo` (read-only).
DATASETS = MappingProxyType({info.name: info for info in _INFOS})


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return sorted(DATASETS)


# --------------------------------------------------------------------------- archives
def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UsageError(f"{archive}: refusing unsafe member path {name!r} (absolute or with '..')")
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise UsageError(f"{archive}: refusing link {name!r} -> {member.linkname!r} pointing outside the archive")
    elif not (member.isfile() or member.isdir()):
        raise UsageError(f"{archive}: refusing special member {name!r} (device, fifo, ...)")


def extract_archive(archive: str | os.PathLike, dst: str | os.PathLike, flatten: bool = False,
                    hoist: bool = False) -> list[Path]:
    """Extract a tar archive (any compression) safely.

    Every member is checked before anything is written: absolute paths, paths with
    ``..``, links pointing outside the target and special files make the whole archive
    refused.

    Args:
        archive: the ``.tar``, ``.tgz``, ``.tar.gz``, ... file.
        dst: directory to extract into (created if needed).
        flatten: write regular files directly into ``dst`` under their base names
            (directories and links are skipped).
        hoist: if ``dst`` then holds only a directory named like ``dst``, move its
            content up one level.

    Returns:
        Paths of the extracted regular files.

    Raises:
        ValueError: an unsafe member (the message names the archive and the member).
    """
    archive, dst = Path(archive), Path(dst)
    out: list[Path] = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m, archive)
        dst.mkdir(parents=True, exist_ok=True)
        if flatten:
            for m in members:
                if not m.isfile():
                    continue
                target = dst / PurePosixPath(m.name.replace("\\", "/")).name
                src = tar.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                out.append(target)
        else:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dst, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters; members checked above
                tar.extractall(dst, members=members)
            out = [dst / m.name for m in members if m.isfile()]
    if hoist:
        inner = dst / dst.name
        entries = list(dst.iterdir())
        if entries == [inner] and inner.is_dir():
            tmp = dst / f".{dst.name}.hoist"
            inner.rename(tmp)
            for child in tmp.iterdir():
                child.rename(dst / child.name)
            tmp.rmdir()
            out = [dst / p.relative_to(inner) if inner in p.parents else p for p in out]
    return out


# --------------------------------------------------------------------------- download
def download_dataset(name: str | DatasetInfo, root: str | os.PathLike, progress: bool = True) -> Path:
    """Download (and extract) a registered dataset into ``root/<directory>``.

    Files already present are kept (and checked against their sha256 when one is
    registered); extracted archives are remembered by a marker file, so that calling
    again only fetches what is missing. Interrupted downloads resume.

    Args:
        name: a registered name (see :func:`list_datasets`) or a :class:`DatasetInfo`.
        root: the datasets directory (the ``root`` of :class:`~lit.data.RevisitedDataset`
            and :class:`~lit.data.SfM120k`).
        progress: show progress bars.

    Returns:
        The dataset directory.

    Raises:
        ValueError: unknown name, hash mismatch, or an unsafe archive.
        OSError: network errors.
    """
    if isinstance(name, DatasetInfo):
        info = name
    else:
        key = str(name).lower()
        if key not in DATASETS:
            raise UsageError(f"unknown dataset {name!r}; registered: {', '.join(list_datasets())}")
        info = DATASETS[key]
    root = Path(root)
    for dep in info.requires:
        download_dataset(dep, root, progress=progress)
    ds_dir = root / info.directory
    ds_dir.mkdir(parents=True, exist_ok=True)
    for f in info.files:
        target = ds_dir / f.path
        if f.extract_to is not None:
            marker = target.with_name(f".{target.name}.extracted")
            if marker.is_file():
                continue
            if not target.is_file():
                download_url(f.url, target, sha256=f.sha256, progress=progress)
            elif f.sha256 is not None and file_sha256(target) != f.sha256.lower():
                download_url(f.url, target, sha256=f.sha256, progress=progress)
            extract_archive(target, ds_dir / f.extract_to, flatten=f.flatten, hoist=f.hoist)
            marker.write_text(f"{f.url}\n")
            target.unlink()
        else:
            if target.is_file() and (f.sha256 is None or file_sha256(target) == f.sha256.lower()):
                continue
            download_url(f.url, target, sha256=f.sha256, progress=progress)
    for link, link_target in info.links:
        path = ds_dir / link
        if not path.exists() and not path.is_symlink():
            path.symlink_to(link_target, target_is_directory=True)
    return ds_dir
