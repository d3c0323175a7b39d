"""Key layouts of the PyTorch zoo families: which keys are the backbone, which a head, which
are deliberately dropped, how they are renamed to torchvision names, and each family's input
convention.

A family is a list of ``Part``s. Every key of the (unwrapped) checkpoint must be claimed by
exactly one part through an exact leading prefix (the longest matching prefix wins, so
``module.projection_head.`` beats ``module.``); unclaimed keys are reported as unexpected.
A part's keys are stripped of the prefix and renamed by its ``renames`` (regex, replacement),
first full match wins, then checked against the Flax model's own variable tree.

Head keys are renamed to the torch-style names of the Flax head modules in
``ssl_jax.models.load.build_head`` (``dense.0.weight`` is Flax ``dense_0/kernel``,
``bn.0.running_mean`` is ``bn_0`` batch stats, ``prototypes.1.weight`` is ``prototypes_1``).
"""
import dataclasses
from typing import Any

from ssl_jax.data import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class InputConvention:
    """What the original network was fed, starting from [0, 1] RGB images.

    value_range: images are multiplied by this (255.0 for Caffe2-style models).
    mean, std: per channel in the scaled units and the network's channel order; None: none.
    channel_order: "RGB" or "BGR".
    """
    value_range: float = 1.0
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order={self.channel_order!r}; valid: 'RGB', 'BGR'")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must both be given or both be None")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


UNNORMALISED = InputConvention(mean=None, std=None)


@dataclasses.dataclass(frozen=True)
class Part:
    """One group of checkpoint keys.

    target: "backbone", a head name ("projection", "predictor", "prototypes") or "drop"
      (known keys deliberately not converted: momentum encoders, queues, jigsaw heads).
    prefix: exact leading prefix of the part's keys ("" = every key).
    container: top-level entry of the file holding this part's state_dict ("" = the file
      itself is the state_dict).
    renames: (regex, replacement) applied to the prefix-stripped key; first full match wins;
      keys matching none keep their name.
    """
    target: str
    prefix: str = ""
    container: str = ""
    renames: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Family:
    """A zoo family: key layout, architecture, padding and input convention.

    arch: "resnet" (depth read from the keys) or a fixed ``get_model`` name.
    padding: ResNet padding mode ("torch", "same" or "simclr", see ssl_jax.models.resnet).
    zero_keys: renamed head keys that must be all zeros and are dropped (a BN bias the Flax
      head does not have, e.g. SimCLR v2's last projection BN, initialised and kept at zero).
    notes: caveats copied into the metadata.
    """
    name: str
    description: str
    parts: tuple[Part, ...]
    arch: str = "resnet"
    padding: str = "torch"
    convention: InputConvention = InputConvention()
    zero_keys: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def containers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.container for p in self.parts))


# Head renames shared by several families (regexes on the prefix-stripped head key).
_SEQ_MLP = ((r"0\.(weight|bias)", r"dense.0.\1"), (r"2\.(weight|bias)", r"dense.1.\1"))
_SWAV_PROJ = ((r"0\.(weight|bias)", r"dense.0.\1"), (r"1\.(.+)", r"bn.0.\1"),
              (r"3\.(weight|bias)", r"dense.1.\1"))
_PROTOS = ((r"weight", r"prototypes.0.weight"),
           (r"prototypes(\d+)\.weight", r"prototypes.\1.weight"))

# Separius/SimCLRv2-Pytorch resnet -> torchvision names. Blocks: net.{0,2,4} convs, BN+ReLU
# Sequentials at net.{1,3,5} (BN at .0); stem Sequential net.0 = (conv, BNReLU, maxpool).
_SIMCLR_V2_RESNET = (
    (r"net\.0\.0\.weight", r"conv1.weight"),
    (r"net\.0\.1\.0\.(.+)", r"bn1.\1"),
    (r"net\.([1-4])\.blocks\.(\d+)\.net\.0\.weight", r"layer\1.\2.conv1.weight"),
    (r"net\.([1-4])\.blocks\.(\d+)\.net\.2\.weight", r"layer\1.\2.conv2.weight"),
    (r"net\.([1-4])\.blocks\.(\d+)\.net\.4\.weight", r"layer\1.\2.conv3.weight"),
    (r"net\.([1-4])\.blocks\.(\d+)\.net\.1\.0\.(.+)", r"layer\1.\2.bn1.\3"),
    (r"net\.([1-4])\.blocks\.(\d+)\.net\.3\.0\.(.+)", r"layer\1.\2.bn2.\3"),
    (r"net\.([1-4])\.blocks\.(\d+)\.net\.5\.0\.(.+)", r"layer\1.\2.bn3.\3"),
    (r"net\.([1-4])\.blocks\.(\d+)\.projection\.shortcut\.weight",
     r"layer\1.\2.downsample.0.weight"),
    (r"net\.([1-4])\.blocks\.(\d+)\.projection\.bn\.0\.(.+)", r"layer\1.\2.downsample.1.\3"),
)
# ContrastiveHead: ModuleList of Linear(no bias), BN1d[, ReLU] -> layers.{0,1},{3,4},{6,7}.
_SIMCLR_V2_HEAD = ((r"layers\.0\.weight", r"dense.0.weight"), (r"layers\.1\.(.+)", r"bn.0.\1"),
                   (r"layers\.3\.weight", r"dense.1.weight"), (r"layers\.4\.(.+)", r"bn.1.\1"),
                   (r"layers\.6\.weight", r"dense.2.weight"), (r"layers\.7\.(.+)", r"bn.2.\1"))

