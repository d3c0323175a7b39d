"""ssl_jax.models: registry, shapes/widths, padding semantics, sown names, heads.

Numerical parity of whole backbones with torch lives in test_convert_torchvision.py; here the
references are numpy/torch one-liners and shape arithmetic. Variables are filled from numpy
through ``jax.eval_shape`` (random init is slow to compile on CPU and is not what is tested).
"""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_jax import models
from ssl_jax.models import (LinearClassifier, MLPHead, ProjectionMLP, ProjectionMLPv2,
                            get_model, layer_names)

KEY = jax.random.key(0)


def _abstract(module: nn.Module, x, **kwargs):
    return jax.eval_shape(functools.partial(module.init, train=False, **kwargs), KEY, x)


def _random_variables(module: nn.Module, x, seed: int = 0):
    """Variables with random weights and non-trivial BN statistics, as numpy float32."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            v = rng.uniform(0.5, 1.5, leaf.shape)
        elif name in ("scale",):
            v = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "kernel":
            v = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        else:  # bias, mean
            v = 0.1 * rng.normal(size=leaf.shape)
        return v.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract(module, x))


def _n_params(name: str, **kwargs) -> int:
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    params = _abstract(get_model(name, **kwargs), x)["params"]
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name,count", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                        ("alexnet", 61_100_840), ("vgg16_bn", 138_365_992)])
def test_parameter_counts_equal_torchvision(name, count):
    assert _n_params(name, num_classes=1000) == count


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet19'; valid names: resnet18, "):
        get_model("resnet19")
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        layer_names("vit")
    with pytest.raises(ValueError, match=r"unknown kwargs \['depth'\] for vgg16; valid: "):
        get_model("vgg16", depth=3)
    with pytest.raises(ValueError,
                       match=r"padding='valid'; valid choices: \('torch', 'same', 'simclr'\)"):
        get_model("resnet18", padding="valid")
    with pytest.raises(ValueError, match="width=0 must be > 0"):
        get_model("resnet50", width=0)
    with pytest.raises(ValueError, match="cifar_stem=True is not supported by alexnet"):
        get_model("alexnet", cifar_stem=True)
    tiny = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"at least 63x63 px, got \(32, 32\)"):
        _abstract(get_model("alexnet"), tiny)
    with pytest.raises(ValueError, match="VGG needs inputs of at least 32x32 px"):
        _abstract(get_model("vgg16"), jax.ShapeDtypeStruct((1, 31, 40, 3), jnp.float32))
    # ResNet-only options at their defaults are accepted by every backbone.
    assert get_model("vgg16_bn", cifar_stem=False, padding="torch").batch_norm


def test_width_multiplies_every_conv_including_the_stem():
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    for width, stem in ((2.0, 128), (0.25, 16)):
        model = get_model("resnet50", width=width)
        params = _abstract(model, x)["params"]
        assert params["conv1"]["kernel"].shape == (7, 7, 3, stem)
        assert params["layer1_0"]["conv1"]["kernel"].shape == (1, 1, stem, stem)
        assert params["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 8 * stem, 32 * stem)
        assert model.num_features == 32 * stem
        out = jax.eval_shape(functools.partial(model.apply, train=False),
                             _abstract(model, x), x)
        assert out.shape == (2, model.num_features) and out.dtype == jnp.float32
    # SimCLR's ResNet-50 (2x) backbone: "94M" in the paper; 93,907,072 counted on the
    # hand-written torchvision-layout torch model of test_convert_torchvision.py.
    assert _n_params("resnet50", width=2.0) == 93_907_072
    params = _abstract(get_model("alexnet", width=0.5, fc_dim=64), jax.ShapeDtypeStruct(
        (1, 64, 64, 3), jnp.float32))["params"]
    assert params["features_0"]["kernel"].shape == (11, 11, 3, 32)
    assert params["classifier_1"]["kernel"].shape == (128 * 36, 64)  # C*6*6 flatten


def _sown_shapes(model: nn.Module, x, before_apply=lambda: None) -> dict:
    variables = _abstract(model, x)
    before_apply()
    _, state = jax.eval_shape(functools.partial(model.apply, train=False,
                                                mutable=["intermediates"]), variables, x)
    return {k: v[0].shape for k, v in state["intermediates"].items()}


def test_cifar_stem_keeps_resolution():
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    cifar = _sown_shapes(get_model("resnet18", width=0.25, cifar_stem=True), x)
    assert cifar["stem"] == (2, 32, 32, 16) and cifar["layer4"] == (2, 4, 4, 128)
    imagenet = _sown_shapes(get_model("resnet18", width=0.25), x)
    assert imagenet["stem"] == (2, 8, 8, 16) and imagenet["layer4"] == (2, 1, 1, 128)
    params = _abstract(get_model("resnet18", cifar_stem=True), x)["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 64)


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet101", 64), ("alexnet_bn", 67),
                                       ("vgg16", 32)])
def test_sown_names_follow_layer_names_in_forward_order(name, size, monkeypatch):
    order = []
    original = nn.Module.sow

    def recording_sow(self, col, sow_name, value, *args, **kwargs):
        if col == "intermediates":
            order.append(sow_name)
        return original(self, col, sow_name, value, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "sow", recording_sow)
    model = get_model(name, width=0.125, **({} if name.startswith("resnet") else {"fc_dim": 8}))
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    shapes = _sown_shapes(model, x, before_apply=order.clear)  # init sows too
    assert order == layer_names(name)
    assert set(shapes) == set(order)
    if name == "resnet101":
        assert len([n for n in order if n.startswith("layer3.")]) == 23
        assert shapes["layer3"] == shapes["layer3.22"] == (2, 4, 4, 128)
        assert shapes["pool"] == (2, model.num_features)
    if name == "alexnet_bn":
        assert shapes["conv5"] == (2, 3, 3, 32) and shapes["pool5"] == (2, 6, 6, 32)
        assert shapes["fc7"] == (2, 8)
    if name == "vgg16":
        assert shapes["conv5"] == shapes["conv5_3"] == (2, 2, 2, 64)


def test_same_padding_is_tf_same_and_differs_from_torch():
    """Stem conv 7x7/2 + max-pool 3x3/2 on an even input (64 px).

    SAME pads (2, 3) for the conv and (0, 1) for the pool, torch pads (3, 3) and (1, 1);
    "simclr" pads the conv like torch and the pool like SAME.
    """
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    torch_model = get_model("resnet18", width=0.125)
    same_model = get_model("resnet18", width=0.125, padding="same")
    simclr_model = get_model("resnet18", width=0.125, padding="simclr")
    variables = _random_variables(torch_model, x, seed=1)

    def stem(model):
        _, state = jax.jit(functools.partial(model.apply, train=False,
                                             mutable=["intermediates"]))(variables, x)
        return np.asarray(state["intermediates"]["stem"][0]).transpose(0, 3, 1, 2)

    def reference(conv_pad, pool_pad):
        w = torch.from_numpy(np.asarray(variables["params"]["conv1"]["kernel"])
                             .transpose(3, 2, 0, 1))
        bn = {k: torch.from_numpy(np.asarray(v)) for k, v in
              {**variables["params"]["bn1"], **variables["batch_stats"]["bn1"]}.items()}
        y = F.conv2d(F.pad(torch.from_numpy(x.transpose(0, 3, 1, 2)), conv_pad), w, stride=2)
        y = F.batch_norm(y, bn["mean"], bn["var"], bn["scale"], bn["bias"], eps=1e-5)
        y = F.pad(F.relu(y), pool_pad, value=-float("inf"))
        return F.max_pool2d(y, 3, 2).numpy()

    same_ref = reference((2, 3, 2, 3), (0, 1, 0, 1))
    torch_ref = reference((3, 3, 3, 3), (1, 1, 1, 1))
    simclr_ref = reference((3, 3, 3, 3), (0, 1, 0, 1))
    same_out, torch_out, simclr_out = stem(same_model), stem(torch_model), stem(simclr_model)
    assert same_out.shape == torch_out.shape == (2, 8, 16, 16)
    np.testing.assert_allclose(same_out, same_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch_out, torch_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(simclr_out, simclr_ref, rtol=1e-4, atol=1e-4)
    assert np.abs(same_out - torch_out).max() > 0.1
    assert np.abs(simclr_out - torch_out).max() > 0.1
    assert np.abs(simclr_out - same_out).max() > 0.1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, "bfloat16"])
def test_bfloat16_computes_in_bf16_with_float32_params_and_output(dtype):
    model = get_model("resnet18", width=0.25, num_classes=3, dtype=dtype)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = _abstract(model, x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out, state = jax.eval_shape(functools.partial(model.apply, train=False,
                                                  mutable=["intermediates"]), variables, x)
    assert out.dtype == jnp.float32
    assert state["intermediates"]["layer2"][0].dtype == jnp.bfloat16


def test_every_layer_is_reachable_with_capture_intermediates():
    """Beyond the sown stages, flax's capture_intermediates names every submodule output."""
    model = get_model("resnet50", width=0.125)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    _, state = jax.eval_shape(functools.partial(
        model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]),
        _abstract(model, x), x)
    acts = state["intermediates"]
    assert acts["layer2_0"]["conv2"]["__call__"][0].shape == (2, 8, 8, 16)  # stride on 3x3
    assert acts["layer2_0"]["conv1"]["__call__"][0].shape == (2, 16, 16, 16)
    assert acts["layer2_0"]["downsample_1"]["__call__"][0].shape == (2, 8, 8, 64)
    assert acts["layer1"][0].shape == (2, 16, 16, 32)  # sown names sit beside them


