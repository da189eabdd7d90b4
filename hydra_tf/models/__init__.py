"""Models: the networks and what makes them prunable.

- `architectures`: the networks, built plain or with score layers from one
  builder (a name -> builder table, `ARCHITECTURES`).
- `layers`: the score layers (`ScoredConv2D`, `ScoredDense`) and `FastConv2D`.
- `masks`: **the** mask function (top-k of |score| per layer, straight-through).
- `scores`: score initialisation (scaled weight magnitude, random).
- `convolution`: a 2-D convolution with a fast input gradient on CPUs.
- `precision`: float32 copies of mixed-precision networks.
"""
