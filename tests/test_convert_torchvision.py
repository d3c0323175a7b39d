"""torchvision-layout torch models (written here by hand) vs the Flax zoo through the converter.

torchvision does not import on this CPU torch build, so the reference modules below are
re-implemented with torchvision's exact module names; every test uses random weights and
non-trivial BatchNorm statistics, float32, odd input sizes where padding matters.
"""
import functools

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F
from torch import nn

import jax
from checkpoints_convert import torchvision as tv
from ssl_jax.models import get_model

RTOL = 1e-4  # max |diff| / max |reference|, float32 on CPU


def _w(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) along one axis."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d (same state_dict keys) with TF SAME padding, as Haiku-trained BYOL nets use."""

    def forward(self, x):
        (k, _), (s, _) = self.kernel_size, self.stride
        ph, pw = _tf_same_pads(x.shape[2], k, s), _tf_same_pads(x.shape[3], k, s)
        return F.conv2d(F.pad(x, pw + ph), self.weight, self.bias, self.stride)


class SameMaxPool(nn.Module):
    def forward(self, x):
        ph, pw = _tf_same_pads(x.shape[2], 3, 2), _tf_same_pads(x.shape[3], 3, 2)
        return F.max_pool2d(F.pad(x, pw + ph, value=-float("inf")), 3, 2)


