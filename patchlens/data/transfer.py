"""The HTTP transfer behind :func:`patchlens.data.download.fetch`: resume only the same file.

Protocol (RFC 9110 Sec. 13.1.5 ``If-Range`` and Sec. 14 range requests): the first response of
a download (``200``) records, beside the partial file ``<dest>.part``, the URL, the entity's
validator and its total length in ``<dest>.part.json``; the validator is the ``ETag`` when it is
strong, else ``Last-Modified``. A later attempt (the same run after a dropped connection, or
a rerun) resumes the ``.part`` with ``Range: bytes=N-`` ONLY together with ``If-Range:
<validator>``, so a server whose file changed answers ``200`` with the whole new file, which
restarts the ``.part`` from byte zero. A ``206`` is used only when its ``Content-Range`` starts
at N, its total length equals the recorded one and its validator (when it sends one) equals the
recorded one; otherwise the ``.part`` is discarded and the download restarts from zero. A
``.part`` without a record (the server gave no validator, an older patchlens, another URL) is
never resumed: it is discarded and the file downloaded from the start. So a finished file is
never spliced from two versions of the source.

Connection errors, timeouts, retryable HTTP codes and transfers that end before the announced
length are retried, at once when the attempt added bytes, else after ``backoff * 2**k``
seconds; ``retries`` retries in a row that add nothing end the download.
"""
from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

from tqdm import tqdm

import patchlens
from patchlens.errors import DataError
from patchlens.io import write_json

CHUNK = 1 << 20
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class SourceUnreachable(DataError):
    """No connection to the download URL could be made (offline, DNS, refused)."""


def one_line(reason: object) -> str:
    """``reason`` as one line of text (its type name when it has no text)."""
    return " ".join(str(reason).split()) or type(reason).__name__


def record_path(part: Path) -> Path:
    """Where the entity record of a partial download ``part`` is kept."""
    return part.with_name(part.name + ".json")


def discard_partial(part: Path) -> None:
    """Remove a partial download and its entity record."""
    part.unlink(missing_ok=True)
    record_path(part).unlink(missing_ok=True)


def _validator(headers) -> str | None:
    """The value for ``If-Range``: a strong ETag, else Last-Modified, else None."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (headers.get("Last-Modified") or "").strip() or None


def _read_record(part: Path, url: str) -> dict | None:
    """The entity record of ``part`` when it belongs to ``url`` and names a validator."""
    try:
        rec = json.loads(record_path(part).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("url") != url or not rec.get("validator"):
        return None
    return rec


def _total(resp_or_headers, status: int) -> int | None:
    """The whole file's length from a response: Content-Range's total for 206/416, else
    Content-Length; None when unknown."""
    headers = getattr(resp_or_headers, "headers", resp_or_headers)
    if status in (206, 416):
        match = re.search(r"/(\d+)\s*$", headers.get("Content-Range", "") or "")
        return int(match[1]) if match else None
    length = (headers.get("Content-Length") or "").strip()
    return int(length) if length.isdigit() else None


def _same_entity(resp, start: int, rec: dict) -> bool:
    """Whether a ``206`` answer continues the recorded entity from byte ``start``."""
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if not match or int(match[1]) != start:
        return False
    if rec.get("total") is not None and (match[3] == "*" or int(match[3]) != rec["total"]):
        return False
    for header, key in (("ETag", "etag"), ("Last-Modified", "last_modified")):
        sent = (resp.headers.get(header) or "").strip()
        if sent and rec.get(key) and sent != rec[key]:
            return False
    return True


def download(url: str, dest: Path, part: Path, retries: int, timeout: float, progress: bool,
             backoff: float, cache_key: str = "data_dir") -> None:
    """Fill ``part`` with the bytes of ``url`` (module doc); raise DataError when retries run
    out. An attempt that leaves ``part`` longer than it was does not use up a retry; a restart
    because the source changed does not either (at most ``retries + 1`` of them)."""
    connected = False
    reason = "no attempt made"
    attempts = failures = restarts = 0
    while True:
        attempts += 1
        start = before = part.stat().st_size if part.exists() else 0
        rec = _read_record(part, url) if start else None
        restarted = False
        if start and rec is None:  # nothing says which file these bytes belong to
            discard_partial(part)
            start, restarted = 0, True
        headers = {"User-Agent": f"patchlens/{patchlens.__version__}"}
        if start:
            headers["Range"] = f"bytes={start}-"
            headers["If-Range"] = rec["validator"]
        total = None
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=timeout) as resp:
                connected = True
                if resp.status == 206:
                    ok = _same_entity(resp, start, rec or {})
                    if ok:
                        total = rec.get("total") or _total(resp, 206)
                        _stream(resp, part, start, total, progress, dest.name)
                    else:  # another version of the file, or a range we did not ask for
                        discard_partial(part)
                        restarted = True
                        reason = "the server sent another version or range of the file"
                else:  # 200: the whole (possibly new) file from byte zero
                    total = _total(resp, 200)
                    discard_partial(part)  # never a record naming bytes it does not describe
                    write_json({"url": url, "validator": _validator(resp.headers),
                                "etag": (resp.headers.get("ETag") or "").strip() or None,
                                "last_modified": (resp.headers.get("Last-Modified") or "").strip()
                                or None, "total": total}, record_path(part))
                    _stream(resp, part, 0, total, progress, dest.name)
                    ok = True
        except HTTPError as exc:
            connected = True
            ok = False
            if exc.code == 416 and start:  # the .part may hold the whole file already
                if _total(exc.headers, 416) == start and rec.get("total") in (None, start):
                    return
                discard_partial(part)
                restarted = True
                reason = "the server's file has another length than the partial download"
            elif exc.code not in _RETRYABLE_HTTP:
                raise DataError(f"{url}: the server answered HTTP {exc.code} "
                                f"({one_line(exc.reason)}); check the URL, or download the "
                                f"file by hand and place it at {dest}") from None
            else:
                reason = f"HTTP {exc.code} {one_line(exc.reason)}"
        except (URLError, OSError, http.client.HTTPException) as exc:
            reason = one_line(getattr(exc, "reason", exc))
            ok = False
        size = part.stat().st_size if part.exists() else 0
        if ok:
            if total is None or size >= total:
                return
            reason = f"transfer stopped at {size} of {total} bytes"
        if size > before:  # progress (a restart must get further than the bytes it dropped)
            failures = 0
            continue
        if restarted and restarts <= retries:
            restarts += 1
            continue
        failures += 1
        if failures > retries:
            break
        time.sleep(backoff * 2 ** (failures - 1))
    if not connected:
        raise SourceUnreachable(f"{url}: could not be reached ({reason}); without network, "
                                f"download it on another machine and place it at {dest} (under "
                                f"{cache_key}), then rerun")
    kept = (f"the partial data is kept in {part}: rerun to resume, or delete it to start over"
            if part.exists() and part.stat().st_size else "rerun to try again")
    raise DataError(f"{url}: download incomplete after {attempts} attempt(s) ({reason}); {kept}")


def _stream(resp, part: Path, offset: int, total: int | None, progress: bool, name: str) -> None:
    """Write the response body into ``part`` from byte ``offset`` (0 rewrites the file)."""
    mode = "r+b" if offset and part.exists() else "wb"
    with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                      unit_divisor=1024, desc=name, disable=not progress,
                                      leave=False) as bar:
        fh.seek(offset)
        fh.truncate()
        while block := resp.read(CHUNK):
            fh.write(block)
            bar.update(len(block))
