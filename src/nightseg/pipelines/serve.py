"""`nightseg serve`: a local Gradio web app to look at night predictions.

The page takes an image (PNG/JPEG), a short video (one frame at a time) or a file of the ``--images``
folder and shows the input, the relit image (Zero-DCE or night->day, when switched on), the prediction
overlay with an opacity slider, the class legend with the per-class pixel shares, and the mean max-softmax
confidence per HSV-V exposure bin (the mEF1 bins); with a second checkpoint it shows both overlays in an
image slider and the pixels where they disagree. The work is the plain functions of `serve_handlers`;
this module only lays out the page and wires events to them.

Gradio is an optional extra (``pip install -e ".[app]"``) and is imported only inside `serve` and
`build_app`. Requests go through Gradio's queue (`concurrency` at once) and each model has its own lock,
so one model runs one request at a time. Uploads, Gradio's cache and every result file live in one
temporary folder that is removed when the server stops; the server binds to 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import atexit
import importlib.util
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightseg.core.errors import UserError
from nightseg.core.io import list_images
from nightseg.inference import TTA, SlidingWindow
from nightseg.inference.video import VIDEO_SUFFIXES
from nightseg.models.relight import WEIGHTS_ENV
from nightseg.pipelines.serve_handlers import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    ModelCache,
    ModelOptions,
    RequestResult,
    bundles_relight,
    check_checkpoint,
    check_upload,
    confidence_figure,
    is_onnx,
    model_label,
    restyle,
    run_request,
    shares_html,
    summary,
    video_frames,
)

log = logging.getLogger("nightseg")

INSTALL_HINT = 'nightseg serve needs Gradio, an optional extra: pip install -e ".[app]"'
NONE = "(none)"


@dataclass
class ServeConfig:
    """What `nightseg serve` was started with (see the command's options)."""

    checkpoints: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 7860
    images: Path | None = None
    relight_weights: str | None = None
    night2day: str | None = None
    tta: str = "flip"
    window: str = "512x512"
    device: str = "cpu"
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    concurrency: int = 2


def import_gradio() -> Any:
    """Return the gradio module; a UserError with the install command when the extra is missing."""
    try:
        import gradio
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return gradio


def check_config(config: ServeConfig) -> ServeConfig:
    """Return `config` with its checkpoints and folders checked (one-line UserErrors before anything starts)."""
    for ref in config.checkpoints:
        check_checkpoint(ref)
    if config.night2day is not None and not Path(config.night2day).is_file():
        raise UserError(f"--night2day {config.night2day}: translator checkpoint not found")
    if config.images is not None:
        list_images(config.images)  # raises a UserError naming a missing folder
    if not 0 < config.port < 65536:
        raise UserError(f"--port {config.port}: must be between 1 and 65535")
    TTA.parse(config.tta)
    SlidingWindow.parse(config.window)
    if config.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb {config.max_upload_mb}: must be positive")
    return config


def check_port_free(host: str, port: int) -> None:
    """Raise a UserError when `port` on `host` is already taken (before Gradio starts and fails less clearly)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"--port {port} on {host}: cannot listen there ({exc.strerror or exc}); "
                            "choose another with --port") from None


def is_loopback(host: str) -> bool:
    """Return whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class App:
    """The server's state behind the page: the model cache, the temporary folder and the event handlers.

    Each ``on_*`` method is what one page event calls; they turn `serve_handlers` results into the values
    of the page's components and never raise for bad input (the message goes to the status line).
    """

    def __init__(self, config: ServeConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.cache = ModelCache()
        self.folder_files = [str(p) for p in list_images(config.images)] if config.images else []
        if config.images:
            self.folder_files += sorted(str(p) for p in Path(config.images).rglob("*")
                                        if p.suffix.lower() in VIDEO_SUFFIXES)

    def options(self, ref: str, relight: bool, night2day: bool, sliding: bool, tta: bool,
                notes: list[str] | None = None) -> ModelOptions:
        """Return the `ModelOptions` of one checkpoint under the page's toggles.

        ONNX models never relight. With relighting on, a checkpoint that bundles no Zero-DCE net uses the
        ``--relight`` weights (or $NIGHTSEG_RELIGHT_WEIGHTS); without those it runs unrelit, said in `notes`.
        """
        onnx = is_onnx(ref)
        relight = relight and not night2day and not onnx
        weights = self.config.relight_weights or os.environ.get(WEIGHTS_ENV)
        if relight and not weights and not bundles_relight(ref):
            relight = False
            if notes is not None:
                notes.append(f"`{model_label(ref)}` bundles no Zero-DCE net and no --relight weights were given: "
                             "it runs without relighting.")
        return ModelOptions(
            checkpoint=ref, relight=relight, relight_weights=weights,
            night2day=self.config.night2day if night2day and not onnx else None,
            tta=self.config.tta if tta else None, window=self.config.window if sliding else None,
            device=self.config.device,
        )

    def predict(self, upload: str | None, chosen: str | None, frame: float, ref_a: str, ref_b: str | None,
                relight: bool, night2day: bool, sliding: bool, tta: bool, opacity: float,
                progress: Any = None) -> tuple:
        """Run the request of the page's current inputs; return the values of `outputs` (see `build_app`)."""
        gr = import_gradio()
        source = upload or chosen
        try:
            if not source:
                raise UserError("no input: upload an image or a video, or choose a file from the folder")
            frames = video_frames(source) if check_upload(source, self.max_bytes) == "video" else 0
            notes: list[str] = []
            a = self.options(ref_a, relight, night2day, sliding, tta, notes)
            b = self.options(ref_b, relight, night2day, sliding, tta, notes) if ref_b and ref_b != NONE else None
            if b is not None and b.checkpoint.strip() == a.checkpoint.strip() and b == a:
                raise UserError("model B is model A: choose another checkpoint to compare")
            say = (lambda fraction, message: progress(fraction, desc=message)) if progress is not None else None
            result = run_request(self.cache, source, a, b, self.root, opacity, int(frame or 0), self.max_bytes,
                                 self.config.max_pixels, say)
        except UserError as exc:
            gr.Warning(str(exc))
            return (f"**Error:** {exc}", None, None, None, None, None, None, None, gr.update())
        except Exception as exc:  # a bug must not take the server down: log it, tell the page, keep serving
            log.exception("nightseg serve: request failed")
            return (f"**Error:** {type(exc).__name__}: {exc} (the server log has the traceback)",
                    None, None, None, None, None, None, None, gr.update())
        overlays = [str(m.overlay_png) for m in result.models]
        compare = tuple(overlays) if len(overlays) == 2 else None
        slider = gr.update(visible=frames > 0, maximum=max(1, frames - 1)) if frames else gr.update(visible=False)
        return (" ".join([summary(result), *notes]), str(result.input_png), str(result.relit_png) if result.relit_png else None,
                overlays[0], compare, str(result.disagreement_png) if result.disagreement_png else None,
                [str(p) for p in result.downloads], result, slider)

    def statistics(self, result: RequestResult | None) -> tuple:
        """Return (the legend with pixel shares as HTML, the exposure-bin confidence figure) of the last result;
        a separate event after `predict`, so the overlay shows before the plot is drawn."""
        if result is None:
            return "", None
        return shares_html(result), confidence_figure(result)

    def restyle(self, result: RequestResult | None, opacity: float) -> tuple:
        """Redraw the overlays of the last result at `opacity`; return (overlay A, the compare pair)."""
        gr = import_gradio()
        if result is None:
            return gr.update(), gr.update()
        paths = [str(p) for p in restyle(result, opacity)]
        return paths[0], (tuple(paths) if len(paths) == 2 else None)

    def controls(self, ref: str) -> tuple:
        """Return the relight and night->day checkbox updates for checkpoint `ref` (what it supports)."""
        gr = import_gradio()
        onnx = is_onnx(ref or "")
        return (gr.update(interactive=not onnx, value=bundles_relight(ref or "")),
                gr.update(interactive=not onnx and self.config.night2day is not None, value=False))

    @property
    def max_bytes(self) -> int:
        return int(self.config.max_upload_mb * 2**20)


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so the server closes as on Ctrl+C (and atexit cleans up)."""
    raise KeyboardInterrupt


def build_app(app: App) -> Any:
    """Return the Gradio Blocks of the page, its events wired to `app`."""
    gr = import_gradio()
    refs = list(app.config.checkpoints)
    with gr.Blocks(title="NightSeg", analytics_enabled=False) as demo:
        gr.Markdown("## NightSeg: night segmentation viewer\nUpload a night image (PNG/JPEG) or a short video, "
                    "pick one checkpoint, or two to compare.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image or video", type="filepath", elem_id="upload")
                chosen = gr.Dropdown(app.folder_files, value=None, label=f"or a file of {app.config.images}",
                                     visible=bool(app.folder_files), elem_id="folder")
                frame = gr.Slider(0, 1, value=0, step=1, label="video frame", visible=False, elem_id="frame")
                ref_a = gr.Dropdown(refs, value=refs[0] if refs else None, allow_custom_value=True,
                                    label="Model A (checkpoint path: .safetensors or .onnx)", elem_id="model-a")
                ref_b = gr.Dropdown([NONE, *refs], value=NONE, allow_custom_value=True,
                                    label="Model B (compare)", elem_id="model-b")
                with gr.Row():
                    relight = gr.Checkbox(bundles_relight(refs[0]) if refs else False, label="relight (Zero-DCE)",
                                          elem_id="relight")
                    night2day = gr.Checkbox(False, label="night->day", elem_id="night2day",
                                            interactive=app.config.night2day is not None,
                                            info=None if app.config.night2day else "needs --night2day CKPT")
                    sliding = gr.Checkbox(False, label=f"sliding window {app.config.window}", elem_id="sliding")
                    tta = gr.Checkbox(False, label=f"TTA ({app.config.tta})", elem_id="tta")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="overlay opacity", elem_id="opacity")
                run = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Markdown("Waiting for an image.", elem_id="status")
            with gr.Column(scale=2):
                with gr.Row():
                    shown_input = gr.Image(label="input", type="filepath", interactive=False, elem_id="input-image")
                    relit = gr.Image(label="relit (Zero-DCE / night->day)", type="filepath", interactive=False,
                                     elem_id="relit-image")
                overlay_a = gr.Image(label="prediction overlay (A)", type="filepath", interactive=False,
                                     elem_id="overlay-a")
                with gr.Row():
                    compare = gr.ImageSlider(label="A | B", type="filepath", interactive=False, elem_id="compare")
                    disagree = gr.Image(label="where A and B disagree (magenta)", type="filepath",
                                        interactive=False, elem_id="disagreement")
                with gr.Row():
                    shares = gr.HTML(elem_id="shares", max_height=420, scale=1)
                    plot = gr.Plot(label="mean max-softmax per exposure bin", format="png", elem_id="exposure-plot",
                                   scale=2)
                downloads = gr.File(label="downloads: label ids, colour, overlay", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        inputs = [upload, chosen, frame, ref_a, ref_b, relight, night2day, sliding, tta, opacity]
        outputs = [status, shown_input, relit, overlay_a, compare, disagree, downloads, state, frame]

        def predict(*values: Any, progress: Any = gr.Progress()) -> tuple:  # noqa: B008 (Gradio's idiom)
            return app.predict(*values, progress=progress)

        def run_chain(event: Any) -> None:
            # always_last: a new upload while one runs is run next, not dropped (Gradio's default drops it)
            event.then(predict, inputs, outputs, concurrency_limit=app.config.concurrency, concurrency_id="predict",
                       show_progress="full", trigger_mode="always_last").then(app.statistics, [state], [shares, plot])

        # an upload replaces the folder choice and the other way round, so the newest input is the one shown
        run_chain(upload.upload(lambda: None, None, [chosen], queue=False, trigger_mode="always_last"))
        run_chain(chosen.input(lambda: None, None, [upload], queue=False, trigger_mode="always_last"))
        gr.on([frame.release, run.click, ref_a.input, ref_b.input, relight.input, night2day.input, sliding.input,
               tta.input], predict, inputs, outputs, concurrency_limit=app.config.concurrency,
              concurrency_id="predict", show_progress="full", trigger_mode="always_last",
              ).then(app.statistics, [state], [shares, plot])
        ref_a.input(app.controls, [ref_a], [relight, night2day], queue=False)
        opacity.release(app.restyle, [state, opacity], [overlay_a, compare], concurrency_limit=app.config.concurrency)
    return demo


def serve(config: ServeConfig, block: bool = True) -> Any:
    """Start the web app. With `block`, serve until Ctrl+C or SIGTERM, then remove the temporary folder and
    end the process (exit code 0); else return the running Blocks (its ``close()`` stops it; the folder is
    removed when the process ends)."""
    if importlib.util.find_spec("gradio") is None:
        raise UserError(INSTALL_HINT)
    check_config(config)
    check_port_free(config.host, config.port)
    root = Path(tempfile.mkdtemp(prefix="nightseg-serve-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # Uploads and Gradio's copies of the results go into the same temporary folder, and nothing phones home.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    gr = import_gradio()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up checks would log every request
    app = App(config, root / "results")
    demo = build_app(app)
    demo.queue(default_concurrency_limit=config.concurrency, max_size=64)
    if not is_loopback(config.host):
        log.warning("serving on %s: anyone who can reach this machine can use the page", config.host)
    # System fonts: the default theme would fetch Google fonts, and the app must work offline.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    allowed = [str(root)] + ([str(Path(config.images).resolve())] if config.images else [])
    demo.launch(server_name=config.host, server_port=config.port, max_file_size=int(config.max_upload_mb * 2**20),
                prevent_thread_lock=True, show_error=True, quiet=True, ssr_mode=False, inbrowser=False,
                allowed_paths=allowed, theme=theme, footer_links=[])
    print(f"nightseg serve: http://{config.host}:{config.port} (temporary files in {root}; Ctrl+C stops it)",
          flush=True)
    if not block:
        return demo
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # `kill` too closes the server and removes the folder
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
        shutil.rmtree(root, ignore_errors=True)
    # Gradio's worker threads may still be inside a handler; letting the interpreter tear them down has
    # aborted the process ("terminate called without an active exception"), so a stopped server exits here.
    print("nightseg serve: stopped", flush=True)
    sys.stderr.flush()
    os._exit(0)


__all__ = ["INSTALL_HINT", "App", "ServeConfig", "build_app", "check_config", "import_gradio", "is_loopback", "serve"]
