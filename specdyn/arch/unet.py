"""The paper's 17 UNet pairs for specdyn's `unet` task (docs/method.md 1.6): the encoder chain, each time
projection into the next conv, the bottleneck into tconv4, the decoder chain and the skip pairs. A decoder tconv
reads cat([h, skip]) (UNet.forward), so the decoder chain reads its first half of input channels and the skips
(conv_i, dense_i -> tconv_i) the second half."""

import re

from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.pairs import PairSpec, chain_kind


def task_pairs(specs: list[MatrixSpec]) -> tuple[list[PairSpec], list[str]]:
    def find(module: str) -> MatrixSpec | None:
        rx = re.compile(rf"(^|\.){module}\.weight$")
        return next((s for s in specs if rx.search(s.name)), None)

    links: list[tuple[str, str, str]] = []  # (prev, next, which half of next's input: "", "h", "skip")
    links += [("conv1", "conv2", ""), ("conv2", "conv3", ""), ("conv3", "conv4", "")]
    links += [("dense1", "conv2", ""), ("dense2", "conv3", ""), ("dense3", "conv4", "")]
    links += [("dense4", "tconv4", ""), ("conv4", "tconv4", "")]
    links += [("tconv4", "tconv3", "h"), ("tconv3", "tconv2", "h"), ("tconv2", "tconv1", "h")]
    for i in (1, 2, 3):
        links += [(f"conv{i}", f"tconv{i}", "skip"), (f"dense{i}", f"tconv{i}", "skip")]
    pairs, broken = [], []
    for a_name, b_name, half in links:
        a, b = find(a_name), find(b_name)
        if a is None or b is None:
            broken.append(f"{a_name} -> {b_name}")
            continue
        c = b.in_channels // 2
        cols = {"": None, "h": (0, c), "skip": (c, 2 * c)}[half]
        p = chain_kind(a, b, cols)
        (pairs.append(p) if p else broken.append(f"{a.name} -> {b.name}"))
    return pairs, broken


TASKS = {"unet": task_pairs}
