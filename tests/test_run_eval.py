"""run_eval end to end on the tiny built-in dataset: every frozen-feature evaluator config on a
smoke-trained checkpoint, outputs on disk, the feature cache reused by a second run, and the
similarity evaluator on run directories and converted checkpoints."""
import json
import os

import jax
import numpy as np
import pytest

import run_eval
from configs.eval import attention, confusion, linear, per_layer, retrieval, similarity
from ssl_jax import sharding


@pytest.fixture
def smoke_checkpoint(smoke_simclr_run):
    return str(smoke_simclr_run)


def _config(module, checkpoint, cache_dir, arg=None, **fields):
    c = module.get_config(arg)
    c.update(checkpoint=checkpoint, cache_dir=str(cache_dir), progress=False, **fields)
    return c


def test_run_eval_all_evaluators_and_feature_cache(smoke_checkpoint, tmp_path):
    cache = tmp_path / "cache"
    lin = run_eval.run(_config(linear, smoke_checkpoint, cache, "probe_grid=3",
                               few_shot_episodes=0), str(tmp_path / "linear"))
    assert lin["feature_cache_hits"] == []
    m = lin["metrics"]
    assert 0 <= m["knn_top1"] <= 100 and 0 <= m["linear_top1"] <= 100
    assert len(os.listdir(cache)) == 2  # train + test features
    assert (tmp_path / "linear" / "reliability.png").stat().st_size > 1000

    again = run_eval.run(_config(linear, smoke_checkpoint, cache, "probe_grid=3",
                                 few_shot_episodes=0), str(tmp_path / "linear2"))
    assert len(again["feature_cache_hits"]) == 2
    assert again["metrics"] == m  # same features, same deterministic probe

    # two layers keep the test fast (each feature width compiles its own probe)
    layers = run_eval.run(_config(per_layer, smoke_checkpoint, cache, "probe_grid=3",
                                  layers="layer1+pool"),
                          str(tmp_path / "layers"))["metrics"]["layers"]
    assert list(layers) == ["layer1", "pool"] and layers["layer1"]["dim"] == 8
    assert layers["pool"]["top1"] == pytest.approx(m["linear_top1"])  # pool = final features
    assert (tmp_path / "layers" / "per_layer.png").stat().st_size > 1000

    conf = run_eval.run(_config(confusion, smoke_checkpoint, cache, "probe_grid=3",
                                reference=smoke_checkpoint), str(tmp_path / "confusion"))
    cm = np.array(conf["metrics"]["confusion_matrix"])
    assert cm.shape == (10, 10)
    assert np.trace(cm) / cm.sum() * 100 == pytest.approx(m["linear_top1"], abs=1e-3)
    assert 0 <= conf["metrics"]["within_group_top5_error_fraction"] <= 1
    # reference = the same checkpoint: every per-class difference is zero
    assert all(r["difference"] == 0 for r in conf["metrics"]["strongest"])
    assert (tmp_path / "confusion" / "confusion.png").exists()

    ret = run_eval.run(_config(retrieval, smoke_checkpoint, cache, "k=3", queries="0+5"),
                       str(tmp_path / "retrieval"))
    rows = ret["metrics"]["queries"]
    assert [r["query"] for r in rows] == [0, 5] and all(len(r["neighbours"]) == 3 for r in rows)
    assert all(np.all(np.diff(r["similarities"]) <= 1e-6) for r in rows)
    assert (tmp_path / "retrieval" / "retrieval.png").stat().st_size > 1000
    att = run_eval.run(_config(attention, smoke_checkpoint, cache, "num_examples=8"),
                       str(tmp_path / "attention"))["metrics"]
    assert att["layer"].endswith("layer4")  # the last conv layer the ResNet taps
    assert att["num_examples"] >= 8
    for name in ("grad_cam", "guided_grad_cam", "saliency", "occlusion"):
        assert 0.0 <= att["metrics"][f"localisation_iou/{name}"] <= 1.0
    assert (tmp_path / "attention" / "attention.png").stat().st_size > 1000
    for d in ("linear", "layers", "confusion", "retrieval", "attention"):
        assert (tmp_path / d / "report.md").read_text().startswith("# ")
        assert json.loads((tmp_path / d / "metrics.json").read_text())["evaluator"]


