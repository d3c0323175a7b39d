"""The twelve image distortions of Geirhos et al. (002), robustness curves and confusion plots.

Conventions (all distortions):
  * images are float arrays in [0, 1], shape [..., H, W, 3] (any leading batch dims, any H, W);
  * every distortion except ``colour`` (colour level) and ``false_colour`` first converts to
    greyscale with scikit-image's ``rgb2gray`` weights and returns the grey image stacked to 3
    channels, so a model sees the same number of channels as on clean images;
  * random distortions take a ``jax.random`` key; the same key gives the same image;
  * level arguments that change array shapes (filter radii, rotations, scale-space depth) are
    Python scalars, so jit them with ``static_argnums``/``functools.partial``.

Definitions follow Geirhos et al. 2018 (code/image_manipulation.py of
rgeirhos/generalisation-humans-DNNs) and, for eidolons, the Eidolon factory of Koenderink et al.
(JoV 2017, gestaltrevision/Eidolon). Deviations are listed in docs/BEHAVIOUR.md.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import augment

# Mean pixel value of the 2018 stimuli: background of the filters and target mean of high-pass.
BG_GREY = 0.4423
# scikit-image rgb2gray (ITU-R BT.709 luma) weights.
GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)

# Levels of each family as used in the human experiments (002, model-vs-human raw data).
DISTORTION_LEVELS: dict[str, tuple] = {
    "colour": ("colour", "greyscale"),
    "contrast": (1.0, 0.5, 0.3, 0.15, 0.1, 0.05, 0.03, 0.01),
    "high_pass": (math.inf, 3.0, 1.5, 1.0, 0.7, 0.55, 0.45, 0.4),
    "low_pass": (0.0, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0, 40.0),
    "phase_scrambling": (0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0),
    "power_equalisation": ("original", "equalised"),
    "false_colour": ("true", "false"),
    "rotation": (0, 90, 180, 270),
    "eidolon_I": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
    "eidolon_II": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
    "eidolon_III": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
    "uniform_noise": (0.0, 0.03, 0.05, 0.1, 0.2, 0.35, 0.6, 0.9),
}
# Eidolon I/II/III differ only in coherence; grain 10 in all three (conditions "R-C-10").
EIDOLON_COHERENCE = {"eidolon_I": 1.0, "eidolon_II": 0.3, "eidolon_III": 0.0}
EIDOLON_GRAIN = 10.0


def _check_image(image: jax.Array) -> None:
    if image.ndim < 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [..., H, W, 3], got shape {image.shape}")


def _stack3(grey: jax.Array) -> jax.Array:
    return jnp.repeat(grey[..., None], 3, axis=-1)


def greyscale_channel(image: jax.Array) -> jax.Array:
    """Luminance [..., H, W] of an RGB image [..., H, W, 3] with skimage's rgb2gray weights."""
    _check_image(image)
    return image @ jnp.asarray(GREY_WEIGHTS, dtype=image.dtype)


def greyscale(image: jax.Array) -> jax.Array:
    """Greyscale image stacked to 3 channels: [..., H, W, 3] -> [..., H, W, 3]."""
    return _stack3(greyscale_channel(image))


def colour(image: jax.Array, level: str) -> jax.Array:
    """Colour experiment: ``level`` 'colour' returns the image, 'greyscale' its grey version."""
    if level == "colour":
        _check_image(image)
        return image
    if level == "greyscale":
        return greyscale(image)
    raise ValueError(f"colour level {level!r} not in ('colour', 'greyscale')")


