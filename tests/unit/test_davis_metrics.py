"""DAVIS J and F on analytic cases, and F against the morphological definition."""
import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk

from patchlens.evaluation import davis_metrics as dm


def square(shape, y0, x0, s):
    m = np.zeros(shape, bool)
    m[y0:y0 + s, x0:x0 + s] = True
    return m


def f_by_dilation(gt, pred, void=None, bound_th=dm.BOUND_TH):
    """F with the reference's morphological dilation by a disk (slow, for comparison)."""
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    r = int(dm.bound_pixels(gt.shape, bound_th))
    fb, gb = dm.seg2bmap(pred), dm.seg2bmap(gt)
    fd = ndimage.binary_dilation(fb, structure=disk(r).astype(bool))
    gd = ndimage.binary_dilation(gb, structure=disk(r).astype(bool))
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0
    p, rc = (fb & gd).sum() / n_fg, (gb & fd).sum() / n_gt
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def blobs(rng, shape, n=3):
    """Random smooth blobby binary mask."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(2, 6))
    return noise > np.quantile(noise, rng.uniform(0.5, 0.9))


def test_j_identity_disjoint_and_empty():
    a = square((20, 30), 2, 3, 6)
    assert dm.region_similarity(a, a) == 1.0
    assert dm.region_similarity(a, square((20, 30), 10, 20, 5)) == 0.0
    empty = np.zeros((20, 30), bool)
    assert dm.region_similarity(empty, empty) == 1.0      # DAVIS: empty union -> 1
    assert dm.region_similarity(a, empty) == 0.0


def test_j_hand_computed_shift_and_void():
    gt = square((10, 10), 2, 2, 4)
    pred = square((10, 10), 2, 4, 4)                       # shifted 2 columns
    # intersection 4 rows x 2 cols = 8, union 16 + 16 - 8 = 24
    assert dm.region_similarity(gt, pred) == pytest.approx(8 / 24)
    void = np.zeros((10, 10), bool)
    void[:, 6:] = True                                     # hides the 2 columns only pred covers
    # intersection 8, union 16 (gt) + 0 extra -> 8 / 16
    assert dm.region_similarity(gt, pred, void) == pytest.approx(8 / 16)


def test_seg2bmap_of_square_is_its_shifted_perimeter():
    s = 5
    b = dm.seg2bmap(square((12, 12), 3, 4, s))
    # the boundary is the ring of the (s+1)-square shifted half a pixel towards the origin
    ring = square((12, 12), 2, 3, s + 1) & ~square((12, 12), 3, 4, s - 1)
    assert np.array_equal(b, ring)
    assert b.sum() == 4 * s


def test_f_identity_shift_within_tolerance_and_empty_conventions():
    shape = (100, 100)                     # tolerance ceil(0.008 * 141.4) = 2 px
    assert dm.bound_pixels(shape) == np.ceil(0.008 * np.hypot(100, 100))
    a = square(shape, 20, 20, 30)
    assert dm.boundary_f(a, a) == 1.0
    assert dm.boundary_f(a, np.roll(a, 1, axis=1)) == 1.0  # one-pixel shift: inside tolerance
    far = np.roll(a, 10, axis=1)
    assert dm.boundary_f(a, far) < 0.5                      # vertical edges no longer match
    empty = np.zeros(shape, bool)
    assert dm.boundary_f(empty, empty) == 1.0               # both empty: P = R = 1
    assert dm.boundary_f(a, empty) == 0.0                   # prediction empty: P=1, R=0
    assert dm.boundary_f(empty, a) == 0.0                   # ground truth empty: P=0, R=1


def test_f_hand_computed_extra_object_halves_precision():
    shape = (100, 100)
    gt = square(shape, 10, 10, 10)
    pred = gt | square(shape, 60, 60, 10)  # same square + a far one: 40 of 80 boundary px match
    p, r = 40 / 80, 1.0
    assert dm.boundary_f(gt, pred) == pytest.approx(2 * p * r / (p + r))


@pytest.mark.parametrize("seed", range(4))
def test_f_equals_disk_dilation_definition(seed):
    rng = np.random.default_rng(seed)
    shape = [(120, 213), (97, 64), (480, 854), (50, 50)][seed]   # tolerance 2, 1, 8, 1 px
    gt, pred = blobs(rng, shape), blobs(rng, shape)
    pred = pred | ndimage.shift(gt, (rng.integers(-4, 5), rng.integers(-4, 5)), order=0)
    void = blobs(rng, shape) & (rng.random(shape) < 0.02) if seed % 2 else None
    assert dm.boundary_f(gt, pred, void) == pytest.approx(f_by_dilation(gt, pred, void), abs=1e-12)


def test_f_absolute_pixel_tolerance():
    shape = (60, 60)
    a = square(shape, 10, 10, 20)
    shifted = np.roll(a, 3, axis=1)
    assert dm.boundary_f(a, shifted, bound_th=3) == 1.0
    assert dm.boundary_f(a, shifted, bound_th=3) == f_by_dilation(a, shifted, bound_th=3)
    assert dm.boundary_f(a, shifted, bound_th=2) < 1.0


def test_label_maps_match_binary_per_object():
    rng = np.random.default_rng(7)
    shape = (64, 80)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for k in (1, 2, 3):
        gt[blobs(rng, shape)] = k
        pred[blobs(rng, shape)] = k
    void = rng.random(shape) < 0.05
    j, f = dm.jf_labels(gt, pred, 3, void)
    for k in (1, 2, 3):
        assert j[k - 1] == pytest.approx(dm.region_similarity(gt == k, pred == k, void))
        assert f[k - 1] == pytest.approx(dm.boundary_f(gt == k, pred == k, void))
    j_self, f_self = dm.jf_labels(gt, gt, 4)   # object 4 absent from both maps -> 1 by convention
    assert np.all(j_self == 1) and np.all(f_self == 1)


# -- the torch twin (the device path of tracking), run on the CPU ---------------------------------

torch = pytest.importorskip("torch")
from patchlens.evaluation import davis_torch as dt  # noqa: E402


@pytest.mark.parametrize("radius", [1, 2, 2.5, 8])
def test_torch_disk_dilation_equals_disk_definition(radius):
    """Integer radii: skimage's disk, as the toolkit; any radius: within Euclidean distance r of
    a set pixel (the KD-tree definition of the numpy path)."""
    rng = np.random.default_rng(int(radius * 10))
    maps = rng.random((3, 40, 57)) < 0.01
    got = dt.dilate_disk(torch.from_numpy(maps), radius).numpy()
    for m, g in zip(maps, got):
        assert np.array_equal(g, ndimage.distance_transform_edt(~m) <= radius)
        if radius == int(radius):
            se = disk(int(radius)).astype(bool)
            assert np.array_equal(g, ndimage.binary_dilation(m, structure=se))


def test_torch_seg2bmap_equals_numpy():
    rng = np.random.default_rng(3)
    masks = np.stack([blobs(rng, (37, 52)) for _ in range(4)])
    got = dt.seg2bmap(torch.from_numpy(masks)).numpy()
    for m, g in zip(masks, got):
        assert np.array_equal(g, dm.seg2bmap(m))


@pytest.mark.parametrize("seed", range(4))
def test_torch_jf_labels_equals_numpy(seed):
    """Same counts, same float64 ratios: the torch J and F equal the numpy ones exactly, on
    DAVIS-sized frames, with void, with absent objects and with empty predictions."""
    rng = np.random.default_rng(seed)
    shape = [(120, 213), (97, 64), (480, 854), (50, 50)][seed]
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for k in (1, 2, 3):
        gt[blobs(rng, shape)] = k
        if k != 3 or seed % 2:             # object 3 never predicted on even seeds
            pred[blobs(rng, shape) | ndimage.shift(gt == k, (2, -3), order=0)] = k
    void = (rng.random(shape) < 0.05) if seed % 2 else None
    n_obj = 4                              # object 4 absent from both maps
    j, f = dm.jf_labels(gt, pred, n_obj, void)
    jt, ft = dt.jf_labels(torch.from_numpy(gt).long(), torch.from_numpy(pred).long(), n_obj,
                          None if void is None else torch.from_numpy(void))
    assert np.array_equal(j, jt) and np.array_equal(f, ft)
    assert ft[3] == 1.0 and (seed % 2 or ft[2] == 0.0)
