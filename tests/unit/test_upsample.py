"""The class map of few-shot segmentation (patchlens.evaluation.upsample.bilinear_argmax): equal
to the full bilinear upsampling's arg-max (resize_bilinear, which matches torch's interpolate),
computed only where the four surrounding cells disagree."""
import numpy as np
import pytest

from patchlens.evaluation.upsample import bilinear_argmax, resize_bilinear


def clear_pixels(up: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    top2 = np.sort(up, -1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) > tol * np.abs(up).max()


def segmentation_scores(rng, shape, noise):
    """Scores of a blocky label map (two rectangles on background) plus noise: most cells sure,
    boundaries in doubt, as a few-shot prediction."""
    h, w, K = shape
    lab = np.zeros((h, w), np.int64)
    lab[h // 5:h // 2, w // 4:3 * w // 4] = 1 % K
    lab[h // 2:, : w // 3] = 2 % K
    a = np.eye(K, dtype=np.float32)[lab] + noise * rng.random(shape, dtype=np.float32)
    return a


@pytest.mark.parametrize("shape, size", [((28, 28, 21), (375, 500)), ((7, 9, 3), (50, 61)),
                                         ((30, 54, 2), (480, 854)), ((12, 10, 4), (5, 7)),
                                         ((1, 6, 3), (9, 20))])
@pytest.mark.parametrize("noise", [0.0, 0.3, 3.0])
def test_equals_the_full_upsampling_up_to_near_ties(shape, size, noise):
    a = segmentation_scores(np.random.default_rng(len(size) + int(noise * 10)), shape, noise)
    up = resize_bilinear(a, size)
    got = bilinear_argmax(a, size)
    assert got.shape == size and got.dtype == np.int64
    clear = clear_pixels(up)
    assert noise == 0.0 or clear.mean() > 0.95  # noise-free: exact ties, checked below
    np.testing.assert_array_equal(got[clear], up.argmax(-1)[clear])
    if noise == 0.0:  # one-hot scores: the mixes are exact, ties (w = 1/2) included
        np.testing.assert_array_equal(got, up.argmax(-1))


def test_pixels_between_two_classes_and_inside_one():
    """A pixel between two classes takes the mix's winner: class 1 at 0.9 left of class 0 at
    1.0, so the pixel just right of the left cell's centre (weight 0.25 on the right cell) is
    class 1 (0.675 vs 0.25); pixels whose four cells all hold class 1 are class 1."""
    a = np.zeros((1, 2, 2), np.float32)
    a[0, 0, 1], a[0, 1, 0] = 0.9, 1.0
    got = bilinear_argmax(a, (1, 8))  # pixel centres at cell coordinates -0.25, 0, 0.25, ...
    up = resize_bilinear(a, (1, 8)).argmax(-1)
    np.testing.assert_array_equal(got, up)
    assert got[0, :3].tolist() == [1, 1, 1] and got[0, -3:].tolist() == [0, 0, 0]
    same = np.ones((3, 3, 2), np.float32) * np.array([0.0, 1.0], np.float32)
    assert (bilinear_argmax(same, (30, 30)) == 1).all()


def test_one_class_and_all_equal_scores():
    assert (bilinear_argmax(np.ones((4, 4, 1), np.float32), (9, 9)) == 0).all()
    flat = np.zeros((4, 4, 3), np.float32)  # every score tied: the full mix's arg-max, 0
    np.testing.assert_array_equal(bilinear_argmax(flat, (9, 9)),
                                  resize_bilinear(flat, (9, 9)).argmax(-1))
