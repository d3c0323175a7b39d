"""torchvision-layout torch models (written here by hand) vs the Flax zoo through the converter.

torchvision does not import on this CPU torch build, so the reference modules (in
``torch_reference.py``) are re-implemented with torchvision's exact module names; every test uses
random weights and non-trivial BatchNorm statistics, float32, odd input sizes where padding
matters.
"""
import functools

import numpy as np
import pytest
import torch
from torch import nn

import jax
from checkpoints_convert import torchvision as tv
from ssl_jax.models import get_model
from torch_reference import (TorchAlexNet, TorchBasicBlock, TorchBottleneck, TorchResNet,
                             TorchVGG16, images, randomize, rel_err, to_same_padding)

RTOL = 1e-4  # max |diff| / max |reference|, float32 on CPU

def _check_parity(name, torch_model, size, **kwargs):
    sd = randomize(torch_model, seed=size).state_dict()
    variables = tv.torch_to_flax(sd, name)
    x = images(2, size, seed=size)
    with torch.no_grad():
        ref, ref_acts = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    # One jit compile is cheaper than op-by-op dispatch of a cold graph.
    apply = jax.jit(functools.partial(get_model(name, **kwargs).apply, train=False,
                                      mutable=["intermediates"]))
    out, state = apply(variables, x)
    acts = state["intermediates"]
    assert set(acts) == set(ref_acts)
    errs = {k: rel_err(acts[k][0], ref_acts[k]) for k in ref_acts}
    assert max(errs.values()) <= RTOL, errs
    assert rel_err(out, ref) <= RTOL


def test_resnet18_matches_torch_odd_size():
    # 65 px: every stride-2 layer sees an odd input (even sizes: the SAME-padding, train-mode,
    # AlexNet/VGG 224 px tests and the slow full-size tests).
    _check_parity("resnet18", TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 10, width=0.25),
                  65, num_classes=10, width=0.25)


def test_resnet_same_padding_matches_tf_same_torch_model():
    """padding="same" (BYOL/Haiku checkpoints): SAME in every conv and the max-pool."""
    torch_model = to_same_padding(TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 10, width=0.25))
    _check_parity("resnet18", torch_model, 64, num_classes=10, width=0.25, padding="same")


def test_resnet50_matches_torch_odd_size():
    # Bottleneck + downsample in every stage; 49 px is odd at the stem and after it.
    _check_parity("resnet50", TorchResNet(TorchBottleneck, [3, 4, 6, 3], 10, width=0.125),
                  49, num_classes=10, width=0.125)


def test_wide_resnet50_matches_torch_and_is_inferred_from_the_weights():
    # torchvision's wide_resnet50_2: only the bottleneck's inner convs are 2x wider
    # (width_per_group=128); the converter reads it from layer1.0.conv1's shape.
    torch_model = TorchResNet(TorchBottleneck, [3, 4, 6, 3], 10, width=0.125, width_per_group=128)
    kwargs = tv.infer_model_kwargs(torch_model.state_dict(), "resnet50")
    assert kwargs["width_per_group"] == 128 and kwargs["width"] == 0.125
    assert torch_model.state_dict()["layer1.0.conv1.weight"].shape[0] == 16  # 2 x stage width 8
    _check_parity("resnet50", torch_model, 49, num_classes=10, width=0.125, width_per_group=128)


def test_width_per_group_needs_a_bottleneck_resnet():
    with pytest.raises(ValueError, match="width_per_group=128 needs a bottleneck"):
        get_model("resnet18", width_per_group=128).init(
            jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)


def test_resnet_cifar_stem_matches_torch():
    _check_parity("resnet18", TorchResNet(TorchBasicBlock, [2, 2, 2, 2], None, width=0.25,
                                          cifar_stem=True), 17, width=0.25, cifar_stem=True)


@pytest.mark.parametrize("name,bn,size", [("alexnet", False, 67), ("alexnet_bn", True, 224)])
def test_alexnet_matches_torch(name, bn, size):
    # 67 px: conv1 gives 15x15 and pool5 1x1, so the adaptive 6x6 pool replicates;
    # 224 px: pool5 is exactly 6x6 (adaptive pool is the identity).
    _check_parity(name, TorchAlexNet(10, width=0.25, fc_dim=32, bn=bn), size,
                  num_classes=10, width=0.25, fc_dim=32)


