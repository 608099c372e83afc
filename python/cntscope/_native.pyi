"""Type stubs of the native module (use the ``cntscope`` package)."""

from os import PathLike
from typing import Callable, Optional, Sequence

# A table: (column name, kind, values); kind "f8", "i8" or "bool" with
# values as little-endian bytes, or "str" with a list (None for empty).
Column = tuple[str, str, "bytes | list[Optional[str]]"]
Table = list[Column]

class CntscopeError(Exception):
    """A checkpoint, spec or scan directory that cannot be used as asked."""

    kind: str
    path: Optional[str]
    tensor: Optional[str]

class Options:
    """Scan settings, parsed from ``cntscope scan`` flags."""

    def __init__(self, args: list[str]) -> None: ...
    def scan(
        self,
        paths: Sequence[str],
        out: str,
        progress: Optional[Callable[[int, int], None]] = None,
        bar: bool = False,
    ) -> dict: ...
    def analyze(
        self, name: str, tensors: list[tuple[str, str, Sequence[int], object]], metadata: dict[str, str]
    ) -> tuple[list[Table], list[str]]: ...
    def nodes(self, checkpoint: "str | PathLike[str]") -> tuple[Table, list[str]]: ...

def read_tables(paths: Sequence["str | PathLike[str]"]) -> list[Table]: ...
def require_complete(dir: "str | PathLike[str]") -> None: ...
def parse_table(csv: bytes) -> Table: ...
def run(args: list[str]) -> int: ...
def main(argv: list[str]) -> int: ...
