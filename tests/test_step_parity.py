"""Step parity against PyTorch: each method's loss, gradients and 3 optimizer steps in ssl_jax
equal an independent PyTorch implementation of the same method started from the same weights.

The PyTorch side is written from the papers' pseudo-code and the reference repositories'
conventions (google-research/simclr, deepmind-research byol, facebookresearch/moco,
zhirongw/lemniscate.pytorch, torch's own SGD and cross entropy), not from ssl_jax's code. Both
sides start from the same weights (ssl_jax's init exported to torch state_dicts through
`checkpoints_convert`'s torchvision mapping) and see the same already-augmented views: the JAX
side runs the trainer's own step (`train.make_train_step`, optimizer and schedule from
`train.build_optimizer`) with a preset whose device ops are the identity, so the views are
exactly the uint8 images / 255 that the torch side gets.

Checked: loss and gradients of step 1 (1e-5 relative), the loss of every step, and after 3
steps the parameters, their change over the 3 steps, BatchNorm statistics, EMA targets, key
encoders, queues and memory banks (1e-4 relative). Configs are the `smoke` variants at batch 8,
16 px (ResNet-18 width 0.125, CIFAR stem).

Two conventions the torch side takes from ssl_jax on purpose (both are documented choices, not
what every reference does): BatchNorm running variances are updated with the biased batch
variance (Flax and Haiku; torch's BatchNorm uses the unbiased one), and weight decay skips
biases and norm parameters for SGD too (MoCo's and InsDis' references decay every parameter).
"""
import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import Mesh
from torch import nn

import configs.byol
import configs.insdis
import configs.moco
import configs.simclr
import configs.supervised
from checkpoints_convert import torchvision as tv
from ssl_jax import optim, train
from ssl_jax.data import augment
from ssl_jax.methods import get_method, insdis, moco
from torch_reference import TorchBasicBlock, TorchResNet

SIZE, BATCH, STEPS = 16, 8, 3
NUM_TRAIN = 20           # InsDis memory bank rows (indices revisit rows across steps)
GRAD_TOL, STATE_TOL = 1e-5, 1e-4
# ssl_jax's LARS (optax.lars) scales by the learning rate before the momentum trace (see LARS).
LARS_LR_IN_MOMENTUM = True
CONFIGS = {"simclr": configs.simclr, "byol": configs.byol, "moco": configs.moco,
           "insdis": configs.insdis, "supervised": configs.supervised}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------------------------
# PyTorch reference pieces
# ---------------------------------------------------------------------------------------------

class _BiasedVarianceBN:
    """Training-mode BatchNorm whose running variance follows the biased batch variance, as
    Flax's (and Haiku's, BYOL's reference) does; normalisation is torch's own."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        dims = [0] + list(range(2, x.ndim))
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * x.mean(dims))
            self.running_var.mul_(1 - m).add_(m * x.var(dims, unbiased=False))
        return out


class BN1d(_BiasedVarianceBN, nn.BatchNorm1d):
    pass


class BN2d(_BiasedVarianceBN, nn.BatchNorm2d):
    pass


def _use_biased_variance_bn(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = BN2d
    return model


class SplitBN2d(BN2d):
    """The MoCo CIFAR-10 demo's SplitBatchNorm: in training, the batch is viewed as
    [B/S, S*C, H, W] so that one batch_norm call normalises each of the S slices with its own
    statistics (weight and bias repeated S times); the running statistics become the slices'
    average. Running variances use the biased batch variance, as in BN2d.

    Slices here are CONTIGUOUS (slice s = examples s*B/S .. (s+1)*B/S - 1), as ssl_jax's
    `moco.bn="split"` documents: [B, C, H, W] -> [S, B/S, C, H, W] -> [B/S, S, C, H, W] ->
    [B/S, S*C, H, W]. The demo's plain `input.view(-1, C * S, H, W)` interleaves instead
    (slice s = examples s, s+S, s+2S, ...); on a randomly ordered batch both are random
    slices, but they are different slices, so the demo's view would not match element-wise."""

    num_splits = 1

    def forward(self, x):
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        assert n % s == 0, (n, s)
        xs = x.reshape(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        out = F.batch_norm(xs, None, None, self.weight.repeat(s), self.bias.repeat(s), True,
                           0.0, self.eps)
        with torch.no_grad():
            m = self.momentum
            mean = xs.mean((0, 2, 3)).reshape(s, c).mean(0)
            var = xs.var((0, 2, 3), unbiased=False).reshape(s, c).mean(0)
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var)
        return out.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def _use_split_bn(model: nn.Module, splits: int) -> nn.Module:
    for module in model.modules():
        if type(module) is BN2d:
            module.__class__ = SplitBN2d
            module.num_splits = splits
    return model