def contrast(image: jax.Array, level: float) -> jax.Array:
    """Greyscale, then contrast ``level`` c in [0, 1]: (1 - c) / 2 + c * grey."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"contrast level {level} not in [0, 1]")
    return _stack3((1.0 - level) / 2.0 + level * greyscale_channel(image))


def uniform_noise(image: jax.Array, width: float, rng: jax.Array,
                  contrast_level: float = 0.3) -> jax.Array:
    """Greyscale at contrast 0.3, plus i.i.d. noise U[-width, width) per pixel, clipped to [0, 1].

    One noise field per image (the field has the batch shape, so images in a batch differ).
    """
    if width < 0:
        raise ValueError(f"uniform noise width {width} must be >= 0")
    grey = (1.0 - contrast_level) / 2.0 + contrast_level * greyscale_channel(image)
    noise = jax.random.uniform(rng, grey.shape, grey.dtype, -width, width)
    return _stack3(jnp.clip(grey + noise, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Gaussian filtering (exactly scipy.ndimage.gaussian_filter, mode='constant', truncate=4)
# ---------------------------------------------------------------------------------------------
def _gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    # scipy.ndimage.gaussian_filter1d's radius rule, in float64 (cast to the image's float32,
    # the taps equal scipy's for 200 sigmas in 0.3-40, the ones checked).
    return augment.gaussian_kernel1d(sigma, int(truncate * sigma + 0.5), xp=np,
                                     dtype=np.float64)


def _band_matrix(kernel: np.ndarray, n: int) -> np.ndarray:
    """[n, n + len(kernel) - 1] matrix whose row i holds ``kernel`` at columns i..i+K-1."""
    m = np.zeros((n, n + len(kernel) - 1))
    for i in range(n):
        m[i, i:i + len(kernel)] = kernel
    return m


def gaussian_filter(grey: jax.Array, sigma: float, cval: float = BG_GREY) -> jax.Array:
    """Gaussian blur of [..., H, W] with constant padding ``cval`` (scipy mode='constant').

    Separable correlation with the truncated (4 sigma) normalised kernel scipy uses, so the
    result equals ``scipy.ndimage.gaussian_filter(x, sigma, mode='constant', cval=cval)`` per
    image. ``sigma`` must be a Python float (it fixes the kernel size).
    """
    if sigma < 0:
        raise ValueError(f"gaussian sigma {sigma} must be >= 0")
    if sigma == 0:
        return grey
    h, w = grey.shape[-2:]
    # Each 1-D pass is a matmul with a banded [n, n + 2r] matrix over the cval-padded image:
    # exact, and far faster on CPU than XLA's convolution with 100+ tap kernels (sigma 40).
    kh = jnp.asarray(_band_matrix(_gaussian_kernel1d(float(sigma)), h), dtype=grey.dtype)
    kw = jnp.asarray(_band_matrix(_gaussian_kernel1d(float(sigma)), w), dtype=grey.dtype)
    r = (kh.shape[1] - h) // 2
    pad = [(0, 0)] * (grey.ndim - 2) + [(r, r), (r, r)]
    x = jnp.pad(grey, pad, constant_values=cval)
    prec = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ij,...jk->...ik", kh, x, precision=prec)
    return jnp.einsum("...ik,lk->...il", x, kw, precision=prec)


def low_pass(image: jax.Array, sigma: float) -> jax.Array:
    """Greyscale, Gaussian low-pass with std ``sigma`` (constant background 0.4423), clipped."""
    return _stack3(jnp.clip(gaussian_filter(greyscale_channel(image), sigma), 0.0, 1.0))


def high_pass(image: jax.Array, sigma: float) -> jax.Array:
    """Greyscale, grey - lowpass(grey, sigma), mean shifted to 0.4423 per image, clipped.

    ``sigma = inf`` is the unfiltered greyscale image (the experiment's reference condition).
    """
    grey = greyscale_channel(image)
    if math.isinf(sigma):
        return _stack3(grey)
    if sigma <= 0:
        raise ValueError(f"high-pass sigma {sigma} must be > 0 or inf")
    hp = grey - gaussian_filter(grey, sigma)
    hp = hp + (BG_GREY - hp.mean(axis=(-2, -1), keepdims=True))
    return _stack3(jnp.clip(hp, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Fourier-domain distortions
# ---------------------------------------------------------------------------------------------
def _negative_frequency(x: jax.Array) -> jax.Array:
    """x[..., (-i) % H, (-j) % W]: the value at the conjugate frequency of each FFT bin."""
    return jnp.roll(jnp.flip(x, axis=(-2, -1)), shift=(1, 1), axis=(-2, -1))


def antisymmetric_phase_noise(rng: jax.Array, shape: Sequence[int], width_rad: float,
                              dtype=jnp.float32) -> jax.Array:
    """Phase noise [..., H, W] uniform in [-width, width] with phi(-k) = -phi(k) (FFT layout).

    Each conjugate pair of frequencies gets one uniform draw (added to one, subtracted from the
    other) so the scrambled spectrum stays Hermitian and the image stays real; self-conjugate
    bins (DC, Nyquist) get no noise.
    """
    h, w = shape[-2], shape[-1]
    u = jax.random.uniform(rng, tuple(shape), dtype, -width_rad, width_rad)
    lin = jnp.arange(h * w).reshape(h, w)
    lin_neg = _negative_frequency(lin)
    return jnp.where(lin < lin_neg, u, jnp.where(lin > lin_neg, -_negative_frequency(u), 0.0))


def phase_scrambling(image: jax.Array, width_deg: float, rng: jax.Array) -> jax.Array:
    """Greyscale, add uniform phase noise in [-width, width] degrees to every frequency, clip.

    The amplitude spectrum is unchanged (up to the final clipping to [0, 1]).
    """
    if not 0.0 <= width_deg <= 180.0:
        raise ValueError(f"phase noise width {width_deg} not in [0, 180] degrees")
    grey = greyscale_channel(image)
    f = jnp.fft.fft2(grey)
    noise = antisymmetric_phase_noise(rng, grey.shape, math.radians(width_deg), grey.dtype)
    out = jnp.fft.ifft2(f * jnp.exp(1j * noise)).real.astype(grey.dtype)
    return _stack3(jnp.clip(out, 0.0, 1.0))


def mean_amplitude_spectrum(images: jax.Array) -> jax.Array:
    """Mean |FFT2| of the greyscale images: [N, H, W, 3] -> [H, W] (unshifted FFT layout)."""
    return jnp.abs(jnp.fft.fft2(greyscale_channel(images))).mean(axis=0)


def power_equalisation(image: jax.Array, amplitude: jax.Array) -> jax.Array:
    """Greyscale, replace the amplitude spectrum by ``amplitude`` [H, W], keep phases, clip.

    ``amplitude`` is in unshifted FFT layout (e.g. ``mean_amplitude_spectrum`` of the stimulus
    set) and must be symmetric (A[k] = A[-k], true for any real image's spectrum) for the
    result to be real.
    """
    grey = greyscale_channel(image)
    if amplitude.shape != grey.shape[-2:]:
        raise ValueError(f"amplitude shape {amplitude.shape} != image shape {grey.shape[-2:]}")
    phase = jnp.angle(jnp.fft.fft2(grey))
    out = jnp.fft.ifft2(amplitude * jnp.exp(1j * phase)).real.astype(grey.dtype)
    return _stack3(jnp.clip(out, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# False colour (opponent-colour inversion in DKL space)
# ---------------------------------------------------------------------------------------------
# RGB -> LMS cone activations of the 2018 lab monitor, and LMS contrast -> DKL opponent axes
# (luminance L+M, L-M, S-(L+M)); measured constants published with Geirhos et al. 2018.
_RGB_TO_LMS = np.array([[0.1619982647, 0.208049264, 0.0389347448],
                        [0.0330275785, 0.2496504557, 0.0618343518],
                        [0.0015524055, 0.0198861001, 0.1890224274]])
_LMS_TO_DKL = np.array([[9.27590805, 9.27590805, 0.0],
                        [7.86421647, -9.33587662, 0.0],
                        [-3.39709047, -3.39709047, 12.16230246]])
# Mid-grey (0.5, 0.5, 0.5) is the adaptation white point.
_WHITE_RGB = np.array([0.5, 0.5, 0.5])
# Negating both chromatic DKL axes is one linear map in RGB around the white point; it is its
# own inverse.
_FALSE_COLOUR_RGB = (np.linalg.inv(_RGB_TO_LMS) @ np.linalg.inv(_LMS_TO_DKL)
                     @ np.diag([1.0, -1.0, -1.0]) @ _LMS_TO_DKL @ _RGB_TO_LMS)


def false_colour(image: jax.Array, gamma: float | None = None) -> jax.Array:
    """Invert the two chromatic (DKL) axes of each pixel, keep luminance (L+M); clip to [0, 1].

    ``gamma``: if given, pixel values are linearised with x**gamma before and re-encoded with
    x**(1/gamma) after (the 2018 code used a measured monitor lookup table instead; default
    None treats pixel values as linear).
    """
    _check_image(image)
    x = image if gamma is None else jnp.clip(image, 0.0, 1.0) ** gamma
    t = jnp.asarray(_FALSE_COLOUR_RGB, dtype=image.dtype)
    white = jnp.asarray(_WHITE_RGB, dtype=image.dtype)
    out = jnp.clip((x - white) @ t.T + white, 0.0, 1.0)
    return out if gamma is None else out ** (1.0 / gamma)


def rotation(image: jax.Array, degrees: int) -> jax.Array:
    """Greyscale, rotate counter-clockwise by ``degrees`` in {0, 90, 180, 270} (np.rot90)."""
    if degrees not in (0, 90, 180, 270):
        raise ValueError(f"rotation {degrees} not in (0, 90, 180, 270)")
    return _stack3(jnp.rot90(greyscale_channel(image), k=degrees // 90, axes=(-2, -1)))


# ---------------------------------------------------------------------------------------------
# Eidolons: partially coherent disarray of a DOG scale space (Koenderink et al. 2017)
# ---------------------------------------------------------------------------------------------
_EIDOLON_MIN_SIGMA = 1.0 / math.sqrt(2.0)
_EIDOLON_SIGMA_FACTOR = math.sqrt(2.0)


def _pow2_ceil(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(n))) if n > 1 else 1


def eidolon_scale_levels(size: int) -> np.ndarray:
    """Scale-space sigmas for a picture of longest side ``size``: 1/sqrt2 * sqrt2**k.

    As in the Eidolon factory, the number of levels is ceil(2 log2(size / 4)).
    """
    n = math.ceil(2.0 * math.log2(size / 4.0))
    if n < 2:
        raise ValueError(f"eidolon needs images with longest side >= 12 px, got {size}")
    return _EIDOLON_MIN_SIGMA * _EIDOLON_SIGMA_FACTOR ** np.arange(n)


def _periodic_gaussian_fft(h: int, w: int, sigmas: np.ndarray) -> np.ndarray:
    """rFFT [n, h, w//2+1] of sampled, periodically wrapped Gaussians (the factory's blur)."""
    v = np.fft.fftfreq(h, 1.0 / h)[None, :, None]
    u = np.fft.fftfreq(w, 1.0 / w)[None, None, :]
    s = np.asarray(sigmas, np.float64)[:, None, None]
    g = (np.exp(-(v**2 + u**2) / (2 * s**2)) / (2 * np.pi * s**2))
    return np.fft.rfft2(g)


def _blur(x: jax.Array, kernel_fft: jax.Array) -> jax.Array:
    return jnp.fft.irfft2(jnp.fft.rfft2(x) * kernel_fft, s=x.shape[-2:]).astype(x.dtype)


def _standardise(x: jax.Array) -> jax.Array:
    m = x.mean(axis=(-2, -1), keepdims=True)
    return (x - m) / x.std(axis=(-2, -1), keepdims=True)


def _factory_noise(noise: jax.Array, kernel_fft: jax.Array) -> jax.Array:
    """The public factory's arithmetic: white noise scaled to max |x| = 127.5 (clipped at
    +-127), blurred, then ``c - mean / std`` (precedence as written: barely shifts c)."""
    x = 127.5 * noise / jnp.abs(noise).max(axis=(-2, -1), keepdims=True)
    c = _blur(jnp.clip(x, -127.0, 127.0), kernel_fft)
    return c - c.mean(axis=(-2, -1), keepdims=True) / c.std(axis=(-2, -1), keepdims=True)


def eidolon_displacements(rng: jax.Array, shape: tuple[int, int], sigmas: np.ndarray,
                          max_sigma: float, coherence: float, grain: float,
                          noise: str = "standardised") -> jax.Array:
    """One displacement component per scale level, [n_levels, h, w], in units of ``reach``.

    field_k = coherence * incoherent_k + coherent_k, where incoherent_k is white noise blurred
    at ``grain`` and coherent_k = sum_{j >= k} (sigma_j / max_sigma) * (noise blurred at
    sigma_j): coarse layers drag finer ones along. ``noise='standardised'`` gives every
    blurred noise plane zero mean and unit std (the evident intent of the factory);
    ``noise='factory'`` reproduces the public Python factory's arithmetic, whose blurred planes
    keep std ~ 127.5 / (max|N| 2 sqrt(pi) sigma), so every coherent layer contributes about
    equally instead of in proportion to its scale.
    """
    if noise not in ("standardised", "factory"):
        raise ValueError(f"eidolon noise {noise!r} not in ('standardised', 'factory')")
    h, w = shape
    n = len(sigmas)
    k_inc, k_coh = jax.random.split(rng)
    grain_fft = jnp.asarray(_periodic_gaussian_fft(h, w, np.array([grain])))
    scale_fft = jnp.asarray(_periodic_gaussian_fft(h, w, sigmas))
    white_inc = jax.random.normal(k_inc, (n, h, w))
    white_coh = jax.random.normal(k_coh, (n, h, w))
    if noise == "standardised":
        inc = _standardise(_blur(white_inc, grain_fft))
        coh = _standardise(_blur(white_coh, scale_fft))
    else:
        inc = _factory_noise(white_inc, grain_fft)
        coh = _factory_noise(white_coh, scale_fft)
    coh = coh * jnp.asarray(sigmas / max_sigma, jnp.float32)[:, None, None]
    coh = jnp.cumsum(coh[::-1], axis=0)[::-1]
    return coherence * inc + coh


def eidolon(image: jax.Array, reach: float, coherence: float, grain: float,
            rng: jax.Array, noise: str = "standardised") -> jax.Array:
    """Eidolon (partially coherent disarray) of the greyscale image, [..., H, W, 3] in [0, 1].

    Steps (Eidolon factory): mirror-embed the grey image in a power-of-two canvas >= 1.5x its
    size; Gaussian scale space at sigmas 1/sqrt2 * sqrt2**k (periodic FFT blur); DOG slices
    L_k - L_{k+1} plus the coarsest layer (they sum back to L_0); shift every slice's pixels by
    ``reach`` times its own displacement field (nearest pixel, clamped at the canvas edge); sum
    the slices, crop, clip. ``reach`` is in pixels, ``coherence`` in [0, 1] weights the
    incoherent (``grain``-scale) part of the fields, as in the factory and 002's conditions
    (eidolon I/II/III: coherence 1, 0.3, 0; grain 10). The picture size is the input's longest
    side (the 2018 stimuli were made at 256 px). ``noise``: see ``eidolon_displacements``.
    """
    _check_image(image)
    # reach and coherence may be traced (jit over levels without recompiling); grain may not.
    try:
        bad = float(reach) < 0 or not 0.0 <= float(coherence) <= 1.0
    except jax.errors.ConcretizationTypeError:
        bad = False
    if bad or grain <= 0:
        raise ValueError(f"eidolon needs reach >= 0, coherence in [0, 1], grain > 0; got "
                         f"reach={reach}, coherence={coherence}, grain={grain}")
    grey = greyscale_channel(image)
    lead, (h, w) = grey.shape[:-2], grey.shape[-2:]
    flat = grey.reshape((-1, h, w))
    keys = jax.random.split(rng, flat.shape[0])

    sigmas = eidolon_scale_levels(max(h, w))
    max_sigma = max(h, w) / 4.0
    hh, ww = _pow2_ceil(1.5 * h), _pow2_ceil(1.5 * w)
    dh, dw = (hh - h) // 2, (ww - w) // 2
    scale_fft = jnp.asarray(_periodic_gaussian_fft(hh, ww, sigmas))
    rows = jnp.arange(hh)[:, None]
    cols = jnp.arange(ww)[None, :]

    def one(g: jax.Array, key: jax.Array) -> jax.Array:
        fat = jnp.pad(g, ((dh, hh - h - dh), (dw, ww - w - dw)), mode="symmetric")
        scale_space = jnp.fft.irfft2(jnp.fft.rfft2(fat)[None] * scale_fft, s=(hh, ww))
        dog = jnp.concatenate([scale_space[:-1] - scale_space[1:], scale_space[-1:]], axis=0)
        kx, ky = jax.random.split(key)
        dx = eidolon_displacements(kx, (hh, ww), sigmas, max_sigma, coherence, grain, noise)
        dy = eidolon_displacements(ky, (hh, ww), sigmas, max_sigma, coherence, grain, noise)
        # Truncation of non-negative coordinates = floor, as in the factory's astype(int).
        r = jnp.clip(dx * reach + rows, 0, hh - 1).astype(jnp.int32)
        c = jnp.clip(dy * reach + cols, 0, ww - 1).astype(jnp.int32)
        shifted = jax.vmap(lambda plane, ri, ci: plane[ri, ci])(dog, r, c)
        return shifted.sum(axis=0)[dh:dh + h, dw:dw + w]

    # lax.map, not vmap: one image's stacks are already [n_levels, 2^k, 2^k] (12 x 512 x 512
    # at 224 px), so vmapping a batch would multiply peak memory by the batch size.
    out = jax.lax.map(lambda a: one(*a), (flat, keys)).reshape(lead + (h, w))
    return _stack3(jnp.clip(out, 0.0, 1.0).astype(grey.dtype))


# ---------------------------------------------------------------------------------------------
# Dispatcher, robustness curves, confusion matrices, plots
# ---------------------------------------------------------------------------------------------
def apply_distortion(family: str, images: jax.Array, level, rng: jax.Array | None = None,
                     amplitude: jax.Array | None = None) -> jax.Array:
    """Apply ``family`` at ``level`` (one of DISTORTION_LEVELS[family]) to [..., H, W, 3].

    ``rng`` is needed by uniform_noise, phase_scrambling and the eidolons; ``amplitude``
    [H, W] by power_equalisation (default: the mean spectrum of ``images`` themselves).
    """
    if family not in DISTORTION_LEVELS:
        raise ValueError(f"unknown distortion {family!r}; choose from {sorted(DISTORTION_LEVELS)}")
    if family in ("uniform_noise", "phase_scrambling") or family.startswith("eidolon"):
        if rng is None:
            raise ValueError(f"distortion {family!r} is random: pass rng")
    if family == "colour":
        return colour(images, level)
    if family == "contrast":
        return contrast(images, float(level))
    if family == "high_pass":
        return high_pass(images, float(level))
    if family == "low_pass":
        return low_pass(images, float(level))
    if family == "phase_scrambling":
        return phase_scrambling(images, float(level), rng)
    if family == "power_equalisation":
        if level == "original":
            return greyscale(images)
        if level != "equalised":
            raise ValueError(f"power_equalisation level {level!r} not in ('original', 'equalised')")
        if amplitude is None:
            amplitude = mean_amplitude_spectrum(images.reshape((-1,) + images.shape[-3:]))
        return power_equalisation(images, amplitude)
    if family == "false_colour":
        if level not in ("true", "false"):
            raise ValueError(f"false_colour level {level!r} not in ('true', 'false')")
        return images if level == "true" else false_colour(images)
    if family == "rotation":
        return rotation(images, int(level))
    if family == "uniform_noise":
        return uniform_noise(images, float(level), rng)
    return eidolon(images, float(level), EIDOLON_COHERENCE[family], EIDOLON_GRAIN, rng)


# Module level, family and level static (levels fix kernel sizes): one compiled program per
# (family, level, batch shape), reused by every batch and every network evaluated in a process.
_jit_distortion = jax.jit(apply_distortion, static_argnums=(0, 2))


def robustness_curve(predict_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                     labels: np.ndarray, family: str, levels: Sequence | None = None,
                     rng: jax.Array | None = None, batch_size: int = 64,
                     amplitude: jax.Array | None = None) -> dict:
    """Accuracy of ``predict_fn`` on ``images`` distorted at each level of ``family``.

    predict_fn: [B, H, W, 3] in [0, 1] -> class decisions [B] (ints, same label space as
    ``labels``; e.g. 16-class decisions via shape_bias.imagenet_probabilities_to_16).
    images: [N, H, W, 3]; labels: [N].
    Returns {'family', 'levels', 'accuracy': [n_levels], 'predictions': [n_levels, N]}.
    """
    levels = tuple(DISTORTION_LEVELS[family] if levels is None else levels)
    labels = np.asarray(labels)
    if family == "power_equalisation" and amplitude is None:
        amplitude = mean_amplitude_spectrum(jnp.asarray(images))
    rng = jax.random.PRNGKey(0) if rng is None else rng
    preds = np.zeros((len(levels), len(labels)), np.int64)
    for li, level in enumerate(levels):
        for start in range(0, len(labels), batch_size):
            batch = jnp.asarray(images[start:start + batch_size])
            key = jax.random.fold_in(jax.random.fold_in(rng, li), start)
            preds[li, start:start + batch_size] = np.asarray(
                predict_fn(_jit_distortion(family, batch, level, key, amplitude)))
    return {"family": family, "levels": list(levels),
            "accuracy": (preds == labels[None]).mean(axis=1).tolist(), "predictions": preds}


def response_concentration(confusion: np.ndarray) -> float:
    """Fraction of all responses that go to the single most chosen class (1/n_classes for
    evenly spread responses, 1 for total collapse onto one class). `confusion` is
    confusion.confusion_matrix's [truth, response] counts."""
    totals = confusion.sum(axis=0)
    return float(totals.max() / max(totals.sum(), 1))


def plot_robustness_curves(curves: Mapping[str, Mapping], path: str,
                           title: str | None = None) -> None:
    """Accuracy-vs-level plot (002 Fig. 1 panel) for several observers of one family.

    curves: {observer_name: {'levels': [...], 'accuracy': [...]}}; levels may be numbers or
    strings (plotted as categories, evenly spaced, in the given order).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    markers = "Dosv^<>phx*"
    ticklabels = None
    for i, (name, c) in enumerate(curves.items()):
        ticklabels = [str(lv) for lv in c["levels"]]
        ax.plot(range(len(c["levels"])), c["accuracy"], marker=markers[i % len(markers)],
                label=name)
    if ticklabels is not None:
        ax.set_xticks(range(len(ticklabels)), ticklabels, rotation=45)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("level")
    ax.set_ylabel("classification accuracy")
    ax.set_title(title or "")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion_matrices(matrices: Sequence[np.ndarray], level_names: Sequence[str],
                            class_names: Sequence[str], path: str, title: str = "") -> None:
    """Row of confusion matrices, one per level, drawn as 002 Fig. 4 does: rows response,
    columns truth. `matrices` are confusion.confusion_matrix's [truth, response] counts.

    Each drawn matrix is normalised by its column sums so that a collapse onto one response
    class shows up as one bright row.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.7), squeeze=False)
    for ax, m, name in zip(axes[0], matrices, level_names):
        col = m.T / np.maximum(m.T.sum(axis=0, keepdims=True), 1)
        ax.imshow(col, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{name}\nconc.={response_concentration(m):.2f}", fontsize=8)
        ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=5)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=5)
    axes[0][0].set_ylabel("response")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