@pytest.mark.parametrize("name,bn,size", [("vgg16_bn", True, 65), ("vgg16", False, 224)])
def test_vgg16_matches_torch(name, bn, size):
    # 65 px: floor pooling down to 2x2, then the adaptive pool maps 2 -> 7 with repeats.
    _check_parity(name, TorchVGG16(None, width=0.125, fc_dim=32, bn=bn), size,
                  width=0.125, fc_dim=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet101", "alexnet", "vgg16_bn"])
def test_full_size_models_match_torch_at_224(name):
    """Width 1, 1000 classes, 224 px (run with -m slow; ~1 GB of weights for vgg16_bn)."""
    torch_model = {"resnet50": lambda: TorchResNet(TorchBottleneck, [3, 4, 6, 3], 1000),
                   "resnet101": lambda: TorchResNet(TorchBottleneck, [3, 4, 23, 3], 1000),
                   "alexnet": lambda: TorchAlexNet(1000),
                   "vgg16_bn": lambda: TorchVGG16(1000, bn=True)}[name]()
    _check_parity(name, torch_model, 224, num_classes=1000)


def test_train_mode_batchnorm_matches_torch():
    """train=True normalises with batch statistics; running stats update like torch's."""
    torch_model = randomize(TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 5, width=0.25), 3)
    variables = tv.torch_to_flax(torch_model.state_dict(), "resnet18")
    x = images(4, 32, seed=4)
    torch_model.train()
    with torch.no_grad():
        ref, _ = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    model = get_model("resnet18", num_classes=5, width=0.25)
    out, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert rel_err(out, ref) <= RTOL
    # And it is not what the running averages give.
    torch_model.eval()
    with torch.no_grad():
        ref_eval, _ = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    assert rel_err(out, ref_eval) > 1e-2

    new = tv.variables_to_state_dict({"batch_stats": state["batch_stats"]})
    after = torch_model.state_dict()
    key = "layer2.0.bn1"  # 4 images x 4 x 4 pixels = 64 values per channel
    np.testing.assert_allclose(new[f"{key}.running_mean"], after[f"{key}.running_mean"].numpy(),
                               rtol=1e-5, atol=1e-6)
    # flax updates the running variance with the biased batch variance, torch with the
    # unbiased one: the batch part differs by n / (n - 1) (documented in heads/models docs).
    n = 4 * 4 * 4
    old_var = variables["batch_stats"]["layer2_0"]["bn1"]["var"]
    batch_var_torch = (after[f"{key}.running_var"].numpy() - 0.9 * old_var) / 0.1
    batch_var_flax = (new[f"{key}.running_var"] - 0.9 * old_var) / 0.1
    np.testing.assert_allclose(batch_var_flax * n / (n - 1), batch_var_torch, rtol=1e-4)