class MLP(nn.Module):
    """Linear layers `dense.i`, ReLU between them; with `bn`, BatchNorm1d `bn.i` after each
    hidden layer (BYOL's MLP); `v2`: every layer bias-free and BN'd, the last BN without its
    shift (SimCLR v2's head)."""

    def __init__(self, dims, bn=False, v2=False):
        super().__init__()
        self.v2 = v2
        self.dense = nn.ModuleList(nn.Linear(i, o, bias=not v2) for i, o in zip(dims, dims[1:]))
        n_bn = len(self.dense) if v2 else (len(self.dense) - 1 if bn else 0)
        self.bn = nn.ModuleList(BN1d(o) for o in dims[1:1 + n_bn])
        if v2:
            self.bn[-1].register_parameter("bias", None)

    def forward(self, x):
        for i, dense in enumerate(self.dense):
            x = dense(x)
            if i < len(self.bn):
                x = self.bn[i](x)
            if i < len(self.dense) - 1:
                x = F.relu(x)
        return x


class Net(nn.Module):
    """NHWC images in [0, 1] -> ImageNet-normalised -> backbone -> heads applied in order.
    Returns [h, head_1(h), head_2(head_1(h)), ...]. Submodule names follow the Flax tree."""

    def __init__(self, backbone, **heads):
        super().__init__()
        self.backbone = backbone
        for name, head in heads.items():
            self.add_module(name, head)
        self.head_names = list(heads)

    def forward(self, x):
        x = ((x - IMAGENET_MEAN) / IMAGENET_STD).permute(0, 3, 1, 2)
        outs = [self.backbone(x)[0]]
        for name in self.head_names:
            outs.append(getattr(self, name)(outs[-1]))
        return outs


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": lambda: nn.GELU()}


def torch_backbone(config):
    m = config.model
    assert m.name == "resnet18", m.name
    net = TorchResNet(TorchBasicBlock, [2, 2, 2, 2], width=m.width, cifar_stem=m.cifar_stem)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, ACTIVATIONS[m.activation]())
    return _use_biased_variance_bn(net)


def simclr_net(config):
    backbone = torch_backbone(config)
    d, cfg = backbone.inplanes, config.simclr
    head = (MLP([d, d, cfg.proj_dim]) if cfg.head == "v1" else
            MLP([d] * cfg.head_layers + [cfg.proj_dim], v2=True))
    return Net(backbone, head=head)


def supervised_net(config):
    backbone = torch_backbone(config)
    return Net(backbone, fc=nn.Linear(backbone.inplanes, config.dataset.num_classes))


def byol_online_net(config):
    backbone = torch_backbone(config)
    d, cfg = backbone.inplanes, config.byol
    return Net(backbone, projector=MLP([d, cfg.proj_hidden_dim, cfg.proj_dim], bn=True),
               predictor=MLP([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim], bn=True))


def moco_net(config):
    backbone = torch_backbone(config)
    d, cfg = backbone.inplanes, config.moco
    return Net(backbone, head=MLP([d, cfg.proj_dim]) if cfg.version == 1 else
               MLP([d, d, cfg.proj_dim]))


def insdis_net(config):
    backbone = torch_backbone(config)
    return Net(backbone, embed=nn.Linear(backbone.inplanes, config.insdis.embed_dim))


def lr_at(step, config, total_steps):
    """Linear warmup from 0, then half-cosine to 0; peak = base_lr * batch / 256 (SimCLR/BYOL
    batch scaling), written from the papers' schedule description."""
    oc = config.optimizer
    peak = oc.base_lr * (config.batch_size / 256 if oc.get("scale_with_batch", True) else 1.0)
    warmup = oc.get("warmup_steps", 0) or int(round(oc.warmup_fraction * total_steps))
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total_steps - warmup)))


def excluded_from_decay(model: nn.Module) -> set:
    """Names of the parameters that take no weight decay and no LARS adaptation: every bias
    and every normalisation layer's parameters (BYOL's filter), found by module type."""
    out = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or p_name == "bias":
                out.add(full)
    return out


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in BYOL's and SimCLR's references: weight decay added to the
    gradient, then the trust ratio eta ||w|| / ||g + wd w|| (1 where either norm is 0), then
    heavy-ball momentum. Groups with `adapt=False` skip decay and the trust ratio.

    Where the learning rate enters differs between the references, and matters only while
    the rate changes (warmup, cosine): `lr_in_momentum=True` accumulates lr-scaled updates,
    v <- m v + lr u, w <- w - v (SimCLR's LARSOptimizer for adapted weights; optax.lars);
    False applies it after, v <- m v + u, w <- w - lr v (BYOL's optimizers.lars, torch SGD)."""

    def __init__(self, groups, lr, momentum, weight_decay, eta, lr_in_momentum):
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, adapt=True))
        self.lr_in_momentum = lr_in_momentum

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if group["adapt"]:
                    g = g + group["weight_decay"] * p
                    w_norm, g_norm = p.norm(), g.norm()
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones(()))
                    g = trust * g
                lr = group["lr"]
                buf = self.state[p].get("momentum", torch.zeros_like(p))
                buf = group["momentum"] * buf + (lr * g if self.lr_in_momentum else g)
                self.state[p]["momentum"] = buf
                p.sub_(buf if self.lr_in_momentum else lr * buf)


