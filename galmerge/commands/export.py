"""`galmerge export`."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model", metavar="RUN_DIR|CHECKPOINT")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx",
              show_default=True, help="File format.")  # fmt: skip
@click.option("--output", type=click.Path(dir_okay=False),
              help="Output file [default: RUN_DIR/model.onnx or model.torchscript.pt].")
@click.option("--domain", type=click.Choice(["target", "source"]), default="target",
              show_default=True, help="Whose preprocessing (normalisation) and BatchNorm statistics to build in.")
def export(model: str, fmt: str, output: str | None, domain: str) -> None:
    """Write a trained model as a file that runs without galmerge (ONNX or TorchScript).

    The file takes raw stamps (N, C, H, W float32, as classify feeds the checkpoint), applies the
    preprocessing itself and returns p_merger and logits; the preprocessing spec, temperature
    and domain are in its metadata. `galmerge classify --model FILE.onnx` runs it with ONNX
    Runtime on the CPU.
    """
    from galmerge.models.export import export_model
    from galmerge.models.model import resolve_checkpoint

    path = export_model(model, fmt, output, domain)
    # a run without best.pt exports last.pt: say which weights went in
    click.echo(f"wrote {path} (from {resolve_checkpoint(model)})")
