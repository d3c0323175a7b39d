"""Converter plumbing: exact error accounting with no output on failure, bit-identical round
trips through the converted directory, the CLI, legacy-pickle refusal, the verifier's torch
reference, and the input conventions applied by ``ssl_jax.models.load``."""
import argparse
import hashlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from checkpoints_convert import __main__ as cli
from checkpoints_convert.convert import convert, convert_file, read_checkpoint, write_converted
from checkpoints_convert.export import converted_to_state_dict
from checkpoints_convert.verify import torch_backbone, torch_head, verify
from ssl_jax.models import load
from ssl_jax.models.load import ConvertedModel, read_metadata
from test_convert_families import build_family
from torch_reference import (TorchAlexNet, TorchBasicBlock, TorchResNet, TorchVGG16,
                             calibrate_bn, images, randomize)


def _moco(tmp_path, **edits):
    """A small MoCo v2 checkpoint (ResNet-18 trunk) saved after applying ``edits``."""
    obj, (m, head), *_ = build_family("moco", r18=True)
    randomize(m, 0)
    randomize(head, 1)
    sd = obj["state_dict"]
    for key, value in edits.items():
        if value is None:
            del sd[key]
        else:
            sd[key] = value
    torch.save(obj, tmp_path / "moco.pth")
    return str(tmp_path / "moco.pth"), m, head


def test_every_problem_is_named_and_nothing_is_written(tmp_path):
    src, m, _ = _moco(tmp_path, **{
        "module.encoder_q.layer2.0.bn1.running_var": None,                   # missing
        "module.encoder_q.layer5.0.conv1.weight": torch.zeros(3, 3, 1, 1),   # extra (backbone)
        "module.encoder_q.layer1.1.conv2.weight": torch.zeros(16, 16, 1, 1),  # wrong shape
        "module.encoder_q.fc.2.bias": None,                                  # missing (head)
        "module.momentum": torch.zeros(1),                                   # claimed by no part
    })
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        convert_file(src, "moco", str(out))
    assert "unexpected keys ['state_dict:module.momentum']" in str(e.value)
    assert not out.exists()

    raw = read_checkpoint(src)
    del raw["state_dict"]["module.momentum"]
    with pytest.raises(ValueError) as e:
        convert(raw, "moco")
    msg = str(e.value)
    assert "missing keys ['layer2.0.bn1.running_var']" in msg
    assert "unexpected keys ['layer5.0.conv1.weight']" in msg
    assert "layer1.1.conv2.weight: got (16, 16, 1, 1), expected (16, 16, 3, 3)" in msg
    assert "projection head" in msg and "missing keys ['dense.1.bias']" in msg
    assert not any(p.name != "moco.pth" for p in tmp_path.iterdir())


def test_wrong_family_is_refused_naming_the_keys(tmp_path):
    src, *_ = _moco(tmp_path)
    for family, expected in [
            ("pycontrast", r"no state_dict entries \['model'\].*'arch', 'epoch', 'state_dict'"),
            ("swav", r"unexpected keys \['arch', 'epoch', 'state_dict'\]"),
            ("torchvision_resnet", r"cannot infer a ResNet.*\['arch', 'epoch', 'state_dict'\]"),
            ("simclr_v1", r"cannot infer a ResNet.*'module.encoder_k.bn1.bias'"),
            ("rotnet_alexnet", r"no state_dict entries \['network'\]")]:
        with pytest.raises(ValueError, match=expected):
            convert_file(src, family, str(tmp_path / family))
        assert not (tmp_path / family).exists()
    with pytest.raises(ValueError, match="unknown family 'mocov2'; valid: torchvision_resnet"):
        convert(read_checkpoint(src), "mocov2")


