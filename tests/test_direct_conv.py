"""ssl_jax.models.direct_conv: the C++ 3x3 kernels against flax's nn.Conv (XLA's convolution),
through models.conv.Conv as the models use them: values, both gradients, under vmap and on a
sharded batch; the opt-out, a failed build and bad shapes.

The kernels are built for x86-64 CPUs with AVX-512; elsewhere these tests are skipped with that
reason (CI's machines have it).
"""
import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax.models import conv, direct_conv

KEY = jax.random.key(0)

needs_kernels = pytest.mark.skipif(not direct_conv.available(),
                                   reason="direct convolution kernels unavailable on this CPU")


@pytest.fixture(autouse=True)
def _direct_on_the_test_devices(monkeypatch):
    """models.conv uses the kernels on one device only (DIRECT_MAX_DEVICES); these tests run
    them on the 8 test devices, with single-device programs or a batch-sharded one whose
    operands XLA gathers (tested below), so that they are exercised at all."""
    monkeypatch.setattr(conv, "DIRECT_MAX_DEVICES", jax.device_count())


def _conv_pair(features: int, padding, stride: int = 1):
    kwargs = dict(features=features, kernel_size=(3, 3), strides=(stride, stride),
                  padding=padding, use_bias=False)
    return conv.Conv(**kwargs), nn.Conv(**kwargs)


def _loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)))