def make_optimizer(config, model: nn.Module):
    """The config's optimizer over `model`'s parameters: SGD (torch's) or LARS, biases and
    norm parameters in a group without weight decay (and without LARS adaptation)."""
    oc = config.optimizer
    excluded = excluded_from_decay(model)
    named = list(model.named_parameters())
    decay = [p for n, p in named if n not in excluded]
    no_decay = [p for n, p in named if n in excluded]
    if oc.name == "sgd":
        return torch.optim.SGD([{"params": decay, "weight_decay": oc.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}],
                               lr=0.0, momentum=oc.momentum)
    if oc.name == "lars":
        return LARS([{"params": decay}, {"params": no_decay, "adapt": False}], lr=0.0,
                    momentum=oc.momentum, weight_decay=oc.weight_decay,
                    eta=oc.get("lars_eta", 1e-3), lr_in_momentum=LARS_LR_IN_MOMENTUM)
    raise NotImplementedError(oc.name)


class TorchMethod:
    """One method in torch: `step(k, batch)` runs step k (0-based) and returns (loss, grads of
    the trained network's parameters, before the update); `state()` -> {part: {key: array}}.
    `dtype` float64 gives the rounding-free reference that float32 results are judged by."""

    def __init__(self, config, total_steps, dtype):
        self.config, self.total_steps, self.dtype = config, total_steps, dtype

    def _views(self, batch, v):
        x = batch["image"][:, v].astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(x).to(self.dtype)

    def _update(self, k, net, opt, loss):
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
        for group in opt.param_groups:
            group["lr"] = lr_at(k, self.config, self.total_steps)
        opt.step()
        return float(loss.detach()), grads


