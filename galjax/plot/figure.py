"""Figure creation and saving shared by every plotting module (matplotlib's object API,
no pyplot state, so figures are safe to make in threads and tests)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from galjax.core.files import atomic_write

__all__ = ["new_figure", "save_figure"]


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width x height`` inches with an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` atomically (format from the extension); None: do nothing.

    Missing parent folders are created.
    """
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix[1:] or None))
