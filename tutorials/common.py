"""What every tutorial needs: the run folder to study and a folder for its figures.

    from common import get_run, out_dir
    RUN = get_run()                   # a trained run folder (see below)
    OUT = out_dir("05_detecting")     # tutorials/out/05_detecting/, created

The tutorials run as scripts (`python tutorials/05_...py`) and as notebooks (Jupytext, VS Code, a Jupyter kernel
started in tutorials/): nothing here needs the tutorial's own `__file__`, which a notebook kernel does not have.
Figures show inline in a notebook and are saved to OUT either way.

The run folder is, in order: $PRSS_RUN if set; runs/cpu if it holds a trained model (made by tutorial 04 or
`python train_toy.py --preset cpu --out runs/cpu`); otherwise runs/tiny, trained here with the `tiny` preset
(about a minute) if it is not there yet. The tiny model is too small to memorize much: the tutorials still run,
but their numbers are only meaningful on the cpu run. $PRSS_TUTORIAL_OUT moves the output folders (CI uses it).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from anywhere: `python tutorials/01_toy_world.py`
    sys.path.insert(0, ROOT)


def quick():
    """True when $PRSS_QUICK is set (CI): tutorials shrink their loops so they finish in seconds."""
    return bool(os.environ.get("PRSS_QUICK"))


def get_run(prefer="cpu"):
    """Path of a trained run folder (see the module docstring); prints which one and why."""
    if os.environ.get("PRSS_RUN"):
        run = os.environ["PRSS_RUN"]
        if not os.path.exists(os.path.join(run, "unet.pt")):
            raise SystemExit(f"PRSS_RUN={run} holds no trained model (unet.pt). Train it with "
                             f"`python train_toy.py --preset cpu --out {run}` or unset PRSS_RUN.")
        print(f"using the run folder {run} (from $PRSS_RUN)")
        return run
    preferred = os.path.join(ROOT, "runs", prefer)
    if os.path.exists(os.path.join(preferred, "unet.pt")):
        print(f"using the run folder {preferred}")
        return preferred
    tiny = os.path.join(ROOT, "runs", "tiny")
    if not os.path.exists(os.path.join(tiny, "unet.pt")):
        print(f"no trained run at {preferred}: training the `tiny` preset into {tiny} (about a minute).\n"
              f"Its model is too small to memorize much; for the real numbers run tutorial 04 or\n"
              f"    python train_toy.py --preset cpu --out runs/cpu")
        import train_toy
        train_toy.main(["--preset", "tiny", "--out", tiny])
    else:
        print(f"no trained run at {preferred}: using {tiny} (tiny preset; numbers are only indicative)")
    return tiny


def out_dir(name):
    """tutorials/out/<name>/ (or $PRSS_TUTORIAL_OUT/<name>/), created."""
    base = os.environ.get("PRSS_TUTORIAL_OUT", os.path.join(ROOT, "tutorials", "out"))
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path


def show(fig, path, dpi=110, **savefig_options):
    """Save a matplotlib figure to `path`; in a notebook also show it inline; then close it.

    Scripts make many figures, so each is closed once saved. The backend is whatever matplotlib picks (MPLBACKEND
    in the tests: Agg; a notebook: inline)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi, **savefig_options)
    if "ipykernel" in sys.modules:  # running in a Jupyter kernel
        from IPython.display import display
        display(fig)
    plt.close(fig)
    return path


def show_grid(images, path, nrow=None, scale=4):
    """Save uint8 images (N, H, W, 3) as one enlarged PNG grid, `nrow` images per row (the last one padded with
    white), with prss_mini.images.save_grid; in a notebook also show it inline. Returns the path."""
    import numpy as np

    from prss_mini.images import save_grid

    images = np.asarray(images)
    nrow = nrow or len(images)
    rows = []
    for r in range(0, len(images), nrow):
        rows.append(list(images[r:r + nrow]) + [np.full_like(images[0], 255)] * (nrow - len(images[r:r + nrow])))
    save_grid(rows, path, scale)
    if "ipykernel" in sys.modules:  # running in a Jupyter kernel
        from IPython.display import Image, display
        display(Image(filename=path))
    print(f"saved {path}")
    return path


def show_rows(rows, labels, path, title):
    """One labelled row of uint8 (H, W, 3) images per entry of `rows`, saved as a PNG; returns the path."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(rows), 1, figsize=(1.3 * max(len(r) for r in rows) + 1, 1.5 * len(rows)))
    for ax, row, label in zip(np.atleast_1d(axes), rows, labels):
        ax.imshow(np.concatenate(list(row), axis=1), interpolation="nearest")
        ax.set_title(label, fontsize=9, loc="left")
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    show(fig, path, dpi=120)
    print(f"saved {path}")
    return path


def image_table(rows, column_titles, path, title=None):
    """A table of images: `rows` maps a row label to uint8 (N, H, W, 3) images, one per column; saves a PNG.

    For "same prompts, same seeds, one row per method" figures, where each column must line up across rows."""
    import matplotlib.pyplot as plt

    n = len(column_titles)
    fig, axes = plt.subplots(len(rows), n, squeeze=False, figsize=(0.9 * n + 1.8, 0.9 * len(rows) + 0.8))
    for r, (label, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for c, name in enumerate(column_titles):
        axes[0, c].set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    show(fig, path, dpi=100)
    return path


def hardest_titled(prompts, data):
    """The titled memorized prompts, hardest first: the one whose image was trained under the most
    title-keeping variants (prompts.num_variants), so most of its paraphrases still carry the memorization."""
    from prss_mini.captions import parse_caption
    from prss_mini.prompts import num_variants

    return sorted([p for p in prompts if parse_caption(p)[1] is not None], key=lambda p: -num_variants(data, p))