class TorchSimCLR(TorchMethod):
    def __init__(self, config, total_steps, weights, dtype=torch.float32):
        super().__init__(config, total_steps, dtype)
        self.net = simclr_net(config).to(dtype)
        self.net.load_state_dict(weights["net"])
        self.opt = make_optimizer(config, self.net)

    def step(self, k, batch):
        self.net.train()
        # One concatenated batch, as SimCLR: BatchNorm statistics over all 2N images.
        x = torch.cat([self._views(batch, 0), self._views(batch, 1)])
        z = F.normalize(self.net(x)[-1], dim=1)
        n2 = z.shape[0]
        # NT-Xent (SimCLR Alg. 1): row i's positive is the other view of its image; mean of
        # the 2N rows' cross entropies (the repo's convention, google's code sums the halves).
        sim = (z @ z.T / self.config.simclr.temperature).masked_fill(
            torch.eye(n2, dtype=torch.bool), float("-inf"))
        positive = torch.arange(n2).roll(n2 // 2)
        loss = F.cross_entropy(sim, positive)
        return self._update(k, self.net, self.opt, loss)

    def state(self):
        return {"net": self.net.state_dict()}


class TorchSupervised(TorchMethod):
    def __init__(self, config, total_steps, weights, dtype=torch.float32):
        super().__init__(config, total_steps, dtype)
        self.net = supervised_net(config).to(dtype)
        self.net.load_state_dict(weights["net"])
        self.opt = make_optimizer(config, self.net)

    def step(self, k, batch):
        self.net.train()
        logits = self.net(self._views(batch, 0))[-1]
        loss = F.cross_entropy(logits, torch.from_numpy(batch["label"]).long(),
                               label_smoothing=self.config.supervised.label_smoothing)
        return self._update(k, self.net, self.opt, loss)

    def state(self):
        return {"net": self.net.state_dict()}


class TorchBYOL(TorchMethod):
    def __init__(self, config, total_steps, weights, dtype=torch.float32):
        super().__init__(config, total_steps, dtype)
        self.online = byol_online_net(config).to(dtype)
        self.online.load_state_dict(weights["online"])
        self.target = Net(copy.deepcopy(self.online.backbone),
                          projector=copy.deepcopy(self.online.projector))
        self.target.load_state_dict(weights["target"])
        self.opt = make_optimizer(config, self.online)

    @staticmethod
    def _regression(p, z):
        return 2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(1)

    def step(self, k, batch):
        self.online.train()
        self.target.train()   # the target uses batch statistics, as in the reference
        v1, v2 = self._views(batch, 0), self._views(batch, 1)
        p1, p2 = self.online(v1)[-1], self.online(v2)[-1]
        with torch.no_grad():
            z1, z2 = self.target(v1)[-1], self.target(v2)[-1]
        loss = (self._regression(p1, z2) + self._regression(p2, z1)).mean()
        out = self._update(k, self.online, self.opt, loss)
        # Target EMA after the optimizer step, tau from BYOL's cosine schedule at step k.
        base = self.config.byol.base_ema
        tau = 1 - (1 - base) * (math.cos(math.pi * k / self.total_steps) + 1) / 2
        online = dict(self.online.named_parameters())
        with torch.no_grad():
            for name, t in self.target.named_parameters():
                t.mul_(tau).add_((1 - tau) * online[name])
        return out

    def state(self):
        return {"online": self.online.state_dict(), "target": self.target.state_dict()}


class TorchMoCo(TorchMethod):
    """MoCo (builder.py) with the key-BN variants of the test cases:
    - `splits` > 1: MoCo's shuffle-BN on `splits` GPUs emulated on one process (the key batch
      shuffled, each contiguous split encoded by a separate forward, unshuffled);
    - `config.moco.bn == "split"`: the MoCo CIFAR-10 demo's SplitBatchNorm (`SplitBN2d`,
      `config.moco.bn_splits` slices) in BOTH encoders, keys shuffled before the key encoder
      and unshuffled after (the demo's `_batch_shuffle_single_gpu`);
    - otherwise plain BN over the whole batch (SyncBN).
    `permutations[k][d]`: the shuffle of step k's direction d (0: q from view 0, keys from
    view 1; 1: the reverse, with `config.moco.symmetric`)."""

    def __init__(self, config, total_steps, weights, dtype=torch.float32, permutations=None,
                 splits=1):
        super().__init__(config, total_steps, dtype)
        cfg = config.moco
        self.query = moco_net(config)
        if cfg.bn == "split":
            assert splits == 1, "split BN and emulated shuffle-BN are exclusive"
            _use_split_bn(self.query, cfg.bn_splits)
            assert any(isinstance(m, SplitBN2d) for m in self.query.modules())
            # Every BatchNorm is split (MoCo's heads have none that would stay global).
            assert not any(type(m) in (BN1d, BN2d) for m in self.query.modules())
        self.query = self.query.to(dtype)
        self.query.load_state_dict(weights["query"])
        self.key = copy.deepcopy(self.query)
        self.key.load_state_dict(weights["key"])
        self.queue = torch.from_numpy(weights["queue"]["keys"].copy()).to(dtype)
        self.ptr = int(weights["queue"]["ptr"])
        self.permutations, self.splits = permutations, splits
        self.opt = make_optimizer(config, self.query)

    def _encode_keys(self, k, d, x):
        """Keys of x for step k, direction d (see the class docstring)."""
        if self.config.moco.bn == "split":
            idx_shuffle = torch.tensor(np.asarray(self.permutations[k][d]), dtype=torch.long)
            idx_unshuffle = torch.argsort(idx_shuffle)
            return self.key(x[idx_shuffle])[-1][idx_unshuffle]
        if self.splits == 1:
            return self.key(x)[-1]
        perm = torch.tensor(np.asarray(self.permutations[k][d]), dtype=torch.long)
        buffers = {n: b.clone() for n, b in self.key.named_buffers()}
        outs, stats = [], []
        for chunk in x[perm].chunk(self.splits):
            self.key.load_state_dict(buffers, strict=False)
            outs.append(self.key(chunk)[-1])
            stats.append({n: b.clone() for n, b in self.key.named_buffers()})
        self.key.load_state_dict({n: torch.stack([s[n] for s in stats]).mean(0)
                                  for n in buffers if "running" in n}, strict=False)
        shuffled = torch.cat(outs)
        keys = torch.empty_like(shuffled)
        keys[perm] = shuffled
        return keys

    def step(self, k, batch):
        cfg = self.config.moco
        self.query.train()
        self.key.train()
        with torch.no_grad():
            # builder.py: momentum update of the key encoder first (once per step, also with
            # the symmetric loss, as the CIFAR demo's forward), then encode the keys.
            query_params = dict(self.query.named_parameters())
            for name, p in self.key.named_parameters():
                p.mul_(cfg.momentum).add_((1 - cfg.momentum) * query_params[name])
        # (query view, key view) per direction; each direction's forwards run in this order,
        # so BN running statistics are updated query 0, key 1, query 1, key 0.
        directions = ((0, 1), (1, 0)) if cfg.symmetric else ((0, 1),)
        queue = self.queue.clone()   # every direction sees the queue from before this step
        losses, keys = [], []
        for d, (qv, kv) in enumerate(directions):
            q = F.normalize(self.query(self._views(batch, qv))[-1], dim=1)
            with torch.no_grad():
                key = F.normalize(self._encode_keys(k, d, self._views(batch, kv)), dim=1)
            l_pos = (q * key).sum(1, keepdim=True)
            l_neg = q @ queue.T
            logits = torch.cat([l_pos, l_neg], 1) / cfg.temperature
            losses.append(F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long)))
            keys.append(key)
        # Two differences from the CIFAR demo's symmetric loss, both ssl_jax's documented
        # choices: the demo SUMS the directions (loss_12 + loss_21, twice this loss and its
        # gradients), here they are averaged; and the demo enqueues cat([k1, k2]) (keys of
        # view 0 first), here the keys come in direction order: keys of view 1 (scored
        # against q from view 0), then keys of view 0.
        loss = sum(losses) / len(losses)
        out = self._update(k, self.query, self.opt, loss)
        keys = torch.cat(keys)
        b = keys.shape[0]
        assert self.queue.shape[0] % b == 0
        self.queue[self.ptr:self.ptr + b] = keys
        self.ptr = (self.ptr + b) % self.queue.shape[0]
        return out

    def state(self):
        return {"query": self.query.state_dict(), "key": self.key.state_dict(),
                "queue": {"keys": self.queue, "ptr": np.array(self.ptr)}}


