"""``scenes``: the built-in procedural data set (demo data and test fixture).

Textured objects are composed on backgrounds cropped from the photographs that scikit-image ships
with its wheel (no download). Every kind of ground truth the tasks need is exact because the
generator knows every object's canonical frame:

* classes = shape x texture family (class 0 = background), ``n_shapes * n_textures`` of them;
* identities = one appearance within a class (colours, texture frequency, orientation, phase);
  identity ``i`` has class ``1 + i % n_classes``, so identities are spread evenly over classes;
* every object is the canonical unit square ``(u, v) in [0, 1]^2`` mapped into the image by a
  similarity transform (side ``s`` px, rotation, optional horizontal flip, centre); texture and
  shape are functions of ``(u, v)``, so a point of an identity looks the same in every image and
  the ``uv`` map (float32 (H, W, 2), NaN off objects) gives exact correspondences.

Splits (``manifest.csv`` column ``split``; ids ``{split}_{i:04d}`` unless stated):

``train``    support pool; the first object of image ``i`` has class ``order[i % n_classes]``, so
             every class is in at least ``n_shots_max`` images; objects do not overlap.
``val``      segmentation / instance identification; every identity used in val occurs in >= 2
             val images (never twice in one image); identities are taken in same-class pairs so
             each used class has distractors; objects do not overlap.
``crop``     retrieval queries, one per identity (``crop_{identity:04d}``): the object alone,
             centred, side ``crop_scale`` of the image, on a strongly blurred, dimmed background.
``gallery``  retrieval gallery: one target identity per image at side/image-side taken from
             ``retrieval_scales`` (round robin: identity ``i`` in round ``r`` gets scale
             ``(i + r) % n_scales``) plus ``gallery_distractors`` other identities at listed scales,
             not overlapping it; ``objects.csv`` ``area_frac`` records the real scale.
``video``    ``n_videos`` sequences ``video{v:02d}`` of ``n_frames`` frames
             (``video{v:02d}_f{t:03d}``): 1-3 objects moving linearly (and zooming) over a fixed
             background, drawn in a fixed depth order so they occlude each other; instance ``k``
             is the same object in every frame; frame 0 has no overlap (every object visible).
``pair``     ``n_pairs`` pairs ``pair{p:04d}_src`` / ``_trg``: one identity under two random
             similarity transforms (scale, rotation within ``pair_rotation`` degrees, translation,
             horizontal flip of the target when ``pair_flip``); ``keypoints.csv`` lists
             ``n_keypoints`` src pixels spread over the object by farthest-point sampling and their
             exact transformed positions in the target; keypoints lie at least
             ``keypoint_margin`` x object side inside both masks (halved until enough exist).

The splits mirror the benchmarks the tasks come from: few-shot segmentation, instance
identification and object retrieval at controlled scale (Vanyan et al. 2024, arXiv 2401.00463),
label propagation on short videos with per-frame instance masks (DAVIS-2017, Pont-Tuset et al.
2017; DINO, Caron et al. 2021) and keypoint transfer scored by PCK of the target box (SPair-71k,
Min et al. 2019; Walmer et al. CVPR 2023).

Coordinates: keypoints are in pixel-index units (pixel ``[r, c]`` is the point ``x=c, y=r``);
bounding boxes are pixel indices with exclusive ``x1, y1`` (see :mod:`patchlens.data.dataset`).

``patch_align`` (> 0) snaps the side and the top-left corner of unrotated objects to multiples of
that many pixels in the splits listed in ``align_splits``; every shape touches all four sides of
its box, so those objects' bounding boxes are exact multiples (and with ``n_shapes = 1``, squares,
the masks are exactly representable at patch resolution).

Writing: image, mask and uv files first, ``manifest.csv`` last (atomically), and any old
``manifest.csv`` is removed first, so a killed run never leaves a manifest that looks complete.
Output is a pure function of the parameters (same params -> identical bytes).

Modules: :mod:`.params` (defaults and validation), :mod:`.render` (shapes, textures, identities,
placement, backgrounds), :mod:`.splits` (one generator per split) and :mod:`.write` (files, then
the layout tables through :func:`patchlens.data.layout.write_layout`; :func:`generate_scenes`).
"""
from patchlens.data.scenes.params import (BACKGROUNDS, DEFAULT_PARAMS, SHAPES, SPLITS, TEXTURES,
                                          resolve_params)
from patchlens.data.scenes.render import (Identity, Placement, background, class_names,
                                          class_table, identity_table, make_identities, render,
                                          shape_mask, texture)
from patchlens.data.scenes.write import generate_scenes

__all__ = ["BACKGROUNDS", "DEFAULT_PARAMS", "SHAPES", "SPLITS", "TEXTURES", "Identity",
           "Placement", "background", "class_names", "class_table", "generate_scenes",
           "identity_table", "make_identities", "render", "resolve_params", "shape_mask",
           "texture"]
