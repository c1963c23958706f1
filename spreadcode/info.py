"""``spreadcode info``: what a .spc file holds, whether it is intact, which models fit it.

Touches only the container and the model store (no torch), so it answers instantly.
"""
from dataclasses import dataclass

from . import container, store
from .errors import SpreadcodeError


@dataclass(frozen=True)
class FileReport:
    """Rows of (field, value) for display, and whether the payload checksum matched."""

    path: str
    rows: list
    ok: bool

    def raise_if_corrupt(self):
        """Raise SpreadcodeError when the payload checksum did not match."""
        if not self.ok:
            raise SpreadcodeError(f"{self.path}: payload checksum mismatch: the file is corrupted")


def describe_file(path, store_path=None) -> FileReport:
    """Describe the .spc file at ``path``.

    Adds to the container's own summary whether the catalyzer named in the header is in the
    model store, and which learned decoders exist there for it. A corrupt header raises
    SpreadcodeError; a corrupt payload is reported in the rows and by ``ok=False``, so the
    user sees the header before the error.
    """
    spc = container.open_spc(path, verify=False)
    rows = list(container.describe(spc).items())
    sha = spc.header.catalyzer_sha256
    if sha is not None:
        catalyzers = [a for a in store.list_artifacts("catalyzer", store_path) if a.sha256 == sha]
        rows.append(("catalyzer in store", str(catalyzers[0].path) if catalyzers
                     else f"no (not in {store.store_dir(store_path)})"))
        decoders = [a for a in store.list_artifacts("decoder", store_path)
                    if a.meta.get("catalyzer") == sha]
        rows.append(("decoders", ", ".join(
            f"{a.sha256[:12]} ({_decoder_kind(a.meta)})" for a in decoders) or "none"))
    return FileReport(path=str(path), rows=rows, ok=spc.checksum_ok)


def _decoder_kind(meta):
    """The kind a decoder's metadata states, or "?" when it states none it could be."""
    spec = meta.get("decoder")
    kind = spec.get("kind") if isinstance(spec, dict) else None
    return kind if isinstance(kind, str) else "?"
