"""SimCLR train-step throughput: ssl_jax vs an identical PyTorch model and loss on the same CPU.

    .venv/bin/python benchmarks/simclr_throughput.py                 # JAX vs torch, interleaved
    .venv/bin/python benchmarks/simclr_throughput.py --repeats 5 --steps 8
    .venv/bin/python benchmarks/simclr_throughput.py --sweep         # XLA CPU options (JAX only)
    .venv/bin/python benchmarks/simclr_throughput.py --xla-flags ""  # jaxlib's default flags
    .venv/bin/python benchmarks/simclr_throughput.py --gpu           # ResNet-50 bf16 on a GPU
    .venv/bin/python benchmarks/simclr_throughput.py --grid --grid-width 0.25  # width x stem x batch

Workload (CPU modes): SimCLR, ResNet-18 width 1 with the CIFAR stem (3x3 stride-1 conv, no
max-pool), v1 projection head (Dense 512 -> ReLU -> Dense 128), NT-Xent mean over the 2N rows
at T=0.5, LARS, batch 128 of 32 px images, two views each. `--width` and `--stem strided`
(torchvision's 7x7 stride-2 stem and max-pool) change the network on both sides; `--grid` runs
the compare over width {0.25, 1} x stem x batch {128, 256} with torch in both of its layouts.

Convention: **images/s counts source images**: one image = its 2 views (256 network passes per
step of batch 128). Both sides use it.

- JAX: the real trainer step, `ssl_jax.train.make_train_step` on the simclr method built from
  `configs/simclr.py:cifar10` (batch 128), `jax.jit(..., donate_argnums=0)`, ONE CPU device
  (the fake-device XLA flag of the tests is never passed to the workers), timed after warm-up,
  blocking on the new state and metrics each step. Two variants, compiled in the same process and
  timed alternately: `aug` (the simclr_cifar preset: colour jitter p=0.8 + grayscale p=0.2 on
  device, as in training) and `noaug` (the same step with a preset whose device ops are the
  identity: uint8 -> float and clip only; host crops/flips are never part of the step).
- PyTorch: the hand-written torchvision-layout ResNet of tests/torch_reference.py
  (imported, not copied), the same head, loss, input normalisation and uint8 -> float
  conversion, and a hand-written LARS step with the same rule as optax.lars (decay, trust ratio
  eta*||w||/||g + wd w|| on weights with ndim > 1, momentum), `torch.set_num_threads(cores)`.
  No augmentation on the torch side, so `noaug` is the like-for-like ratio.

Each measurement runs in a fresh subprocess (XLA_FLAGS are read once per process); JAX and
torch runs are interleaved and repeated, and the 1-minute load average is recorded beside each,
because a shared machine's numbers drift. Reported: per-run median step time -> images/s, then
the median over runs, and the median of the per-repeat JAX/torch ratios.

`--sweep` times the JAX step (noaug, then aug) under each XLA CPU setting in SWEEP and checks
that the first-step loss and gradient norm match the default setting (fast-math changes them).
`--gpu`: ResNet-50, bfloat16 compute_dtype, batch 256, 224 px, `configs/simclr.py:imagenet`
preset and optimizer, on the first GPU, in-process; prints the GPU's name.
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from absl import flags  # noqa: E402
from ssl_jax import errors  # noqa: E402  (one-line errors, exit code 2)

# The fastest setting of the sweep (docs/BENCHMARKS.md), the compare's default for the JAX side:
# Eigen instead of YNNPACK convolutions, ~1.7x the work rate, same results up to f32 rounding.
BEST_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# XLA CPU settings tried by --sweep: (name, XLA_FLAGS, config overrides). Flags were checked to
# exist in jaxlib 0.10.2 (unknown flags abort XLA); see docs/BENCHMARKS.md for the results.
SWEEP: list[tuple[str, str, dict]] = [
    ("default", "", {}),
    ("no_multi_thread_eigen", "--xla_cpu_multi_thread_eigen=false", {}),
    ("legacy_runtime", "--xla_cpu_use_thunk_runtime=false", {}),
    ("fast_math", "--xla_cpu_enable_fast_math=true", {}),
    ("xnn_conv", "--xla_cpu_experimental_xnn_fusion_type=individual_convolution", {}),
    ("xnn_dot_conv",
     "--xla_cpu_experimental_xnn_fusion_type=individual_dot,individual_convolution", {}),
    ("ynn_conv", "--xla_cpu_experimental_ynn_fusion_type=individual_convolution", {}),
    ("onednn_dot_eltwise", "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise", {}),
    ("xnn_graph_greedy",
     "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {}),
    # jaxlib 0.10.2 already sends every convolution (forward and both gradients) to YNNPACK
    # (`__ynn_fusion` in the compiled HLO); this falls back to XLA's Eigen convolutions.
    ("eigen_conv", BEST_CPU_FLAGS, {}),
    ("bf16_compute", "", {"compute_dtype": "bfloat16"}),
    # On top of eigen_conv: LLVM's 512-bit vectors for XLA's own fused loops (BN, ReLU,
    # LARS; default 256), and the scheduler that overlaps independent ops on the thread pool.
    ("eigen_conv_vec512", f"{BEST_CPU_FLAGS} --xla_cpu_prefer_vector_width=512", {}),
    ("eigen_conv_concurrent",
     f"{BEST_CPU_FLAGS} --xla_cpu_enable_concurrency_optimized_scheduler=true", {}),
    ("eigen_conv_bf16", BEST_CPU_FLAGS, {"compute_dtype": "bfloat16"}),
    # On top of eigen_conv: Eigen's convolutions on one thread (XLA still runs independent
    # ops side by side), and XLA's own loops split into fewer parallel tasks.
    ("eigen_conv_single_thread_eigen",
     f"{BEST_CPU_FLAGS} --xla_cpu_multi_thread_eigen=false", {}),
]

# --grid: (width, stem, batch) points of ResNet-18 at 32 px. Width 0.25 with the strided stem
# at batch 256 is the main job's network (configs/*.py:quickstart).
GRID_POINTS = [(w, stem, b) for w in (0.25, 1.0) for stem in ("strided", "cifar")
               for b in (128, 256)]

NOAUG_OVERRIDES = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def minor_page_faults() -> int:
    """This process's minor page faults so far (pages the kernel mapped in on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_average() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------------
