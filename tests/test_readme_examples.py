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


def test_map_statistics_example_runs(capsys):
    """The README's analysis example: a ground-truth map is detected, the same units position-shuffled are not."""
    blocks = _python_blocks("## Analysis: MT direction maps, their nulls, and the report")
    assert blocks, "README lost its analysis example"
    exec(compile(blocks[0], "README-analysis", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("direction map detected: Λ = 0.8") and out[1] == "False"


def test_vision_transformer_example_runs(capsys):
    """The README's token-layout example: torchvision vit_b_16 blocks tapped, one SGD step with the loss."""
    blocks = _python_blocks("## Other layouts: fully connected layers and vision transformers")
    assert blocks, "README lost its vision-transformer example"
    exec(compile(blocks[0], "README-vit", "exec"), {})
    out = capsys.readouterr().out.strip().splitlines()
    assert "encoder.layers.encoder_layer_5" in out[0] and "(17, 768)" in out[0]
    losses = eval(out[1].split(" ", 1)[1])  # {layer: loss}, each in [0, 1]
    assert set(losses) == {"encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_11"}
    assert all(0.0 <= v <= 1.0 for v in losses.values())


def test_ventral_dropin_example_runs(capsys):
    """The README's ventral drop-in example: resnet18 + SimCLR + the spatial loss on two blocks, two SGD steps."""
    blocks = _python_blocks("## The ventral TDANN on images: resnet18 + SimCLR, V1 maps and IT category patches")
    assert blocks, "README lost its ventral drop-in example"
    exec(compile(blocks[0], "README-ventral", "exec"), {})
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in out] == ["0", "1"]
    losses = eval(out[-1].split(" ", 2)[2])
    assert set(losses) == {"layer2.1", "layer4.1"} and all(0 <= v <= 1 for v in losses.values())
