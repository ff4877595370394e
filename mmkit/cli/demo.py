"""`mmkit demo`: ONE Gradio app with a tab per family whose checkpoint is given, on 127.0.0.1
(bind elsewhere with --host). `mmkit demo vit` serves one family from its recipe's export;
`mmkit demo --vit DIR --speech DIR` serves several tabs in one app.

A family joins by adding a row to DEMOS: its tab renderer loads the checkpoint with the shared `TabSettings`
(device, precision, int8) and returns a function that draws the tab (the tab modules live in demos/).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmkit.cli.options import Parser, add_precision_argument, at_least, utf8_text
from mmkit.errors import print_error

PROG = "mmkit demo"
# A checkout's root (mmkit/cli/demo.py is two folders down); the recipes' exports are documented relative to it.
REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TabSettings:
    """What every tab's loader is given besides its checkpoint: the command line's shared options."""

    top_k: int = 5
    device: str = "cpu"
    precision: str = "fp32"  # as `mmkit.inference.precision.resolve_precision` takes it
    quantize: str = "none"
    prefix: str | None = None  # the translate tab's source prefix (T5's task); None: the checkpoint's own


@dataclass(frozen=True)
class DemoFamily:
    help: str
    default: str  # the recipe's export, relative to the repository root
    how: str  # how to make that checkpoint
    tab: str  # "module:function": (checkpoint Path, TabSettings) -> function rendering the tab
    files_ok: tuple[str, ...] = ()  # checkpoint file suffixes accepted besides directories with config.json
    # "module:function": Path -> whether a directory without config.json is still this family's checkpoint
    layout: str | None = None


DEMOS = {
    "vit": DemoFamily("image classification with an attention overlay", "runs/vit_digits/export", "make run",
                      "mmkit.cli.demo:vit_tab"),
    "clip": DemoFamily("zero-shot image labels with CLIP", "runs/clip_shapes/export",
                       "mmkit fit --config configs/clip_shapes.yaml", "mmkit.cli.demo:clip_tab"),
    "speech": DemoFamily("speech to text with segment timestamps and an SRT download", "runs/whisper_espeak/export",
                         "mmkit fit --config configs/whisper_espeak.yaml", "mmkit.cli.demo:speech_tab",
                         (".pt", ".pth")),
    "gpt": DemoFamily("text generation, streamed as it is decoded", "runs/gpt_fortunes/export",
                      "mmkit fit --config configs/gpt_fortunes.yaml", "mmkit.cli.demo:gpt_tab"),
    "bert": DemoFamily("fill-mask and the attention view of a BERT", "runs/bert_wordnet_mlm/export",
                       "mmkit fit --config configs/bert_wordnet_mlm.yaml", "mmkit.cli.demo:bert_tab"),
    "translate": DemoFamily("translation with the cross-attention heat map (Seq2Seq, MarianMT, T5)",
                            "runs/translate_numbers/export", "mmkit fit --config configs/translate_numbers.yaml",
                            "mmkit.cli.demo:translate_tab"),
    "dalle": DemoFamily("text to image with streaming previews (DALL·E-style)", "runs/dalle_shapes/export",
                        "mmkit fit --config configs/dalle_shapes.yaml", "mmkit.cli.demo:dalle_tab",
                        layout="mmkit.cli.demo:min_dalle_download"),
}


def vit_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.classifier import classifier_tab
    from mmkit.inference.classifier import Classifier

    classifier = Classifier.from_pretrained(model, settings.device, settings.precision, settings.quantize)
    return lambda: classifier_tab(classifier, top_k=settings.top_k)


def clip_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.zero_shot import zero_shot_tab
    from mmkit.inference.zero_shot import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_pretrained(model, settings.device, settings.precision, settings.quantize)
    return lambda: zero_shot_tab(classifier)


def speech_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.speech import speech_tab as render
    from mmkit.inference.transcriber import load_transcriber

    transcriber = load_transcriber(model, settings.device, precision=settings.precision, quantize=settings.quantize)
    return lambda: render(lambda path: next(transcriber.transcribe_files([path])))


def gpt_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.text_generation import text_generation_tab
    from mmkit.inference.text_generation import load_text_generator

    generator = load_text_generator(model, settings.device, settings.quantize, settings.precision)
    return lambda: text_generation_tab(generator)


def bert_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.bert import bert_tab as render
    from mmkit.inference.encoder import load_encoder

    encoder = load_encoder(model, settings.device, precision=settings.precision, quantize=settings.quantize)
    return lambda: render(encoder, top_k=settings.top_k)


def translate_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.translate import translate_tab as render
    from mmkit.inference.translator import load_translator

    translator = load_translator(model, settings.prefix, settings.device, settings.quantize, settings.precision)
    return lambda: render(translator)


def dalle_tab(model: Path, settings: TabSettings) -> Callable[[], None]:
    from demos.text_to_image import text_to_image_tab
    from mmkit.inference.text_to_image import TextToImage

    t2i = TextToImage.from_pretrained(model).to(settings.device)
    t2i.set_arithmetic(settings.precision, settings.quantize)  # after .to: chosen for the device the models are on
    return lambda: text_to_image_tab(t2i)


def min_dalle_download(model: Path) -> bool:
    """Whether `model` is (part of) a min-dalle download, which has no config.json: the test
    `TextToImage.from_pretrained` (so `mmkit generate`) applies, so the demo takes what generate takes."""
    from mmkit.inference.text_to_image import min_dalle_layout  # the loader's own test

    return model.is_dir() and min_dalle_layout(model)


def _checkpoint_problem(name: str, model: Path, option: str) -> str | None:
    """Why `model` is not a `name` checkpoint, else None; `option` is how to pass another (--model, --NAME)."""
    family = DEMOS[name]
    if model.is_file() and model.suffix in family.files_ok:
        return None
    if (model / "config.json").is_file():
        return None
    if family.layout is not None:
        module, _, function = family.layout.partition(":")
        if getattr(importlib.import_module(module), function)(model):
            return None
    return f"no {name} checkpoint at {model}; train it first with `{family.how}` or pass {option} DIR"


def _default_export(name: str) -> Path:
    """The recipe's export of `name`: from the current directory if it is there, else from the checkout's root
    (the README names it relative to the root, so `mmkit demo vit` found nothing when run from elsewhere)."""
    default = Path(DEMOS[name].default)
    if default.exists() or not (REPOSITORY / "pyproject.toml").is_file():  # not a checkout: the cwd's path
        return default
    return REPOSITORY / default


class _Once(argparse.Action):
    """Store an option's value, refusing the option given twice: argparse kept the last silently, so
    `--gpt A --gpt B` served B alone."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} is given twice: give it once")
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    import torch

    from mmkit.inference.quantize import QUANTIZATIONS

    parser = Parser(
        prog="mmkit demo", description="Serve the Gradio demo: one tab per family given.",
        epilog="examples: mmkit demo vit | mmkit demo speech --model whisper-tiny/ | "
               "mmkit demo --vit runs/vit_digits/export --clip runs/clip_shapes/export")
    # No `choices`: an unknown option's value (`--foo bar`) was read as NAME and refused as "invalid choice: 'bar'";
    # `_parse` checks NAME after the unknown options. The metavar keeps the choices in the usage line.
    parser.add_argument("name", nargs="?", metavar="{" + ",".join(DEMOS) + "}",
                        help="one family, from --model or its recipe's export: "
                             + "; ".join(f"{k}: {v.help}" for k, v in DEMOS.items()))
    parser.add_argument("--model", default=None, action=_Once,
                        help="checkpoint for NAME (default: the recipe's export)")
    for name, family in DEMOS.items():
        parser.add_argument(f"--{name}", metavar="DIR", default=None, action=_Once,
                            help=f"add a {name} tab ({family.help})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default: local only; an IPv6 address as ::1 or [::1])")
    parser.add_argument("--port", type=at_least(1, 65535), default=7860,
                        help="port to serve on (default: 7860); checked free before the models load")
    parser.add_argument("--top-k", type=at_least(1), default=5,
                        help="labels the vit tab and candidates the bert tab show (default: 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device of every tab (cpu, cuda, cuda:N, mps; default: cuda when available)")
    add_precision_argument(parser)
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                        help="int8: int8 Linear layers (CPU only)")
    parser.add_argument("--prefix", default=None, type=utf8_text, metavar="TEXT",
                        help="the translate tab's source prefix, as T5's task (\"translate English to German: \"); "
                             "default: the checkpoint's own")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.name is not None and args.name not in DEMOS:  # most likely the unknown option's value
            unknown = unknown[:1] + [args.name] + unknown[1:]
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.name is not None and args.name not in DEMOS:
        parser.error(f"argument name: invalid choice: {args.name!r} (choose from {', '.join(DEMOS)})")
    return args


