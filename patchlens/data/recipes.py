"""Registry of the real data sets (official archives, checksums) and :func:`prepare`.

``prepare(name, data_dir, out_dir, params)`` gets the official archive into ``data_dir``
(download with resume + checksum, or reuse a file already there), extracts it once, and converts
the official tree into the patchlens layout in ``out_dir`` (:mod:`patchlens.data.dataset`),
writing ``manifest.csv`` last.

Checksums were checked against independent public sources (see each ``Archive.source``). Where
no checksum is published (SPair-71k) the recipe stores ``None`` and the first download records
the archive's SHA-256 in ``checksums.json`` beside it (trust on first use) -- only once the
archive has extracted completely and holds the recipe's tree, so a truncated download is never
trusted (it is deleted instead): every later run, and every other machine given that file,
verifies against it. Only the recipe's own top-level tree is moved out of the archive into
``data_dir``; nothing else there (another data set, ``checksums.json``) is ever replaced.

Recipe-level parameters (the rest go to the converter):

``url``       another source for the archive: a mirror URL, a local path or ``file://`` URL;
              the recipe's checksums still apply.
``root``      an already extracted official tree to convert (no download), e.g. a shared copy.
``progress``  show progress bars (default true).

The helpers the converters share (seeded subsampling, index-PNG I/O, writing the layout tables)
are in :mod:`patchlens.data.layout`.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from patchlens.data.download import (ChecksumMismatch, SourceUnreachable, extract, fetch,
                                     locked)
from patchlens.errors import ConfigError, DataError
from patchlens.io import sha256sum, write_json

CHECKSUM_LEDGER = "checksums.json"


@dataclass(frozen=True)
class Archive:
    """One downloadable file: name under ``data_dir``, sources (first = official), checksums."""
    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes, for information
    source: str = ""  # where the checksums come from


@dataclass(frozen=True)
class Recipe:
    """How to obtain and convert one data set."""
    name: str
    description: str
    archive: Archive | None  # None: no download, ``root`` must be given in params
    root: str  # the extracted official tree, relative to data_dir
    probe: str  # a path relative to ``root`` that exists once the tree is complete
    converter: str  # "module:function" taking (root, out_dir, params)
    homepage: str
    citation: str
    builtin: bool = False  # made from files an installed package ships: nothing to obtain
    files: tuple[Archive, ...] = ()  # plain files (no archive), fetched as they are (filename
    #                                  relative to data_dir, under ``root``)


RECIPES: dict[str, Recipe] = {
    "voc2012": Recipe(
        name="voc2012",
        description="PASCAL VOC 2012 trainval, segmentation subset (semantic + instance masks)",
        archive=Archive(
            filename="VOCtrainval_11-May-2012.tar",
            urls=("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                  "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                  "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar"),
            md5="6cd6e144f989b92b3379bac3b3de84fd",
            sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
            size=1_999_639_040,
            source="md5: torchvision.datasets.VOCSegmentation; sha256 and size: "
                   "tensorflow_datasets url_checksums/voc.txt and torchvision prototype voc"),
        root="VOCdevkit/VOC2012",
        probe="ImageSets/Segmentation/val.txt",
        converter="patchlens.data.voc:convert",
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        citation="Everingham et al., The PASCAL Visual Object Classes Challenge 2012"),
    "davis2017": Recipe(
        name="davis2017",
        description="DAVIS-2017 trainval 480p (semi-supervised video object segmentation)",
        archive=Archive(
            filename="DAVIS-2017-trainval-480p.zip",
            urls=("https://data.vision.ee.ethz.ch/csergi/share/davis/"
                  "DAVIS-2017-trainval-480p.zip",),
            sha256="e3d0b5b77c3d031b000a19e0e25e3e2cac65d183755601bc2cf066df1a2aa492",
            size=832_766_765,
            source="tensorflow_datasets video/davis/checksums.tsv"),
        root="DAVIS",
        probe="ImageSets/2017/val.txt",
        converter="patchlens.data.davis:convert",
        homepage="https://davischallenge.org/davis2017/code.html",
        citation="Pont-Tuset et al., The 2017 DAVIS Challenge on Video Object Segmentation, "
                 "arXiv:1704.00675"),
    "spair71k": Recipe(
        name="spair71k",
        description="SPair-71k semantic keypoint correspondence (image pairs, 18 categories)",
        archive=Archive(
            filename="SPair-71k.tar.gz",
            urls=("https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",
                  "http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"),
            source="no published checksum: SHA-256 recorded in checksums.json on first "
                   "download (trust on first use)"),
        root="SPair-71k",
        probe="PairAnnotation",
        converter="patchlens.data.spair:convert",
        homepage="https://cvlab.postech.ac.kr/research/SPair-71k/",
        citation="Min et al., SPair-71k: A Large-scale Benchmark for Semantic Correspondence, "
                 "arXiv:1908.10543"),
    "ade20k": Recipe(
        name="ade20k",
        description="ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 20,210 training "
                    "and 2,000 validation images with semantic masks",
        archive=Archive(
            filename="ADEChallengeData2016.zip",
            urls=("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",),
            md5="7328b3957e407ddae1d3cbf487f149ef",
            source="md5: the ADE20K dataset classes of several independent public "
                   "repositories (torchvision-style ARCHIVE_DICT); SHA-256 recorded in "
                   "checksums.json on first download"),
        root="ADEChallengeData2016",
        probe="annotations/validation",
        converter="patchlens.data.ade20k:convert",
        homepage="http://sceneparsing.csail.mit.edu/",
        citation="Zhou et al., Scene Parsing through ADE20K Dataset, CVPR 2017"),
    "imagenette": Recipe(
        name="imagenette",
        description="Imagenette v2, 320 px (10 easy ImageNet classes; train/val folders)",
        archive=Archive(
            filename="imagenette2-320.tgz",
            urls=("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",),
            md5="3df6f0d01a2c9592104656642f5e78a3",
            sha256="5020a9130cea0348272823cb12d2db7e981c6f2afa3dce71ccd5b8013005c55e",
            size=341_553_947,
            source="md5: torchvision.datasets.Imagenette; sha256 and size: tensorflow_datasets "
                   "url_checksums/imagenette.txt"),
        root="imagenette2-320",
        probe="val",
        converter="patchlens.data.imageset:convert",
        homepage="https://github.com/fastai/imagenette",
        citation="Howard, Imagenette (2019), https://github.com/fastai/imagenette"),
    "imagefolder": Recipe(
        name="imagefolder",
        description="any ImageFolder-style tree <root>/<split>/<class>/*.jpg already on disk",
        archive=None,
        root="",
        probe=".",
        converter="patchlens.data.imageset:convert",
        homepage="",
        citation=""),
    "skimage_photos": Recipe(
        name="skimage_photos",
        description="natural photographs bundled with scikit-image (astronaut, chelsea, coffee, "
                    "rocket, ...) plus seeded crops; offline",
        archive=None,
        root="",
        probe=".",
        converter="patchlens.data.imageset:skimage_photos",
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        citation="van der Walt et al., scikit-image: image processing in Python, PeerJ 2014",
        builtin=True),
    "nyu_depth_v2": Recipe(
        name="nyu_depth_v2",
        description="NYU Depth v2 labelled subset (1,449 indoor RGB-D images, official 795/654 "
                    "train/test split), metric depth",
        archive=None,
        files=(
            Archive(filename="nyu_depth_v2/nyu_depth_v2_labeled.mat",
                    urls=("http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/"
                          "nyu_depth_v2_labeled.mat",),
                    size=2_972_037_809,
                    source="no published checksum: SHA-256 recorded in checksums.json on first "
                           "download (trust on first use, only at this size)"),
            Archive(filename="nyu_depth_v2/splits.mat",
                    urls=("http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat",),
                    source="no published checksum: SHA-256 recorded in checksums.json on first "
                           "download (trust on first use)")),
        root="nyu_depth_v2",
        probe="splits.mat",
        converter="patchlens.data.nyu:convert",
        homepage="https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html",
        citation="Silberman et al., Indoor Segmentation and Support Inference from RGBD Images, "
                 "ECCV 2012"),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (ConfigError listing the known ones otherwise)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"data set recipe {name!r} is unknown; known: "
                          f"{', '.join(sorted(RECIPES))}") from None


# -- trust-on-first-use checksum ledger ---------------------------------------------------------
def recorded_checksums(data_dir: str | os.PathLike) -> dict[str, str]:
    """filename -> SHA-256 recorded in ``data_dir/checksums.json`` (empty when absent)."""
    ledger = Path(data_dir) / CHECKSUM_LEDGER
    if not ledger.exists():
        return {}
    try:
        data = json.loads(ledger.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{ledger}: unreadable ({' '.join(str(exc).split())}); fix or delete it "
                        "(deleting it re-trusts the archives present)") from None
    if not isinstance(data, dict):
        raise DataError(f"{ledger}: expected a JSON object filename -> sha256; fix or delete it")
    return {str(k): str(v) for k, v in data.items()}


def _record_checksum(data_dir: Path, filename: str, sha256: str) -> None:
    ledger = data_dir / CHECKSUM_LEDGER
    with locked(ledger):
        data = recorded_checksums(data_dir)
        data[filename] = sha256
        write_json(data, ledger)


def obtain(archive: Archive, data_dir: str | os.PathLike, url: str | None = None,
           progress: bool = True, retries: int = 3, backoff: float = 1.0) -> Path:
    """The verified archive file under ``data_dir``: reused when present, else fetched from
    ``url`` or the recipe's sources in order (official first, then mirrors).

    Verification uses the published checksums; when none is published, the SHA-256 recorded in
    ``checksums.json`` on the first download (trust on first use). This call does not record
    it: :func:`prepare` does, after the archive has extracted completely
    (:func:`record_first_use`).
    """
    data_dir = Path(data_dir)
    dest = data_dir / archive.filename
    recorded = recorded_checksums(data_dir).get(archive.filename)
    sha256 = archive.sha256 or recorded
    sources = (url,) if url else archive.urls
    errors = []
    for source in sources:
        try:
            fetch(source, dest, sha256=sha256, md5=archive.md5, progress=progress,
                  retries=retries, backoff=backoff)
            break
        except DataError as exc:
            if isinstance(exc, ChecksumMismatch) and archive.sha256 is None and recorded:
                exc = ChecksumMismatch(
                    f"{exc} (the expected SHA-256 was recorded in {data_dir / CHECKSUM_LEDGER} "
                    f"on the first download; remove its entry \"{archive.filename}\" from that "
                    "file only if the source has legitimately changed)")
            errors.append(exc)
            if dest.exists():  # a present file failed its checksum: mirrors cannot help
                raise exc from None
    else:
        if len(errors) == 1:
            raise errors[0]
        if all(isinstance(e, SourceUnreachable) for e in errors):
            raise SourceUnreachable(
                f"{archive.filename}: none of its {len(errors)} sources could be reached "
                f"({', '.join(sources)}); without network, download it on another machine and "
                f"place it at {dest} (under data_dir), then rerun")
        raise DataError(" | ".join(str(e) for e in errors))
    return dest


def record_first_use(archive: Archive, data_dir: str | os.PathLike) -> None:
    """Record the SHA-256 of ``data_dir/<archive>`` in the ledger when neither the recipe nor
    the ledger has one (call only after the archive extracted completely)."""
    data_dir = Path(data_dir)
    if archive.sha256 is None and archive.filename not in recorded_checksums(data_dir):
        _record_checksum(data_dir, archive.filename, sha256sum(data_dir / archive.filename))


def obtain_files(files: tuple[Archive, ...], data_dir: str | os.PathLike,
                 url: str | None = None, progress: bool = True) -> None:
    """Every plain file of a recipe, verified, under ``data_dir`` (:func:`obtain`; ``url``: a
    directory or URL prefix holding them under their base names). A file without a published
    checksum is trusted on first use only when its size is the recipe's (when it gives one);
    otherwise a fresh download is deleted."""
    data_dir = Path(data_dir)
    for f in files:
        path = data_dir / f.filename
        with locked(path):
            downloaded = not path.exists()
            source = f"{url.rstrip('/')}/{Path(f.filename).name}" if url else None
            obtain(f, data_dir, url=source, progress=progress)
            trusting = (f.sha256 is None and f.md5 is None
                        and f.filename not in recorded_checksums(data_dir))
            size = path.stat().st_size
            if trusting and f.size is not None and size != f.size:
                if downloaded:
                    path.unlink()
                raise DataError(f"{path}: {size} bytes, expected {f.size}; no checksum is "
                                "published, so "
                                "nothing was recorded"
                                + (" and the download was deleted: rerun" if downloaded else
                                   f": delete {path} and rerun"))
            record_first_use(f, data_dir)


def prepare(name: str, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
            params: dict | None = None) -> None:
    """Obtain, extract and convert data set ``name`` into ``out_dir`` (manifest.csv last).

    Steps: (1) if the official tree (``data_dir/<recipe.root>``, or ``params['root']``) is
    already complete it is used as is; (2) otherwise the archive is obtained with
    :func:`obtain` and extracted into ``data_dir`` with :func:`~patchlens.data.download.extract`
    (under a lock file beside the archive, so concurrent jobs on one archive take turns);
    (3) the recipe's converter writes the layout. ``params`` are described in the module doc.
    """
    recipe = get_recipe(name)
    params = dict(params or {})
    url = params.pop("url", None)
    root_param = params.pop("root", None)
    progress = bool(params.pop("progress", True))
    data_dir = Path(data_dir)
    if recipe.builtin:
        root = None
    elif root_param is not None:
        root = Path(root_param)
    elif recipe.files:
        root = data_dir / recipe.root
        obtain_files(recipe.files, data_dir, url, progress)
    elif recipe.archive is None:
        raise ConfigError(f"data set recipe {name!r} downloads nothing: give params.root, the "
                          "directory that holds the tree to convert")
    else:
        root = data_dir / recipe.root
    if root is not None and not (root / recipe.probe).exists():
        if recipe.archive is None or root_param is not None:
            raise DataError(f"{root / recipe.probe}: missing; {root} is not a complete "
                            f"{recipe.name} tree: fix params.root")
        path = data_dir / recipe.archive.filename
        with locked(path):  # two jobs preparing from one archive take turns
            first_use = (recipe.archive.sha256 is None and recipe.archive.md5 is None
                         and recipe.archive.filename not in recorded_checksums(data_dir))
            downloaded = not path.exists()
            obtain(recipe.archive, data_dir, url=url, progress=progress)
            top = recipe.root.split("/")[0]
            try:
                extract(path, data_dir, progress=progress,
                        expect=f"{recipe.root}/{recipe.probe}", keep=top)
                if not (root / recipe.probe).exists():
                    raise DataError(f"{path}: extracted, but {root / recipe.probe} is missing: "
                                    "not the expected archive")
            except DataError as exc:
                if not first_use:
                    raise DataError(str(exc) if "; delete" in str(exc) else
                                    f"{exc}; delete {path} and rerun") from None
                # never verified by any checksum: a truncated or wrong download; nothing recorded
                if downloaded:
                    path.unlink(missing_ok=True)
                why = str(exc).removeprefix(f"{path}: ").split("; delete")[0]
                raise DataError(
                    f"{path}: {why}; no checksum is published for it, so nothing was recorded in "
                    f"{data_dir / CHECKSUM_LEDGER}"
                    + (" and the download was deleted: rerun to download it again" if downloaded
                       else f": delete {path} and rerun")) from None
            record_first_use(recipe.archive, data_dir)
    module, func = recipe.converter.split(":")
    convert = getattr(importlib.import_module(module), func)
    convert(root, Path(out_dir), params)