def test_feature_cache_is_keyed_by_checkpoint_content(smoke_checkpoint, tmp_path, caplog):
    """The same weights at another path hit the cache; other weights at the same path and step
    (a workdir deleted and retrained, a checkpoint replaced) miss it; a corrupt entry is
    recomputed, not an error."""
    import shutil

    import jax

    from ssl_jax import checkpointing, train
    from ssl_jax.evaluation import feature_cache

    from ssl_jax.evaluators import inputs

    mesh = sharding.make_mesh()
    data = inputs.EvalData("shapes_textures/tiny", None, None, "train", "test", 4, [])
    cache = str(tmp_path / "cache")
    original = inputs.load_network(smoke_checkpoint, 0, mesh)
    key = inputs.cache_key(original, data, "test", "features", "backbone")
    feature_cache.save(cache, key, np.ones((3, 2), np.float32), np.arange(3))

    moved = tmp_path / "moved"
    shutil.copytree(smoke_checkpoint, moved)
    same = inputs.load_network(str(moved), 0, mesh)
    assert feature_cache.load(cache, inputs.cache_key(same, data, "test", "features",
                                                      "backbone")) is not None

    # "Retrain" the copy to the same step with other weights.
    _, _, state = train.load_trained(str(moved), mesh)
    shutil.rmtree(moved / "checkpoints" / "6")
    manager = checkpointing.make_manager(str(moved / "checkpoints"), keep=None, save_every=1,
                                         async_save=False)
    checkpointing.save(manager, 6, state.replace(
        params=jax.tree.map(lambda p: p * 1.01, state.params)), {"metrics": {}}, force=True)
    manager.close()
    retrained = inputs.load_network(str(moved), 0, mesh)
    assert "step 6" in retrained.identity and "step 6" in original.identity
    assert feature_cache.load(cache, inputs.cache_key(retrained, data, "test", "features",
                                                      "backbone")) is None

    with open(feature_cache.cache_path(cache, key), "wb") as f:
        f.write(b"not an npz")
    with caplog.at_level("WARNING"):
        assert feature_cache.load(cache, key) is None
    assert "is unreadable" in caplog.text and "recomputing" in caplog.text


def test_default_layers_are_the_stages_in_forward_order(smoke_checkpoint):
    from ssl_jax.evaluators import inputs

    network = inputs.load_network(smoke_checkpoint, 0, sharding.make_mesh())
    names = inputs.sown_layers(network)
    picked = [n.split("/")[-1] for n in inputs.resolve_layers("", names)]
    assert picked == ["stem", "layer1", "layer2", "layer3", "layer4", "pool"]
    assert inputs.resolve_layers("layer2+stem", names)[1].endswith("/stem")


def test_run_eval_bad_values_name_valid_choices(smoke_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="layer 'layer9' matches 0 sown layers; valid:"):
        run_eval.run(_config(per_layer, smoke_checkpoint, tmp_path, layers="layer9"),
                     str(tmp_path / "x"))
    with pytest.raises(ValueError, match="pooling must be one of gap, flatten, got 'max'"):
        run_eval.run(_config(per_layer, smoke_checkpoint, tmp_path, pooling="max"),
                     str(tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown config arg 'bogus'; valid:"):
        linear.get_config("bogus=1")


def _convert_smoke_run(run_dir, out_dir):
    """The smoke run's backbone as a converted checkpoint directory: exported to torchvision
    keys and converted back as a torchvision ResNet. Both normalise with ImageNet statistics
    inside, so the converted network computes the run's backbone exactly."""
    from checkpoints_convert import torchvision as tv
    from checkpoints_convert.convert import convert, write_converted
    from ssl_jax import train

    config, _, state = train.load_trained(run_dir, sharding.make_mesh())
    backbone = {"params": state.params["backbone"],
                "batch_stats": state.model_state["batch_stats"]["backbone"]}
    sd = tv.flax_to_torch(jax.device_get(backbone), config.model.name,
                          width=config.model.width, cifar_stem=config.model.cifar_stem)
    write_converted(convert(sd, "torchvision_resnet"), str(out_dir))
    return str(out_dir)


@pytest.mark.slow
def test_similarity_on_run_directories_and_converted_checkpoints(smoke_checkpoint, tiny_data_dir,
                                                                  tmp_path):
    converted = _convert_smoke_run(smoke_checkpoint, tmp_path / "converted")

    def cka(checkpoint, checkpoint_b, name, **fields):
        c = _config(similarity, checkpoint, tmp_path / "cache", num_examples=64,
                    checkpoint_b=checkpoint_b, **fields)
        record = run_eval.run(c, str(tmp_path / name))
        assert (tmp_path / name / "cka.png").stat().st_size > 1000
        m = record["metrics"]
        matrix = np.array(m["cka"])
        assert matrix.shape == (len(m["layers_a"]), len(m["layers_b"]))
        assert np.all((matrix >= -1e-5) & (matrix <= 1 + 1e-5))
        return m, matrix

    m, matrix = cka(smoke_checkpoint, smoke_checkpoint, "run_run")
    assert m["layers_a"] == m["layers_b"]
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    assert len(m["augment_cka_a"]) == len(m["layers_a"])

    # The converted network has the run's backbone layers (no projection head): each of them
    # matches the run's same-named layer exactly.
    m, matrix = cka(smoke_checkpoint, converted, "run_converted")
    assert m["source_b"].startswith("converted torchvision_resnet")
    backbone = [n for n in m["layers_b"] if n.startswith("backbone/")]
    assert backbone and set(backbone) <= set(m["layers_a"])
    same = [matrix[m["layers_a"].index(n), m["layers_b"].index(n)] for n in backbone]
    np.testing.assert_allclose(same, 1.0, atol=1e-5)

    # A converted checkpoint as network A: the dataset and resolution come from the config,
    # and there is no augmentation of its own to compare against.
    m, matrix = cka(converted, smoke_checkpoint, "converted_run", image_size=32,
                    dataset="shapes_textures/tiny", data_dir=tiny_data_dir)
    assert m["augmentation"] is None and "augment_cka_a" not in m