def test_existing_output_is_not_overwritten(tmp_path):
    src, *_ = _moco(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        convert_file(src, "moco", str(tmp_path / "out"))


def test_round_trip_through_directory_is_bit_identical(tmp_path):
    """torch -> Flax (Orbax directory) -> torch reproduces every tensor exactly."""
    src, m, head = _moco(tmp_path)
    convert_file(src, "moco", str(tmp_path / "out"))
    back = converted_to_state_dict(str(tmp_path / "out"))
    want = {**m.state_dict(), **{f"heads.projection.{k}": v for k, v in
                                 {"dense.0.weight": head[0].weight, "dense.0.bias": head[0].bias,
                                  "dense.1.weight": head[2].weight,
                                  "dense.1.bias": head[2].bias}.items()}}
    assert set(back) == set(want)
    for k, v in want.items():
        if k.endswith("num_batches_tracked"):
            assert back[k] == 0
        else:
            np.testing.assert_array_equal(back[k], v.detach().numpy(), err_msg=k)

    # The CLI export loads strictly into the torchvision-layout torch model.
    assert cli.main(["--to-torch", "--src", str(tmp_path / "out"),
                     "--out", str(tmp_path / "back.pth")]) == 0
    sd = torch.load(tmp_path / "back.pth", weights_only=True)
    result = m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("heads.")},
                               strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_cli_lists_and_converts(tmp_path, capsys):
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "simclr_v2" in listed and "rotnet_alexnet" in listed
    src, *_ = _moco(tmp_path)
    assert cli.main(["--family", "moco", "--src", src, "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    n_k = sum(k.startswith("module.encoder_k.") for k in read_checkpoint(src)["state_dict"])
    assert "resnet18" in printed and f"'state_dict:module.encoder_k.': {n_k}" in printed
    meta = read_metadata(str(tmp_path / "o"))
    with open(src, "rb") as f:
        assert meta["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert meta["input_convention"] == {"value_range": 1.0, "mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225], "channel_order": "RGB",
                                        "padding": "torch"}
    with pytest.raises(ValueError, match="flag --family=nope: value should be one of <"):
        cli.main(["--family", "nope", "--src", src, "--out", str(tmp_path / "p")])


def test_legacy_pickles_need_the_explicit_flag(tmp_path):
    sd = TorchResNet(TorchBasicBlock, [2, 2, 2, 2], None, width=0.125).state_dict()
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="--unsafe-unpickle, which EXECUTES code"):
        read_checkpoint(str(tmp_path / "old.pth"))
    with pytest.raises(ValueError, match="--unsafe-unpickle"):
        convert_file(str(tmp_path / "old.pth"), "simclr_v1", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    raw = read_checkpoint(str(tmp_path / "old.pth"), unsafe_unpickle=True)
    assert convert(raw, "simclr_v1").metadata["ignored_entries"] == ["args"]


def test_files_that_are_not_torch_checkpoints_are_never_sent_to_unpickling(tmp_path):
    """Random bytes, an HTML error page or a plain pickle saved as .pth: "not a PyTorch
    checkpoint", with or without --unsafe-unpickle (which would execute them); a torch file
    that holds other objects still gets the --unsafe-unpickle advice."""
    import pickle

    files = {"random.pth": np.random.default_rng(0).bytes(4096),
             "page.pth": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
             "plain.pth": pickle.dumps({"state_dict": {}}, protocol=2)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        for unsafe in (False, True):
            with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as e:
                read_checkpoint(str(tmp_path / name), unsafe_unpickle=unsafe)
            assert "unsafe" not in str(e.value)
    sd = TorchResNet(TorchBasicBlock, [2, 2, 2, 2], None, width=0.125).state_dict()
    for legacy in (False, True):  # torch.save's zip and its legacy pickle format
        path = tmp_path / f"args_{legacy}.pth"
        torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ValueError, match="--unsafe-unpickle"):
            read_checkpoint(str(path))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "args_False.pth").read_bytes()[:2000])
    with pytest.raises(ValueError, match="damaged zip archive") as e:
        read_checkpoint(str(truncated))
    assert "unsafe" not in str(e.value)


def test_verify_beyond_tolerance_fails_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from checkpoints_convert import verify as verify_mod

    src, *_ = _moco(tmp_path)
    # A converter bug stand-in: every entry off by 1 at max|torch| <= 1.
    monkeypatch.setattr(verify_mod, "verify",
                        lambda raw, d, scales=None, **kw: scales.update(a=1.0) or {"a": 1.0})
    with pytest.raises(ValueError, match=r"--verify: 1 of 1 entries beyond tolerance 0.001 "
                                         r"\(worst a: max\|diff\| 1"):
        cli.main(["--family", "moco", "--src", src, "--out", str(tmp_path / "o"), "--verify"])
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.tmp")]
    assert verify_mod.beyond_tolerance({"x": 2e-4, "y": 5e-3, "z": float("nan")},
                                       {"x": 4.5, "y": 4.5, "z": 1.0}) == {
        "y": 5e-3, "z": pytest.approx(float("nan"), nan_ok=True)}