@needs_kernels
@pytest.mark.parametrize("batch,size,channels,features,stride,padding", [
    (6, 8, 16, 16, 1, "SAME"),             # a width-0.25 ResNet's layer1
    (5, 7, 3, 16, 1, "SAME"),              # the CIFAR stem: image in, library input gradient
    (4, 9, 32, 32, 1, ((1, 1), (1, 1))),   # layer2, torch's explicit pads
    (3, 6, 16, 64, 1, "VALID"),            # no padding: output 4x4
    (3, 6, 64, 32, 1, ((2, 0), (0, 1))),   # uneven pads, fewer outputs than inputs
    (2, 5, 16, 16, 1, ((2, 2), (1, 0))),   # the most padding the kernels take
    (9, 5, 5, 16, 1, "SAME"),              # odd channel count, rows shorter than 8 pixels
    (4, 8, 16, 32, 2, ((1, 1), (1, 1))),   # layer2's entry: phase_split's input gradient
    (3, 9, 16, 16, 2, "SAME"),             # odd input, SAME pads (1, 1)
    (3, 10, 32, 64, 2, "SAME"),            # even input, SAME pads (0, 1); library input grad.
])
def test_direct_conv_equals_flax_conv(batch, size, channels, features, stride, padding):
    """Values and both gradients equal nn.Conv's to float32 rounding, and the compiled step calls
    the kernels (forward, kernel gradient, and the input gradient at stride 1 unless the input
    is an image)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    ours, flax_conv = _conv_pair(features, padding, stride)
    params = flax_conv.init(KEY, x)
    pads = padding if isinstance(padding, str) else list(padding)
    assert conv.cpu_form(x, params["params"]["kernel"], (stride, stride), pads,
                         dimension_numbers=conv.NHWC_HWIO) == "direct"
    results = {}
    for label, module in (("ours", ours), ("flax", flax_conv)):
        fn = jax.jit(jax.value_and_grad(functools.partial(_loss, module), argnums=(0, 1)))
        results[label] = fn(params, x)
        hlo = fn.lower(params, x).compile().as_text()
        forwards = hlo.count(f'custom_call_target="{direct_conv.FORWARD_TARGET}"')
        kernel_grads = hlo.count(f'custom_call_target="{direct_conv.KERNEL_GRAD_TARGET}"')
        if label == "ours":  # the input gradient is a forward pass of the output gradient
            direct_input_grad = stride == 1 and channels in direct_conv.OUTPUT_CHANNELS
            assert (forwards, kernel_grads) == (2 if direct_input_grad else 1, 1)
        else:
            assert (forwards, kernel_grads) == (0, 0)
    for a, b in zip(jax.tree.leaves(results["ours"]), jax.tree.leaves(results["flax"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_direct_conv_under_vmap_equals_flax_conv():
    """Under vmap (MoCo's BatchNorm splits run the backbone vmapped over slices of the batch)
    each slice is convolved on its own: outputs and the kernel gradient equal nn.Conv's."""
    rng = np.random.default_rng(4)
    xs = jnp.asarray(rng.normal(size=(3, 4, 6, 6, 16)), jnp.float32)
    ours, flax_conv = _conv_pair(16, "SAME")
    params = flax_conv.init(KEY, xs[0])

    def loss(module, p):
        return jnp.sum(jnp.sin(jax.vmap(lambda x: module.apply(p, x))(xs)))

    got = jax.jit(jax.value_and_grad(functools.partial(loss, ours)))(params)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, flax_conv)))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_direct_conv_on_a_sharded_batch_equals_one_device():
    """With the batch split over the 8 test devices (models.conv allows this only when told to,
    DIRECT_MAX_DEVICES) the kernels see the whole batch, XLA gathering their operands: the same
    values and gradients as on one device."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 16)), jnp.float32)
    ours, _ = _conv_pair(16, "SAME")
    params = ours.init(KEY, x)
    fn = jax.jit(jax.value_and_grad(functools.partial(_loss, ours), argnums=(0, 1)))
    single = fn(params, x)
    sharded = fn(jax.device_put(params, NamedSharding(mesh, P())),
                 jax.device_put(x, NamedSharding(mesh, P("data"))))
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_direct_conv_only_on_one_device(monkeypatch):
    """With DIRECT_MAX_DEVICES at 1 (the default) and the 8 test devices, a convolution the
    kernels take stays in the library form (module comment in models/conv.py)."""
    monkeypatch.setattr(conv, "DIRECT_MAX_DEVICES", 1)
    x = jnp.zeros((2, 8, 8, 16), jnp.float32)
    kernel = jnp.zeros((3, 3, 16, 16), jnp.float32)
    assert jax.device_count() == 8
    assert conv.cpu_form(x, kernel, (1, 1), "SAME",
                         dimension_numbers=conv.NHWC_HWIO) == "library"


def test_direct_conv_opt_out_and_failed_build_fall_back(monkeypatch, tmp_path, caplog):
    """SSL_JAX_DIRECT_CONV=0 turns the kernels off; a missing compiler does too, with one
    warning line; either way a 16-channel 3x3 convolution takes the library form."""
    x = jnp.zeros((2, 8, 8, 16), jnp.float32)
    kernel = jnp.zeros((3, 3, 16, 16), jnp.float32)
    try:
        direct_conv.available.cache_clear()
        monkeypatch.setenv("SSL_JAX_DIRECT_CONV", "0")
        assert not direct_conv.available()
        assert conv.cpu_form(x, kernel, (1, 1), "SAME",
                             dimension_numbers=conv.NHWC_HWIO) == "library"

        direct_conv.available.cache_clear()
        monkeypatch.setenv("SSL_JAX_DIRECT_CONV", "1")
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        monkeypatch.setattr(direct_conv, "_cpu_has_avx512", lambda: True)
        monkeypatch.setattr(direct_conv.platform, "machine", lambda: "x86_64")
        with caplog.at_level(logging.WARNING, logger=direct_conv.__name__):
            assert not direct_conv.available()
        assert [r.getMessage() for r in caplog.records] == [
            f"direct convolutions off: no C++ compiler ({tmp_path / 'no-such-compiler'}) "
            "found; XLA's are used"]
        assert conv.cpu_form(x, kernel, (1, 1), "SAME",
                             dimension_numbers=conv.NHWC_HWIO) == "library"
    finally:
        monkeypatch.undo()
        direct_conv.available.cache_clear()


def test_direct_conv_compile_error_is_one_line(monkeypatch, tmp_path):
    """A source that does not compile: the error names the file and the compiler's first error
    line, and nothing is left in the cache."""
    bad = tmp_path / "direct_conv.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(direct_conv, "SOURCE", bad)
    monkeypatch.setenv("SSL_JAX_CACHE", str(tmp_path / "cache"))
    compiler = direct_conv.shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ on this machine")
    with pytest.raises(RuntimeError, match=r"g\+\+ failed on direct_conv\.cc: .*error"):
        direct_conv._build(compiler)
    assert list((tmp_path / "cache").iterdir()) == []


@needs_kernels
def test_direct_conv_rejects_shapes_it_does_not_take():
    """Called directly with 128 output channels (a count the kernels do not take) the kernel
    fails with XLA's error naming the limit instead of writing out of bounds."""
    x = jnp.ones((2, 6, 6, 16), jnp.float32)
    k = jnp.ones((3, 3, 16, 128), jnp.float32)
    with pytest.raises(Exception, match="output channels must be 16, 32 or 64"):
        jax.block_until_ready(direct_conv.forward(x, k, ((1, 1), (1, 1))))
