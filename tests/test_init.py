"""Data- and rule-based initialisations: identity filters and patch whitening."""

import numpy as np
import pytest

from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import Conv2D, Sequential, identity_init, whitening_init
from xpcnn.models import build_model


@pytest.mark.parametrize(("c_in", "c_out"), [(4, 6), (6, 4), (5, 5)])
def test_identity_init_passes_the_first_channels_through(c_in, c_out):
    conv = Conv2D(c_in, c_out, 3, padding="same", bias=False, dtype="float64")
    before = to_numpy(conv.params["weight"]).copy()
    identity_init(conv)
    x = np.random.default_rng(0).standard_normal((2, c_in, 5, 5))
    y = to_numpy(Sequential(conv)(asarray(x)))
    k = min(c_in, c_out)
    np.testing.assert_allclose(y[:, :k], x[:, :k], atol=1e-12)
    np.testing.assert_array_equal(to_numpy(conv.params["weight"])[k:], before[k:])


def correlated_images(n=400, size=12):
    """Images whose neighbouring pixels and channels are strongly correlated (as photos are)."""
    rng = np.random.default_rng(1)
    smooth = rng.standard_normal((n, 1, size + 1, size + 1))
    smooth = (smooth[..., 1:, 1:] + smooth[..., :-1, :-1] + smooth[..., 1:, :-1]) / 3
    return smooth * np.array([1.0, 0.8, 0.6])[:, None, None] + 0.2 * rng.standard_normal(
        (n, 3, size, size)
    )


def test_whitening_init_decorrelates_the_patches_to_unit_variance():
    images = correlated_images()
    conv = Conv2D(3, 24, 2, padding="valid", bias=True, dtype="float64")
    conv.params["bias"] = conv.params["bias"] + 1.0
    whitening_init(conv, asarray(images), eps=0.0)
    y = to_numpy(Sequential(conv)(asarray(images)))  # (N, 24, 11, 11)
    first = np.moveaxis(y[:, :12], 1, -1).reshape(-1, 12)
    covariance = first.T @ first / len(first)  # E[y yᵀ], the moment the filters whiten
    np.testing.assert_allclose(covariance, np.eye(12), atol=1e-8)
    np.testing.assert_allclose(y[:, 12:], -y[:, :12], atol=1e-12)  # and their negatives
    assert not to_numpy(conv.params["bias"]).any()
    # largest eigenvalue first: the first filter is the patch's mean brightness, all one sign
    first_filter = to_numpy(conv.params["weight"])[0].ravel()
    assert (first_filter > 0).all() or (first_filter < 0).all()


def test_whitening_init_needs_two_filters_per_patch_value():
    with pytest.raises(ValueError, match="needs 24 filters, got 16"):
        whitening_init(Conv2D(3, 16, 2), asarray(correlated_images(n=4)))


def test_fast_freezes_its_whitening_weight_and_batchnorm_scales():
    model = build_model("fast", width=4, image_size=8)
    scales = dict(model.named_lr_scales())
    assert scales["0.weight"] == 0 and scales["0.bias"] == 1
    assert [s for k, s in scales.items() if k.endswith(".weight") and k != "0.weight"].count(0) == 6
    assert [s for k, s in scales.items() if k.endswith(".bias") and k != "0.bias"] == [64.0] * 6
    x = asarray(np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    logits = model(x)
    model.zero_grad()
    model.backward(logits * 0.0 + 1.0, input_grad=False)
    assert "weight" not in model[0].gradients and "bias" in model[0].gradients
    assert "weight" not in model[4].gradients and "bias" in model[4].gradients


def test_a_frozen_prefix_gets_no_input_gradients_and_the_rest_the_same_gradients():
    """With the stem's bias frozen too, nothing before the first block's conv trains: that conv
    computes no input gradient and the stem's GELU and conv are not called (PyTorch's autograd
    skips a frozen prefix the same way); every other gradient is unchanged."""
    full = build_model("fast", width=4, image_size=8, dtype="float64")
    short = build_model("fast", width=4, image_size=8, dtype="float64")
    short.load_state_dict(full.state_dict())
    short[0].frozen.add("bias")
    assert not short[0].trains() and full[0].trains() and short[2].trains()
    calls = []
    for index in (1, 2):
        layer = short[index]
        layer.backward_channels_last = (  # record what the stem's GELU and the next conv get
            lambda dy, input_grad, layer=layer, index=index: (
                calls.append((index, input_grad))
                or type(layer).backward_channels_last(layer, dy, input_grad)
            )
        )
    x = asarray(np.random.default_rng(0).standard_normal((4, 3, 8, 8)))
    for model in (full, short):
        logits = model(x)
        model.zero_grad()
        model.backward(logits * 0.0 + 1.0, input_grad=False)
    assert calls == [(2, False)]
    full_grads, short_grads = full.grads(), short.grads()
    for key, value in short_grads.items():
        if not key.startswith("0."):
            np.testing.assert_array_equal(to_numpy(value), to_numpy(full_grads[key]), key)
