"""configs.common.apply_override: the experiments' KEY=VALUE overrides keep the field's type."""
import pytest

from configs import simclr
from configs.common import apply_override


def test_override_parses_bools_ints_floats_and_strings():
    c = simclr.get_config("quickstart")
    apply_override(c, "model.cifar_stem=true")
    assert c.model.cifar_stem is True
    apply_override(c, "model.cifar_stem=False")  # bool("False") would be True
    apply_override(c, "batch_size=64")
    apply_override(c, "simclr.temperature=0.2")
    apply_override(c, "dataset.name=shapes_textures/tiny")
    assert c.model.cifar_stem is False and c.batch_size == 64
    assert c.simclr.temperature == 0.2 and c.dataset.name == "shapes_textures/tiny"


def test_augmentation_overrides_take_new_view_fields_as_literals():
    from ssl_jax.data import augment

    c = simclr.get_config("quickstart")
    apply_override(c, "augment.overrides.brightness_impl=additive")
    apply_override(c, "augment.overrides.jitter_prob=0.0")
    apply_override(c, "augment.overrides.blur_sigma=(0.5, 1.0)")
    view = augment.get_preset(c.augment.preset, **c.augment.overrides).views[0]
    assert (view.brightness_impl, view.jitter_prob, view.blur_sigma) == ("additive", 0.0,
                                                                        (0.5, 1.0))
    apply_override(c, "augment.overrides.no_such_field=1")  # named when the views are built
    with pytest.raises(ValueError, match="unknown augmentation override.*no_such_field"):
        augment.get_preset(c.augment.preset, **c.augment.overrides)


@pytest.mark.parametrize("item, message", [("model.cifar_stem=maybe", "valid: true, false"),
                                           ("model.no_such_key=1", "unknown config key")])
def test_override_rejects_bad_input(item, message):
    with pytest.raises(ValueError, match=message):
        apply_override(simclr.get_config("quickstart"), item)


def test_model_activation_picks_the_backbone_nonlinearity():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from ssl_jax.methods.common import build_backbone

    c = simclr.get_config("smoke")
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)) - 0.5
    net = build_backbone(c)
    variables = net.init(jax.random.key(1), x, train=False)
    relu_out = net.apply(variables, x, train=False)
    apply_override(c, "model.activation=silu")
    silu_net = build_backbone(c)
    assert silu_net.activation is nn.silu
    # Same parameters, another nonlinearity: SiLU lets negative pre-activations through.
    assert not jnp.allclose(silu_net.apply(variables, x, train=False), relu_out)
    apply_override(c, "model.activation=tanh")
    with pytest.raises(ValueError, match="unknown model.activation 'tanh'; valid: relu, gelu"):
        build_backbone(c)
    apply_override(c, "model.activation=silu")
    apply_override(c, "model.name=plain10")
    apply_override(c, "model.cifar_stem=false")
    with pytest.raises(ValueError, match="activation"):  # Plain-10 has no activation option
        build_backbone(c)
