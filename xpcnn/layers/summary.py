"""A network's summary: output shape, parameters and forward FLOPs per layer, as a table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SummaryRow:
    """One layer: its position, its repr, and per image its output shape as the user sees it
    ((C, H, W) or (F,)), its parameter count and its forward FLOPs (a multiply-add is 2)."""

    index: int
    layer: str
    output_shape: tuple[int, ...]
    parameters: int
    flops: int


@dataclass(frozen=True)
class Summary:
    """What `Sequential.summary` returns; `str()` is an aligned table with a total line."""

    input_shape: tuple[int, ...]
    rows: tuple[SummaryRow, ...]

    @property
    def parameters(self) -> int:
        return sum(row.parameters for row in self.rows)

    @property
    def flops(self) -> int:
        """Forward FLOPs per image of the whole network."""
        return sum(row.flops for row in self.rows)

    def __str__(self) -> str:
        table = [("#", "Layer", "Output shape", "Parameters", "FLOPs")] + [
            (str(r.index), r.layer, str(r.output_shape), f"{r.parameters:,}", f"{r.flops:,}")
            for r in self.rows
        ]
        w = [max(len(row[column]) for row in table) for column in range(5)]
        lines = [
            f"{i:>{w[0]}}  {layer:<{w[1]}}  {shape:<{w[2]}}  {params:>{w[3]}}  {flops:>{w[4]}}"
            for i, layer, shape, params, flops in table
        ]
        rule = "-" * len(lines[0])
        total = (
            f"Total: {self.parameters:,} parameters, {self.flops / 1e6:.1f} MFLOP forward per "
            f"image of shape {self.input_shape}"
        )
        return "\n".join([lines[0], rule, *lines[1:], rule, total])