@pytest.mark.parametrize("name,make_torch", [
    ("resnet50", lambda: TorchResNet(TorchBottleneck, [3, 4, 6, 3], 7, width=0.125)),
    ("resnet50", lambda: TorchResNet(TorchBottleneck, [3, 4, 6, 3], 7, width=0.125,
                                     width_per_group=128)),
    ("alexnet_bn", lambda: TorchAlexNet(7, width=0.25, fc_dim=16, bn=True)),
    ("vgg16", lambda: TorchVGG16(None, width=0.125, fc_dim=16)),
])
def test_round_trips_are_exact(name, make_torch, tmp_path):
    torch_model = randomize(make_torch(), 5)
    torch.save(torch_model.state_dict(), tmp_path / "model.pth")
    sd = tv.read_torch_file(str(tmp_path / "model.pth"))

    # torch -> flax -> torch: bit-identical (num_batches_tracked is written as 0).
    back = tv.flax_to_torch(tv.torch_to_flax(sd, name), name)
    assert set(back) == set(sd)
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert back[k] == 0 and back[k].dtype == np.int64
        else:
            assert back[k].dtype == np.float32
            np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
    # The export loads into the torch model strictly.
    result = torch_model.load_state_dict({k: torch.from_numpy(np.asarray(v))
                                          for k, v in back.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    # flax -> torch -> flax, starting from Flax-side variables: bit-identical.
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                             tv.abstract_variables(name, **tv.infer_model_kwargs(sd, name)))
    again = tv.torch_to_flax(tv.flax_to_torch(variables, name), name)
    assert jax.tree.structure(again) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_key_accounting_names_every_problem():
    sd = {k: v.numpy() for k, v in
          randomize(TorchAlexNet(10, width=0.25, fc_dim=32), 0).state_dict().items()}
    variables = tv.torch_to_flax(sd, "alexnet")  # complete: fine
    assert variables["params"]["features_3"]["kernel"].shape == (5, 5, 16, 48)

    bad = dict(sd)
    del bad["features.6.bias"]
    bad["features.1.weight"] = np.zeros(3, np.float32)
    bad["classifier.4.weight"] = sd["classifier.4.weight"][:, :5]
    with pytest.raises(ValueError) as e:
        tv.torch_to_flax(bad, "alexnet")
    msg = str(e.value)
    assert "missing keys ['features.6.bias']" in msg
    assert "unexpected keys ['features.1.weight']" in msg
    assert "classifier.4.weight: got (32, 5), expected (32, 32)" in msg

    # A head the model was not built with is unexpected, not silently dropped.
    with pytest.raises(ValueError, match=r"unexpected keys \['classifier.6.bias', "
                                         r"'classifier.6.weight'\]"):
        tv.torch_to_flax(sd, "alexnet", num_classes=None)
    with pytest.raises(ValueError, match="unknown model 'alexnet2'"):
        tv.torch_to_flax(sd, "alexnet2")


def test_bn_state_without_num_batches_tracked_and_prefix_selection():
    """Pre-0.4.1 torchvision files lack num_batches_tracked; MoCo-style prefixes strip."""
    sd = randomize(TorchResNet(TorchBasicBlock, [2, 2, 2, 2], None, width=0.25), 1).state_dict()
    wrapped = {f"module.encoder_q.{k}": v for k, v in sd.items()
               if not k.endswith("num_batches_tracked")}
    wrapped["module.encoder_k.conv1.weight"] = sd["conv1.weight"]
    wrapped["module.queue"] = torch.zeros(3)
    variables = tv.torch_to_flax(tv.select_prefix(wrapped, "module.encoder_q."), "resnet18")
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer4_0"]["downsample_1"]["var"],
                                  sd["layer4.0.downsample.1.running_var"].numpy())
    with pytest.raises(ValueError, match="missing keys .*'bn1.running_mean'"):
        tv.torch_to_flax(tv.select_prefix(wrapped, "module.encoder."), "resnet18", width=0.25)


def test_infer_model_kwargs_reads_architecture():
    sd = TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 3, width=0.5, cifar_stem=True).state_dict()
    assert tv.infer_model_kwargs(sd, "resnet18") == {"num_classes": 3, "width": 0.5,
                                                     "cifar_stem": True}
    sd = TorchVGG16(None, width=0.125, fc_dim=16).state_dict()
    assert tv.infer_model_kwargs(sd, "vgg16") == {"num_classes": None, "width": 0.125,
                                                  "fc_dim": 16}


def test_single_channel_stem_converts():
    """Colorization's L-channel AlexNet (and CMC's L/ab halves) take 1- or 2-channel images."""
    torch_model = TorchAlexNet(None, width=0.25, fc_dim=16, bn=True)
    torch_model.features[0] = nn.Conv2d(1, 16, 11, 4, 2)
    sd = randomize(torch_model, 2).state_dict()
    variables = tv.torch_to_flax(sd, "alexnet_bn")
    assert variables["params"]["features_0"]["kernel"].shape == (11, 11, 1, 16)
    back = tv.flax_to_torch(variables, "alexnet_bn")
    np.testing.assert_array_equal(back["features.0.weight"], sd["features.0.weight"].numpy())
    np.testing.assert_array_equal(variables["params"]["features_0"]["kernel"][:, :, 0, 5],
                                  sd["features.0.weight"].numpy()[5, 0])


def test_torch_key_naming_rule():
    assert tv.torch_key("params", ("layer1_0", "downsample_0", "kernel")) == \
        "layer1.0.downsample.0.weight"
    assert tv.torch_key("batch_stats", ("layer3_12", "bn2", "var")) == "layer3.12.bn2.running_var"
    assert tv.torch_key("params", ("features_10", "bias")) == "features.10.bias"
    assert tv.torch_key("params", ("bn1", "scale")) == "bn1.weight"
    with pytest.raises(ValueError, match="no torch name for params/conv1/embedding"):
        tv.torch_key("params", ("conv1", "embedding"))
