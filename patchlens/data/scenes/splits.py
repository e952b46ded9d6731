"""The six ``scenes`` splits: samplers and one generator per split, each yielding records
(image id, split, sequence, frame, rgb, sem, inst, uv, identities by instance, and the objects
as drawn: ``placed``, (instance, identity, placement) back to front).
See :mod:`patchlens.data.scenes`."""
from __future__ import annotations

import math

import numpy as np

from patchlens.data.scenes.params import _err
from patchlens.data.scenes.render import Identity, Placement, background, render

# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------
def _overlaps(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _sample_placement(rng, p: dict, side_frac: float, aligned: bool, max_rot: float) -> Placement:
    size = p["image_size"]
    a = p["patch_align"]
    if aligned and a:
        s = int(min(max(a, round(side_frac * size / a) * a), (size // a) * a))
        x0 = a * int(rng.integers((size - s) // a + 1))
        y0 = a * int(rng.integers((size - s) // a + 1))
        return Placement(x0 + s / 2, y0 + s / 2, float(s))
    s = side_frac * size
    ang = math.radians(max_rot) * (2 * rng.random() - 1)
    e = Placement(0, 0, s, ang).half_extent
    e = min(e, size / 2)
    cx, cy = e + (size - 2 * e) * rng.random(), e + (size - 2 * e) * rng.random()
    return Placement(cx, cy, s, ang)


def _place_still(rng, p, sides: list[float], aligned: bool, max_rot: float,
                 tries: int = 30) -> list[Placement | None]:
    """Non-overlapping placements (axis-aligned extents); the first always fits, later ones are
    ``None`` when ``tries`` random positions all overlap."""
    out, boxes = [], []
    for i, side in enumerate(sides):
        pl = None
        for _ in range(1 if i == 0 else tries):
            cand = _sample_placement(rng, p, side, aligned, max_rot)
            if not _overlaps(cand.box(), boxes):
                pl = cand
                break
        out.append(pl)
        if pl is not None:
            boxes.append(pl.box())
    return out


def _by_class(idents: list[Identity]) -> dict[int, list[int]]:
    d: dict[int, list[int]] = {}
    for x in idents:
        d.setdefault(x.cls, []).append(x.id)
    return d


def _balanced_identities(rng, counts: list[int], pool: list[int]) -> list[list[int]]:
    """Identities for images with ``counts`` objects: each image takes distinct identities of
    lowest use so far (random tie-break), so uses differ by at most one across ``pool``."""
    used = {i: 0 for i in pool}
    out = []
    for k in counts:
        keys = rng.permutation(len(pool))
        order = sorted(keys, key=lambda j: used[pool[j]])
        pick = [pool[j] for j in order[:k]]
        for i in pick:
            used[i] += 1
        out.append(pick)
    return out


# ------------------------------------------------------------------------------------------------
# splits: each yields (image id, split, sequence, frame, rgb, sem, inst, uv, identities by inst)
# ------------------------------------------------------------------------------------------------
def _still(img_id, split, bg, objs):
    rgb, sem, inst, uv = render(bg, [(k, d, pl) for k, d, pl in objs])
    return dict(image=img_id, split=split, sequence="", frame=-1, rgb=rgb, sem=sem, inst=inst,
                uv=uv, ident={k: d for k, d, _ in objs}, placed=list(objs))


def _split_train(rng, p, idents):
    n_cls = p["n_shapes"] * p["n_textures"]
    byc = _by_class(idents)
    order = rng.permutation(n_cls) + 1
    lo, hi = p["objects_per_image"]
    aligned = "train" in p["align_splits"]
    for i in range(p["n_train"]):
        n = int(rng.integers(lo, hi + 1))
        classes = [int(order[i % n_cls])] + [int(c) for c in rng.integers(1, n_cls + 1, n - 1)]
        sides = list(rng.uniform(*p["object_scale"], n))
        pls = _place_still(rng, p, sides, aligned, p["rotation"])
        objs, taken = [], set()
        for c, pl in zip(classes, pls):
            if pl is not None:  # a random identity of the class, distinct within the image
                free = [j for j in byc[c] if j not in taken] or byc[c]
                d = idents[free[int(rng.integers(len(free)))]]
                taken.add(d.id)
                objs.append((len(objs) + 1, d, pl))
        yield _still(f"train_{i:04d}", "train", background(rng, p), objs)


def _split_val(rng, p, idents):
    n = p["n_val"]
    if n == 0:
        return
    lo, hi = p["objects_per_image"]
    counts = [int(c) for c in rng.integers(lo, hi + 1, n)]
    n_used = max(1, min(len(idents), sum(counts) // 2))
    # identities in pairs of one class (class 1: j=0, 1; class 2: j=0, 1; ...; then j=2, 3 ...)
    # so that even a small val split has same-class distractors for instance identification
    n_cls = p["n_shapes"] * p["n_textures"]
    pool = sorted(range(len(idents)), key=lambda i: ((i // n_cls) // 2, i % n_cls, i))[:n_used]
    counts = [min(c, n_used) for c in counts]
    aligned = "val" in p["align_splits"]
    for i, ids in enumerate(_balanced_identities(rng, counts, pool)):
        sides = list(rng.uniform(*p["object_scale"], len(ids)))
        pls = _place_still(rng, p, sides, aligned, p["rotation"])
        # an identity that did not fit would break ">= 2 occurrences": retry until all fit
        t = 0
        while any(pl is None for pl in pls):
            t += 1
            if t > 100:
                raise _err("objects_per_image", f"cannot place {len(ids)} non-overlapping "
                           "objects in a val image; lower it or object_scale")
            sides = [s * 0.9 for s in sides] if t % 5 == 0 else sides
            pls = _place_still(rng, p, sides, aligned, p["rotation"])
        objs = [(k + 1, idents[d], pl) for k, (d, pl) in enumerate(zip(ids, pls))]
        yield _still(f"val_{i:04d}", "val", background(rng, p), objs)


def _split_crop(rng, p, idents):
    size = p["image_size"]
    aligned = "crop" in p["align_splits"] and p["patch_align"]
    for d in idents:
        s = p["crop_scale"] * size
        c = size / 2
        if aligned:  # side and corner on the grid, as close to the centre as the grid allows
            a = p["patch_align"]
            s = min(max(a, round(s / a) * a), (size // a) * a)
            c = a * math.floor((size - s) / (2 * a) + 0.5) + s / 2
        pl = Placement(c, c, float(s))
        bg = background(rng, p, blur=size / 12)
        yield _still(f"crop_{d.id:04d}", "crop", bg, [(1, d, pl)])


def _split_gallery(rng, p, idents):
    scales, n_id = p["retrieval_scales"], len(idents)
    aligned = "gallery" in p["align_splits"]
    order = rng.permutation(n_id)
    for g in range(p["n_gallery"]):
        i, rnd = g % n_id, g // n_id
        target = idents[int(order[i])]
        others = [j for j in rng.permutation(n_id)[:p["gallery_distractors"] + 1]
                  if j != target.id][:p["gallery_distractors"]]
        sides = [scales[(i + rnd) % len(scales)]] + \
                [scales[int(rng.integers(len(scales)))] for _ in others]
        pls = _place_still(rng, p, sides, aligned, p["rotation"])
        objs = [(1, target, pls[0])]
        for j, pl in zip(others, pls[1:]):
            if pl is not None:
                objs.append((len(objs) + 1, idents[int(j)], pl))
        yield _still(f"gallery_{g:04d}", "gallery", background(rng, p), objs)


def _split_video(rng, p, idents):
    size, T = p["image_size"], p["n_frames"]
    lo, hi = p["video_objects"]
    for vid in range(p["n_videos"]):
        seq = f"video{vid:02d}"
        bg = background(rng, p)
        n = int(rng.integers(lo, hi + 1))
        ids = [int(j) for j in rng.permutation(len(idents))[:n]]
        sides = list(rng.uniform(*p["video_scale"], len(ids)))
        starts = _place_still(rng, p, sides, False, p["rotation"])
        tracks = []
        for d, pl in zip(ids, starts):
            if pl is None:
                continue
            s1 = pl.size * (1 + p["video_zoom"] * (2 * rng.random() - 1))
            # the end box is clipped into the image; boxes in between, linear in both centre
            # and extent, then stay inside too
            e = min(Placement(0, 0, s1, pl.angle).half_extent, size / 2)
            ang = 2 * math.pi * rng.random()
            dist = p["video_motion"] * size * rng.random()
            cx1 = float(np.clip(pl.cx + dist * math.cos(ang), e, size - e))
            cy1 = float(np.clip(pl.cy + dist * math.sin(ang), e, size - e))
            tracks.append((len(tracks) + 1, idents[d], (pl.cx, pl.cy, pl.size), (cx1, cy1, s1),
                           pl.angle))
        depth = rng.permutation(len(tracks))
        for t in range(T):
            a = t / (T - 1)
            objs = []
            for j in depth:
                k, d, (x0, y0, s0), (x1, y1, s1), ang = tracks[int(j)]
                objs.append((k, d, Placement(x0 + a * (x1 - x0), y0 + a * (y1 - y0),
                                             s0 + a * (s1 - s0), ang)))
            rgb, sem, inst, uv = render(bg, objs)
            yield dict(image=f"{seq}_f{t:03d}", split="video", sequence=seq, frame=t, rgb=rgb,
                       sem=sem, inst=inst, uv=uv, ident={k: d for k, d, _ in objs},
                       placed=objs)


def _farthest_points(rng, pts: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` points spread by greedy farthest-point sampling from a random start."""
    k = min(k, len(pts))
    if k == 0:
        return np.zeros(0, int)
    idx = [int(rng.integers(len(pts)))]
    d = np.sum((pts - pts[idx[0]]) ** 2, 1)
    for _ in range(k - 1):
        j = int(np.argmax(d))
        idx.append(j)
        d = np.minimum(d, np.sum((pts - pts[j]) ** 2, 1))
    return np.array(idx)


def _pair_placement(rng, p, flip: bool) -> Placement:
    s = rng.uniform(*p["pair_scale"]) * p["image_size"]
    pl = _sample_placement(rng, p, s / p["image_size"], False, p["pair_rotation"])
    return Placement(pl.cx, pl.cy, pl.size, pl.angle, flip)


def _split_pair(rng, p, idents, kp_rows):
    from scipy.ndimage import distance_transform_edt
    size = p["image_size"]
    order = rng.permutation(len(idents))
    for q in range(p["n_pairs"]):
        d = idents[int(order[q % len(idents)])]
        src_pl = _pair_placement(rng, p, False)
        trg_pl = _pair_placement(rng, p, bool(p["pair_flip"] and rng.random() < 0.5))
        src = _still(f"pair{q:04d}_src", "pair", background(rng, p), [(1, d, src_pl)])
        trg = _still(f"pair{q:04d}_trg", "pair", background(rng, p), [(1, d, trg_pl)])
        # candidate keypoints: src object pixels whose exact target position rounds to a target
        # object pixel, both at least `margin` px inside their masks (silhouette points are
        # ambiguous at patch resolution); the margin halves until there are enough candidates
        ys, xs = np.nonzero(src["inst"] == 1)
        u, v = src_pl.to_uv(xs + 0.5, ys + 0.5)
        tx, ty = trg_pl.from_uv(u, v)
        tx, ty = tx - 0.5, ty - 0.5
        rx, ry = np.round(tx).astype(int), np.round(ty).astype(int)
        ok = (rx >= 0) & (rx < size) & (ry >= 0) & (ry < size)
        ok[ok] = trg["inst"][ry[ok], rx[ok]] == 1
        depth = np.minimum(distance_transform_edt(src["inst"] == 1)[ys, xs],
                           distance_transform_edt(trg["inst"] == 1)[np.clip(ry, 0, size - 1),
                                                                   np.clip(rx, 0, size - 1)])
        margin = p["keypoint_margin"] * min(src_pl.size, trg_pl.size)
        while margin >= 1 and (ok & (depth > margin)).sum() < p["n_keypoints"]:
            margin /= 2
        cand = np.nonzero(ok & (depth > margin))[0] if margin >= 1 else np.nonzero(ok)[0]
        sel = cand[_farthest_points(rng, np.stack([xs[cand], ys[cand]], 1).astype(float),
                                    p["n_keypoints"])]
        ty_, tx_ = np.nonzero(trg["inst"] == 1)
        box = (int(tx_.min()), int(ty_.min()), int(tx_.max()) + 1, int(ty_.max()) + 1)
        for j, i in enumerate(sel):
            kp_rows.append(dict(pair=f"pair{q:04d}", src_image=src["image"],
                                trg_image=trg["image"], kp=j, src_x=int(xs[i]), src_y=int(ys[i]),
                                trg_x=round(float(tx[i]), 4), trg_y=round(float(ty[i]), 4),
                                trg_x0=box[0], trg_y0=box[1], trg_x1=box[2], trg_y1=box[3]))
        yield src
        yield trg