# JAX worker
# ---------------------------------------------------------------------------------------------

def jax_config(model: str, batch: int, size: int, compute_dtype: str, width: float = 1.0,
               stem: str = "cifar", method: str = "simclr"):
    """The config the step is built from: `method` (simclr or byol) at its cifar10 preset
    (ResNet-18) or imagenet (ResNet-50), at `width` with the `stem` ("cifar": 3x3 stride 1, no
    max-pool; "strided": torchvision's 7x7 stride 2 and max-pool; ResNet-50 always has the
    strided one). BYOL below width 1 takes the quickstart's heads (512 hidden, 128 out: sized
    to the width-0.25 ResNet-18, as the main job runs it) instead of the reference's 4096/256."""
    import importlib
    method_config = importlib.import_module(f"configs.{method}")
    config = method_config.get_config("imagenet" if model == "resnet50" else "cifar10")
    if method == "byol" and width < 1:
        quick = method_config.get_config("quickstart").byol
        config.byol.update(proj_hidden_dim=quick.proj_hidden_dim,
                           pred_hidden_dim=quick.pred_hidden_dim, proj_dim=quick.proj_dim)
    config.batch_size = batch
    config.model.update(name=model, width=width,
                        cifar_stem=(model != "resnet50" and stem == "cifar"))
    config.dataset.image_size = size
    config.compute_dtype = compute_dtype
    return config


def jax_step_parts(config, batch_size: int, size: int):
    """(method, tx, schedule, batch, init) for timing the trainer's step of `config.method`: a
    fixed random uint8 batch of two views per image on the default device, and a jitted state
    initialiser."""
    import jax
    import numpy as np

    from ssl_jax import train
    from ssl_jax.methods import get_method

    # The run length the trainer would write (BYOL's EMA schedule reads it); the optimizer's
    # schedule gets the same.
    config = train.with_total_steps(config, 10_000)
    method = get_method(config.method, config)
    schedule, tx = train.build_optimizer(config, steps=10_000)
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 2, size, size, 3),
                                               dtype=np.uint8)
    batch = jax.device_put({"image": images, "label": np.zeros(batch_size, np.int32)})
    init = jax.jit(lambda r: train.init_state(method, tx, r, (size, size, 3)))
    return method, tx, schedule, batch, init


