"""The images of ``gr2st features``, each decoded ahead of its turn."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from anndata import AnnData

from gr2st.encoders.options import image_path, spot_centers
from gr2st.image.slide import Slide, open_slide
from gr2st.image.workers import PatchWorkers, SlideSource

# More worker processes than this only add start-up time and memory.
MAX_WORKERS = 32


class ImagePrefetcher:
    """The images of the sections that need pixels, each made ready ahead of its turn.

    In-process (``workers=0``), the next image is decoded by a background thread; with
    workers, the next image is handed to the pool (which decodes JPEG/PNG into shared
    memory). At most two images are held at once.
    """

    def __init__(self, adatas: Sequence[AnnData], todo: list[int], workers: int) -> None:
        self.adatas, self.todo = adatas, todo
        self.pool = PatchWorkers(min(workers, MAX_WORKERS)) if workers and todo else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gr2st-decode")
        self._ahead: dict[int, Future[Slide] | SlideSource] = {}
        self._prepare_after(-1)

    def _prepare_after(self, i: int) -> None:
        later = [j for j in self.todo if j > i]
        if later:
            adata = self.adatas[later[0]]
            self._ahead[later[0]] = (
                self.pool.open(image_path(adata))
                if self.pool is not None
                else self._thread.submit(open_decoded, adata)
            )

    def take(self, i: int) -> Slide | SlideSource | None:
        """Section ``i``'s image (``None`` when it needs no pixels); prepares the next."""
        ahead = self._ahead.pop(i, None)
        image = ahead.result() if isinstance(ahead, Future) else ahead
        self._prepare_after(i)
        return image

    def done(self, image: Slide | SlideSource | None) -> None:
        """Close or release an image :meth:`take` gave."""
        if isinstance(image, Slide):
            image.close()
        elif image is not None and self.pool is not None:
            self.pool.release(image)

    def __enter__(self) -> ImagePrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        # After an error, release the image prepared for a section not reached.
        for ahead in self._ahead.values():
            if isinstance(ahead, Future):
                if not ahead.cancel() and ahead.exception() is None:
                    ahead.result().close()
            elif self.pool is not None:
                self.pool.release(ahead)
        self._thread.shutdown()
        if self.pool is not None:
            self.pool.close()


def open_decoded(adata: AnnData) -> Slide:
    """Open the section's image and read one spot's pixel, so that formats decoded on
    first use (JPEG, PNG) are decoded now, in the calling (background) thread."""
    slide = open_slide(image_path(adata))
    if adata.n_obs:
        x, y = spot_centers(adata)[0]
        slide.read_region(int(x), int(y), 1, 1)
    return slide
