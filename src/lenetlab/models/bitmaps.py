"""7x12 digit bitmaps for the RBF output layer of LeNet-5 (1998).

The paper's RBF centres are +1/-1 renderings of the ASCII characters on a 7x12
grid (its Fig. 3). The original bitmaps are not available to us, so these are
*generated*: a stylised digit font drawn by hand for this project on the
same 7x12 grid ('#' = +1, '.' = -1). Distinct digits differ in at least 7 pixels (8 vs 3 and 8 vs 6 are the
closest; tested), so every pair of centres is >= 28 apart in squared distance.
"""

from __future__ import annotations

import torch

GLYPHS: tuple[str, ...] = (
    # 0
    "..###.."
    ".#...#."
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    ".#...#."
    "..###.."
    ".......",
    # 1
    "...#..."
    "..##..."
    ".#.#..."
    "...#..."
    "...#..."
    "...#..."
    "...#..."
    "...#..."
    "...#..."
    "...#..."
    ".#####."
    ".......",
    # 2
    ".#####."
    "#.....#"
    "......#"
    "......#"
    ".....#."
    "....#.."
    "...#..."
    "..#...."
    ".#....."
    "#......"
    "#######"
    ".......",
    # 3
    ".#####."
    "#.....#"
    "......#"
    "......#"
    "..####."
    "......#"
    "......#"
    "......#"
    "......#"
    "#.....#"
    ".#####."
    ".......",
    # 4
    ".....#."
    "....##."
    "...#.#."
    "..#..#."
    ".#...#."
    "#....#."
    "#######"
    ".....#."
    ".....#."
    ".....#."
    ".....#."
    ".......",
    # 5
    "#######"
    "#......"
    "#......"
    "#......"
    "######."
    "......#"
    "......#"
    "......#"
    "......#"
    "#.....#"
    ".#####."
    ".......",
    # 6
    "..####."
    ".#....."
    "#......"
    "#......"
    "######."
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    ".#####."
    ".......",
    # 7
    "#######"
    "......#"
    ".....#."
    ".....#."
    "....#.."
    "....#.."
    "...#..."
    "...#..."
    "..#...."
    "..#...."
    "..#...."
    ".......",
    # 8
    ".#####."
    "#.....#"
    "#.....#"
    "#.....#"
    ".#####."
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    ".#####."
    ".......",
    # 9
    ".#####."
    "#.....#"
    "#.....#"
    "#.....#"
    "#.....#"
    ".######"
    "......#"
    "......#"
    "......#"
    ".....#."
    ".####.."
    ".......",
)


def digit_bitmaps() -> torch.Tensor:
    """(10, 84) float tensor of +1/-1: row d is digit d's 12x7 bitmap, row-major."""
    rows = []
    for g in GLYPHS:
        if len(g) != 84:
            raise AssertionError(f"glyph has {len(g)} pixels, expected 84")
        rows.append([1.0 if c == "#" else -1.0 for c in g])
    return torch.tensor(rows)