# gidariss/FeatureLearningRotNet AlexNet -> the alexnet_bn layout (see ssl_jax/models/alexnet.py):
# _feature_blocks = [conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, fc_block, classifier]
_ROTNET_INDEX = {"0.0": "features.0", "0.1": "features.1", "2.0": "features.4",
                 "2.1": "features.5", "4.0": "features.8", "4.1": "features.9",
                 "5.0": "features.11", "5.1": "features.12", "6.0": "features.14",
                 "6.1": "features.15", "8.1": "classifier.0", "8.2": "classifier.1",
                 "8.4": "classifier.3", "8.5": "classifier.4", "9.0": "classifier.6"}
_ROTNET = tuple((r"_feature_blocks\." + src.replace(".", r"\.") + r"\.(.+)", dst + r".\1")
                for src, dst in _ROTNET_INDEX.items())


def _flat_backbone(name: str, description: str, **kwargs: Any) -> Family:
    return Family(name, description, (Part("backbone"),), **kwargs)


def _swav_like(name: str, description: str) -> Family:
    return Family(name, description, (
        Part("backbone", "module."),
        Part("projection", "module.projection_head.", renames=_SWAV_PROJ),
        Part("prototypes", "module.prototypes.", renames=_PROTOS)))


_MOCO_PARTS = (Part("backbone", "module.encoder_q.", "state_dict"),
               Part("projection", "module.encoder_q.fc.", "state_dict",
                    renames=_SEQ_MLP + ((r"(weight|bias)", r"dense.\1"),)),
               Part("drop", "module.encoder_k.", "state_dict"),
               Part("drop", "module.queue", "state_dict"))  # queue, queue_ptr (PCL: queue_*)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    _flat_backbone("torchvision_resnet", "torchvision resnet18/34/50/101/152 and "
                   "wide_resnet50_2/101_2 (flat, with fc)"),
    _flat_backbone("torchvision_alexnet", "torchvision alexnet", arch="alexnet"),
    _flat_backbone("torchvision_vgg16", "torchvision vgg16", arch="vgg16"),
    _flat_backbone("torchvision_vgg16_bn", "torchvision vgg16_bn", arch="vgg16_bn"),
    Family("moco", "MoCo v1 (fc 2048->128) / v2 (fc.0, fc.2 MLP): {'state_dict'}, "
           "module.encoder_q.*", _MOCO_PARTS),
    Family("pcl", "PCL v1/v2: as MoCo ({'state_dict'}, module.encoder_q.*)", _MOCO_PARTS),
    Family("simclr_v1", "SimCLR v1 (tonylins/simclr-converter): {'state_dict'}, torchvision "
           "names, fc = supervised head; widths 1x/2x/4x",
           (Part("backbone", "", "state_dict"),), padding="simclr", convention=UNNORMALISED,
           notes=("simclr-converter never copied the TF supervised head's bias: fc.bias is "
                  "torch's random init, so logits are off by a per-class constant",)),
    Family("simclr_v2", "SimCLR v2 (Separius/SimCLRv2-Pytorch) r50_1x_sk0: {'resnet','head'}",
           (Part("backbone", "", "resnet", _SIMCLR_V2_RESNET),
            Part("projection", "", "head", _SIMCLR_V2_HEAD)),
           padding="simclr", convention=UNNORMALISED, zero_keys=("bn.2.bias",),
           notes=("the stem max-pool uses TF SAME padding as in the original TF training; "
                  "the PyTorch port pads it symmetrically (convert with --padding torch to "
                  "reproduce the port bit-for-bit)",)),
    _flat_backbone("byol", "BYOL (ajtejankar/byol-convert): flat torchvision names with fc, "
                   "no num_batches_tracked; TF SAME padding", padding="same"),
    Family("pycontrast", "PyContrast InsDis/PIRL/MoCo/InfoMin: {'model'}, module.encoder.*, "
           "module.head.* (linear or mlp, L2-normalised after), module.head_jig.* dropped",
           (Part("backbone", "module.encoder.", "model"),
            Part("projection", "module.head.", "model",
                 renames=_SEQ_MLP),
            Part("drop", "module.head_jig.", "model")),
           notes=("the projection output is before PyContrast's final L2 normalisation",)),
    _swav_like("swav", "SwAV: flat module.* + module.projection_head.{0,1,3}, "
               "module.prototypes.weight"),
    _swav_like("deepcluster_v2", "DeepCluster-v2: as SwAV, prototypes.prototypes{0,1,2}"),
    _swav_like("sela_v2", "SeLa-v2: as SwAV"),
    _flat_backbone("dino_resnet50", "DINO RN50 backbone file: flat torchvision names, no fc"),
    Family("dino_resnet50_full", "DINO RN50 full checkpoint: teacher backbone.* "
           "(head.*, student, optimizer dropped)",
           (Part("backbone", "backbone.", "teacher"), Part("drop", "head.", "teacher")),
           notes=("DINO's projection head (weight-normed last layer) is not converted",)),
    _flat_backbone("barlow_twins", "Barlow Twins: flat torchvision backbone, no fc"),
    _flat_backbone("vicreg", "VICReg: flat torchvision backbone, no fc (x2 widens the stem)"),
    Family("rotnet_alexnet", "RotNet AlexNet (gidariss): {'network'}, _feature_blocks.*, "
           "4-way rotation classifier; 224 px only in torch (no adaptive pool)",
           (Part("backbone", "", "network", _ROTNET),), arch="alexnet_bn"),
)}


def get_family(name: str) -> Family:
    """Family by name (ValueError listing the known ones)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]