class TorchInsDis(TorchMethod):
    def __init__(self, config, total_steps, weights, negatives, dtype=torch.float32):
        super().__init__(config, total_steps, dtype)
        self.net = insdis_net(config).to(dtype)
        self.net.load_state_dict(weights["net"])
        self.bank = torch.from_numpy(weights["memory"]["bank"].copy()).to(dtype)
        self.z = float(weights["memory"]["z"])
        self.negatives = torch.from_numpy(np.asarray(negatives)).long()
        self.opt = make_optimizer(config, self.net)

    def step(self, k, batch):
        cfg, n = self.config.insdis, self.bank.shape[0]
        self.net.train()
        v = F.normalize(self.net(self._views(batch, 0))[-1], dim=1)
        index = torch.from_numpy(batch["index"]).long()
        # lemniscate's NCEAverage: exp(v . m / T) over [positive, K negatives], divided by
        # Z = N * mean of the first batch's outputs, fixed from then on.
        weight = torch.cat([self.bank[index][:, None],
                            self.bank[self.negatives].expand(v.shape[0], -1, -1)], 1)
        out = torch.exp(torch.einsum("bkd,bd->bk", weight, v) / cfg.temperature)
        if self.z == 0:
            self.z = float(out.detach().mean()) * n
        out = out / self.z
        if cfg.loss == "nce":
            # NCECriterion (Wu et al. eq. 6): h = P / (P + K Pn), Pn = 1/N.
            k_pn = self.negatives.shape[-1] / n
            log_h_pos = torch.log(out[:, 0] / (out[:, 0] + k_pn))
            log_1m_h_neg = torch.log(k_pn / (out[:, 1:] + k_pn))
            loss = -(log_h_pos.sum() + log_1m_h_neg.sum()) / v.shape[0]
        else:
            loss = F.cross_entropy(torch.log(out), torch.zeros(v.shape[0], dtype=torch.long))
        result = self._update(k, self.net, self.opt, loss)
        with torch.no_grad():
            m = cfg.memory_momentum
            self.bank[index] = F.normalize(m * self.bank[index] + (1 - m) * v, dim=1)
        return result

    def state(self):
        return {"net": self.net.state_dict(),
                "memory": {"bank": self.bank, "z": np.array(self.z, np.float32)}}


# ---------------------------------------------------------------------------------------------
# Flax trees -> torch-keyed dicts (checkpoints_convert's export mapping)
# ---------------------------------------------------------------------------------------------

def export(config, params, batch_stats=None):
    """{torch key: numpy} for a Flax network {backbone, heads...}: the backbone through
    `flax_to_torch` (torchvision keys, checked against the model), heads through the same
    leaf mapping (`dense_0` -> `dense.0`, kernel -> weight transposed), each under its name."""
    out = {}
    for name, sub in params.items():
        variables = {"params": sub}
        if batch_stats is not None and name in batch_stats:
            variables["batch_stats"] = batch_stats[name]
        if name == "backbone" and batch_stats is not None:
            sd = tv.flax_to_torch(variables, config.model.name, width=config.model.width,
                                  cifar_stem=config.model.cifar_stem)
        else:
            sd = tv.variables_to_state_dict(variables)
        out.update({f"{name}.{k}": v for k, v in sd.items()})
    return out


def jax_parts(name, params, model_state, config):
    """ssl_jax's state in the torch side's layout (see TorchMethod.state)."""
    ms = jax.device_get(model_state)
    params = jax.device_get(params)
    if name == "byol":
        t = ms["target"]
        return {"online": export(config, params, ms["batch_stats"]),
                "target": export(config, t["params"], t["batch_stats"])}
    if name == "moco":
        k = ms["key"]
        return {"query": export(config, params, ms["batch_stats"]),
                "key": export(config, k["params"], k["batch_stats"]),
                "queue": {"keys": np.asarray(ms["queue"]["keys"]),
                          "ptr": np.asarray(ms["queue"]["ptr"])}}
    parts = {"net": export(config, params, ms["batch_stats"])}
    if name == "insdis":
        parts["memory"] = {k: np.asarray(v) for k, v in ms["memory"].items()}
    return parts


def _to_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------