def step_presets(config, variants: list[str]) -> dict:
    """{variant: augment preset}: `aug` is the config's augmentation as the trainer builds it
    (preset and overrides), `noaug` the same with every device op off (uint8 -> float and
    clip only)."""
    from ssl_jax.data import augment

    overrides = dict(config.augment.get("overrides", {}))  # as the trainer builds it
    presets = {"aug": lambda: augment.get_preset(config.augment.preset, **overrides),
               "noaug": lambda: augment.get_preset(config.augment.preset,
                                                   **{**overrides, **NOAUG_OVERRIDES})}
    for v in variants:
        if v not in presets:
            raise ValueError(f"unknown variant {v!r}; valid: aug, noaug")
    return {v: presets[v]() for v in variants}


def compile_steps(config, batch_size: int, size: int, variants: list[str]):
    """The trainer's step, jitted with the state donated and compiled ahead of time for each
    variant. Returns ({variant: {"step": compiled step, "state": a fresh state, "compile_s",
    "flops_lowered": XLA's FLOPs of the step before optimisation}}, batch, rng);
    `step_flops(compiled)` is the count of the compiled step."""
    import jax

    from ssl_jax import train

    method, tx, schedule, batch, init = jax_step_parts(config, batch_size, size)
    rng = jax.random.key(1)
    out = {}
    for v, preset in step_presets(config, variants).items():
        fn = jax.jit(train.make_train_step(method, tx, preset, schedule), donate_argnums=0)
        state = init(jax.random.key(0))
        t0 = time.perf_counter()
        lowered = fn.lower(state, batch, rng)
        compiled = lowered.compile()
        out[v] = {"step": compiled, "state": state, "compile_s": time.perf_counter() - t0,
                  "flops_lowered": step_flops(lowered)}
    return out, batch, rng


def time_step(config, batch_size: int, size: int, variant: str = "aug", steps: int = 6,
              warmup: int = 2, repeats: int = 3) -> dict:
    """Images/s of one compiled train step: `warmup` untimed steps after compile, then
    `repeats` runs of `steps` steps each, dispatched back to back and blocked on at the end
    of each run (so a GPU is never idle waiting for the host); reports the median run.
    Also XLA's FLOPs per step: `flops_per_step` from the cost analysis of the compiled step,
    `flops_per_step_lowered` from the HLO before optimisation (where a backend's compiled
    analysis misses ops it hands to libraries, the two differ); None when XLA gives none."""
    import jax

    if warmup < 1 or steps < 1 or repeats < 1:
        raise ValueError(f"warmup={warmup}, steps={steps}, repeats={repeats} must all be >= 1")
    compiled, batch, rng = compile_steps(config, batch_size, size, [variant])
    step, state = compiled[variant]["step"], compiled[variant]["state"]
    for _ in range(warmup):
        state, metrics = step(state, batch, rng)
    first_loss = float(jax.device_get(metrics["loss"]))
    jax.block_until_ready(state)
    run_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch, rng)
        jax.block_until_ready((state, metrics))
        run_s.append(time.perf_counter() - t0)
    step_s = statistics.median(run_s) / steps
    return {"method": config.method, "model": config.model.name, "width": config.model.width,
            "batch": batch_size, "size": size, "compute_dtype": config.compute_dtype,
            "variant": variant, "device": jax.devices()[0].device_kind,
            "compile_s": compiled[variant]["compile_s"], "run_s": run_s,
            "steps_per_run": steps, "step_s": step_s, "img_s": batch_size / step_s,
            "flops_per_step": step_flops(step),
            "flops_per_step_lowered": compiled[variant]["flops_lowered"],
            "loss_after_warmup": first_loss,
            "final_loss": float(jax.device_get(metrics["loss"]))}


