"""The local web demo (`make app`): a Gradio page on 127.0.0.1 that speaks with a model folder.

    python -m tristage.synthesis.app --model models/stage3 [--models models] [--port 7860]

A model dropdown at the top picks any model folder under `--models` (default: the `--model`'s folder, so
`models/`: the stages' folders and the fine-tuned voices of `tristage finetune`); a folder is loaded
when first picked and kept. Text, caption, one dropdown per lexicon attribute (edits the caption), the
voice as an upload or a pick from the validation speakers stored in the model folder, an optional
emotion reference, sampling settings, then an audio player with a download button. The provenance
note (random-init codec: not speech) is shown at the top of the page.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

KEEP = "(as in the caption)"
log = logging.getLogger(__name__)


@dataclass
class _Voice:
    """The voice inputs: a validation speaker `picked` from the model folder, or an `upload`; an optional
    `emotion` reference (default: the voice)."""

    picked: object
    upload: object
    emotion: object


@dataclass
class _Sampling:
    """The sampling sliders, in the order `generate` takes them."""

    temperature: object
    top_k: object
    top_p: object
    max_seconds: object
    seed: object

    def components(self) -> list:
        return [self.temperature, self.top_k, self.top_p, self.max_seconds, self.seed]


def _number(name: str, value) -> float:
    """A form value as a finite float; anything else is a UserError naming the field."""
    import math

    from tristage.errors import UserError

    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(out):
        raise UserError(f"{name}: {value!r} is not a finite number")
    return out


def _form_request(text, caption, upload, picked, emotion, temperature, top_k, top_p, max_seconds, seed,
                  attributes: dict[str, str]):
    """The form's values -> a `Request` (the API checks the ranges); a value that is not a number is a
    UserError naming its field."""
    from tristage.errors import UserError
    from tristage.synthesis.api import Request

    seed, top_k, top_p = _number("seed", seed), _number("top_k", top_k), _number("top_p", top_p)
    if seed != int(seed):
        raise UserError(f"seed: {seed!r} (must be a whole number)")
    return Request(
        text=text or "",
        caption=caption or "",
        speaker_ref=upload or picked or None,
        emotion_ref=emotion or None,
        attributes=attributes,
        seed=int(seed),
        temperature=_number("temperature", temperature),
        top_k=int(top_k) or None,
        top_p=top_p if top_p < 1 else None,
        max_seconds=_number("max seconds", max_seconds),
    )


def _generate_fn(tts, out_dir: Path):
    """The button's callback: the form's values -> (path of the written wav, a details line).

    A user error (a bad value, an unreadable upload, an unknown attribute) is one line: a `gr.Error` on the
    page and one logged line in the terminal, no traceback. A warning (no caption: a neutral default is
    used; no voice: a stored one is used; a near-empty clip) is a `gr.Warning` on the page, a logged line,
    and a line of the details."""
    import html

    import gradio as gr

    from tristage.errors import UserError
    from tristage.synthesis.api import write_wav

    def generate(
        text, caption, upload, picked, emotion, temperature, top_k, top_p, max_seconds, seed, *attrs
    ):
        attributes = {a: v for a, v in zip(tts.lexicon, attrs) if v and v != KEEP}
        try:
            req = _form_request(text, caption, upload, picked, emotion, temperature, top_k, top_p,
                                max_seconds, seed, attributes)
            res = tts.synthesize_batch([req], warn=False)[0]
            path = write_wav(
                out_dir / f"tristage-{abs(hash((text, caption, str(attributes), seed))) % 10**8}.wav",
                res.wav,
                res.sample_rate,
            )
        except UserError as exc:
            log.error("generate: %s", exc)  # the terminal's one line
            raise gr.Error(html.escape(str(exc), quote=False), title="Cannot generate",
                           print_exception=False) from None
        for w in res.warnings:
            log.warning("generate: %s", w)
            gr.Warning(html.escape(w, quote=False))
        how = "the model's end-of-speech" if res.stopped else "the max-seconds cap"
        info = (
            f"duration {res.duration:.3f} s ({res.n_frames} frames, length set by {how}); "
            f"took {res.seconds_taken:.2f} s, RTF {res.rtf:.2f}; caption used: {res.caption}"
        )
        return str(path), "\n".join([info, *(f"warning: {w}" for w in res.warnings)])

    return generate


def model_choices(root: str | Path, current: str | Path | None = None) -> list[str]:
    """The model folders directly under `root` (those with a synthesis.json; hidden ones left out, e.g. a
    fine-tune's work area `.finetune/`), sorted by name, with `current` among them."""
    root = Path(root)
    folders = sorted(root.iterdir()) if root.is_dir() else []
    found = [str(p) for p in folders if not p.name.startswith(".") and (p / "synthesis.json").is_file()]
    if current is not None and str(current) not in found:
        found.insert(0, str(current))
    return found


class _Models:
    """The loaded model folders, by the dropdown's value; each loaded once, when first picked."""

    def __init__(self, first, device: str = "cpu"):
        self.loaded = {str(first.folder): first}
        self.device = device

    def get(self, folder: str):
        from tristage.synthesis.api import TTS

        if folder not in self.loaded:
            self.loaded[folder] = TTS.from_pretrained(folder, device=self.device)
        return self.loaded[folder]


def _generate_with_model(models: _Models, out_dir: Path):
    """The button's callback with the picked model folder first; the rest as `_generate_fn`'s."""

    def generate(model, *rest):
        return _generate_fn(models.get(model), out_dir)(*rest)

    return generate


def _model_changed(models: _Models):
    """Picking a model: its stored voices in the voice dropdown, its note at the top."""
    import html

    import gradio as gr

    from tristage.errors import UserError

    def changed(model):
        try:
            tts = models.get(model)
        except UserError as exc:
            log.error("model: %s", exc)
            raise gr.Error(html.escape(str(exc), quote=False), title="Cannot load the model",
                           print_exception=False) from None
        note = f"**Note: {tts.note}**" if not tts.is_speech else f"Note: {tts.note}"
        return gr.update(choices=tts.speakers, value=tts.speakers[0] if tts.speakers else None), note

    return changed


def _attribute_dropdowns(lexicon: dict) -> list:
    """One dropdown per lexicon attribute; a value other than KEEP replaces or adds it in the caption."""
    import gradio as gr

    with gr.Accordion("Attributes (replace or add a value in the caption)", open=True):
        return [
            gr.Dropdown([KEEP, *values], value=KEEP, label=attr, elem_id=f"attr-{attr}")
            for attr, values in lexicon.items()
        ]


def _voice_panel(speakers: list[str]) -> _Voice:
    import gradio as gr

    with gr.Row():
        picked = gr.Dropdown(
            speakers,
            value=speakers[0] if speakers else None,
            label="Voice: a validation speaker",
            elem_id="speaker-pick",
        )
        upload = gr.Audio(
            type="filepath",
            label="...or upload a voice reference (any rate, mono/stereo)",
            sources=["upload"],
            elem_id="speaker-upload",
        )
    emotion = gr.Audio(
        type="filepath",
        label="Emotion reference (optional; default: the voice)",
        sources=["upload"],
        elem_id="emotion-upload",
    )
    return _Voice(picked, upload, emotion)


def _sampling_panel(max_seconds: float) -> _Sampling:
    """Temperature, top-k, top-p, a max-seconds cap (up to the model's `max_seconds`) and the seed."""
    import gradio as gr

    with gr.Accordion("Sampling", open=False):
        return _Sampling(
            temperature=gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="temperature (0 = greedy)"),
            top_k=gr.Slider(0, 256, value=50, step=1, label="top_k (0 = off)"),
            top_p=gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p (1 = off)"),
            max_seconds=gr.Slider(
                0.2,
                round(max_seconds, 1),
                value=min(6.0, round(max_seconds, 1)),
                step=0.1,
                label="max seconds (the model stops earlier by itself)",
                elem_id="max-seconds",
            ),
            seed=gr.Number(value=0, precision=0, label="seed"),
        )