@pytest.mark.parametrize("make, name", [
    (lambda: TorchResNet(TorchBasicBlock, [2, 2, 2, 2], 5, width=0.25), "resnet18"),
    (lambda: TorchAlexNet(5, width=0.25, fc_dim=16, bn=True), "alexnet_bn"),
    (lambda: TorchAlexNet(5, width=0.25, fc_dim=16), "alexnet"),
    (lambda: TorchVGG16(5, width=0.125, fc_dim=16, bn=True), "vgg16_bn"),
])
def test_verifier_torch_reference_matches_module_reference(make, name):
    """verify.py's functional torch forward == the hand-written nn.Module references."""
    model = randomize(make(), 2)
    x = torch.from_numpy(images(2, 67, seed=1).transpose(0, 3, 1, 2))
    with torch.no_grad():
        ref, ref_acts = model(x)
        out, acts = torch_backbone(model.state_dict(), name, {}, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for k, v in ref_acts.items():
        torch.testing.assert_close(acts[k], v, rtol=1e-5, atol=1e-5, msg=k)


def test_verifier_heads_match_torch_modules():
    x = torch.randn(4, 8)
    mlp = randomize(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6),
                                        torch.nn.ReLU(), torch.nn.Linear(6, 3)), 0)
    sd = {"dense.0.weight": mlp[0].weight, "dense.0.bias": mlp[0].bias,
          "dense.1.weight": mlp[3].weight, "dense.1.bias": mlp[3].bias,
          **{f"bn.0.{k}": v for k, v in mlp[1].state_dict().items()}}
    with torch.no_grad():
        torch.testing.assert_close(torch_head(sd, "mlp_bn", x), mlp(x))
        w = torch.randn(5, 8)
        torch.testing.assert_close(torch_head({"prototypes.0.weight": w}, "prototypes", x),
                                   torch.nn.functional.normalize(x) @ w.T)


def test_verify_reports_every_stage_within_tolerance(tmp_path):
    src, m, _ = _moco(tmp_path)
    raw = read_checkpoint(src)
    with torch.no_grad():  # O(1) activations, as in test_convert_families._prepare
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.mul_(0.35)
    calibrate_bn(m, torch.rand(4, 3, 65, 65))
    for k, v in m.state_dict().items():
        raw["state_dict"]["module.encoder_q." + k] = v
    write_converted(convert(raw, "moco"), str(tmp_path / "out"))
    lines = []
    errs = verify(raw, str(tmp_path / "out"), sizes=(65,), log=lines.append)
    assert {"65px/layer4", "65px/stem", "65px/pool", "65px/auto output",
            "65px/projection output"} <= set(errs)
    assert max(errs.values()) < 1e-4, errs
    assert len(lines) == len(errs)


def test_load_outputs_and_input_conventions(tmp_path):
    """features == the pooled torch features; BGR / 0-255 / mean-std preprocessing."""
    obj, (m,), *_ = build_family("simclr_v1", r18=True)
    randomize(m, 4)
    torch.save(obj, tmp_path / "s.pth")
    convert_file(str(tmp_path / "s.pth"), "simclr_v1", str(tmp_path / "out"))
    module, variables = load(str(tmp_path / "out"), output="features")
    assert "fc" not in variables["params"]["backbone"]
    x = np.random.default_rng(0).uniform(size=(2, 33, 33, 3)).astype(np.float32)
    with torch.no_grad():  # SimCLR: unnormalised [0, 1] input
        _, acts = m(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    got = module.apply(variables, x, train=False)
    np.testing.assert_allclose(got, acts["pool"].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"output='projection'; valid for this checkpoint: "
                                         r"\['auto', 'features', 'backbone'\]"):
        load(str(tmp_path / "out"), output="projection")

    with pytest.raises(ValueError, match="not a converted checkpoint directory"):
        load(str(tmp_path))

    caffe = ConvertedModel("resnet18", value_range=255.0, mean=(103.5, 116.3, 123.7),
                           std=(1.0, 1.0, 1.0), bgr=True)
    got = caffe.preprocess(jnp.asarray(x))
    np.testing.assert_allclose(got, x[..., ::-1] * 255.0 - [103.5, 116.3, 123.7], atol=1e-4)