def step_flops(stage) -> float | None:
    """FLOPs of one call of a lowered or compiled function from XLA's cost analysis (a dict,
    or a list of one dict per computation in some jaxlib versions); None when it has no
    positive count."""
    analysis = stage.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    flops = sum(float(a.get("flops", 0.0)) for a in analysis or [] if a)
    return flops if flops > 0 else None


def run_jax(args) -> dict:
    """Times the ssl_jax train step (variants aug/noaug, alternating); returns a result dict."""
    import jax

    if not args.gpu and len(jax.devices()) != 1:
        raise RuntimeError(f"expected one CPU device, got {jax.devices()}; "
                           "unset --xla_force_host_platform_device_count")
    config = jax_config(args.model, args.batch, args.size, args.compute_dtype, args.width,
                        args.stem, args.method)
    variants = args.variants.split(",")
    compiled, batch, step_rng = compile_steps(config, args.batch, args.size, variants)

    steps, states, out = {}, {}, {"side": "jax", "device": jax.devices()[0].device_kind,
                                  "xla_flags": os.environ.get("XLA_FLAGS", ""),
                                  "compute_dtype": args.compute_dtype, "load_start": load_average()}
    for v in variants:
        steps[v], states[v] = compiled[v]["step"], compiled[v]["state"]
        out[f"{v}_compile_s"] = compiled[v]["compile_s"]
        # First step from the same init and batch under every flag setting: the numerics check.
        states[v], m = steps[v](states[v], batch, step_rng)
        m = jax.device_get(m)
        out[f"{v}_first_loss"] = float(m["loss"])
        out[f"{v}_first_grad_norm"] = float(m["grad_norm"])
    for _ in range(args.warmup - 1):
        for v in variants:
            states[v], m = steps[v](states[v], batch, step_rng)
            jax.block_until_ready((states[v], m))
    times = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    faults = {v: [] for v in variants}
    for _ in range(args.steps):
        for v in variants:
            t0, c0, f0 = time.perf_counter(), time.process_time(), minor_page_faults()
            states[v], m = steps[v](states[v], batch, step_rng)
            jax.block_until_ready((states[v], m))
            times[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
            faults[v].append(minor_page_faults() - f0)
    out["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    from ssl_jax.models import direct_conv
    out["direct_conv"] = direct_conv.available()  # the C++ 3x3 kernels (SSL_JAX_DIRECT_CONV)
    for v in variants:
        out[f"{v}_page_faults_per_step"] = statistics.median(faults[v])
        out[f"{v}_step_s"] = times[v]
        out[f"{v}_img_s"] = args.batch / statistics.median(times[v])
        out[f"{v}_cpu_s"] = cpu[v]
        out[f"{v}_img_per_cpu_s"] = args.batch / statistics.median(cpu[v])
    out["load_end"] = load_average()
    return out


# ---------------------------------------------------------------------------------------------
# PyTorch worker
# ---------------------------------------------------------------------------------------------

def _torch_lars_update(groups, momenta, wd, eta, mom):
    """optax.lars order: decay, trust ratio on ndim > 1 leaves, momentum (trace), -lr; `groups`
    is a list of (learning rate, parameters)."""
    import torch

    with torch.no_grad():
        for (lr, params), bufs in zip(groups, momenta):
            for p, buf in zip(params, bufs):
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=wd)
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * ratio
                buf.mul_(mom).add_(g)
                p.sub_(buf, alpha=lr)


def torch_step(args):
    """The torch twin of the JAX step of `args.method`: (step(uint8 [B, 2, 3, H, W]) -> loss).

    simclr: backbone + v1 head (hidden = feature width), NT-Xent over the 2B views (one
    forward of both), LARS (lr 0.5, wd 1e-6, trust 1e-3). byol: online backbone + MLP
    projector + MLP predictor (Linear-BN-ReLU-Linear; the quickstart's output BatchNorm on the
    projector below width 1), a target copy of backbone + projector in train mode; each view
    through each network separately, as the JAX method does; the symmetric 2 - 2cos loss, LARS
    on the online parameters (the predictor at 10x below width 1, as the quickstart), then the
    EMA update of the target."""
    import copy

    import torch
    from torch import nn

    # The tests' torch ResNet (tests/torch_reference.py), loaded from its file (tests/ is not
    # an installed package).
    spec = importlib.util.spec_from_file_location(
        "torch_reference", os.path.join(ROOT, "tests", "torch_reference.py"))
    torch_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_reference)
    TorchBasicBlock, TorchResNet = torch_reference.TorchBasicBlock, torch_reference.TorchResNet

    torch.manual_seed(0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    backbone = TorchResNet(TorchBasicBlock, [2, 2, 2, 2], num_classes=None, width=args.width,
                           cifar_stem=args.stem == "cifar").to(memory_format=memory_format)
    backbone.train()
    features = backbone.inplanes
    wd, eta, mom = 1e-6 if args.method == "simclr" else 1e-5, 1e-3, 0.9

    def views(images_uint8: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for v in (images_uint8[:, 0], images_uint8[:, 1]):
            x = v.float().div_(255.0)
            out.append(((x - mean) / std).contiguous(memory_format=memory_format))
        return out

    if args.method == "simclr":
        head = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, 128))
        params = list(backbone.parameters()) + list(head.parameters())
        groups, temperature = [(0.5, params)], 0.5
        momenta = [[torch.zeros_like(p) for p in params]]

        def loss_fn(images_uint8):
            h, _ = backbone(torch.cat(views(images_uint8)))  # both views, as the JAX method
            z = nn.functional.normalize(head(h).float(), dim=1)
            n = z.shape[0] // 2
            logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool),
                                                         -1e9)
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            return nn.functional.cross_entropy(logits, target)  # mean over the 2N rows

        def after_update():
            pass
    else:
        small = args.width < 1
        hidden, out = (512, 128) if small else (4096, 256)

        def mlp(d_in, output_bn=False):
            layers = [nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                      nn.Linear(hidden, out)]
            return nn.Sequential(*layers, *([nn.BatchNorm1d(out, affine=False)] if output_bn
                                            else []))

        projector, predictor = mlp(features, output_bn=small), mlp(out)
        target = copy.deepcopy(nn.ModuleList([backbone, projector]))
        for p in target.parameters():
            p.requires_grad_(False)
        encoder = list(backbone.parameters()) + list(projector.parameters())
        groups = [(1.0, encoder), (10.0 if small else 1.0, list(predictor.parameters()))]
        momenta = [[torch.zeros_like(p) for p in g] for _, g in groups]
        tau = 0.99

        def regression(p, z):
            return 2 - 2 * nn.functional.cosine_similarity(p, z, dim=1)

        def loss_fn(images_uint8):
            v1, v2 = views(images_uint8)
            p1 = predictor(projector(backbone(v1)[0]))
            p2 = predictor(projector(backbone(v2)[0]))
            with torch.no_grad():
                z1 = target[1](target[0](v1)[0])
                z2 = target[1](target[0](v2)[0])
            return (regression(p1, z2) + regression(p2, z1)).mean()

        def after_update():
            with torch.no_grad():
                for t, o in zip(target.parameters(), encoder):
                    t.mul_(tau).add_(o, alpha=1 - tau)

    all_params = [p for _, g in groups for p in g]

    def step(images_uint8: torch.Tensor) -> float:
        for p in all_params:
            p.grad = None
        loss = loss_fn(images_uint8)
        loss.backward()
        _torch_lars_update(groups, momenta, wd, eta, mom)
        after_update()
        return loss.item()

    return step