def build_app(tts, models_root: str | Path | None = None):
    """The Gradio page for a loaded `TTS`: the model dropdown (the folders under `models_root`, default the
    model folder's parent), the input column (text, caption, attributes, voice, sampling), the output
    column (audio, details) and the Generate button that joins them."""
    import gradio as gr

    out_dir = Path(tempfile.mkdtemp(prefix="tristage-app-"))
    default_caption = "A female speaker with a high-pitched voice speaks quickly in a clean recording."

    with gr.Blocks(title="tristage: speak with a trained model") as app:
        gr.Markdown(f"## tristage: speak with a trained model\n\nModel folders under "
                    f"`{models_root or tts.folder.parent}`")
        models = _Models(tts, getattr(tts, "device", "cpu"))
        choices = model_choices(models_root or tts.folder.parent, tts.folder)
        model = gr.Dropdown(choices, value=str(tts.folder), label="Model folder", elem_id="model-pick")
        note_md = f"**Note: {tts.note}**" if not tts.is_speech else f"Note: {tts.note}"
        note = gr.Markdown(note_md, elem_id="codec-note")
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(
                    label="Text",
                    value="The quick brown fox jumps over the lazy dog.",
                    lines=2,
                    elem_id="text",
                )
                caption = gr.Textbox(
                    label="Caption (style description)", value=default_caption, lines=2, elem_id="caption"
                )
                dropdowns = _attribute_dropdowns(tts.lexicon)
                voice = _voice_panel(tts.speakers)
                sampling = _sampling_panel(tts.max_seconds)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                audio = gr.Audio(type="filepath", label="Result", interactive=False, elem_id="output")
                info = gr.Textbox(label="Details", interactive=False, elem_id="details")
        button.click(
            _generate_with_model(models, out_dir),
            [model, text, caption, voice.upload, voice.picked, voice.emotion, *sampling.components(),
             *dropdowns],
            [audio, info],
        )
        model.change(_model_changed(models), [model], [voice.picked, note])
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tristage.synthesis.app", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/stage3", help="model folder (default models/stage3)")
    ap.add_argument("--models", default=None,
                    help="the folder of model folders the page's dropdown offers (default: --model's folder)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    a = ap.parse_args(argv)
    handler = logging.StreamHandler()  # the page's warnings and user errors, one line each
    handler.setFormatter(logging.Formatter("app: %(levelname)s: %(message)s"))
    logging.getLogger("tristage").addHandler(handler)
    logging.getLogger("tristage").setLevel(logging.INFO)
    from tristage.device import resolve_device
    from tristage.errors import UserError
    from tristage.synthesis.api import TTS

    try:
        if a.threads < 0:
            raise UserError(f"--threads: {a.threads} (must be >= 0; 0 = torch's default)")
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        tts = TTS.from_pretrained(a.model, device=resolve_device(a.device, "device"))
    except UserError as exc:
        print(f"app: error: {exc}", file=sys.stderr)
        return 2
    if not tts.is_speech:
        print(f"note: {tts.note}", flush=True)
    build_app(tts, a.models).launch(server_name=a.host, server_port=a.port, share=False, show_error=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