def _numpy(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def rel_errors(got: dict, want: dict) -> dict:
    """Per key (L2, max) relative errors, ||got - want|| / ||want|| and
    max|got - want| / max|want|. Keys must match exactly (num_batches_tracked aside).

    A key whose ||want|| is below 1e-3 of the dict's largest is measured against that largest
    instead: biases of layers followed by BatchNorm have mathematically zero gradients (BN
    removes a constant shift; measured ~1e-8 of the largest leaf, every other leaf >= 1e-2),
    so theirs are rounding noise whose own relative error means nothing."""
    got = {k: _numpy(v) for k, v in got.items() if not k.endswith("num_batches_tracked")}
    want = {k: _numpy(v).astype(np.float64) for k, v in want.items()
            if not k.endswith("num_batches_tracked")}
    assert sorted(got) == sorted(want), sorted(set(got) ^ set(want))
    top_l2 = max(float(np.linalg.norm(w)) for w in want.values())
    top_max = max(float(np.max(np.abs(w))) for w in want.values())
    out = {}
    for k, w in want.items():
        g = got[k].astype(np.float64)
        assert g.shape == w.shape, (k, g.shape, w.shape)
        l2, mx = float(np.linalg.norm(w)), float(np.max(np.abs(w)))
        small = l2 < 1e-3 * top_l2
        out[k] = (float(np.linalg.norm(g - w)) / max(top_l2 if small else l2, 1e-30),
                  float(np.max(np.abs(g - w))) / max(top_max if small else mx, 1e-30))
    return out


def worst(errors: dict) -> dict:
    """The largest L2 and max relative errors over the keys, with the keys they occur at."""
    l2 = max(errors, key=lambda k: errors[k][0])
    mx = max(errors, key=lambda k: errors[k][1])
    return {"l2": errors[l2][0], "l2_at": l2, "max": errors[mx][1], "max_at": mx}


# ---------------------------------------------------------------------------------------------
# Running both sides
# ---------------------------------------------------------------------------------------------

def parity_config(name, arg="", **overrides):
    """configs/NAME.py:smoke[,arg] at batch 8, 16 px (+ a queue of 3 batches for MoCo)."""
    config = CONFIGS[name].get_config(",".join(filter(None, ["smoke", arg])))
    config.batch_size = BATCH
    config.dataset.image_size = SIZE
    config.model.activation = "silu"
    if name == "moco":
        config.moco.queue_size = 3 * BATCH
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    steps = train.total_steps(config, NUM_TRAIN)
    return train.with_total_steps(config, steps, NUM_TRAIN), steps


def make_batches(name, num_views, seed=0):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        batch = {"image": rng.integers(0, 256, (BATCH, num_views, SIZE, SIZE, 3), np.uint8),
                 "label": rng.integers(0, 10, BATCH).astype(np.int32)}
        if name == "insdis":
            # Distinct rows within a batch; later batches revisit rows written earlier.
            batch["index"] = rng.permutation(NUM_TRAIN)[:BATCH].astype(np.int32)
        batches.append(batch)
    return batches


def identity_preset(num_views):
    """Device augmentation that only converts uint8 -> [0, 1]: the views are fixed inputs."""
    view = augment.ViewConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                              solarize_prob=0.0)
    return augment.Preset("parity_identity", (view,) * num_views)


STEP_RNG = jax.random.key(1)


def run_jax(method, config, steps, batches):
    """The trainer's step (loss, optimizer, after_update) for each batch. Returns
    (state before, [losses], step-1 grads, state after)."""
    schedule, tx = train.build_optimizer(config, steps)
    # Jitted, with an "rbg" key: an eager Flax init of the ResNet costs ~15 s of CPU, and so
    # does compiling it with threefry keys; rbg compiles in ~3 s. (Any init will do: both
    # sides start from whatever weights this gives.)
    state = jax.jit(lambda rng: train.init_state(method, tx, rng, (SIZE, SIZE, 3)))(
        jax.random.key(config.seed, impl="rbg"))
    preset = identity_preset(method.num_views)
    step_fn = train.make_train_step(method, tx, preset, schedule)

    @jax.jit
    def step_and_grads(state, batch):
        (_, _), grads = train.loss_and_grads(method, preset, state, batch, STEP_RNG)
        new_state, metrics = step_fn(state, batch, STEP_RNG)
        return new_state, metrics["loss"], grads

    start, losses, first_grads = state, [], None
    for batch in batches:
        state, loss, grads = step_and_grads(state, batch)
        losses.append(float(loss))
        first_grads = grads if first_grads is None else first_grads
    return start, losses, first_grads, state