def _settings_problem(args: argparse.Namespace, chosen: dict[str, str]) -> str | None:
    """A device, precision or int8 the machine cannot run, or --prefix without a translate tab: one line, before
    any model loads (else found per tab, after minutes of loading, or mid-request)."""
    from mmkit.inference.precision import check_device, resolve_precision

    if args.prefix is not None and "translate" not in chosen:
        return "--prefix is the translate tab's: add --translate DIR (or serve `mmkit demo translate`)"
    try:
        device = check_device(args.device)
        if args.quantize == "int8" and device.type != "cpu":
            return f"--quantize int8 runs on the CPU: use --device cpu, or drop --quantize on {args.device}"
        resolve_precision(args.precision, device, args.quantize)  # fp16 on a CPU; bf16/fp16 with int8
    except ValueError as e:
        return str(e)
    return None


def _listen_problem(host: str, port: int) -> str | None:
    """Why the demo cannot listen on host:port, as "--host HOST: ..." (not an address, or not one of this
    machine's) or "--port PORT: ..." (in use, or reserved), else None. Checked before the models load: else
    found only after minutes of loading, in Gradio's words. An IPv6 address may come bracketed, as in a URL
    ("[::1]"), or not ("::1": serve() brackets it for Gradio)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(bare, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except (OSError, UnicodeError) as e:  # socket.gaierror is an OSError
        return f"--host {host}: cannot listen there ({getattr(e, 'strerror', None) or e})"
    try:
        with socket.socket(family, kind, proto) as probe:
            # as the server will bind: a port left in TIME_WAIT by an earlier demo is free, one listened on is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address[0], port, *address[2:]))
    except OSError as e:
        return f"--port {port}: {_port_reason(e)} on {host}; pass another --port"
    return None


def _port_reason(e: OSError) -> str:
    """A failed bind in a few words: "in use", or the system's reason (a port below 1024 unprivileged)."""
    return "in use" if e.errno == errno.EADDRINUSE else f"cannot listen there ({e.strerror or e})"