def _to_same_padding(model: nn.Module) -> nn.Module:
    """Swap every Conv2d for SameConv2d (weights kept) and the stem max-pool for SAME."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Conv2d:
                child.__class__ = SameConv2d
            elif isinstance(child, nn.MaxPool2d):
                setattr(module, name, SameMaxPool())
    return model


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """torchvision.models.ResNet keys; forward returns (output, {sown name: NCHW activation})."""

    def __init__(self, block, layers, num_classes=None, width=1.0, cifar_stem=False):
        super().__init__()
        self.inplanes = _w(64, width)
        self.cifar_stem = cifar_stem
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}",
                    self._make_layer(block, _w(64 * 2 ** i, width), n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = None if num_classes is None else nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        acts = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if not self.cifar_stem:
            x = self.maxpool(x)
        acts["stem"] = x
        for i in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{i}")):
                x = block(x)
                acts[f"layer{i}.{b}"] = x
            acts[f"layer{i}"] = x
        x = torch.flatten(self.avgpool(x), 1)
        acts["pool"] = x
        return (x if self.fc is None else self.fc(x)), acts


class TorchAlexNet(nn.Module):
    """torchvision AlexNet keys (bn=False) or the documented alexnet_bn layout (bn=True)."""

    def __init__(self, num_classes=None, width=1.0, fc_dim=4096, bn=False):
        super().__init__()
        convs = [(64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                 (256, 3, 1, 1, False), (256, 3, 1, 1, True)]
        layers, cin = [], 3
        for c, k, s, p, pool in convs:
            layers.append(nn.Conv2d(cin, _w(c, width), k, s, p))
            layers += [nn.BatchNorm2d(_w(c, width))] if bn else []
            layers.append(nn.ReLU())
            layers += [nn.MaxPool2d(3, 2)] if pool else []
            cin = _w(c, width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        if bn:
            cls = [nn.Linear(cin * 36, fc_dim, bias=False), nn.BatchNorm1d(fc_dim), nn.ReLU(),
                   nn.Linear(fc_dim, fc_dim, bias=False), nn.BatchNorm1d(fc_dim), nn.ReLU()]
        else:
            cls = [nn.Dropout(), nn.Linear(cin * 36, fc_dim), nn.ReLU(), nn.Dropout(),
                   nn.Linear(fc_dim, fc_dim), nn.ReLU()]
        if num_classes is not None:
            cls.append(nn.Linear(fc_dim, num_classes))
        self.classifier = nn.Sequential(*cls)

    def forward(self, x):
        acts, k = {}, 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                k += 1
                acts[f"conv{k}"] = x
        x = self.avgpool(x)
        acts["pool5"] = x
        x = torch.flatten(x, 1)
        k = 5
        for layer in self.classifier:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                k += 1
                acts[f"fc{k}"] = x
        return x, acts


class TorchVGG16(nn.Module):
    """torchvision vgg16 / vgg16_bn keys (make_layers with cfg "D")."""

    def __init__(self, num_classes=None, width=1.0, fc_dim=4096, bn=False):
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
               512, 512, 512, "M"]
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(cin, _w(v, width), 3, padding=1))
            layers += [nn.BatchNorm2d(_w(v, width))] if bn else []
            layers.append(nn.ReLU())
            cin = _w(v, width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        cls = [nn.Linear(cin * 49, fc_dim), nn.ReLU(), nn.Dropout(),
               nn.Linear(fc_dim, fc_dim), nn.ReLU(), nn.Dropout()]
        if num_classes is not None:
            cls.append(nn.Linear(fc_dim, num_classes))
        self.classifier = nn.Sequential(*cls)

    def forward(self, x):
        acts, block, j, last = {}, 1, 0, None
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                j += 1
                acts[f"conv{block}_{j}"] = last = x
            elif isinstance(layer, nn.MaxPool2d):
                acts[f"conv{block}"] = last
                block, j = block + 1, 0
        x = self.avgpool(x)
        acts["pool5"] = x
        x = torch.flatten(x, 1)
        k = 5
        for layer in self.classifier:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                k += 1
                acts[f"fc{k}"] = x
        return x, acts


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-trivial BN statistics (torch's defaults hide BN mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1 and name.endswith("weight"):  # BN scale
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:  # He-scaled so deep stacks neither vanish nor explode
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def _rel_err(flax_out, torch_out) -> float:
    ref = torch_out.detach().numpy()
    got = np.asarray(flax_out)
    if got.ndim == 4:  # NHWC -> NCHW
        got = got.transpose(0, 3, 1, 2)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _images(n: int, size: int, seed: int) -> np.ndarray:
    """[n, size, size, 3]: a natural photo (ImageNet-normalised astronaut), then noise."""
    photo = skimage.transform.resize(skimage.data.astronaut(), (size, size), anti_aliasing=True)
    photo = (photo - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    noise = np.random.default_rng(seed).normal(size=(n - 1, size, size, 3))
    return np.concatenate([photo[None], noise]).astype(np.float32)


def _check_parity(name, torch_model, size, **kwargs):
    sd = _randomize(torch_model, seed=size).state_dict()
    variables = tv.torch_to_flax(sd, name)
    x = _images(2, size, seed=size)
    with torch.no_grad():
        ref, ref_acts = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    # One jit compile is cheaper than op-by-op dispatch of a cold graph.
    apply = jax.jit(functools.partial(get_model(name, **kwargs).apply, train=False,
                                      mutable=["intermediates"]))
    out, state = apply(variables, x)
    acts = state["intermediates"]
    assert set(acts) == set(ref_acts)
    errs = {k: _rel_err(acts[k][0], ref_acts[k]) for k in ref_acts}
    assert max(errs.values()) <= RTOL, errs
    assert _rel_err(out, ref) <= RTOL


def test_resnet18_matches_torch_odd_size():
    # 65 px: every stride-2 layer sees an odd input (even sizes: the SAME-padding, train-mode,
    # AlexNet/VGG 224 px tests and the slow full-size tests).
    _check_parity("resnet18", TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 10, width=0.25),
                  65, num_classes=10, width=0.25)


def test_resnet_same_padding_matches_tf_same_torch_model():
    """padding="same" (BYOL/Haiku checkpoints): SAME in every conv and the max-pool."""
    torch_model = _to_same_padding(TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 10, width=0.25))
    _check_parity("resnet18", torch_model, 64, num_classes=10, width=0.25, padding="same")


def test_resnet50_matches_torch_odd_size():
    # Bottleneck + downsample in every stage; 49 px is odd at the stem and after it.
    _check_parity("resnet50", TorchResNet(TorchBottleneck, [3, 4, 6, 3], 10, width=0.125),
                  49, num_classes=10, width=0.125)


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
    torch_model = _randomize(TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 5, width=0.25), 3)
    variables = tv.torch_to_flax(torch_model.state_dict(), "resnet18")
    x = _images(4, 32, seed=4)
    torch_model.train()
    with torch.no_grad():
        ref, _ = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    model = get_model("resnet18", num_classes=5, width=0.25)
    out, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert _rel_err(out, ref) <= RTOL
    # And it is not what the running averages give.
    torch_model.eval()
    with torch.no_grad():
        ref_eval, _ = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    assert _rel_err(out, ref_eval) > 1e-2

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
    ("alexnet_bn", lambda: TorchAlexNet(7, width=0.25, fc_dim=16, bn=True)),
    ("vgg16", lambda: TorchVGG16(None, width=0.125, fc_dim=16)),
])
def test_round_trips_are_exact(name, make_torch, tmp_path):
    torch_model = _randomize(make_torch(), 5)
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
          _randomize(TorchAlexNet(10, width=0.25, fc_dim=32), 0).state_dict().items()}
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
    sd = _randomize(TorchResNet(TorchBasicBlock, [2, 2, 2, 2], None, width=0.25), 1).state_dict()
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
    sd = _randomize(torch_model, 2).state_dict()
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
