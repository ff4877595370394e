"""The `mmkit` command: LightningCLI subcommands (fit/validate/test/predict) over YAML recipes
in configs/ (see `mmkit.cli.lightning`), plus tool subcommands dispatched to their own parsers.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from mmkit.errors import print_error

log = logging.getLogger("mmkit")

# Tool subcommands: name -> (one-line help, "module:function" taking argv and returning an exit code).
# Imported only when called: `mmkit fit` does not pay for Gradio, and tools not for Lightning.
TOOLS = {
    "bench": ("benchmarks against the reference implementation (mmkit bench vit --help)", "mmkit.cli.bench:main"),
    "classify-text": ("label texts with a fine-tuned BERT classifier (mmkit classify-text --help)", "mmkit.cli.classify_text:main"),
    "convert": ("save an mmkit export for timm or transformers (mmkit convert --help)", "mmkit.cli.convert:main"),
    "demo": ("Gradio demos in the browser (mmkit demo vit --help)", "mmkit.cli.demo:main"),
    "embed": ("sentence embeddings with a BERT encoder (mmkit embed --help)", "mmkit.cli.embed:main"),
    "fill-mask": ("predict [MASK] tokens with a BERT masked-LM (mmkit fill-mask --help)", "mmkit.cli.fill_mask:main"),
    "generate": ("text to images with a DALL·E-style export (mmkit generate --help)", "mmkit.cli.generate:main"),
    "generate-text": ("continue a prompt with a GPT model (mmkit generate-text --help)", "mmkit.cli.generate_text:main"),
    "label": ("zero-shot label image folders with CLIP (mmkit label --help)", "mmkit.cli.label:main"),
    "transcribe": ("speech to text with a Whisper checkpoint (mmkit transcribe --help)", "mmkit.cli.transcribe:main"),
    "translate": ("translate text with Seq2Seq/MarianMT/T5 (mmkit translate --help)", "mmkit.cli.translate:main"),
}


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI's subcommands (`mmkit.cli.lightning`)


def _raised_in_mmkit(e: BaseException) -> bool:
    return _raised_in(e, _PACKAGE_DIR)


def _raised_in_lightning(e: BaseException) -> bool:
    """Whether `e` was raised by Lightning's own code (pytorch_lightning, lightning_fabric): its refusal of a
    trainer setting it checks only once the run starts (a `val_check_interval` beyond the training batches)."""
    import lightning_fabric

    return any(_raised_in(e, folder) for folder in (_lightning_dir(), Path(lightning_fabric.__file__).resolve().parent))


def _raised_in(e: BaseException, package: Path) -> bool:
    """Whether the innermost frame of `e`'s traceback (the `raise`) is in the files under `package`."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(package)


_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the mmkit package


