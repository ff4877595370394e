"""`mmkit demo`: one app with a tab per family given; user mistakes are one line and exit 2."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from _ranks import env, free_port

from mmkit.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_one_app_renders_a_tab_per_family():
    from demos.app import build_app

    def tab(name):
        def render():
            with gr.Tab(name, elem_id=f"{name}-tab"):
                gr.Markdown(name)
        return render

    app = build_app({"vit": tab("vit"), "speech": tab("speech")})
    tabs = [b for b in app.blocks.values() if isinstance(b, gr.Tab)]
    assert [t.label for t in tabs] == ["vit", "speech"]
    with pytest.raises(ValueError):
        build_app({})


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--model", "x"], ["demo", "vit", "--top-k", "0"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "usage: mmkit demo" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["demo", "--vit", str(tmp_path / "nowhere"), "--clip", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit demo: error: no vit checkpoint at") and "make run" in err[0]


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert main(["demo", "vit", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit demo: error: vit:"), err


def _stand_in_vit(monkeypatch, load=lambda: None) -> list[Path]:
    """`mmkit demo vit` with a stand-in tab (no checkpoint): `load()` runs as its model loads; returns the
    list of the checkpoints loaded."""
    import mmkit.cli.demo as demo

    loaded = []

    def vit_tab(model, settings):
        loaded.append(model)
        load()
        return lambda: gr.Markdown("x")

    monkeypatch.setattr(demo, "vit_tab", vit_tab)
    monkeypatch.setitem(demo.DEMOS, "vit", demo.DemoFamily("h", ".", "how", "mmkit.cli.demo:vit_tab"))
    monkeypatch.setattr(demo, "_checkpoint_problem", lambda name, model, option: None)
    return loaded


def test_a_busy_port_is_one_line_before_the_models_load(monkeypatch, capsys):
    """Found only after every model had loaded, in Gradio's words (GRADIO_SERVER_PORT, `launch()`)."""
    loaded = _stand_in_vit(monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["demo", "vit", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmkit demo: error: --port {port}: in use on 127.0.0.1; pass another --port"] and not loaded


def test_a_port_taken_while_the_models_load_is_one_line(monkeypatch, capsys):
    taker = socket.socket()
    port = free_port()
    loaded = _stand_in_vit(monkeypatch, lambda: (taker.bind(("127.0.0.1", port)), taker.listen()))
    try:
        assert main(["demo", "vit", "--port", str(port)]) == 2
    finally:
        taker.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert loaded and err[-1] == (f"mmkit demo: error: --port {port}: in use on 127.0.0.1 (taken while the models "
                                  "loaded); pass another --port"), err
    assert "GRADIO_SERVER_PORT" not in "".join(err) and "launch()" not in "".join(err)


def test_the_demo_says_where_it_runs_in_its_own_words(monkeypatch, capsys):
    """Gradio's banner told a user of `mmkit demo` to "set `share=True` in `launch()`"."""
    _stand_in_vit(monkeypatch)
    answered = []
    monkeypatch.setattr("mmkit.demo_harness._wait", lambda blocks: answered.append(
        urllib.request.urlopen(blocks.local_url, timeout=30).status))
    port = free_port()
    assert main(["demo", "vit", "--port", str(port)]) == 0 and answered == [200]
    out = capsys.readouterr().out
    assert out.splitlines() == [f"Running on http://127.0.0.1:{port}/"], out


@pytest.mark.parametrize("argv, said", [
    (["demo", "gpt", "--model", "a", "--gpt", "b"], "gpt is given twice (as NAME and as --gpt): give it once"),
    (["demo", "gpt", "--gpt", "b"], "gpt is given twice (as NAME and as --gpt): give it once"),
])
def test_a_family_given_twice_is_refused(argv, said, capsys):
    """`mmkit demo gpt --model X --gpt Y` served Y and ignored X without a word."""
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mmkit demo: error: {said}"]


@pytest.mark.parametrize("argv, option", [(["demo", "--gpt", "a", "--gpt", "b"], "--gpt"),
                                          (["demo", "vit", "--model", "a", "--model", "b"], "--model")])
def test_an_option_given_twice_is_a_usage_error(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.splitlines()[-1] == f"mmkit demo: error: {option} is given twice: give it once"


def test_help_says_what_port_and_top_k_are(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--port PORT port to serve on" in out and "the vit tab" in out and "the bert tab" in out, out


@pytest.mark.parametrize("argv", [["demo", "vit", "--port", "70000"], ["demo", "vit", "--port", "-1"]])
def test_a_port_outside_the_range_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:  # bind() raised OverflowError, a traceback
        main(argv)
    assert e.value.code == 2 and "argument --port: must be" in capsys.readouterr().err


@pytest.mark.parametrize("host, why", [("999.1.1.1", "cannot listen there"), ("192.0.2.1", "cannot listen there")])
def test_a_host_this_machine_cannot_listen_on_is_one_line_before_loading(host, why, tmp_path, capsys):
    assert main(["demo", "--vit", str(tmp_path / "nowhere"), "--host", host]) == 2  # before the checkpoint check
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmkit demo: error: --host {host}: {why}")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_serves(host, monkeypatch, capsys):
    """`--host ::1` crashed in Gradio (it read the port after the address's last colon): a traceback, exit 1."""
    import urllib.request

    import mmkit.cli.demo as demo

    monkeypatch.setattr(demo, "vit_tab", lambda model, settings: lambda: gr.Markdown("x"))
    monkeypatch.setitem(demo.DEMOS, "vit", demo.DemoFamily("h", ".", "how", "mmkit.cli.demo:vit_tab"))
    monkeypatch.setattr(demo, "_checkpoint_problem", lambda name, model, option: None)
    answered = []

    def fetch(blocks):  # instead of serving until Ctrl-C
        answered.append((blocks.local_url, urllib.request.urlopen(blocks.local_url, timeout=30).status))

    monkeypatch.setattr("mmkit.demo_harness._wait", fetch)
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    assert main(["demo", "vit", "--host", host, "--port", str(port)]) == 0
    assert answered == [(f"http://[::1]:{port}/", 200)]


def test_uploads_are_bounded_and_the_cache_expires(monkeypatch):
    """`serve`/`launch` set neither max_file_size nor delete_cache: uploads and /tmp/gradio grew without bound."""
    import httpx

    import mmkit.demo_harness as harness

    assert harness.MAX_FILE_SIZE == 200 * 2**20 and harness.DELETE_CACHE == (600, 3600)
    monkeypatch.setattr(harness, "MAX_FILE_SIZE", 1024)  # the same rule, at a size a test can send
    with gr.Blocks() as app:
        gr.File(label="upload")
    url, close = harness.launch(app)
    try:
        assert app.delete_cache == harness.DELETE_CACHE
        small = httpx.post(url + "gradio_api/upload", files={"files": ("a.bin", b"x" * 500)}, timeout=30)
        big = httpx.post(url + "gradio_api/upload", files={"files": ("b.bin", b"x" * 2000)}, timeout=30)
    finally:
        close()
    assert small.status_code == 200 and big.status_code == 413, (small.text, big.text)


# `mmkit demo vit --port PORT` in a process of its own, its tab a stand-in (no checkpoint needed); LOADING: the tab's
# model "loads" until the process is stopped, once it has created the file MARKER.
DEMO = """
import sys, time
import gradio as gr
import mmkit.cli
import mmkit.cli.demo as demo
port, marker, loading = sys.argv[1], sys.argv[2], sys.argv[3] == "loading"

def vit_tab(model, settings):
    open(marker, "w").close()
    while loading:
        time.sleep(0.1)
    return lambda: gr.Markdown("x")

demo.vit_tab = vit_tab
demo.DEMOS["vit"] = demo.DemoFamily("h", ".", "how", "mmkit.cli.demo:vit_tab")
demo._checkpoint_problem = lambda name, model, option: None
sys.exit(mmkit.cli.main(["demo", "vit", "--port", port, "--device", "cpu"]))
"""


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase", ["serving", "loading"])
def test_an_interrupted_demo_stops_and_says_so_in_one_line(phase, signum, tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM (`timeout`, systemd, a scheduler): exit 130 and one line saying whether it had
    served, the port free again. Gradio's own wait printed "Keyboard interruption in main thread... closing
    server." and exited 0 on Ctrl-C; SIGTERM ended the process without a word."""
    port, marker = free_port(), tmp_path / "loading"
    url = f"http://127.0.0.1:{port}/"
    ready = (lambda: marker.exists()) if phase == "loading" else (lambda: _answers(url))
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", DEMO, str(port), str(marker), phase], cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proc.poll() is None and ready(), "the demo did not start"
            proc.send_signal(signum)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr.seek(0)
        err = stderr.read()
    said = f"the server on 127.0.0.1:{port} is stopped" if phase == "serving" else "nothing was served"
    assert code == 130, err
    assert err.splitlines()[-1] == f"mmkit demo: interrupted; {said}", err
    assert "Traceback" not in err and "Keyboard interruption" not in err, err
    with socket.socket() as s:  # nothing listens on the port (SO_REUSEADDR: our client's connection may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_each_tab_has_its_own_api_names_whichever_tabs_are_served():
    """The endpoints were named after the event functions (/run, /run_1, ... by the order of the tabs served),
    so a client's /run_1 was the text generation of one demo and the translation of another."""
    from _dalle import tiny_text_to_image

    from demos.app import build_app
    from demos.speech import speech_tab
    from demos.text_to_image import text_to_image_tab

    t2i = tiny_text_to_image()
    tabs = {"speech": lambda: speech_tab(lambda path: None), "dalle": lambda: text_to_image_tab(t2i)}
    for order in (["speech", "dalle"], ["dalle", "speech"], ["dalle"]):
        app = build_app({name: tabs[name] for name in order})
        names = sorted(f.api_name for f in app.fns.values() if f.api_visibility == "public")  # not the Stop button's
        assert names == sorted({"speech": "transcribe", "dalle": "generate_images"}[n] for n in order), names


def _recorder(calls: list, result: object = None):
    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return result
    return record


def test_each_tab_loads_with_the_device_precision_int8_and_prefix_given(monkeypatch, tmp_path):
    """Every tab loaded on the CPU in fp32 whatever the machine; the translate tab took no T5 task prefix."""
    import mmkit.cli.demo as demo
    import mmkit.inference.classifier as classifier
    import mmkit.inference.encoder as encoder
    import mmkit.inference.text_generation as text_generation
    import mmkit.inference.text_to_image as text_to_image
    import mmkit.inference.transcriber as transcriber
    import mmkit.inference.translator as translator
    import mmkit.inference.zero_shot as zero_shot

    calls = {name: [] for name in ("vit", "clip", "speech", "gpt", "bert", "translate", "to", "arith")}
    monkeypatch.setattr(classifier.Classifier, "from_pretrained", _recorder(calls["vit"]))
    monkeypatch.setattr(zero_shot.ZeroShotClassifier, "from_pretrained", _recorder(calls["clip"]))
    monkeypatch.setattr(transcriber, "load_transcriber", _recorder(calls["speech"]))
    monkeypatch.setattr(text_generation, "load_text_generator", _recorder(calls["gpt"]))
    monkeypatch.setattr(encoder, "load_encoder", _recorder(calls["bert"]))
    monkeypatch.setattr(translator, "load_translator", _recorder(calls["translate"]))

    class T2I:
        def to(self, device):
            calls["to"].append(device)
            return self

        def set_arithmetic(self, precision, quantize):
            calls["arith"].append((precision, quantize))

    t2i = T2I()
    monkeypatch.setattr(text_to_image.TextToImage, "from_pretrained", lambda directory: t2i)
    settings = demo.TabSettings(top_k=3, device="cuda:1", precision="bf16", quantize="int8", prefix="p: ")
    for name in demo.DEMOS:
        assert callable(getattr(demo, f"{name}_tab")(tmp_path, settings))
    assert calls["vit"] == calls["clip"] == [((tmp_path, "cuda:1", "bf16", "int8"), {})]
    assert calls["speech"] == [((tmp_path, "cuda:1"), {"precision": "bf16", "quantize": "int8"})]
    assert calls["gpt"] == [((tmp_path, "cuda:1", "int8", "bf16"), {})]
    assert calls["bert"] == [((tmp_path, "cuda:1"), {"precision": "bf16", "quantize": "int8"})]
    assert calls["translate"] == [((tmp_path, "p: ", "cuda:1", "int8", "bf16"), {})]
    assert calls["to"] == ["cuda:1"] and calls["arith"] == [("bf16", "int8")]


def test_the_prefix_reaches_the_translator_and_the_tab_says_it(tmp_path):
    from demos.app import build_app
    from mmkit.cli.demo import TabSettings, translate_tab
    from tests.inference._translation_fixtures import write_native_export

    export = write_native_export(tmp_path / "export")
    app = build_app({"translate": translate_tab(export, TabSettings(prefix="translate numbers: "))})
    notes = " ".join(b.value for b in app.blocks.values() if isinstance(b, gr.Markdown))
    assert "read after the prefix `translate numbers: `" in notes, notes


@pytest.mark.parametrize("argv, said", [
    (["--precision", "fp16", "--device", "cpu"], "fp16 autocast is for GPUs; on a CPU use bf16 or fp32"),
    (["--quantize", "int8", "--precision", "bf16", "--device", "cpu"], "--precision bf16 with --quantize int8"),
    (["--device", "tpu"], "--device 'tpu': not a device"),
    (["--prefix", "x: ", "--device", "cpu"], "--prefix is the translate tab's"),
])
def test_a_device_setting_the_machine_cannot_run_is_one_line_before_loading(argv, said, monkeypatch, capsys):
    loaded = _stand_in_vit(monkeypatch)
    assert main(["demo", "vit", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmkit demo: error: {said}") and not loaded, err


def test_int8_off_the_cpu_is_one_line(monkeypatch, capsys):
    import mmkit.inference.precision as precision

    loaded = _stand_in_vit(monkeypatch)
    monkeypatch.setattr(precision, "check_device", lambda device: __import__("torch").device(device))
    assert main(["demo", "vit", "--device", "cuda", "--quantize", "int8"]) == 2
    assert capsys.readouterr().err.strip() == ("mmkit demo: error: --quantize int8 runs on the CPU: use --device cpu, "
                                               "or drop --quantize on cuda") and not loaded


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_says_so(tmp_path, capsys):
    """`mmkit demo --translate DIR --device cuda` said "argument name: invalid choice: 'cuda'"."""
    assert main(["demo", "--translate", str(tmp_path), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mmkit demo: error: --device cuda: CUDA is not available on this machine; use --device cpu"]


@pytest.mark.parametrize("argv, unknown", [(["--foo", "bar"], "--foo bar"), (["vit", "--foo"], "--foo"),
                                           (["--translate", "d", "--beam", "4"], "--beam 4")])
def test_an_unknown_option_is_unrecognized_not_a_family(argv, unknown, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.splitlines()[-1] == f"mmkit demo: error: unrecognized arguments: {unknown}", err


def test_an_unknown_family_is_still_an_invalid_choice(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "vitt"])
    assert e.value.code == 2 and "argument name: invalid choice: 'vitt'" in capsys.readouterr().err


def test_the_default_export_is_found_from_another_directory_or_named_where_looked(monkeypatch, tmp_path, capsys):
    """`mmkit demo vit` looked for runs/vit_digits/export in the current directory (the README gives it from the
    repository root), and its advice `--vit DIR` then failed with "vit is given twice"."""
    import mmkit.cli.demo as demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(demo.DEMOS, "vit", demo.DemoFamily("h", "runs/nowhere/export", "make run",
                                                          "mmkit.cli.demo:vit_tab"))
    assert main(["demo", "vit", "--device", "cpu", "--port", str(free_port())]) == 2
    where = REPO / "runs/nowhere/export"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mmkit demo: error: no vit checkpoint at {where}; train it first with `make run` or pass --model DIR"]
    (tmp_path / "runs/nowhere/export").mkdir(parents=True)  # the current directory's own comes first
    assert demo._default_export("vit") == Path("runs/nowhere/export")


def test_startup_logs_no_http_requests(monkeypatch, caplog, capsys):
    """Gradio checks its server with httpx as it starts: at INFO each request was a line before "Running on"."""
    import logging

    _stand_in_vit(monkeypatch)
    monkeypatch.setattr("mmkit.demo_harness._wait", lambda blocks: None)
    caplog.set_level(logging.INFO)
    assert main(["demo", "vit", "--device", "cpu", "--port", str(free_port())]) == 0
    assert not [r for r in caplog.records if r.name.startswith("httpx")], caplog.records


def test_the_queue_is_bounded():
    from demos.app import MAX_QUEUE, build_app

    app = build_app({"x": lambda: gr.Markdown("x")})
    assert app._queue.max_size == MAX_QUEUE == 16

