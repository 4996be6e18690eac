"""The README's drop-in example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(heading):
    text = README.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_dropin_example_runs(capsys):
    blocks = _python_blocks("## Drop-in: the spatial loss in your own training loop")
    assert blocks, "README lost its drop-in example"
    exec(compile(blocks[0], "README-dropin", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("4 ")
