"""The shared frame of the explorer's read-only streams (a disk, a volume slice, a file
with a zero tail): a raw stream of `size` bytes with a position."""

from __future__ import annotations

import io


class SizedStream(io.RawIOBase):
    """Readable and seekable; subclasses set `size` and `_pos` and implement `readinto`
    (and `seek`, from `_seek_target`, deciding what a negative position means)."""

    size: int
    _pos: int

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _seek_target(self, offset: int, whence: int) -> int:
        """The position `seek(offset, whence)` asks for (may be negative)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        return base + offset