def main(argv: list[str]) -> int:
    """The demo's exit code: 0 when the server stopped by itself, 2 for a usage or checkpoint problem, 130 when
    interrupted (Ctrl-C; SIGTERM from `timeout`, a scheduler or a service manager) with one line saying so, the
    server closed. (Left to Gradio, Ctrl-C printed Gradio's own line and exited 0, and SIGTERM ended the process
    without a word.)"""
    parser = _parser()
    args = _parse(parser, argv)
    chosen = {name: getattr(args, name) for name in DEMOS if getattr(args, name)}
    if args.name:
        chosen = {args.name: args.model or _default_export(args.name), **chosen}
        if getattr(args, args.name):  # else --NAME silently won over NAME's checkpoint (or the other way)
            print_error(PROG, f"{args.name} is given twice (as NAME and as --{args.name}): give it once")
            return 2
    elif args.model:
        parser.error("--model goes with a NAME (mmkit demo vit --model DIR); or use --vit DIR, --clip DIR, ...")
    if not chosen:
        parser.error("name a family (mmkit demo vit) or give checkpoints (--vit DIR --speech DIR ...)")
    problem = _settings_problem(args, chosen) or _listen_problem(args.host, args.port)
    if problem:
        print_error(PROG, problem)
        return 2
    from mmkit.inference.ranks import sigterm_interrupts

    served: list[str] = []
    try:
        with sigterm_interrupts():
            return _serve(args, chosen, served)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; " + (f"the server on {served[0]} is stopped" if served else
                                             "nothing was served"), file=sys.stderr)
        return 130


def _serve(args: argparse.Namespace, chosen: dict[str, str], served: list[str]) -> int:
    """Load the tabs' models and serve them until the server stops; `served` gets its host:port as it starts."""
    models = {name: Path(path).expanduser() for name, path in chosen.items()}
    for name, model in models.items():
        problem = _checkpoint_problem(name, model, "--model" if name == args.name else f"--{name}")
        if problem:
            print_error(PROG, problem)
            return 2
    settings = TabSettings(args.top_k, args.device, args.precision, args.quantize, args.prefix)
    tabs = {}
    for name, model in models.items():
        module, _, function = DEMOS[name].tab.partition(":")
        try:
            tabs[name] = getattr(importlib.import_module(module), function)(model, settings)
        except (ValueError, OSError) as e:  # WeightsError is a ValueError: a bad checkpoint is one line
            print_error(PROG, f"{name}: {e}")
            return 2
    from demos.app import build_app
    from mmkit.demo_harness import serve, server_name

    where = f"{server_name(args.host)}:{args.port}"
    app = build_app(tabs, title="mmkit demo")
    served.append(where)  # from here an interruption stops the server (maybe while it starts)
    try:
        serve(app, host=args.host, port=args.port, on_start=lambda url: print(f"Running on {url}", flush=True))
    except OSError as e:
        if e.errno == errno.EADDRINUSE or "Cannot find empty port" in str(e):  # Gradio's, naming its own settings
            print_error(PROG, f"--port {args.port}: in use on {args.host} (taken while the models loaded); "
                              "pass another --port")
        else:  # not the port (the interface gone, a file Gradio could not write): its own reason
            print_error(PROG, f"cannot serve on {where}: {e}")
        return 2
    return 0