def run_torch(args) -> dict:
    """Times the torch twin of the JAX step (no augmentation): `torch_step`."""
    import numpy as np
    import torch

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    step = torch_step(args)

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (args.batch, 2, 3, args.size, args.size),
                                           dtype=np.uint8))
    out = {"side": "torch", "threads": threads, "channels_last": args.channels_last,
           "torch": torch.__version__, "load_start": load_average()}
    out["noaug_first_loss"] = step(images)
    for _ in range(args.warmup - 1):
        step(images)
    times, cpu, faults = [], [], []
    for _ in range(args.steps):
        t0, c0, f0 = time.perf_counter(), time.process_time(), minor_page_faults()
        step(images)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        faults.append(minor_page_faults() - f0)
    out["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    out["noaug_page_faults_per_step"] = statistics.median(faults)
    out["noaug_step_s"] = times
    out["noaug_img_s"] = args.batch / statistics.median(times)
    out["noaug_cpu_s"] = cpu
    out["noaug_img_per_cpu_s"] = args.batch / statistics.median(cpu)
    out["load_end"] = load_average()
    return out


# ---------------------------------------------------------------------------------------------
# Orchestration: fresh subprocesses, interleaved, repeated
# ---------------------------------------------------------------------------------------------

def spawn(side: str, args, xla_flags: str = "", extra: list[str] | None = None) -> dict:
    """Runs one worker in a fresh process with exactly `xla_flags` (never the tests' fake
    devices); returns its JSON result, or {"error": ...} when XLA rejects the flags."""
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side,
           "--batch", str(args.batch), "--size", str(args.size), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--variants", args.variants, "--width", str(args.width), "--stem", args.stem,
           "--method", args.method]
    cmd += ["--channels-last"] if args.channels_last else []
    cmd += extra or []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"side": side, "xla_flags": xla_flags, "error": " | ".join(tail)}


