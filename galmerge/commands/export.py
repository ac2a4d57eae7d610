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
    from pathlib import Path

    from galmerge.models.export import default_output, export_metadata, export_model
    from galmerge.models.model import resolve_checkpoint

    target = Path(output) if output is not None else default_output(Path(model), fmt)
    # an earlier export there is replaced (export_model refuses any other file): say so
    earlier = (export_metadata(target, fmt)
               if target.is_file() and not target.is_symlink() else None)
    path = export_model(model, fmt, output, domain)
    # a run without best.pt exports last.pt: say which weights went in
    line = f"wrote {path} (from {resolve_checkpoint(model)})"
    if earlier is not None:
        was = ", ".join(str(earlier[k]) for k in ("checkpoint", "created_utc") if earlier.get(k))
        line += f", replacing the earlier export there{f' ({was})' if was else ''}"
    click.echo(line)
