"""The counterfactual explorer: a local web page (gradio) over a DiTiPipeline, behind ``diti explore``.

The user picks two images a and b (from the data set by index or from its gallery, or by upload), sees their
DDIM reconstructions, chooses stages or chunks of z (labelled with their t-ranges and dims) and alpha (a
slider), and sees the counterfactual: a decoded with (1 - alpha) z_a + alpha z_b on the chosen dims (alpha 1
is the swap). A strip swaps each stage (or chunk group) in turn; the partition table and, when the run has
them, its probe and alignment figures are shown below.

The model stays out of the UI: ``Explorer`` holds the callbacks, plain functions of (inputs) -> (outputs,
status message) that never raise for bad input (the message says what is wrong, and the page shows it);
``build_app`` only lays out the page and wires the callbacks. Each image's inversion is cached, keyed by the
image's content (the bytes of the model's input tensor) and the number of DDIM steps, so moving the slider
re-decodes only. gradio is imported by ``build_app`` alone (the optional ``app`` extra); the callbacks run
without it. Nothing leaves the machine: analytics are off, no share link, the page's assets are served
locally.

Failures are one sentence in the page, beside the control that caused them (``message-a`` and ``message-b``
beside the two images, ``status`` beside the counterfactual), replacing what was there; nothing reaches the page
as a bare "Error". Uploads reach the callbacks as files, decoded here: a file that is not an image, larger than
``MAX_UPLOAD_BYTES`` or of more than ``MAX_UPLOAD_PIXELS`` pixels is refused with a message; gradio's server
stops reading an upload at ``UPLOAD_CAP_FACTOR`` times ``MAX_UPLOAD_BYTES`` (HTTP 413, its own notice), so that
no upload can fill the disk before it is refused. ``private_files``
keeps gradio's uploads and output images in a private temporary folder instead of gradio's shared cache, and
``launch`` removes it when the server stops (Ctrl-C, SIGTERM or an error).
"""

import hashlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..api import DiTiPipeline, Inversion
from ..data.images import open_image
from ..evaluation.markdown import alignment_table, disentangle_markdown, probe_markdown
from ..folders.results import DisentangleResult, ProbeResult

DEFAULT_STEPS = 25
DISPLAY = 160  # px: decoded images are upscaled (nearest neighbour) to this size for the page
GALLERY_SIZE = 24
# the largest upload taken (README, "Shareable models and the explorer"): bigger files are refused with a message
MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 25_000_000  # 5000 x 5000
# gradio's server refuses an upload once it exceeds this many times MAX_UPLOAD_BYTES, before writing the rest:
# between the two the file reaches the callbacks and is refused with the message beside the image
UPLOAD_CAP_FACTOR = 2
# bad input: one message in the page, never a traceback; any other failure is shown too, and logged in full
INPUT_ERRORS = (ValueError, FileNotFoundError)
logger = logging.getLogger(__name__)
# small images stay crisp when the browser scales them; the picked images (kept at the model's resolution, so
# that what the page holds is exactly the data set's image) fill their box
CSS = """
#image-a img, #image-b img, #recon-a img, #recon-b img, #counterfactual img, #strip img, #gallery img {
  image-rendering: pixelated;
}
#image-a img, #image-b img { width: 100% !important; height: 100% !important; object-fit: contain; }
#strip .caption-label { white-space: normal; max-width: 100%; overflow: visible; text-overflow: clip; }
"""


