"""The ferrolm command, run as a user would (subprocess, no terminal)."""

import json
import subprocess
import sys


def ferrolm(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ferrolm.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    out = ferrolm("--help")
    assert out.returncode == 0
    for word in ("generate", "chat", "info", "pull", "smollm2"):
        assert word in out.stdout
    assert "--max-tokens" in ferrolm("generate", "--help").stdout


def test_dtype_help_says_the_cpu_keeps_weights_as_stored():
    for command in ("generate", "chat", "serve", "perplexity", "bench"):
        text = " ".join(ferrolm(command, "--help").stdout.split())
        assert "the CPU uses float32" not in text, command
        assert "keeps the weights as stored" in text, f"{command} --help: {text}"


def test_generate_prints_only_the_text_when_not_a_terminal(chat_model):
    out = ferrolm("generate", "Hello!", "--model", chat_model, "--max-tokens", "8", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n") and "\r" not in out.stdout and "%|" not in out.stderr
    from ferrolm import InferenceSession, SamplingConfig

    expected = InferenceSession(chat_model).generate("Hello!", SamplingConfig(max_tokens=8, temperature=0))
    assert out.stdout == expected + "\n"


def test_chat_reads_turns_from_stdin(chat_model):
    out = ferrolm("chat", "--model", chat_model, "--max-tokens", "4", "--temperature", "0",
                  stdin="Hello!\n/reset\nHello!\n/exit\nignored\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) >= 2 and lines[0] == lines[-1]  # same answer after /reset
    assert "conversation reset" in out.stderr


def test_info_prints_json(chat_model):
    out = ferrolm("info", chat_model)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["vocab_size"] == 49152


def test_errors_are_one_clear_line(tmp_path):
    out = ferrolm("generate", "hi", "--model", tmp_path / "nope")
    assert out.returncode == 1 and out.stderr.startswith("ferrolm: error:") and "Traceback" not in out.stderr
    out = ferrolm("generate", "hi", "--model", "smollm2", "--temperature", "-1")
    assert out.returncode == 1 and "temperature" in out.stderr