def _fmt(result: dict, variant: str) -> str:
    if "error" in result:
        return f"ERROR {result['error'][:160]}"
    return (f"{result.get(variant + '_img_s', float('nan')):7.2f} img/s "
            f"{result.get(variant + '_img_per_cpu_s', float('nan')):6.2f} img/cpu-s "
            f"{result.get(variant + '_page_faults_per_step', float('nan')):6.0f} faults/step "
            f"(load {result['load_start']:.1f}->{result['load_end']:.1f})")


def compare(args) -> dict:
    """JAX (default or --xla-flags) and torch, interleaved `repeats` times."""
    runs = []
    for r in range(args.repeats):
        j = spawn("jax", args, args.xla_flags)
        t = spawn("torch", args)
        runs.append({"jax": j, "torch": t})
        print(f"repeat {r}: jax noaug {_fmt(j, 'noaug')}; jax aug {_fmt(j, 'aug')}; "
              f"torch {_fmt(t, 'noaug')}", flush=True)
    ok = [x for x in runs if "error" not in x["jax"] and "error" not in x["torch"]]
    if not ok:
        raise RuntimeError("every repeat failed; see the errors above")
    summary = {"method": args.method, "repeats": len(ok), "batch": args.batch, "size": args.size,
               "width": args.width,
               "stem": args.stem, "channels_last": args.channels_last,
               "xla_flags": args.xla_flags, "torch_threads": ok[0]["torch"]["threads"]}
    # Wall-clock rate, and images per CPU-second of the process (all its threads): the latter
    # is less sensitive to how much of the shared machine each run happened to get.
    for unit in ("img_s", "img_per_cpu_s"):
        torch_rate = [x["torch"][f"noaug_{unit}"] for x in ok]
        summary[f"torch_{unit}_median"] = statistics.median(torch_rate)
        for v in args.variants.split(","):
            rate = [x["jax"][f"{v}_{unit}"] for x in ok]
            summary[f"jax_{v}_{unit}_median"] = statistics.median(rate)
            summary[f"ratio_{v}_{unit}_of_medians"] = (statistics.median(rate)
                                                       / statistics.median(torch_rate))
            summary[f"ratio_{v}_{unit}_median_per_repeat"] = statistics.median(
                a / b for a, b in zip(rate, torch_rate))
    loads = [x[s][k] for x in ok for s in ("jax", "torch") for k in ("load_start", "load_end")]
    summary["load_min_median_max"] = (min(loads), statistics.median(loads), max(loads))
    print(json.dumps(summary, indent=1))
    return {"summary": summary, "runs": runs}