def _run_tool(name: str, argv: list[str]) -> int:
    """The tool's exit code. Ctrl-C or SIGTERM while its module imports (torch takes seconds) is one line and
    130, as each tool reports an interruption once it runs (its own handlers then take over), instead of a
    traceback through importlib or a silent death."""
    import importlib

    from mmkit.inference.ranks import sigterm_interrupts

    module, _, function = TOOLS[name][1].partition(":")
    try:
        with sigterm_interrupts():
            tool = getattr(importlib.import_module(module), function)
    except KeyboardInterrupt:
        print(f"mmkit {name}: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return tool(argv)


def _quiet_half_built_loaders(hook: Any) -> Any:
    """`sys.unraisablehook` without the finalizer error of a DataLoader iterator that Ctrl-C or SIGTERM stopped
    while it started its workers: its `__del__` then meets attributes `__init__` never set ("Exception ignored in
    ... AttributeError: ... no attribute '_shutdown'", a traceback after the tool's one line; the workers are
    gone with the process). Anything else goes to `hook`."""
    if getattr(hook, "mmkit_quiet", False):  # already in place (main called again in one process)
        return hook

    def quiet(unraisable: Any) -> None:
        owner = getattr(unraisable.object, "__qualname__", "")
        if not (isinstance(unraisable.exc_value, AttributeError) and owner.endswith("DataLoaderIter.__del__")):
            hook(unraisable)

    quiet.mmkit_quiet = True  # type: ignore[attr-defined]
    return quiet


def main(argv: list[str] | None = None) -> int:
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.unraisablehook = _quiet_half_built_loaders(sys.unraisablehook)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # What torch sets once imported (TORCH_LOGS aside); set now, since a Ctrl-C during its import leaves its
    # atexit hooks to log their INFO statistics ("FakeTensor cache stats") through the handler above.
    logging.getLogger("torch").setLevel(logging.WARNING)
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:]) or 0
    if argv[:1] in (["--version"], ["-V"]):
        from mmkit import __version__

        print(f"mmkit {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mmkit {fit,validate,test,predict} --config configs/<recipe>.yaml [options]\n"
              "       mmkit {" + ",".join(TOOLS) + "} ...\n\n"
              + "\n".join(f"  {k:{max(map(len, TOOLS))}s}  {v[0]}" for k, v in TOOLS.items())
              + "\n  fit/validate/test/predict: LightningCLI (mmkit fit --help, --print_config)"
              + "\n  --version      print mmkit's version")
        return 0 if argv else 2  # LightningCLI's own help is `mmkit fit --help`
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        import difflib

        known = [*LIGHTNING_COMMANDS, *TOOLS]
        close = difflib.get_close_matches(argv[0], known, n=1)
        print_error("mmkit", f"unknown command {argv[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; commands: {', '.join(known)} (mmkit --help)")
        return 2
    unusable = _unusable_config(argv)
    if unusable:  # the commonest slip; jsonargparse would print its whole usage (~50 lines) before saying so
        print_error(f"mmkit {argv[0]}", f"--config {unusable}")
        return 2
    try:
        from mmkit.cli.lightning import run

        run(argv, from_console)
    except KeyboardInterrupt as e:  # Ctrl-C; SIGTERM too (`mmkit.cli.lightning.run`): one line, the shell's 130
        if not getattr(e, "quiet", False):  # a process other than the first of several (theirs says it)
            left = getattr(e, "left", "nothing was written")
            print(f"mmkit {argv[0]}: interrupted; {left}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user errors become one line; anything else re-raises
        user_error = _user_error(e)
        if user_error is None:
            raise
        print_error(f"mmkit {argv[0]}", user_error)
        return 2
    return 0


def _unusable_config(argv: list[str]) -> str | None:
    """"PATH: why" for the first `--config FILE` / `-c FILE` / `--config=FILE` of `argv` that is not a readable
    UTF-8 file (missing, a folder, UTF-16 as Windows Notepad may save it: a UnicodeDecodeError traceback from
    jsonargparse), else None. A value with `:` or `{` is inline YAML/JSON (jsonargparse takes that too), not a
    path."""
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
        else:
            continue
        if any(c in path for c in ":{"):
            continue
        file = Path(path).expanduser()
        if file.is_dir():
            return f"{path}: a folder, not a recipe file"
        if not file.is_file():
            return f"{path}: no such file"
        try:
            file.read_bytes().decode("utf-8")
        except OSError as e:
            return f"{path}: cannot be read ({e.strerror or e})"
        except UnicodeDecodeError as e:
            return f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8"
    return None


def _user_error(e: BaseException) -> str | None:
    """The message of a user-facing error (bad checkpoint, bad file, bad value; a setting Lightning refuses, in
    its own code) anywhere in the exception chain, which jsonargparse wraps while instantiating classes; None
    otherwise: a bug, whatever its type, and a ValueError raised in a library other than mmkit and Lightning."""
    from mmkit.errors import in_context

    found = in_context(e, lambda x: _user_message(x) is not None)
    return None if found is None else _user_message(found)


def _user_message(e: BaseException) -> str | None:
    """`_user_error`'s line for `e` itself, None where `e` is not a user's mistake."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from mmkit.errors import FULL, WriteFailed
    from mmkit.weights.native import WeightsError

    unreadable = _unreadable_checkpoint(e)
    if unreadable is not None:
        return unreadable
    if isinstance(e, (WeightsError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                      PermissionError, WriteFailed)):
        return str(e)
    if isinstance(e, OSError) and e.errno in FULL:  # a logger's file (metrics.csv, events.out.tfevents...)
        return f"cannot write {_file_written(e) or 'a file of the run'}: {e.strerror or e}"
    if isinstance(e, MisconfigurationException) or isinstance(e, ValueError) and _raised_in_lightning(e):
        # Lightning's refusal of a setting or a combination of settings (some only once the run starts)
        return f"trainer: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
    if isinstance(e, ValueError) and _raised_in_mmkit(e):  # our argument checks, e.g. a bad output suffix
        return str(e)
    if isinstance(e, ModuleNotFoundError) and _raised_in_lightning(e) or isinstance(e, RuntimeError) and _raised_in(
            e, Path(_lightning_dir()) / "callbacks"):
        # a logger whose package is not installed (TensorBoardLogger without tensorboard); a callback's refusal
        # of its settings once the run meets them (EarlyStopping monitoring a metric no step logs)
        return f"trainer: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
    return None


def _lightning_dir() -> Path:
    import pytorch_lightning

    return Path(pytorch_lightning.__file__).resolve().parent


def _file_written(e: OSError) -> str | None:
    """The file a full disk refused: the OSError's own, else the innermost frame's that names one (a write or a
    close raises its OSError without: Lightning's CSVLogger closing metrics.csv through fsspec, whose file
    object keeps it as `path`), else None."""
    if e.filename:
        return str(e.filename)
    tb, found = e.__traceback__, None
    while tb is not None:
        local = tb.tb_frame.f_locals
        named = [local.get("path"), local.get("filename"), getattr(local.get("self"), "path", None)]
        found = next((str(p) for p in named if isinstance(p, (str, Path)) and str(p)), found)
        tb = tb.tb_next
    return found


def _unreadable_checkpoint(e: BaseException) -> str | None:
    """One line for a `--ckpt_path` Lightning could not use: a file `torch.load` cannot read
    (corrupt, truncated, foreign; read with weights_only=True) or one without a Lightning
    checkpoint's keys or with another model's weights: the file and what is wrong, instead of a
    20-80 line traceback that ends in advice to unpickle with weights_only=False."""
    import pickle

    tb, loading, restoring = e.__traceback__, None, None
    while tb is not None:  # the file is a local of the frame that read it
        code, local = tb.tb_frame.f_code, tb.tb_frame.f_locals
        if code.co_name == "load" and Path(code.co_filename).parts[-2:] == ("torch", "serialization.py"):
            loading = local.get("f")
        elif Path(code.co_filename).name == "checkpoint_connector.py" and local.get("checkpoint_path"):
            restoring = local.get("checkpoint_path")
        tb = tb.tb_next
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
    if loading is not None and isinstance(e, pickle.UnpicklingError):
        detail = str(e).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0].strip()
        return (f"{loading}: not a checkpoint mmkit can read ({detail or 'corrupt'}): the file is corrupt, or holds "
                "pickled code, which mmkit never runs; give the last.ckpt of an mmkit fit run")
    if loading is not None and isinstance(e, (RuntimeError, EOFError, ValueError)):
        return f"{loading}: not a readable checkpoint (corrupt or truncated: {first})"
    if restoring is not None and isinstance(e, KeyError):
        return f"{restoring}: not a Lightning checkpoint of an mmkit run (no {first} entry)"
    if restoring is not None and isinstance(e, RuntimeError) and "state_dict" in first:
        return f"{restoring}: a checkpoint of another model, not this recipe's ({first})"
    return None
