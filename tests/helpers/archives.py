"""Archives and locally served recipes for the download tests.

    tar_gz({"top/a.bin": b"..."})          # a .tar.gz of those members, as bytes
    tar_gz_of(src, ("toy", "VOCdevkit"))   # a .tar.gz of the trees src/toy, src/VOCdevkit
    with served_toy_recipe(monkeypatch, tmp_path, payload) as server:
        ...                                # recipe "toy" downloads payload from server
"""
from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from helpers.http_server import FileServer


def no_proxy(monkeypatch) -> None:
    """Requests to 127.0.0.1 go straight to the local server, whatever the environment says."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A gzip-compressed tar holding ``files`` (member name -> content), in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_gz_of(src: Path, tops: Iterable[str]) -> bytes:
    """A gzip-compressed tar of the files and trees ``src/<top>``, each stored as ``<top>``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for top in tops:
            tar.add(src / top, arcname=top)
    return buf.getvalue()


@contextlib.contextmanager
def served_toy_recipe(monkeypatch, tmp_path: Path, payload: bytes):
    """The recipe ``toy`` (no published checksum, an ImageFolder tree ``toy`` with a ``val``
    split) whose archive ``toy.tar.gz`` is ``payload``, served from ``tmp_path/www``; yields the
    :class:`FileServer`."""
    from patchlens.data import recipes

    www = tmp_path / "www"
    www.mkdir()
    (www / "toy.tar.gz").write_bytes(payload)
    with FileServer(www) as server:
        archive = recipes.Archive(filename="toy.tar.gz", urls=(server.url("toy.tar.gz"),))
        monkeypatch.setitem(recipes.RECIPES, "toy", recipes.Recipe(
            name="toy", description="", archive=archive, root="toy", probe="val",
            converter="patchlens.data.imageset:convert", homepage="", citation=""))
        yield server