class InversionCache:
    """Inversions by image content and DDIM steps, least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._items: OrderedDict[str, Inversion] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(x, steps: int) -> str:
        """sha256 of the model input (1, C, R, R) float32 bytes and its shape, plus the steps."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        return hashlib.sha256(arr.tobytes() + repr((arr.shape, steps)).encode()).hexdigest()

    def get(self, key: str) -> Inversion | None:
        inv = self._items.get(key)
        if inv is not None:
            self._items.move_to_end(key)
        return inv

    def put(self, key: str, inv: Inversion) -> None:
        self._items[key] = inv
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Explorer:
    """The explorer's state (model, data set, inversion cache) and callbacks."""

    def __init__(
        self,
        model: DiTiPipeline,
        dataset=None,
        steps: int = DEFAULT_STEPS,
        cache_size: int = 64,
        gallery_size: int = GALLERY_SIZE,
        display: int = DISPLAY,
        clip_x0: bool = False,
        workers: int | None = None,
    ):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.model = model
        self.dataset = dataset
        self.steps = steps
        self.cache = InversionCache(cache_size)
        self.gallery_size = gallery_size
        self.display = display
        self.clip_x0 = clip_x0  # clip the predicted x_0 at every decoding step (the official samplers' choice)
        # ``workers`` model calls at once (gradio runs callbacks in threads; the page's queue admits as many), so
        # that an edit of cached inversions need not wait behind a new inversion when the cores allow it; the
        # cache has its own lock, never held during a model call
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers)
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------
    # What the page shows around the callbacks
    def header_markdown(self) -> str:
        m = self.model
        data = (f"; data: `{self.dataset.name}` ({len(self.dataset)} images)" if self.dataset is not None
                else "; start with `--data DIR` to pick images from a data set")
        clip = " (predicted x_0 clipped)" if self.clip_x0 else ""
        return (f"## diti explorer: `{m.name}`\n{m.describe()}; {self.steps} DDIM steps per inversion and "
                f"decoding{clip}{data}. Pick a and b, choose the stages or chunks of z to take from b, set alpha and "
                "press **swap**.")

    def chunk_choices(self) -> list[tuple[str, int]]:
        """(label, chunk index) for every chunk, labelled with its t-range and dims. The page's checkboxes pass
        the labels (so that its API takes what the page shows); the callbacks take labels or indices."""
        part = self.model.partition
        out = []
        for row in part.describe():
            dims = f"dims {row['dim_start']}-{row['dim_end'] - 1}" if row["dims"] else "no dims"
            t = "all t" if part.k == 1 else f"t {row['t_first']}-{row['t_last']}"
            out.append((f"chunk {row['chunk']}: {t}, {dims}", row["chunk"]))
        return out

    def stage_choices(self) -> list[tuple[str, int]]:
        """(label, stage index) when the partition has stages (empty for a balanced one)."""
        part = self.model.partition
        if part.num_stages == 1:
            return []
        return [(f"stage {j}: t {t0}-{t1}, dims {lo}-{hi - 1}", j)
                for j, ((t0, t1), (lo, hi)) in enumerate(zip(part.stage_t_ranges, part.stage_dim_ranges, strict=True))]

    def partition_table(self) -> tuple[list[str], list[list]]:
        header = ["chunk", "stage", "t-range", "dims", "n"]
        rows = [[r["chunk"], r["stage"], f"{r['t_first']}-{r['t_last']}",
                 f"{r['dim_start']}-{r['dim_end'] - 1}" if r["dims"] else "-", r["dims"]]
                for r in self.model.partition.describe()]
        return header, rows

    def measured_markdown(self) -> str:
        results = self.model.results
        parts = [probe_markdown(results.get(ProbeResult)), disentangle_markdown(results.get(DisentangleResult))]
        text = "\n\n".join("\n".join(p) for p in parts if p)
        return text or ("This run has no measured figures yet (`diti probe RUN --data DIR` and "
                        "`diti disentangle RUN --data DIR` write them).")

    def alignment(self) -> tuple[list[str], list[list[str]]] | None:
        return alignment_table(self.model.results.get(DisentangleResult))

    @property
    def gallery_pages(self) -> int:
        return 0 if self.dataset is None else -(-len(self.dataset) // self.gallery_size)

    def gallery(self, page: int = 0) -> list[tuple[np.ndarray, str]]:
        """Page ``page`` of the data set (``gallery_size`` images from index page * gallery_size), upscaled for
        display, captioned with their index."""
        if self.dataset is None:
            return []
        if not 0 <= page < self.gallery_pages:
            raise ValueError(f"gallery page {page} is out of range: there are {self.gallery_pages} pages")
        first = page * self.gallery_size
        indices = list(range(first, min(first + self.gallery_size, len(self.dataset))))
        return [(self._show(im), f"#{i}") for i, im in zip(indices, self.dataset.images(indices), strict=True)]

    def gallery_label(self, page: int = 0) -> str:
        first = page * self.gallery_size
        last = min(first + self.gallery_size, len(self.dataset)) - 1
        return (f"the data set: images {first}-{last} of {len(self.dataset)} (page {page + 1} of "
                f"{self.gallery_pages}); a click picks one")

    def turn_page(self, page: int, delta: int) -> tuple[int, list[tuple[np.ndarray, str]], str, bool, bool]:
        """The gallery ``delta`` pages from ``page`` (kept within the pages): (new page, its images, its label,
        whether a previous page exists, whether a next one does)."""
        new = min(max(int(page) + delta, 0), self.gallery_pages - 1)
        return new, self.gallery(new), self.gallery_label(new), new > 0, new < self.gallery_pages - 1

    def default_indices(self) -> tuple[int | None, int | None]:
        """The indices a and b start at: two different images (0 and 1) when the data set has them."""
        if self.dataset is None:
            return None, None
        return 0, min(1, len(self.dataset) - 1)

    # ------------------------------------------------------------------------------------------------
    # Callbacks: (inputs) -> (outputs..., status markdown)
    def pick(self, index) -> tuple[np.ndarray | None, str]:
        """The data-set image at ``index`` (uint8 (R, R, 3), exactly as stored)."""
        try:
            if self.dataset is None:
                raise ValueError("no data set: start the explorer with --data DIR to pick images by index")
            if index is None or index == "":
                raise ValueError("enter the index of an image")
            if float(index) != int(float(index)):
                raise ValueError(f"the index must be a whole number, got {index}")
            i = int(float(index))
            if not 0 <= i < len(self.dataset):
                raise ValueError(f"index {i} is out of range: the data set has {len(self.dataset)} images (0..{len(self.dataset) - 1})")
            return self.dataset.images([i])[0], f"image #{i} of `{self.dataset.name}`"
        except Exception as err:
            return None, _error(err)

    def reconstruct(self, image, name: str = "the image") -> tuple[np.ndarray | None, str]:
        """The DDIM reconstruction of one image (its inversion is cached for the edits); ``name``: what the
        message calls it (image a, image b)."""
        if image is None:
            return None, ""
        try:
            start = time.perf_counter()
            inv, cached = self._invert(image, name)
            with self._slots:
                out = self.model.reconstruct(inversion=inv, steps=self.steps, output_type="np", clip_x0=self.clip_x0)[0]
            took = time.perf_counter() - start
            return self._show(out), f"reconstruction in {took:.2f} s (inversion {'cached' if cached else 'computed'})"
        except Exception as err:
            return None, _error(err)

    def counterfactual(
        self, image_a, image_b, stages: Sequence[int] | None, chunks: Sequence[int] | None, alpha: float,
        x_t: str = "keep",
    ) -> tuple[np.ndarray | None, str]:
        """a decoded with the selected stages/chunks of z moved toward b's by ``alpha`` (1 = swap)."""
        try:
            stages = _indices(stages, self.stage_choices(), "stage")
            chunks = _indices(chunks, self.chunk_choices(), "chunk")
            mask = self._selection(stages, chunks)
            inv_a, inv_b, cached = self._pair(image_a, image_b)
            start = time.perf_counter()
            with self._slots:
                out = self.model.counterfactual(
                    dims=np.flatnonzero(mask).tolist(), alpha=float(alpha), mode="interpolate", x_T=x_t,
                    steps=self.steps, inversion_a=inv_a, inversion_b=inv_b, output_type="np", clip_x0=self.clip_x0,
                )[0]
            took = time.perf_counter() - start
            what = _describe_selection(stages, chunks)
            return self._show(out), (f"a with {what} moved toward b by alpha {float(alpha):.2f} (x_T {x_t}): "
                                     f"decoded in {took:.2f} s; inversions {cached}")
        except Exception as err:
            return None, _error(err)

    def strip(self, image_a, image_b, x_t: str = "keep") -> tuple[list[tuple[np.ndarray, str]], str]:
        """a with each stage (or chunk group; PDAE: dim slice) swapped from b in turn."""
        try:
            inv_a, inv_b, cached = self._pair(image_a, image_b)
            start = time.perf_counter()
            with self._slots:
                rows = self.model.swap_each_group(x_T=x_t, steps=self.steps, inversion_a=inv_a, inversion_b=inv_b,
                                                  output_type="np", clip_x0=self.clip_x0)
            took = time.perf_counter() - start
            items = [(self._show(images[0]), f"b's {group.label}") for group, images in rows]
            return items, f"{len(items)} swaps decoded in {took:.2f} s; inversions {cached}"
        except Exception as err:
            return [], _error(err)

    # ------------------------------------------------------------------------------------------------
    def _invert(self, image, name: str) -> tuple[Inversion, bool]:
        """(inversion of one image, whether it came from the cache). ``image``: what the API takes, or the path of
        an uploaded file (decoded within the upload limits). The inversion takes one of the ``workers`` slots."""
        if isinstance(image, (str, Path)):
            image = open_image(image, f"{name} ({Path(image).name})", MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS)
        x = self.model.preprocess(image)
        if len(x) != 1:
            raise ValueError(f"give one image here, got a batch of {len(x)}")
        key = self.cache.key(x, self.steps)
        with self._cache_lock:
            inv = self.cache.get(key)
            if inv is not None:
                self.cache.hits += 1
                return inv, True
            self.cache.misses += 1
        with self._slots:
            inv = self.model.invert(x, self.steps)
        with self._cache_lock:
            self.cache.put(key, inv)
        return inv, False

    def _pair(self, image_a, image_b) -> tuple[Inversion, Inversion, str]:
        missing = [name for name, im in (("a", image_a), ("b", image_b)) if im is None]
        if missing:
            raise ValueError(f"pick image {' and '.join(missing)} first (upload, data-set index or gallery)")
        (inv_a, hit_a), (inv_b, hit_b) = self._invert(image_a, "image a"), self._invert(image_b, "image b")
        cached = {2: "both cached", 1: "one cached, one computed", 0: "both computed"}[hit_a + hit_b]
        return inv_a, inv_b, cached

    def _selection(self, stages: list[int], chunks: list[int]) -> np.ndarray:
        if not stages and not chunks:
            raise ValueError("the selection is empty: choose at least one stage or chunk to take from b")
        mask = np.zeros(self.model.latent_dim, dtype=bool)
        if stages:
            mask |= self.model.select_dims(stages=stages)
        if chunks:
            mask |= self.model.select_dims(chunks=chunks)
        if not mask.any():
            raise ValueError("the selected stages/chunks hold no dims; choose others")
        return mask

    def _show(self, image: np.ndarray) -> np.ndarray:
        """uint8 (R, R, 3) upscaled with nearest-neighbour sampling to the display size."""
        if image.shape[0] >= self.display:
            return image
        return np.asarray(Image.fromarray(image).resize((self.display, self.display), Image.Resampling.NEAREST))


def _error(err: Exception) -> str:
    """The one sentence the page shows for a failure; a failure that is not bad input is logged in full."""
    if isinstance(err, INPUT_ERRORS):
        return f"**error:** {err}"
    logger.error("explorer callback failed", exc_info=err)
    return f"**error:** {type(err).__name__}: {err} (the server's log has the details)"


def default_workers() -> int:
    """How many model calls may run at once: the cores over torch's threads per call (1 when each call takes
    every core, e.g. torch's default; 2 on 2 cores with ``--threads 1``)."""
    import torch

    return max(1, (os.cpu_count() or 1) // torch.get_num_threads())


def _indices(picked, choices: list[tuple[str, int]], what: str) -> list[int]:
    """The indices of the picked stages or chunks, given as their labels (what the page shows) or indices."""
    by_label = dict(choices)
    out = []
    for item in picked or []:
        if isinstance(item, str) and item in by_label:
            out.append(by_label[item])
        elif isinstance(item, str) and not item.strip().lstrip("-").isdigit():
            raise ValueError(f"no {what} is labelled {item!r}; the {what}s are: " + "; ".join(by_label))
        else:
            out.append(int(item))
    return out


def _describe_selection(stages, chunks) -> str:
    parts = []
    if stages:
        parts.append(("stage " if len(stages) == 1 else "stages ") + ", ".join(map(str, stages)))
    if chunks:
        parts.append(("chunk " if len(chunks) == 1 else "chunks ") + ", ".join(map(str, chunks)))
    return " and ".join(parts)


# ----------------------------------------------------------------------------------------------------
# The page
def _gradio():
    """gradio, imported with its analytics off (nothing may leave the machine)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("gradio is not installed (pip install 'diti[app]')") from None
    return gr


def build_app(model: DiTiPipeline, dataset=None, steps: int = DEFAULT_STEPS, explorer: Explorer | None = None,
              clip_x0: bool = False):
    """The explorer page (a ``gr.Blocks``) for ``model``; ``dataset``: images to pick from (optional).

    ``explorer``: an ``Explorer`` to wire instead of a new one (its own data set, steps and clip_x0 are used)."""
    gr = _gradio()

    def image_input(**kwargs):
        """A gr.Image that hands the callbacks its file unread: the explorer decodes it (``open_image``, within the
        upload limits), so that an unreadable or oversized upload is a message beside it, not gradio's bare "Error"
        from its own decoding. (The instance's ``preprocess`` is replaced: a subclass of a gradio component makes
        gradio write a .pyi file beside this module.)"""
        image = gr.Image(**kwargs)
        decode = image.preprocess
        image.preprocess = lambda payload: payload.path if payload is not None and payload.path else decode(payload)
        return image

    ex = explorer or Explorer(model, dataset, steps, clip_x0=clip_x0)
    # the checkboxes' values are their labels: the page's API then takes what the page shows
    chunk_choices = [label for label, _ in ex.chunk_choices()]
    stage_choices = [label for label, _ in ex.stage_choices()]
    first_a, first_b = ex.default_indices()
    image_kw = dict(image_mode=None, format="png", height=ex.display, sources=["upload", "clipboard"])
    out_kw = dict(type="numpy", format="png", height=ex.display, interactive=False)
    with gr.Blocks(title=f"diti explorer: {model.name}", analytics_enabled=False) as demo:
        status = gr.Markdown(elem_id="status", render=False)
        gr.Markdown(ex.header_markdown())
        with gr.Row():
            with gr.Column():
                image_a = image_input(label="a: the image to edit (upload, or pick below)", elem_id="image-a",
                                      **image_kw)
                with gr.Row():
                    # no rounding (precision None): 1.5 reaches ``pick``, which refuses it with a message
                    index_a = gr.Number(first_a, label="data-set index of a", elem_id="index-a",
                                        interactive=ex.dataset is not None)
                    show_a = gr.Button("show a", elem_id="show-a", interactive=ex.dataset is not None)
                message_a = gr.Markdown(elem_id="message-a")
            with gr.Column():
                image_b = image_input(label="b: where the chosen dims come from", elem_id="image-b", **image_kw)
                with gr.Row():
                    index_b = gr.Number(first_b, label="data-set index of b", elem_id="index-b",
                                        interactive=ex.dataset is not None)
                    show_b = gr.Button("show b", elem_id="show-b", interactive=ex.dataset is not None)
                message_b = gr.Markdown(elem_id="message-b")
            recon_a = gr.Image(label="reconstruction of a", elem_id="recon-a", **out_kw)
            recon_b = gr.Image(label="reconstruction of b", elem_id="recon-b", **out_kw)
        if ex.dataset is not None:
            with gr.Row():
                target = gr.Radio(["a", "b"], value="a", label="a click in the gallery sets", elem_id="gallery-target",
                                  scale=0, min_width=200)
                with gr.Column(scale=0, min_width=200):
                    page = gr.State(0)
                    previous_page = gr.Button("previous images", elem_id="gallery-previous", size="sm",
                                              interactive=False)
                    next_page = gr.Button("next images", elem_id="gallery-next", size="sm",
                                          interactive=ex.gallery_pages > 1)
                gallery = gr.Gallery(ex.gallery(0), label=ex.gallery_label(0), columns=12, height=2 * 80 + 40,
                                     format="png", allow_preview=False, elem_id="gallery", scale=4)
        with gr.Row():
            stages = gr.CheckboxGroup(stage_choices, label="stages to take from b", elem_id="stages",
                                      visible=bool(stage_choices))
            chunks = gr.CheckboxGroup(chunk_choices, label="chunks to take from b (the t-range where each enters "
                                      "the decoder, its dims)", elem_id="chunks")
        with gr.Row():
            alpha = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="alpha: share of b in the chosen dims (1 = swap)",
                              elem_id="alpha", scale=3)
            x_t = gr.Radio([("keep a's x_T", "keep"), ("slerp toward b's x_T", "slerp")], value="keep",
                           label="noise x_T", elem_id="x-t", scale=2)
            swap = gr.Button("swap", variant="primary", elem_id="swap", scale=1)
        with gr.Row():
            output = gr.Image(label="counterfactual", elem_id="counterfactual", **out_kw)
            with gr.Column(scale=2):
                status.render()
                strip_button = gr.Button("swap each stage in turn", elem_id="strip-button")
        n_groups = len(model.groups())
        strip = gr.Gallery(label="a with each stage (or chunk group) of b in turn", columns=max(n_groups, 6),
                           height=280, object_fit="contain", format="png", allow_preview=False, fit_columns=False,
                           elem_id="strip")
        with gr.Accordion("partition of z", open=True):
            header, rows = ex.partition_table()
            gr.Dataframe(value=rows, headers=header, interactive=False, elem_id="partition")
        with gr.Accordion("measured figures of this run", open=True):
            gr.Markdown(ex.measured_markdown(), elem_id="measured")
            figure = model.figure(DisentangleResult.FIGURE)
            if figure is not None:
                gr.Image(str(figure), label="partition-factor alignment", interactive=False, elem_id="alignment")

        # events: the callbacks are Explorer's plain functions; each writes its message beside its own control
        pick_out = ([image_a, message_a], [image_b, message_b])
        show_a.click(ex.pick, [index_a], pick_out[0])
        index_a.submit(ex.pick, [index_a], pick_out[0])
        show_b.click(ex.pick, [index_b], pick_out[1])
        index_b.submit(ex.pick, [index_b], pick_out[1])
        # every model call waits in one queue that admits ``ex.workers`` at once; a waiting user sees its place in
        # it on the output (gradio's status, "queue: 2/3")
        model_call = dict(concurrency_id="model", concurrency_limit=ex.workers, show_progress="full")
        image_a.change(lambda image: ex.reconstruct(image, "image a"), [image_a], [recon_a, message_a], **model_call)
        image_b.change(lambda image: ex.reconstruct(image, "image b"), [image_b], [recon_b, message_b], **model_call)
        cf_inputs = [image_a, image_b, stages, chunks, alpha, x_t]
        swap.click(ex.counterfactual, cf_inputs, [output, status], **model_call)
        alpha.release(ex.counterfactual, cf_inputs, [output, status], **model_call)
        strip_button.click(ex.strip, [image_a, image_b, x_t], [strip, status], **model_call)
        if ex.dataset is not None:

            def on_gallery(which: str, shown: int, evt: gr.SelectData):
                # the picked image, its index in the index box and the message, on the side the radio names
                index = shown * ex.gallery_size + evt.index
                image, message = ex.pick(index)
                picked, keep = (image, index, message), (gr.skip(),) * 3
                return picked + keep if which == "a" else keep + picked

            def turn(shown: int, delta: int):
                new, items, label, has_previous, has_next = ex.turn_page(shown, delta)
                return (new, gr.Gallery(items, label=label), gr.Button(interactive=has_previous),
                        gr.Button(interactive=has_next))

            gallery.select(on_gallery, [target, page], [image_a, index_a, message_a, image_b, index_b, message_b])
            paging = [page, gallery, previous_page, next_page]
            previous_page.click(lambda shown: turn(shown, -1), [page], paging, concurrency_id="gallery")
            next_page.click(lambda shown: turn(shown, 1), [page], paging, concurrency_id="gallery")
    return demo


@contextmanager
def private_files() -> Iterator[Path]:
    """A private temporary folder (mode 0700) where gradio keeps this server's uploads and output images (through
    ``GRADIO_TEMP_DIR``, instead of its cache shared by every gradio app of the machine); removed on exit.

    Enter it before ``build_app``: gradio reads the variable when it makes the page's components and its
    server. Inside it, SIGTERM ends the process through SystemExit (not at once, SIGTERM's default), so that the
    folder is also removed when the server is stopped while it starts."""
    folder = Path(tempfile.mkdtemp(prefix="diti-explore-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    on_term = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        yield folder
    finally:
        if main:
            signal.signal(signal.SIGTERM, on_term)
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def check_port(host: str, port: int) -> None:
    """Refuse a port another server holds, before anything is printed or built (gradio's own error quotes its
    internals)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot serve on {host}:{port}: {err.strerror or err} (another server holds it? "
                             "choose another with --port)") from None


def launch(demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on host:port (no share link, no server-side rendering, no MCP server).

    With ``block``, serve until Ctrl-C or SIGTERM, then close the server and return (so that the caller's
    ``private_files`` folder is removed: SIGTERM's default would end the process at once)."""
    kwargs = dict(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, mcp_server=False,
                  show_error=False, css=CSS, footer_links=[], quiet=True,
                  max_file_size=UPLOAD_CAP_FACTOR * MAX_UPLOAD_BYTES)
    if not block:
        return demo.launch(prevent_thread_lock=True, **kwargs)
    demo.launch(prevent_thread_lock=True, **kwargs)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)} if main \
        else {}
    try:
        while not stop.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        demo.close()
