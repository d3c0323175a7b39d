"""Defining properties of the 002 distortions, against numpy / scipy / scikit-image references."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.color import rgb2gray

from ssl_jax.evaluation import distortions as D, human_robustness
from ssl_jax.evaluation.confusion import confusion_matrix

KEY = jax.random.PRNGKey(0)


def _smooth_image(seed: int, h: int = 24, w: int = 24, lo: float = 0.0, hi: float = 1.0):
    """Natural-ish test image: blurred RGB noise rescaled to [lo, hi], float32 [h, w, 3]."""
    r = np.random.default_rng(seed)
    x = ndi.gaussian_filter(r.random((h, w, 3)), (1.5, 1.5, 0))
    x = (x - x.min()) / (x.max() - x.min())
    return (lo + (hi - lo) * x).astype(np.float32)


def _grey(img):
    return rgb2gray(np.asarray(img, np.float64))


def test_greyscale_uses_skimage_weights_and_stacks_three_channels():
    img = _smooth_image(0)
    out = np.asarray(D.greyscale(jnp.asarray(img)))
    np.testing.assert_allclose(out[..., 0], _grey(img), atol=1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # The weights themselves: a pure red/green/blue pixel gives the weight.
    eye = jnp.eye(3, dtype=jnp.float32)[:, None, :]  # 3 one-pixel images [1, 1, 3]
    np.testing.assert_allclose(np.asarray(D.greyscale_channel(eye)).ravel(),
                               [0.2125, 0.7154, 0.0721], atol=1e-7)
    np.testing.assert_array_equal(np.asarray(D.colour(jnp.asarray(img), "colour")), img)
    with pytest.raises(ValueError, match="colour level"):
        D.colour(jnp.asarray(img), "sepia")


@pytest.mark.parametrize("c", [1.0, 0.3, 0.05, 0.01])
def test_contrast_formula_exact(c):
    img = _smooth_image(1)
    out = np.asarray(D.contrast(jnp.asarray(img), c))
    np.testing.assert_allclose(out[..., 1], (1 - c) / 2 + c * _grey(img), atol=1e-6)


def test_contrast_rejects_bad_level():
    with pytest.raises(ValueError, match="contrast level"):
        D.contrast(jnp.zeros((4, 4, 3)), 1.5)


def test_uniform_noise_bounds_clipping_and_statistics():
    img = jnp.asarray(np.stack([_smooth_image(s, 32, 32) for s in range(4)]))
    clean = 0.35 + 0.3 * _grey(np.asarray(img))
    for width in (0.1, 0.9):
        out = np.asarray(D.uniform_noise(img, width, KEY))[..., 0]
        assert out.min() >= 0.0 and out.max() <= 1.0
        noise = out - clean
        unclipped = (out > 0) & (out < 1)
        assert np.all(np.abs(noise[unclipped]) <= width + 1e-6)
        if width == 0.1:
            # Contrast 0.3 keeps the image in [0.35, 0.65]: nothing clips, noise ~ U[-w, w].
            assert unclipped.all()
            assert abs(noise.mean()) < 0.01
            assert abs(noise.std() - width / math.sqrt(3)) < 0.005
        else:
            # Clipping must have happened at both ends, exactly to 0 and 1.
            assert (out == 0).any() and (out == 1).any()
    # Images of a batch get different noise, and the key fixes it.
    again = np.asarray(D.uniform_noise(img, 0.2, KEY))
    np.testing.assert_array_equal(again, np.asarray(D.uniform_noise(img, 0.2, KEY)))
    assert not np.allclose(again[0] - clean[0, ..., None], again[1] - clean[1, ..., None])


@pytest.mark.parametrize("sigma", [1.0, 3.0, 7.0])
def test_low_pass_equals_scipy_gaussian_filter_constant_mode(sigma):
    img = _smooth_image(2, 20, 28)
    out = np.asarray(D.low_pass(jnp.asarray(img), sigma))
    ref = np.clip(ndi.gaussian_filter(_grey(img), sigma, mode="constant", cval=0.4423), 0, 1)
    np.testing.assert_allclose(out[..., 0], ref, atol=2e-6)
    np.testing.assert_allclose(np.asarray(D.low_pass(jnp.asarray(img), 0.0))[..., 0],
                               _grey(img), atol=1e-6)


def test_gaussian_filter_batched_matches_per_image():
    imgs = np.stack([_smooth_image(s, 16, 16)[..., 0] for s in range(3)])
    out = np.asarray(D.gaussian_filter(jnp.asarray(imgs), 1.5))
    for i in range(3):
        ref = ndi.gaussian_filter(imgs[i].astype(np.float64), 1.5, mode="constant", cval=0.4423)
        np.testing.assert_allclose(out[i], ref, atol=2e-6)


@pytest.mark.parametrize("sigma", [3.0, 0.7])
def test_high_pass_reference_and_mean_shift(sigma):
    img = _smooth_image(3)
    g = _grey(img)
    hp = g - ndi.gaussian_filter(g, sigma, mode="constant", cval=0.4423)
    ref = np.clip(hp + (0.4423 - hp.mean()), 0, 1)
    out = np.asarray(D.high_pass(jnp.asarray(img), sigma))[..., 0]
    np.testing.assert_allclose(out, ref, atol=2e-6)
    if 0 < ref.min() and ref.max() < 1:  # no clipping: the mean is exactly the target grey
        assert abs(out.mean() - 0.4423) < 1e-5
    np.testing.assert_allclose(np.asarray(D.high_pass(jnp.asarray(img), math.inf))[..., 0],
                               g, atol=1e-6)


def test_phase_scrambling_preserves_amplitude_spectrum():
    # Low contrast around mid-grey so that the scrambled image is never clipped.
    img = _smooth_image(4, 24, 20, 0.45, 0.55)
    g = _grey(img)
    for width in (30.0, 180.0):
        out = np.asarray(D.phase_scrambling(jnp.asarray(img), width, KEY))[..., 0]
        assert 0 < out.min() and out.max() < 1
        f_in, f_out = np.fft.fft2(g), np.fft.fft2(out)
        np.testing.assert_allclose(np.abs(f_out), np.abs(f_in), atol=1e-4 * np.abs(f_in).max())
        # Phase changes stay within [-width, width] where the phase is well defined.
        big = np.abs(f_in) > 1e-3 * np.abs(f_in).max()
        dphi = np.angle(f_out[big] / f_in[big])
        assert np.abs(dphi).max() <= math.radians(width) + 1e-3
        assert np.abs(out - g).max() > 1e-3  # it did change the image
    same = np.asarray(D.phase_scrambling(jnp.asarray(img), 0.0, KEY))[..., 0]
    np.testing.assert_allclose(same, g, atol=1e-6)


def test_phase_noise_is_antisymmetric_and_uniform():
    phi = np.asarray(D.antisymmetric_phase_noise(KEY, (2, 16, 15), math.pi / 2))
    neg = phi[:, (-np.arange(16)) % 16][:, :, (-np.arange(15)) % 15]
    np.testing.assert_array_equal(phi, -neg)
    assert phi[:, 0, 0].tolist() == [0.0, 0.0]  # DC untouched
    assert np.abs(phi).max() <= math.pi / 2
    # Roughly uniform: |phi| has mean width/2 (uniform on [0, width]).
    assert abs(np.abs(phi).mean() - math.pi / 4) < 0.1


def test_power_equalisation_yields_target_spectrum():
    imgs = np.stack([_smooth_image(s, 16, 16, 0.4, 0.6) for s in range(5, 9)])
    target = np.asarray(D.mean_amplitude_spectrum(jnp.asarray(imgs)))
    np.testing.assert_allclose(
        target, np.abs(np.fft.fft2(_grey(imgs), axes=(-2, -1))).mean(0), rtol=1e-5, atol=1e-5)
    img = _smooth_image(9, 16, 16, 0.3, 0.7)
    out = np.asarray(D.power_equalisation(jnp.asarray(img), jnp.asarray(target)))[..., 0]
    assert 0 < out.min() and out.max() < 1
    f_out = np.fft.fft2(out)
    np.testing.assert_allclose(np.abs(f_out), target, atol=1e-4 * target.max())
    # ... while the phases are the input's.
    f_in = np.fft.fft2(_grey(img))
    big = np.abs(f_in) > 1e-3 * np.abs(f_in).max()
    np.testing.assert_allclose(np.angle(f_out[big] / f_in[big]), 0, atol=1e-3)
    with pytest.raises(ValueError, match="amplitude shape"):
        D.power_equalisation(jnp.asarray(img), jnp.ones((8, 8)))


@pytest.mark.parametrize("deg", [0, 90, 180, 270])
def test_rotations_exact(deg):
    img = _smooth_image(10, 12, 18)
    out = np.asarray(D.rotation(jnp.asarray(img), deg))[..., 0]
    np.testing.assert_allclose(out, np.rot90(_grey(img), deg // 90), atol=1e-6)


def test_rotation_90_is_counter_clockwise_and_rejects_other_angles():
    img = np.zeros((3, 3, 3), np.float32)
    img[0, 2] = 1.0  # top-right corner
    out = np.asarray(D.rotation(jnp.asarray(img), 90))[..., 0]
    assert out[0, 0] == pytest.approx(1.0)  # moves to the top-left corner
    with pytest.raises(ValueError, match="rotation 45"):
        D.rotation(jnp.asarray(img), 45)


def test_false_colour_keeps_luminance_and_is_an_involution():
    img = _smooth_image(11, 8, 8, 0.4, 0.6)
    out = np.asarray(D.false_colour(jnp.asarray(img)))
    assert not np.allclose(out, img, atol=1e-3)
    lms = img.astype(np.float64) @ D._RGB_TO_LMS.T
    lms_out = out.astype(np.float64) @ D._RGB_TO_LMS.T
    dkl = (lms - D._RGB_TO_LMS @ D._WHITE_RGB) @ D._LMS_TO_DKL.T
    dkl_out = (lms_out - D._RGB_TO_LMS @ D._WHITE_RGB) @ D._LMS_TO_DKL.T
    np.testing.assert_allclose(dkl_out[..., 0], dkl[..., 0], atol=1e-4)  # luminance (L+M)
    np.testing.assert_allclose(dkl_out[..., 1:], -dkl[..., 1:], atol=1e-4)  # both chromatic
    back = np.asarray(D.false_colour(jnp.asarray(out)))
    np.testing.assert_allclose(back, img, atol=1e-5)
    # With a power-law gamma the map is still its own inverse (no clipping here).
    g_out = D.false_colour(jnp.asarray(img), gamma=2.2)
    np.testing.assert_allclose(np.asarray(D.false_colour(g_out, gamma=2.2)), img, atol=1e-4)
    assert not np.allclose(np.asarray(g_out), out, atol=1e-3)
    grey = np.full((1, 1, 3), 0.5, np.float32)
    np.testing.assert_allclose(np.asarray(D.false_colour(jnp.asarray(grey))), grey, atol=1e-6)
    sat = np.asarray(D.false_colour(jnp.asarray(_smooth_image(12, 8, 8))))
    assert sat.min() >= 0 and sat.max() <= 1


def test_eidolon_reach_zero_is_the_finest_scale_space_layer():
    img = _smooth_image(13, 32, 32)
    out = np.asarray(D.eidolon(jnp.asarray(img), 0.0, 1.0, 10.0, KEY))[..., 0]
    # Independent reference: mirror-embed in 64x64, periodic Gaussian blur at sigma 1/sqrt2.
    sigma = 1 / math.sqrt(2)
    fat = np.pad(_grey(img), 16, mode="symmetric")
    ref = ndi.gaussian_filter(fat, sigma, mode="wrap", truncate=8.0)[16:48, 16:48]
    # The factory samples the Gaussian density without renormalising it (scipy does).
    v = np.fft.fftfreq(64, 1 / 64)
    ref = ref * (np.exp(-v**2 / (2 * sigma**2)).sum() / (math.sqrt(2 * math.pi) * sigma)) ** 2
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-4)


def test_eidolon_uniform_displacement_translates_the_image(monkeypatch):
    # With every slice displaced by the same field, the slices (which sum to L_0) move
    # together: the eidolon is L_0 read `reach` pixels further down and to the right.
    img = _smooth_image(16, 32, 32)
    monkeypatch.setattr(D, "eidolon_displacements",
                        lambda key, shape, sigmas, *a: jnp.ones((len(sigmas),) + shape))
    out = np.asarray(D.eidolon(jnp.asarray(img), 3.0, 1.0, 10.0, KEY))[..., 0]
    sigma = 1 / math.sqrt(2)
    fat = np.pad(_grey(img), 16, mode="symmetric")
    l0 = ndi.gaussian_filter(fat, sigma, mode="wrap", truncate=8.0)
    v = np.fft.fftfreq(64, 1 / 64)
    l0 = l0 * (np.exp(-v**2 / (2 * sigma**2)).sum() / (math.sqrt(2 * math.pi) * sigma)) ** 2
    np.testing.assert_allclose(out, np.clip(l0[19:51, 19:51], 0, 1), atol=1e-4)


def test_eidolon_disarray_grows_with_reach_and_is_reproducible():
    img = jnp.asarray(_smooth_image(14, 32, 32))
    # reach is traced: one compile for all levels.
    run = jax.jit(lambda reach, key: D.eidolon(img, reach, 0.3, 10.0, key))
    base = np.asarray(run(0.0, KEY))
    diffs = [np.abs(np.asarray(run(r, KEY)) - base).mean() for r in (1.0, 8.0)]
    assert 0 < diffs[0] < diffs[1]
    np.testing.assert_array_equal(np.asarray(run(8.0, KEY)), np.asarray(run(8.0, KEY)))
    assert not np.allclose(np.asarray(run(8.0, jax.random.PRNGKey(1))), np.asarray(run(8.0, KEY)))
    with pytest.raises(ValueError, match="coherence"):
        D.eidolon(img, 1.0, 1.5, 10.0, KEY)


def test_eidolon_displacement_fields_follow_the_coherent_construction():
    sigmas = D.eidolon_scale_levels(64)
    assert len(sigmas) == 8 and sigmas[0] == pytest.approx(1 / math.sqrt(2))
    np.testing.assert_allclose(sigmas[1:] / sigmas[:-1], math.sqrt(2))
    f0 = np.asarray(D.eidolon_displacements(KEY, (64, 64), sigmas, 16.0, 0.0, 10.0))
    f1 = np.asarray(D.eidolon_displacements(KEY, (64, 64), sigmas, 16.0, 1.0, 10.0))
    # Coherent part only: consecutive levels differ by one scaled, standardised layer whose
    # std is sigma_k / max_sigma, and the coarsest level is that layer alone.
    for k in range(len(sigmas) - 1):
        assert (f0[k] - f0[k + 1]).std() == pytest.approx(sigmas[k] / 16.0, rel=1e-3)
    assert f0[-1].std() == pytest.approx(sigmas[-1] / 16.0, rel=1e-3)
    # Coherence adds a unit-variance incoherent field on top (same key: same coherent part).
    inc = f1 - f0
    np.testing.assert_allclose(inc.std(axis=(1, 2)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(inc.mean(axis=(1, 2)), 0.0, atol=1e-4)


def test_eidolon_factory_noise_gives_equal_layer_contributions():
    # The public factory's blurred noise keeps std ~ 127.5 / (max|N| 2 sqrt(pi) sigma), so
    # after the sigma / max_sigma scaling every coherent layer adds about the same std.
    sigmas = D.eidolon_scale_levels(64)
    f0 = np.asarray(D.eidolon_displacements(KEY, (128, 128), sigmas, 16.0, 0.0, 10.0,
                                            noise="factory"))
    layers = [(f0[k] - f0[k + 1]).std() for k in range(1, 5)]  # sigma 1 .. 4
    np.testing.assert_allclose(layers, np.mean(layers), rtol=0.15)
    # 127.5 / (max|N| * 2 sqrt(pi) * 16) with max|N| of 128^2 normals in [3.5, 5]: 0.45-0.64.
    assert 0.45 < np.mean(layers) < 0.64
    with pytest.raises(ValueError, match="eidolon noise"):
        D.eidolon_displacements(KEY, (16, 16), sigmas, 16.0, 0.0, 10.0, noise="pink")


def test_apply_distortion_levels_and_errors():
    img = jnp.asarray(_smooth_image(15, 16, 16))[None]
    assert len(D.DISTORTION_LEVELS) == 12
    np.testing.assert_allclose(np.asarray(D.apply_distortion("contrast", img, 0.1)),
                               np.asarray(D.contrast(img, 0.1)))
    with pytest.raises(ValueError, match="unknown distortion"):
        D.apply_distortion("blur", img, 1.0)
    with pytest.raises(ValueError, match="pass rng"):
        D.apply_distortion("uniform_noise", img, 0.1)


def test_robustness_curve_confusion_and_plots(tmp_path):
    from sklearn.metrics import confusion_matrix as sk_confusion

    r = np.random.default_rng(0)
    labels = np.array([0, 1] * 6)
    # Class 1 = bright images, class 0 = dark ones; a brightness-threshold observer.
    imgs = np.where(labels[:, None, None, None] == 1, 0.8, 0.2) + 0.05 * r.random((12, 8, 8, 3))
    imgs = imgs.astype(np.float32)

    def predict(x):
        return (x.mean(axis=(1, 2, 3)) > 0.5).astype(jnp.int32)

    curve = D.robustness_curve(predict, imgs, labels, "contrast", levels=(1.0, 0.0),
                               batch_size=5)
    # Full contrast: perfect; zero contrast: every image is 0.5 grey -> all "dark" (class 0).
    assert curve["accuracy"] == [1.0, 0.5]
    # Another observer on the same stimuli reuses the compiled distortions (one per level and
    # batch shape), and is scored on its own decisions.
    compiled = D._jit_distortion._cache_size()
    inverted = D.robustness_curve(lambda x: 1 - predict(x), imgs, labels, "contrast",
                                  levels=(1.0, 0.0), batch_size=5)
    assert inverted["accuracy"] == [0.0, 0.5]
    assert D._jit_distortion._cache_size() == compiled
    m = confusion_matrix(labels, curve["predictions"][1], 2)
    np.testing.assert_array_equal(m, sk_confusion(labels, curve["predictions"][1]))
    assert D.response_concentration(m) == 1.0
    with pytest.raises(ValueError, match="preds must lie in"):
        confusion_matrix(np.array([0, 1]), np.array([0, 2]), 2, skip_negative_preds=True)
    # A "no response" (-1) is left out of the counts.
    assert confusion_matrix(np.array([0, 1]), np.array([-1, 1]), 2,
                            skip_negative_preds=True).sum() == 1
    assert D.response_concentration(confusion_matrix(labels, labels, 2)) == 0.5

    path = tmp_path / "curve.png"
    D.plot_robustness_curves({"toy": curve}, str(path), title="contrast")
    cm_path = tmp_path / "cm.png"
    D.plot_confusion_matrices([confusion_matrix(labels, p, 2) for p in curve["predictions"]],
                              ["c100", "c0"], ["dark", "bright"], str(cm_path))
    import matplotlib.image as mpimg
    for p in (path, cm_path):
        pix = mpimg.imread(str(p))
        assert pix.shape[0] > 100 and pix[..., :3].std() > 0.05  # a real, non-blank figure


def test_human_condition_strings_map_to_levels():
    assert human_robustness.human_condition_level("contrast", "c05") == 0.05
    assert human_robustness.human_condition_level("contrast", "c100") == 1.0
    assert human_robustness.human_condition_level("eidolon_II", "16-3-10") == 16.0
    assert math.isinf(human_robustness.human_condition_level("high_pass", "inf"))
    assert human_robustness.human_condition_level("colour", "bw") == "greyscale"
    assert human_robustness.human_condition_level("power_equalisation", "pow") == "equalised"
    assert human_robustness.human_condition_level("rotation", "270") == 270
    assert human_robustness.human_condition_level("uniform_noise", "0.35") == 0.35
    with pytest.raises(ValueError, match="not one of"):
        human_robustness.human_condition_level("low_pass", "2")


def test_human_robustness_curves_from_csvs(tmp_path):
    import csv

    os.makedirs(tmp_path / "contrast")
    rows = {"subject-01": [("c100", "dog", "dog"), ("c100", "cat", "dog"), ("c05", "cat", "cat")],
            "subject-02": [("c100", "dog", "dog"), ("c05", "knife", "cat")]}
    for subj, trials in rows.items():
        with open(tmp_path / "contrast" / f"{subj}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["subj", "Session", "trial", "rt", "object_response", "category",
                        "condition", "imagename"])
            for i, (cond, resp, cat) in enumerate(trials):
                w.writerow([subj, 1, i, 0.5, resp, cat, cond,
                            f"{i:04d}_cop_{subj[-3:]}_{cond}_{cat}_10_img{i}.png"])
    curves = human_robustness.human_robustness_curves(str(tmp_path), families=["contrast"])
    c = curves["contrast"]
    assert c["levels"] == list(D.DISTORTION_LEVELS["contrast"])
    assert c["accuracy"][0] == pytest.approx(2 / 3) and c["n_trials"][0] == 3
    assert c["accuracy"][5] == pytest.approx(1 / 2)  # c05 is the sixth level
    assert np.isnan(c["accuracy"][1])  # c50 not in this data
    assert c["per_subject"]["subject-01"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown distortions"):
        human_robustness.human_robustness_curves(str(tmp_path), families=["blur"])