def grid(args) -> dict:
    """The compare over GRID_POINTS (width x stem x batch): per repeat, the JAX step (noaug)
    and torch in both layouts (NCHW and channels-last), interleaved in fresh processes. The
    ratio is JAX over torch's faster layout (median img/s of each)."""
    rows = []
    points = [(m, *p) for m in args.grid_method for p in GRID_POINTS
              if (not args.grid_width or p[0] in args.grid_width)
              and (not args.grid_batch or p[2] in args.grid_batch)]
    for method, width, stem, batch in points:
        point = types.SimpleNamespace(**{**vars(args), "width": width, "stem": stem,
                                         "batch": batch, "variants": "noaug", "method": method})
        runs = {"jax": [], "torch_nchw": [], "torch_channels_last": []}
        for r in range(args.repeats):
            runs["jax"].append(spawn("jax", point, args.xla_flags))
            for layout in ("nchw", "channels_last"):
                point.channels_last = layout == "channels_last"
                runs[f"torch_{layout}"].append(spawn("torch", point))
            print(f"{method} width {width} {stem} batch {batch} repeat {r}: "
                  + "; ".join(f"{k} {_fmt(v[-1], 'noaug')}" for k, v in runs.items()),
                  flush=True)
        row = {"method": method, "width": width, "stem": stem, "batch": batch,
               "repeats": args.repeats}
        for k, v in runs.items():
            ok = [x["noaug_img_s"] for x in v if "error" not in x]
            row[f"{k}_img_s_median"] = statistics.median(ok) if ok else None
        best = max(row["torch_nchw_img_s_median"] or 0, row["torch_channels_last_img_s_median"] or 0)
        row["ratio_jax_over_best_torch"] = (row["jax_img_s_median"] / best
                                            if best and row["jax_img_s_median"] else None)
        loads = [x[k] for v in runs.values() for x in v if "error" not in x
                 for k in ("load_start", "load_end")]
        row["load_min_max"] = (min(loads), max(loads)) if loads else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| method | width | stem | batch | JAX img/s | torch NCHW | torch channels-last "
          "| JAX / best torch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['width']} | {r['stem']} | {r['batch']} | "
              f"{r['jax_img_s_median']:.1f} | "
              f"{r['torch_nchw_img_s_median']:.1f} | {r['torch_channels_last_img_s_median']:.1f} "
              f"| {r['ratio_jax_over_best_torch']:.2f} |")
    return {"grid": rows}


def sweep(args) -> dict:
    """Each SWEEP setting once per round, `repeats` rounds (rounds interleave the settings)."""
    names = args.only.split(",") if args.only else [s[0] for s in SWEEP]
    settings = {s[0]: s for s in SWEEP}
    unknown = [n for n in names if n not in settings]
    if unknown:
        raise ValueError(f"unknown sweep setting(s) {unknown}; valid: {list(settings)}")
    results: dict[str, list] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names:
            _, flags, cfg = settings[n]
            extra = ["--compute-dtype", cfg["compute_dtype"]] if "compute_dtype" in cfg else []
            res = spawn("jax", args, flags, extra)
            results[n].append(res)
            print(f"round {r} {n:24s} noaug {_fmt(res, 'noaug')}  aug {_fmt(res, 'aug')}",
                  flush=True)
    base = next((x for x in results.get("default", []) if "error" not in x), None)
    table = []
    for n in names:
        ok = [x for x in results[n] if "error" not in x]
        row = {"setting": n, "xla_flags": settings[n][1], **settings[n][2]}
        if not ok:
            row["error"] = results[n][0]["error"]
        for v in args.variants.split(","):
            if ok:
                row[f"{v}_img_s_median"] = statistics.median(x[f"{v}_img_s"] for x in ok)
                row[f"{v}_img_per_cpu_s_median"] = statistics.median(
                    x[f"{v}_img_per_cpu_s"] for x in ok)
                row[f"{v}_compile_s"] = statistics.median(x[f"{v}_compile_s"] for x in ok)
                if base is not None:
                    row[f"{v}_first_loss_diff"] = ok[0][f"{v}_first_loss"] - base[f"{v}_first_loss"]
                    row[f"{v}_first_grad_norm_rel_diff"] = (
                        ok[0][f"{v}_first_grad_norm"] / base[f"{v}_first_grad_norm"] - 1)
        if ok:
            row["load"] = statistics.median(x["load_start"] for x in ok)
        table.append(row)
        print(json.dumps(row))
    return {"table": table, "runs": results}


