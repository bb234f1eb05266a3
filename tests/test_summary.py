import pytest

from xpcnn.bench import flops_per_image
from xpcnn.layers import Conv2D, Dense, Flatten, GlobalMaxPool2D, ReLU, Sequential
from xpcnn.models import build_model


def test_seed_summary_totals():
    summary = build_model("seed").summary((3, 32, 32))
    assert (summary.parameters, summary.flops) == (545_098, 12_257_792)


def test_fast_summary_totals():
    # 2x2 whitening conv 3→24 (+bias), 3x3 convs 24→64 (32²), 64→64 (16²), 64→256 (16²),
    # 256→256 (8², twice), 256→256 (4²), BatchNorm γ, β of 64, 64, 256 x 4, Dense 256→10
    summary = build_model("fast").summary((3, 32, 32))
    parameters = 312 + 13_824 + 36_864 + 147_456 + 3 * 589_824 + 2 * 128 + 4 * 512 + 2_560
    flops = 2 * (1024 * 24 * 12 + 1024 * 64 * 216 + 256 * 64 * 576 + 256 * 256 * 576
                 + 2 * 64 * 256 * 2304 + 16 * 256 * 2304 + 2_560)  # fmt: skip
    assert (summary.parameters, summary.flops) == (parameters, flops) == (1_972_792, 293_147_648)
    old = build_model("fast-v1").summary((3, 32, 32))
    assert (old.parameters, old.flops) == (531_960, 103_959_040)


def test_seed_summary_output_shapes_are_channels_first_row_by_row():
    rows = build_model("seed").summary((3, 32, 32)).rows
    assert [row.output_shape for row in rows] == [
        (32, 32, 32),
        (32, 32, 32),
        (32, 16, 16),
        (64, 16, 16),
        (64, 16, 16),
        (64, 8, 8),
        (4096,),
        (128,),
        (128,),
        (10,),
    ]


def test_seed_summary_rows_count_parameters_and_flops_per_layer():
    rows = build_model("seed").summary((3, 32, 32)).rows
    assert [row.parameters for row in rows] == [896, 0, 0, 18_496, 0, 0, 0, 524_416, 0, 1_290]
    assert [row.flops for row in rows] == [
        2 * 9 * 3 * 32 * 32 * 32,
        0,
        0,
        2 * 9 * 32 * 64 * 16 * 16,
        0,
        0,
        0,
        2 * 4096 * 128,
        0,
        2 * 128 * 10,
    ]


def test_summary_of_strided_valid_convolutions_and_dense_input():
    model = Sequential(Conv2D(1, 4, 3, stride=2, padding="valid"), GlobalMaxPool2D(), Dense(4, 2))
    assert [row.output_shape for row in model.summary((1, 9, 7)).rows] == [(4, 4, 3), (4,), (2,)]
    dense = Sequential(Dense(6, 3), ReLU(), Dense(3, 2))
    assert dense.summary((6,)).flops == 2 * 6 * 3 + 2 * 3 * 2


def test_summary_table_is_aligned_with_a_total_line():
    text = str(Sequential(Conv2D(1, 2, 3), Flatten()).summary((1, 4, 4)))
    conv = "Conv2D(1, 2, kernel_size=(3, 3), stride=1, padding='same', bias=True)"
    width = len(conv)
    rule = "-" * (3 + width + 2 + 12 + 2 + 10 + 2 + 5)
    assert text.splitlines() == [
        f"#  {'Layer':<{width}}  Output shape  Parameters  FLOPs",
        rule,
        f"0  {conv}  (2, 4, 4)             20    576",
        f"1  {'Flatten()':<{width}}  (32,)                  0      0",
        rule,
        "Total: 20 parameters, 0.0 MFLOP forward per image of shape (1, 4, 4)",
    ]


def test_summary_rejects_an_image_with_the_wrong_channel_count():
    with pytest.raises(ValueError, match="Conv2D: expected 3 input channels, got 1"):
        build_model("seed").summary((1, 32, 32))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("seed", (12_257_792, 35_003_904)),
        ("fast-v1", (103_959_040, 310_550_016)),
        # the whitening conv computes neither its input gradient nor its (frozen) weight's
        ("fast", (293_147_648, 3 * 293_147_648 - 2 * 2 * 1024 * 24 * 12)),
    ],
)
def test_bench_flops_per_image_are_the_layers_counts(name, expected):
    assert flops_per_image(build_model(name), (3, 32, 32)) == expected
