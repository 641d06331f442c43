"""Draws Figure 1 of Lin et al. 2017 with `focaljax.losses.sigmoid_focal_loss`: loss vs p_t.

  python docs/figure1.py            # writes docs/figure1.png

For a positive example (target 1) with logit x, p_t = sigmoid(x); the focal loss
-(1 - p_t)^gamma log(p_t) is drawn for gamma in {0, 0.5, 1, 2, 5} without alpha-weighting, as in
the paper. gamma = 0 is cross-entropy.
"""

from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from focaljax.losses import sigmoid_focal_loss  # noqa: E402

GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(pathlib.Path(__file__).with_name("figure1.png")))
    args = parser.parse_args()

    p_t = jnp.linspace(1e-3, 1.0 - 1e-6, 500)
    logits = jnp.log(p_t) - jnp.log1p(-p_t)  # sigmoid(logits) = p_t
    targets = jnp.ones_like(logits)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for gamma in GAMMAS:
        loss = sigmoid_focal_loss(logits, targets, alpha=None, gamma=gamma)
        label = "CE ($\\gamma = 0$)" if gamma == 0 else f"FL $\\gamma = {gamma:g}$"
        ax.plot(p_t, loss, label=label)
    ax.axvspan(0.6, 1.0, color="0.92", zorder=0)
    ax.text(0.8, 3.5, "well-classified\nexamples", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of ground truth class $p_t$",
           ylabel="loss", title="Focal loss vs $p_t$ (Lin et al. 2017, Figure 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
