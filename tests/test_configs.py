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


@pytest.mark.parametrize("item, message", [("model.cifar_stem=maybe", "valid: true, false"),
                                           ("model.no_such_key=1", "unknown config key")])
def test_override_rejects_bad_input(item, message):
    with pytest.raises(ValueError, match=message):
        apply_override(simclr.get_config("quickstart"), item)