def check_parity(name, config, steps, jax_method, make_torch, report):
    """3 steps on both sides from the same weights and views; asserts the tolerances.

    Gradients: float32 sums over a batch's pixels (BatchNorm-bias gradients: 4096 terms that
    largely cancel) carry ~1e-5 relative rounding error on either side, so the step-1 loss and
    gradients are judged against a float64 run of the same torch code: within GRAD_TOL (the
    loss twice that), or within twice float32 torch's own error against that run where the
    CPU's rounding puts torch's above GRAD_TOL (1.35e-5 on an AVX-512 Xeon); float32 torch
    only to twice that."""
    batches = make_batches(name, jax_method.num_views)
    start, jax_losses, jax_grads, end = run_jax(jax_method, config, steps, batches)
    weights = jax_parts(name, start.params, start.model_state, config)
    weights = {k: v if k in ("queue", "memory") else _to_torch(v) for k, v in weights.items()}
    torch_method = make_torch(config, steps, weights, torch.float32)
    torch_losses, torch_grads = [], None
    for k, batch in enumerate(batches):
        loss, grads = torch_method.step(k, batch)
        torch_losses.append(loss)
        torch_grads = grads if torch_grads is None else torch_grads
    loss64, grads64 = make_torch(config, steps, weights, torch.float64).step(0, batches[0])

    got_grads = export(config, jax.device_get(jax_grads))
    errors = {"loss": abs(jax_losses[0] - loss64) / abs(loss64),
              "grads vs float64": worst(rel_errors(got_grads, grads64)),
              "grads vs float32": worst(rel_errors(got_grads, torch_grads)),
              "torch float32 grads vs float64": worst(rel_errors(torch_grads, grads64))}
    got = jax_parts(name, end.params, end.model_state, config)
    want = torch_method.state()
    for part in want:
        errors[part] = worst(rel_errors(got[part], want[part]))
    # The change over 3 steps relative to itself: small learning rates move weights by
    # ~1e-5 of their size, which the state tolerance alone would not see.
    trained = next(iter(want))
    start_np = {k: _numpy(v) for k, v in weights[trained].items()}
    errors["update"] = worst(rel_errors(
        {k: got[trained][k] - start_np[k] for k in start_np},
        {k: _numpy(want[trained][k]) - start_np[k] for k in start_np}))
    errors["losses"] = max(abs(a - b) / abs(b) for a, b in zip(jax_losses, torch_losses))
    report(name, errors, jax_losses, torch_losses)

    torch_loss_error = abs(torch_losses[0] - loss64) / abs(loss64)
    torch_grads_error = errors["torch float32 grads vs float64"]["l2"]
    # The loss goes through a temperature softmax over the queue (MoCo: 1/0.2), which scales
    # the features' relative rounding up: 1.2e-5 for JAX's MoCo loss on an AVX-512 Xeon.
    assert errors["loss"] <= max(2 * GRAD_TOL, 2 * torch_loss_error), errors
    assert errors["grads vs float64"]["l2"] <= max(GRAD_TOL, 2 * torch_grads_error), errors
    assert errors["grads vs float32"]["l2"] <= 2 * max(GRAD_TOL, torch_grads_error), errors
    for part in want:
        assert errors[part]["max"] <= STATE_TOL, (part, errors)
    assert errors["update"]["l2"] <= STATE_TOL, errors
    assert errors["losses"] <= STATE_TOL, errors


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The torch side is tiny; its default thread pool only spins against the other pytest
    worker on a 2-core machine (2-3x the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def report():
    def _report(name, errors, jax_losses, torch_losses):
        print(f"\n[{name}] jax losses {np.round(jax_losses, 6)} torch {np.round(torch_losses, 6)}")
        for k, v in errors.items():
            print(f"  {k:>18}: {v}")
    return _report


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_simclr_three_steps_match_pytorch(report):
    config, steps = parity_config("simclr")
    check_parity("simclr", config, steps, get_method("simclr", config),
                 lambda c, s, w, d: TorchSimCLR(c, s, w, d), report)


def test_supervised_with_label_smoothing_three_steps_match_pytorch(report):
    config, steps = parity_config("supervised", **{"supervised.label_smoothing": 0.1})
    check_parity("supervised", config, steps, get_method("supervised", config),
                 lambda c, s, w, d: TorchSupervised(c, s, w, d), report)


def test_byol_three_steps_match_pytorch(report):
    config, steps = parity_config("byol")
    check_parity("byol", config, steps, get_method("byol", config),
                 lambda c, s, w, d: TorchBYOL(c, s, w, d), report)


def _loss_rng(k):
    """The loss RNG of the trainer's step k: fold_in(rng, k), split, second half (train.py)."""
    return jax.random.split(jax.random.fold_in(STEP_RNG, k))[1]


# ~30 s of CPU per MoCo case (compile), so the default run keeps one: the quickstart's options.
@pytest.mark.slow
@pytest.mark.parametrize("version", [2, 1])
def test_moco_shuffle_bn_on_two_devices_matches_split_bn_in_pytorch(version, report):
    """The default `moco.bn=shuffle` over a 2-device mesh == split BatchNorm (2 splits) of the
    key batch permuted by the same permutation (the one the trainer's step RNG draws)."""
    config, steps = parity_config("moco", f"version={version}")
    assert config.moco.bn == "shuffle" and not config.moco.symmetric
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("data",))
    method = moco.Method(config, mesh=mesh)
    perms = [[np.asarray(jax.random.permutation(_loss_rng(k), BATCH))] for k in range(STEPS)]
    check_parity("moco", config, steps, method,
                 lambda c, s, w, d: TorchMoCo(c, s, w, d, permutations=perms, splits=2), report)


QUICKSTART_SPLITS = 4


# Case: MoCo v2, symmetric, split BN (the quickstart's options), in the default run. No v1
# case: with T = 0.07 its step-1 loss is 0.007, the gradients are small differences, and float32
# rounding alone puts torch's own float32 gradients 1.9e-5 from float64 (JAX's: 2.5e-5), over
# GRAD_TOL; v1's head and temperature are covered by the slow shuffle-BN and SyncBN cases.
@pytest.mark.parametrize("version", [pytest.param(2, id="v2_quickstart_options")])
def test_moco_symmetric_split_bn_three_steps_match_pytorch(version, report):
    """`moco.symmetric=True, moco.bn="split"` (the quickstart's options) against the torch
    MoCo with the CIFAR demo's SplitBatchNorm in both encoders and the symmetric loss.

    4 slices of 2 images (the quickstart has 8 slices of 16; 8 slices of batch 8 would be
    single-image BatchNorm). The queue holds two steps' keys (2 x 2B), so the third step
    writes over the first step's rows. Each direction's key shuffle is the permutation the
    method draws: `jax.random.permutation` of the direction's half of split(loss RNG)."""
    quick = configs.moco.get_config("quickstart")
    assert quick.moco.symmetric and quick.moco.bn == "split"
    config, steps = parity_config("moco", f"version={version}", **{
        "moco.symmetric": True, "moco.bn": "split", "moco.bn_splits": QUICKSTART_SPLITS,
        "moco.queue_size": 2 * 2 * BATCH})
    perms = [[np.asarray(jax.random.permutation(r, BATCH))
              for r in jax.random.split(_loss_rng(k), 2)] for k in range(STEPS)]
    assert not any(np.array_equal(p, np.arange(BATCH)) for ps in perms for p in ps)
    check_parity("moco", config, steps, get_method("moco", config),
                 lambda c, s, w, d: TorchMoCo(c, s, w, d, permutations=perms), report)