# This script's own absl flags (ssl_jax/errors.py: parse_script_flags).
FLAGS = flags.FlagValues()
flags.DEFINE_enum("worker", None, ["jax", "torch"],
                  "internal: run one side in this process and print its JSON (spawn() sets it)",
                  flag_values=FLAGS)
flags.DEFINE_bool("sweep", False, "time the XLA CPU settings in SWEEP", flag_values=FLAGS)
flags.DEFINE_string("only", "", "comma-separated SWEEP names (with --sweep)", flag_values=FLAGS)
flags.DEFINE_bool("gpu", False, "ResNet-50 bf16 batch 256 224 px on GPU", flag_values=FLAGS)
flags.DEFINE_string("xla-flags", BEST_CPU_FLAGS,
                    "XLA_FLAGS for the JAX side of the compare ('' = jaxlib's defaults)",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch", 128, None, flag_values=FLAGS)
flags.DEFINE_integer("size", 32, None, flag_values=FLAGS)
flags.DEFINE_integer("steps", 6, "timed steps per run", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "untimed steps (>= 1) after compile", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, None, flag_values=FLAGS)
flags.DEFINE_integer("threads", 0, "torch threads (0: all cores)", flag_values=FLAGS)
flags.DEFINE_bool("channels-last", False, "torch channels_last layout", flag_values=FLAGS)
flags.DEFINE_string("variants", "noaug,aug", "JAX step variants: noaug,aug", flag_values=FLAGS)
flags.DEFINE_enum("compute-dtype", "float32", ["float32", "bfloat16"], None, flag_values=FLAGS)
flags.DEFINE_enum("model", "resnet18", ["resnet18", "resnet50"], None, flag_values=FLAGS)
flags.DEFINE_enum("method", "simclr", ["simclr", "byol"], "the step timed on both sides",
                  flag_values=FLAGS)
flags.DEFINE_float("width", 1.0, "ResNet-18 width multiplier", flag_values=FLAGS)
flags.DEFINE_enum("stem", "cifar", ["cifar", "strided"],
                  "ResNet-18 stem: cifar (3x3 stride 1) or strided (7x7/2 + max-pool)",
                  flag_values=FLAGS)
flags.DEFINE_bool("grid", False, "the compare over GRID_POINTS, torch in both layouts",
                  flag_values=FLAGS)
flags.DEFINE_multi_float("grid-width", [], "with --grid: only these widths (repeatable)",
                         flag_values=FLAGS)
flags.DEFINE_multi_integer("grid-batch", [], "with --grid: only these batch sizes (repeatable)",
                           flag_values=FLAGS)
flags.DEFINE_multi_string("grid-method", [],
                          "with --grid: the methods (repeatable; default simclr and byol)",
                          flag_values=FLAGS)
flags.DEFINE_string("out", "", "also write the results as JSON here", flag_values=FLAGS)


def main() -> None:
    args = errors.parse_script_flags(FLAGS, doc=__doc__)
    if args.warmup < 1:
        raise ValueError(f"--warmup={args.warmup} must be >= 1 (the first step is the compile "
                         "check)")

    args.grid_method = args.grid_method or ["simclr", "byol"]
    if args.worker:
        print(json.dumps(run_jax(args) if args.worker == "jax" else run_torch(args)))
        return
    if args.gpu:
        import jax
        if jax.default_backend() != "gpu":
            raise errors.UserError(f"--gpu needs a GPU backend; jax.default_backend() is "
                             f"{jax.default_backend()!r}")
        args.model, args.compute_dtype, args.batch, args.size = "resnet50", "bfloat16", 256, 224
        result = run_jax(args)
        print(f"GPU {result['device']}: ResNet-50 SimCLR bf16 batch 256 224 px: "
              + ", ".join(f"{v} {result[v + '_img_s']:.1f} img/s"
                          for v in args.variants.split(",")))
    else:
        result = grid(args) if args.grid else sweep(args) if args.sweep else compare(args)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    from ssl_jax import host_memory
    host_memory.restart_with_huge_pages(__name__)  # huge pages (ssl_jax/host_memory.py)
    errors.run(main)
