"""A progress line for long loops: live while a notebook cell runs, gone from its saved output. A tqdm bar stays in
a saved notebook as first drawn ("0%| 0/8"), which looks stalled; in a Jupyter kernel we draw one line with a display
id, update it in place and blank it at the end. In a terminal, tqdm as usual."""

from __future__ import annotations

import time


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return hasattr(get_ipython(), "kernel")  # a Jupyter (or Colab) kernel, not a terminal IPython


class Progress:
    """``Progress(total, "training")``; ``update(1, loss="0.123")`` per step; ``close()`` at the end."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.start = self.shown = time.perf_counter()
        self._bar = self._line = None
        if enabled and _in_notebook():
            from IPython.display import display

            self._line = display({"text/plain": self._text({})}, raw=True, display_id=True)
        elif enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def _text(self, postfix: dict) -> str:
        extra = "".join(f", {k} {v}" for k, v in postfix.items())
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s{extra}, {time.perf_counter() - self.start:.0f} s"

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(postfix, refresh=False)
        elif self._line is not None and time.perf_counter() - self.shown > 0.2:  # a few redraws a second at most
            self._line.update({"text/plain": self._text(postfix)}, raw=True)
            self.shown = time.perf_counter()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._line is not None:
            self._line.update({"text/plain": ""}, raw=True)