def test_dropout_needs_an_rng_in_training_only():
    model = get_model("alexnet", width=0.125, fc_dim=16)
    x = np.random.default_rng(0).normal(size=(2, 63, 63, 3)).astype(np.float32)
    variables = _random_variables(model, x)
    evaluated = model.apply(variables, x, train=False)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)
    trained = model.apply(variables, x, train=True, rngs={"dropout": KEY})
    assert not np.allclose(trained, evaluated)
    # AlexNet has no BN, so with the dropout rate at 0 training is the eval forward.
    no_dropout = get_model("alexnet", width=0.125, fc_dim=16, dropout_rate=0.0)
    np.testing.assert_allclose(no_dropout.apply(variables, x, train=True), evaluated, rtol=1e-6)


# ---------------------------------------------------------------- heads


def _np_bn(h, mean, var, scale=None, bias=None):
    y = (h - mean) / np.sqrt(var + 1e-5)
    return y * (1 if scale is None else scale) + (0 if bias is None else bias)


def test_projection_mlp_v1_matches_numpy():
    x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    head = ProjectionMLP()
    v = _random_variables(head, x)
    p = v["params"]
    assert p["dense_0"]["kernel"].shape == (12, 12) and p["dense_1"]["kernel"].shape == (12, 128)
    h = np.maximum(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"], 0)
    ref = h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    np.testing.assert_allclose(head.apply(v, x, train=True), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_projection_mlp_v2_matches_numpy(train):
    x = np.random.default_rng(2).normal(size=(6, 10)).astype(np.float32)
    head = ProjectionMLPv2(hidden_dim=7, out_dim=4)
    v = _random_variables(head, x, seed=3)
    p, s = v["params"], v["batch_stats"]
    assert "bias" not in p["bn_2"] and all("bias" not in p[f"dense_{i}"] for i in range(3))
    h = x
    for i in range(3):
        h = h @ p[f"dense_{i}"]["kernel"]
        mean, var = (h.mean(0), h.var(0)) if train else (s[f"bn_{i}"]["mean"],
                                                         s[f"bn_{i}"]["var"])
        h = _np_bn(h, mean, var, p[f"bn_{i}"]["scale"], p[f"bn_{i}"].get("bias"))
        h = np.maximum(h, 0) if i < 2 else h
        if i == 0:
            first = h.copy()  # SimCLR v2's "middle layer": dense_0 -> bn_0 -> ReLU
    out, _ = head.apply(v, x, train=train, mutable=["batch_stats"])
    np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-4)
    middle, _ = head.apply(v, x, train=train, upto=1, mutable=["batch_stats"])
    np.testing.assert_allclose(middle, first, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.apply(v, x, train=False, upto=0), x)
    with pytest.raises(ValueError, match="upto=4 must be in"):
        head.apply(v, x, train=False, upto=4)


def test_byol_predictor_matches_torch_train_mode():
    x = np.random.default_rng(4).normal(size=(8, 6)).astype(np.float32)
    head = MLPHead(hidden_dim=9, out_dim=5)
    v = _random_variables(head, x, seed=5)
    p, s = v["params"], v["batch_stats"]
    ref = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.BatchNorm1d(9), torch.nn.ReLU(),
                              torch.nn.Linear(9, 5))
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    with torch.no_grad():
        ref[0].weight.copy_(t(p["dense_0"]["kernel"]).T)
        ref[0].bias.copy_(t(p["dense_0"]["bias"]))
        ref[1].weight.copy_(t(p["bn_0"]["scale"]))
        ref[1].bias.copy_(t(p["bn_0"]["bias"]))
        ref[1].running_mean.copy_(t(s["bn_0"]["mean"]))
        ref[1].running_var.copy_(t(s["bn_0"]["var"]))
        ref[3].weight.copy_(t(p["dense_1"]["kernel"]).T)
        ref[3].bias.copy_(t(p["dense_1"]["bias"]))
        expected = ref.train()(t(x)).numpy()
    out, new = head.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # momentum 0.9 in flax == torch's 0.1: same running mean after one step.
    np.testing.assert_allclose(new["batch_stats"]["bn_0"]["mean"], ref[1].running_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    assert head.hidden_dim == 9 and MLPHead().hidden_dim == 4096 and MLPHead().out_dim == 256


def test_linear_classifier_and_bf16_head():
    x = np.random.default_rng(6).normal(size=(7, 5)).astype(np.float32) * 3 + 1
    clf = LinearClassifier(num_classes=3, normalize=True)
    v = _random_variables(clf, x)
    assert "bn" not in v["params"]  # parameter-free standardisation
    out, _ = clf.apply(v, x, train=True, mutable=["batch_stats"])
    ref = _np_bn(x, x.mean(0), x.var(0)) @ v["params"]["dense"]["kernel"] + \
        v["params"]["dense"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    plain = LinearClassifier(num_classes=3)
    vp = {"params": {"dense": v["params"]["dense"]}}
    np.testing.assert_allclose(plain.apply(vp, x, train=False),
                               x @ vp["params"]["dense"]["kernel"] + vp["params"]["dense"]["bias"],
                               rtol=1e-5, atol=1e-5)

    fp32 = MLPHead(hidden_dim=16, out_dim=4)
    bf16 = MLPHead(hidden_dim=16, out_dim=4, dtype=jnp.bfloat16)
    vh = _random_variables(fp32, x)
    out16, _ = bf16.apply(vh, x, train=True, mutable=["batch_stats"])
    out32, _ = fp32.apply(vh, x, train=True, mutable=["batch_stats"])
    assert out16.dtype == jnp.float32
    assert np.abs(out16 - out32).max() <= 0.05 * np.abs(out32).max()
    assert np.abs(out16 - out32).max() > 0  # really computed in bf16


def test_batchnorm_statistics_span_the_sharded_global_batch():
    """Under jit on a batch sharded over the 8 devices, BN uses global-batch statistics."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    # Per-device halves with very different means: per-device BN would hide the offset.
    x = np.random.default_rng(7).normal(size=(16, 6)).astype(np.float32)
    x[8:] += 5.0
    head = ProjectionMLPv2(hidden_dim=6, out_dim=3, num_layers=1)
    v = _random_variables(head, x)
    apply = jax.jit(functools.partial(head.apply, train=True, mutable=["batch_stats"]))
    out, _ = apply(v, jax.device_put(x, sharding))
    h = x @ v["params"]["dense_0"]["kernel"]
    ref = _np_bn(h, h.mean(0), h.var(0), v["params"]["bn_0"]["scale"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_models_module_exports():
    assert models.MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                  "alexnet", "alexnet_bn", "vgg16", "vgg16_bn", "plain10")
    assert layer_names("resnet18")[:4] == ["stem", "layer1.0", "layer1.1", "layer1"]
    assert layer_names("alexnet") == ["conv1", "conv2", "conv3", "conv4", "conv5", "pool5",
                                      "fc6", "fc7"]


def test_plain10_matches_torch_and_sows_every_conv():
    """Plain-10 (Kornblith et al. 2019) at width 1/8 against a torch conv-BN-ReLU stack in eval
    mode; stride 2 at conv4 and conv7 (32 -> 16 -> 8 px)."""
    model = get_model("plain10", width=0.125, num_classes=10)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = _random_variables(model, x)
    out, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    acts = state["intermediates"]
    assert list(acts) == layer_names("plain10") == [f"conv{i}" for i in range(1, 9)] + ["pool"]
    assert acts["conv3"][0].shape == (2, 32, 32, 8) and acts["conv4"][0].shape == (2, 16, 16, 16)
    assert acts["conv8"][0].shape == (2, 8, 8, 32) and model.num_features == 32

    p, bs = variables["params"], variables["batch_stats"]
    h = torch.from_numpy(x).permute(0, 3, 1, 2)
    for i, stride in enumerate((1, 1, 1, 2, 1, 1, 2, 1), start=1):
        w = torch.from_numpy(np.asarray(p[f"conv{i}_conv"]["kernel"])).permute(3, 2, 0, 1)
        h = F.conv2d(h, w, stride=stride, padding=1)
        stats, affine = bs[f"conv{i}_bn"], p[f"conv{i}_bn"]
        bn = [torch.from_numpy(np.asarray(t)) for t in (stats["mean"], stats["var"],
                                                          affine["scale"], affine["bias"])]
        h = F.relu(F.batch_norm(h, *bn, training=False, eps=1e-5))
        np.testing.assert_allclose(np.asarray(acts[f"conv{i}"][0]),
                                   h.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    ref = h.mean((2, 3)).numpy() @ np.asarray(p["fc"]["kernel"]) + np.asarray(p["fc"]["bias"])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_plain10_rejects_resnet_only_options():
    with pytest.raises(ValueError, match="cifar_stem=True is not supported by plain10"):
        get_model("plain10", cifar_stem=True)


def test_cpu_conv_equals_flax_conv_bitwise_and_stores_its_input():
    """models.conv.Conv in its "library" form: nn.Conv's parameters, outputs and gradients bit
    for bit; on CPU its input goes through a conditional (the stored-input workaround of ssl_jax/models/conv.py)."""
    from ssl_jax.models.conv import Conv

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 9, 9, 20)), jnp.float32)  # "library" form
    scale = jnp.asarray(rng.uniform(0.5, 1.5, 20), jnp.float32)
    ours = Conv(6, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    flax_conv = nn.Conv(6, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    abstract = jax.eval_shape(flax_conv.init, KEY, x)
    assert jax.tree.structure(jax.eval_shape(ours.init, KEY, x)) == jax.tree.structure(abstract)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), abstract)

    def loss(module, p, x):
        # The input is elementwise math of another array, as after BatchNorm + ReLU.
        return jnp.sum(jnp.tanh(module.apply(p, nn.relu(x * scale - 0.1))))

    results = {}
    for label, module in (("ours", ours), ("flax", flax_conv)):
        fn = jax.jit(jax.value_and_grad(functools.partial(loss, module), argnums=(0, 1)))
        results[label] = fn(params, x)
        hlo = fn.lower(params, x).compile().as_text()
        assert ("conditional(" in hlo) == (label == "ours"), label
    for a, b in zip(jax.tree.leaves(results["ours"]), jax.tree.leaves(results["flax"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("form,in_size,channels,kernel,strides,padding", [
    ("dense_map", 2, 5, 3, 1, ((1, 1), (1, 1))),   # layer3 of the 32 px strided ResNet-18
    ("dense_map", 1, 5, 3, 1, ((1, 1), (1, 1))),   # layer4: only the centre tap sees data
    ("dense_map", 2, 5, 3, 2, ((1, 1), (1, 1))),   # layer4's stride-2 entry: 2x2 -> 1x1
    ("dense_map", 3, 5, 3, 1, "VALID"),            # input exactly the kernel window
    ("patches", 4, 5, 3, 2, ((1, 1), (1, 1))),     # layer3's stride-2 entry: 4x4 -> 2x2
    ("patches", 4, 5, 3, 2, "SAME"),               # SAME pads (0, 1) for stride 2, even input
    ("pointwise", 2, 5, 1, 2, ((0, 0), (0, 0))),   # 1x1 stride-2 shortcut: 2x2 -> 1x1
    ("pointwise", 8, 5, 1, 2, "VALID"),            # 1x1 stride-2 shortcut: 8x8 -> 4x4
    ("pointwise", 7, 5, 1, 1, "SAME"),             # 1x1 stride 1 (bottleneck blocks)
    ("pointwise", 7, 5, 1, 2, "SAME"),             # odd input, stride 2
    ("space_to_depth", 16, 3, 7, 2, ((3, 3), (3, 3))),  # the strided stem, torch pads
    ("space_to_depth", 16, 3, 7, 2, "SAME"),            # the stem with SAME pads (2, 3)
    ("space_to_depth", 9, 3, 4, 2, "VALID"),            # kernel a multiple of the stride
    ("space_to_depth", 19, 3, 11, 4, ((2, 2), (2, 2))),  # the AlexNet stem
    ("phase_split", 8, 5, 3, 2, ((1, 1), (1, 1))),      # a ResNet's stride-2 entry
    ("phase_split", 9, 5, 3, 2, "SAME"),                 # odd input, SAME pads (1, 1)
    ("phase_split", 10, 5, 3, 2, "SAME"),                # even input, SAME pads (0, 1)
    ("phase_split", 11, 5, 4, 3, ((2, 0), (1, 2))),      # uneven pads, stride 3
    ("library", 8, 5, 3, 1, ((1, 1), (1, 1))),
    ("library", 8, 17, 3, 2, ((1, 1), (1, 1))),          # strided, too many channels to split
    ("general", 8, 5, 3, 1, ((1, 1), (1, 1))),     # depthwise: the plain library call
])
def test_cpu_conv_forms_equal_flax_conv(form, in_size, channels, kernel, strides, padding):
    """On CPU, models.conv.Conv computes each convolution in the form `cpu_form` names: values
    and both gradients equal nn.Conv's to float32 rounding, and the compiled step shows the
    form was taken (no convolution op left for the matrix-multiply forms; a convolution over
    stride^2 x channels for space-to-depth)."""
    from ssl_jax.models.conv import NHWC_HWIO, Conv, cpu_form

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, in_size, in_size, channels)), jnp.float32)
    groups = channels if form == "general" else 1
    kwargs = dict(features=7 * groups, kernel_size=(kernel, kernel), strides=(strides, strides),
                  padding=padding, use_bias=False, feature_group_count=groups)
    ours, flax_conv = Conv(**kwargs), nn.Conv(**kwargs)
    params = flax_conv.init(KEY, x)
    kernel_array = params["params"]["kernel"]
    pads = padding if isinstance(padding, str) else list(padding)
    assert cpu_form(x, kernel_array, (strides, strides), pads,
                    dimension_numbers=NHWC_HWIO,
                    feature_group_count=groups) == form

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    results = {}
    for label, module in (("ours", ours), ("flax", flax_conv)):
        fn = jax.jit(jax.value_and_grad(functools.partial(loss, module), argnums=(0, 1)))
        results[label] = fn(params, x)
        hlo = fn.lower(params, x).compile().as_text()
        if label == "ours" and form in ("dense_map", "patches", "pointwise"):
            assert "convolution(" not in hlo
        if label == "ours" and form == "space_to_depth":
            blocks = -(-kernel // strides)  # a stride-1 window of ceil(k / s) blocks
            assert re.search(rf"convolution\(.*window={{size={blocks}x{blocks}}},", hlo), hlo
        if form == "phase_split":  # flax's input gradient dilates the output gradient
            assert ("lhs_dilate" in hlo) == (label == "flax"), label
    assert jax.tree.structure(results["ours"]) == jax.tree.structure(results["flax"])
    for a, b in zip(jax.tree.leaves(results["ours"]), jax.tree.leaves(results["flax"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form,channels,strides", [
    ("library", 6, 1),         # a stride-1 ResNet convolution
    ("phase_split", 6, 2),     # its weight gradient is the library form's
    ("space_to_depth", 3, 2),  # its whole backward pass is the library form's
])
def test_cpu_conv_kernel_grad_over_batch_chunks_equals_flax_conv(monkeypatch, form, channels,
                                                                  strides):
    """Above KERNEL_GRAD_CHUNK_BYTES of input, the library form's weight gradient is summed over
    batch chunks (here 3 uneven ones: 5 images as 2 + 2 + 1): both gradients equal nn.Conv's to
    float32 rounding, and the compiled backward holds one weight-gradient convolution per chunk."""
    from ssl_jax.models import conv

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(5, 12, 12, channels)), jnp.float32)
    monkeypatch.setattr(conv, "KERNEL_GRAD_CHUNK_BYTES", x.nbytes // 3 + 1)
    assert conv.kernel_grad_chunks(x) == 3
    kernel = 7 if form == "space_to_depth" else 3
    kwargs = dict(features=8, kernel_size=(kernel, kernel), strides=(strides, strides),
                  padding="SAME", use_bias=False)
    ours, flax_conv = conv.Conv(**kwargs), nn.Conv(**kwargs)
    params = flax_conv.init(KEY, x)
    assert conv.cpu_form(x, params["params"]["kernel"], (strides, strides), "SAME",
                         dimension_numbers=conv.NHWC_HWIO) == form

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    results, weight_grad_convs = {}, {}
    for label, module in (("ours", ours), ("flax", flax_conv)):
        fn = jax.jit(jax.grad(functools.partial(loss, module), argnums=(0, 1)))
        results[label] = fn(params, x)
        hlo = fn.lower(params, x).compile().as_text()
        # A weight gradient is a convolution whose output is the kernel's [kh, kw, C, F] in
        # XLA:CPU's layout [C, kh, kw, F].
        weight_grad_convs[label] = len(re.findall(
            rf"= f32\[{channels},{kernel},{kernel},8\]\S* convolution\(", hlo))
    assert weight_grad_convs == {"ours": 3, "flax": 1}
    for a, b in zip(jax.tree.leaves(results["ours"]), jax.tree.leaves(results["flax"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window,strides,padding", [
    (3, 2, ((1, 1), (1, 1))),  # the ResNet stem's torch padding
    (3, 2, "SAME"),            # TF/Haiku padding
    (2, 2, "VALID"),           # VGG
    (3, 2, "VALID"),           # AlexNet
])
def test_max_pool_matches_torch_values_and_gradients(window, strides, padding):
    """pooling.max_pool (slices on CPU) against torch's max_pool2d: same values, and the same
    input gradient where no window has a tie (continuous random input)."""
    from ssl_jax.models.pooling import max_pool

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 10, 10, 4)).astype(np.float32)
    cotangent = rng.normal(size=np.asarray(nn.max_pool(
        jnp.asarray(x), (window, window), (strides, strides), padding=padding)).shape)
    ours, grad = jax.value_and_grad(
        lambda v: jnp.sum(max_pool(v, (window, window), (strides, strides), padding) * cotangent)
    )(jnp.asarray(x))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    if padding == "SAME":  # TF SAME for 10 px, window 3, stride 2: pad (0, 1); torch pads -inf
        pooled = F.max_pool2d(F.pad(xt, (0, 1, 0, 1), value=-np.inf), window, strides)
    else:
        pooled = F.max_pool2d(xt, window, strides, padding=padding[0][0] if padding != "VALID"
                              else 0)
    expected = (pooled * torch.from_numpy(cotangent).permute(0, 3, 1, 2)).sum()
    expected.backward()
    np.testing.assert_allclose(float(ours), expected.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), xt.grad.permute(0, 2, 3, 1).numpy(),
                               rtol=1e-6, atol=1e-6)
