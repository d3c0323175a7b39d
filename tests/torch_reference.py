"""Hand-written torch reference models with torchvision's (and zoo families') exact key names.

torchvision does not import on this CPU torch build, so the reference modules are re-implemented
here; every converter test builds one of them, randomises it (``randomize``: random weights and
non-trivial BatchNorm statistics), saves it in its family's released container and compares the
converted Flax model's activations with the torch forward.
"""
import numpy as np
import skimage.data
import skimage.transform
import torch
import torch.nn.functional as F
from torch import nn


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


def to_same_padding(model: nn.Module) -> nn.Module:
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

    def __init__(self, inplanes, planes, stride=1, downsample=None, width_per_group=64):
        super().__init__()
        inner = int(planes * (width_per_group / 64))  # torchvision's wide-ResNet inner width
        self.conv1 = nn.Conv2d(inplanes, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, bias=False)  # v1.5
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, planes * 4, 1, bias=False)
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

    def __init__(self, block, layers, num_classes=None, width=1.0, cifar_stem=False,
                 width_per_group=64):
        super().__init__()
        self.inplanes = _w(64, width)
        self.block_kwargs = {} if width_per_group == 64 else {"width_per_group": width_per_group}
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
        layers = [block(self.inplanes, planes, stride, downsample, **self.block_kwargs)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self.block_kwargs) for _ in range(1, blocks)]
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
        return _pool5_fc6_fc7(self, x, acts)


def _pool5_fc6_fc7(model: nn.Module, x: torch.Tensor, acts: dict):
    """AlexNet's and VGG's shared tail: adaptive pool (pool5), flatten, classifier with its
    post-ReLU activations as fc6, fc7."""
    x = model.avgpool(x)
    acts["pool5"] = x
    x = torch.flatten(x, 1)
    k = 5
    for layer in model.classifier:
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
        return _pool5_fc6_fc7(self, x, acts)


def randomize(model: nn.Module, seed: int) -> nn.Module:
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


def rel_err(flax_out, torch_out) -> float:
    ref = torch_out.detach().numpy()
    got = np.asarray(flax_out)
    if got.ndim == 4:  # NHWC -> NCHW
        got = got.transpose(0, 3, 1, 2)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def images(n: int, size: int, seed: int) -> np.ndarray:
    """[n, size, size, 3]: a natural photo (ImageNet-normalised astronaut), then noise."""
    photo = skimage.transform.resize(skimage.data.astronaut(), (size, size), anti_aliasing=True)
    photo = (photo - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    noise = np.random.default_rng(seed).normal(size=(n - 1, size, size, 3))
    return np.concatenate([photo[None], noise]).astype(np.float32)


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to the batch statistics of ``x`` (NCHW), as training
    leaves them, so random-weight activations stay O(1) through 50+ layers (random running
    stats let them grow to ~1e3, where float32 rounding alone exceeds 1e-4 absolute)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> exactly its statistics
    model.train()
    with torch.no_grad():
        model(x)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # A few (near-)dead channels get var ~ 0 from one small batch, and 1/sqrt(var)
                # would amplify float32 rounding 300x; trained nets keep var well above eps.
                m.running_var.clamp_(min=0.05)
    return model.eval()