@pytest.mark.slow
@pytest.mark.parametrize("version", [2, 1])
def test_moco_sync_bn_three_steps_match_pytorch(version, report):
    config, steps = parity_config("moco", f"version={version}", **{"moco.bn": "sync"})
    check_parity("moco", config, steps, get_method("moco", config),
                 lambda c, s, w, d: TorchMoCo(c, s, w, d), report)


def test_insdis_three_steps_match_pytorch(monkeypatch, report):
    config, steps = parity_config("insdis")
    k = config.insdis.num_negatives
    negatives = np.random.default_rng(5).integers(0, NUM_TRAIN, k).astype(np.int32)
    assert not config.insdis.per_example_negatives
    # Fixed negative indices on both sides (the trainer would draw them from its step RNG).
    monkeypatch.setattr(insdis, "sample_negatives",
                        lambda rng, batch, num, num_data, per_example: jnp.asarray(negatives))
    check_parity("insdis", config, steps, get_method("insdis", config),
                 lambda c, s, w, d: TorchInsDis(c, s, w, negatives, d), report)


# ---------------------------------------------------------------------------------------------
# Schedule and masks
# ---------------------------------------------------------------------------------------------

def test_learning_rate_schedule_hand_values():
    """batch 512, base_lr 1.0 -> peak 2.0; 5 warmup steps, then cosine over 100 steps."""
    config = configs.simclr.get_config("quickstart")
    config.batch_size = 512
    config.optimizer.update(base_lr=1.0, warmup_fraction=5 / 105)
    schedule, _ = train.build_optimizer(config, 105)
    want = {0: 0.0, 1: 0.4, 4: 1.6, 5: 2.0, 55: 1.0, 105: 0.0,
            30: 1.0 + math.cos(math.pi / 4)}
    for step, lr in want.items():
        assert float(schedule(step)) == pytest.approx(lr, abs=1e-6), step


@pytest.mark.parametrize("name", ["simclr", "byol", "moco", "insdis", "supervised"])
def test_learning_rate_schedule_matches_the_formula(name):
    """Each method's quickstart optimizer config over a 234-step run against `lr_at`."""
    config = CONFIGS[name].get_config("quickstart")
    total = 234
    schedule, _ = train.build_optimizer(config, total)
    peak = lr_at(int(round(config.optimizer.warmup_fraction * total)), config, total)
    assert peak == pytest.approx(config.optimizer.base_lr * config.batch_size / 256)
    for step in (0, 1, 5, 11, 12, 13, 100, 117, 200, 233, 234):
        # float32 cos near pi: 1 + cos(x) keeps ~1e-8 of the peak absolute accuracy.
        assert float(schedule(step)) == pytest.approx(lr_at(step, config, total), rel=1e-5,
                                                      abs=1e-7 * peak), step


@pytest.mark.parametrize("name,arg,torch_net", [
    ("byol", "", byol_online_net), ("simclr", "version=2", simclr_net)])
def test_weight_decay_and_lars_masks_exclude_biases_and_norm_parameters(name, arg, torch_net):
    """On a real parameter tree (backbone with shortcut BatchNorms, heads with Dense biases
    and BatchNorms): `optim.decay_mask` and what the built SGD and LARS do with it equal the
    torch rule "no decay / adaptation for biases and norm-layer parameters" (by module type)."""
    config, _ = parity_config(name, arg)
    method = get_method(name, config)
    shapes = jax.eval_shape(lambda: method.init(jax.random.key(0),
                                                jnp.zeros((1, SIZE, SIZE, 3))))[0]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) + 0.5, shapes)
    excluded = excluded_from_decay(torch_net(config))
    everything = set(export(config, params))
    assert excluded and excluded < everything

    def exported(tree):
        return export(config, jax.device_get(tree))

    mask = exported(jax.tree.map(lambda m, p: np.full(p.shape, m), optim.decay_mask(params),
                                 params))
    assert {k for k, v in mask.items() if not v.all()} == excluded
    zeros = jax.tree.map(np.zeros_like, params)
    for opt in ("sgd", "lars"):
        # Zero gradient: only weight decay moves a parameter.
        tx = optim.build_optimizer(opt, lambda step: 1.0, weight_decay=0.1)
        updates, _ = tx.update(zeros, tx.init(params), params)
        assert {k for k, v in exported(updates).items() if np.any(v != 0)} == everything - excluded
    # No decay, gradient g: LARS scales g by eta ||w|| / ||g|| exactly where the mask is set.
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    tx = optim.build_optimizer("lars", lambda step: 1.0, weight_decay=0.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    w, g, u = exported(params), exported(grads), exported(updates)
    for k in everything:
        eta = 1e-3
        scale = eta * np.linalg.norm(w[k]) / np.linalg.norm(g[k]) if k not in excluded else 1.0
        np.testing.assert_allclose(u[k], -scale * g[k], rtol=1e-5, err_msg=k)
