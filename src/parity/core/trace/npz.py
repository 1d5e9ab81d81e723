"""The .npz format (a zip of .npy files), read with every size checked before it is trusted.

Python's zipfile reads the whole central directory into memory as its end record
declares it, and a member inflates for as long as its data does; its failures
(BadZipFile, zlib.error, EOFError, NotImplementedError, "encrypted") escape as
tracebacks. This reader parses the end record and central directory itself and
refuses, before reading any member: multi-disk and encrypted archives, methods other
than stored (0) and deflate (8), more than MAX_MEMBERS members, a stored member whose
sizes differ, a deflated member declaring more than deflate can produce, members
overlapping the directory or the file's end, and declared totals above
MAX_TOTAL_BYTES. A stored member is memory-mapped at its data offset; a deflated one
inflates into one buffer of its declared size, never further, and must match its CRC.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from parity.core.trace.opening import FileRef

MAX_MEMBERS = 65_536
MAX_DIRECTORY_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 1 << 40            # 1 TiB declared, all members together
MAX_DEFLATE_RATIO = 1100             # deflate cannot exceed ~1032:1
_END = b"PK\x05\x06"
_END64_LOCATOR = b"PK\x06\x07"
_END64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_STORED, _DEFLATED = 0, 8
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    data_offset: int                 # where its (compressed) bytes start in the archive

    def __repr__(self) -> str:
        return f"<Member {self.name} method={self.method} {self.compressed_size}->{self.size}>"


def members(archive: FileRef) -> list[Member]:
    """Every member of the archive, checked; raises ValueError saying what is wrong."""
    end_offset, count, directory_size, directory_offset = _end_record(archive)
    if count > MAX_MEMBERS:
        raise ValueError(f"the archive declares {count:,} members, more than the {MAX_MEMBERS:,} allowed")
    if directory_size > MAX_DIRECTORY_BYTES or directory_offset + directory_size > end_offset:
        raise ValueError("the archive's central directory does not fit before its end record")
    directory = archive.read(directory_offset, directory_size)
    entries, position, total = [], 0, 0
    for _ in range(count):
        member, position = _central_entry(directory, position, archive, directory_offset)
        total += member.size
        if total > MAX_TOTAL_BYTES:
            raise ValueError(f"the archive's members declare more than {MAX_TOTAL_BYTES:,} bytes in all")
        entries.append(member)
    if len({member.name for member in entries}) != len(entries):
        raise ValueError("the archive holds two members with the same name")
    return entries


def inflate(archive: FileRef, member: Member) -> bytearray:
    """The member's bytes, inflated into a buffer of exactly its declared size and CRC-checked."""
    buffer = bytearray(member.size)
    written = 0
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    with archive.open() as file:
        file.seek(member.data_offset)
        remaining = member.compressed_size
        try:
            while remaining > 0 or decompressor.unconsumed_tail:
                chunk = decompressor.unconsumed_tail
                if not chunk:
                    chunk = file.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise ValueError("the member's data ends early")
                    remaining -= len(chunk)
                room = member.size - written
                out = decompressor.decompress(chunk, room + 1)  # one byte more than allowed shows overflow
                if len(out) > room:
                    raise ValueError(f"member {member.name} inflates past its declared {member.size:,} bytes")
                buffer[written:written + len(out)] = out
                written += len(out)
                if decompressor.eof:
                    break
        except zlib.error as error:
            raise ValueError(f"member {member.name} is not valid deflate data ({error})") from None
    if written != member.size or not decompressor.eof:
        raise ValueError(f"member {member.name} inflates to {written:,} bytes, declared {member.size:,}")
    check_crc(bytes_view=buffer, member=member)
    return buffer


def check_crc(bytes_view, member: Member) -> None:
    crc = 0
    view = memoryview(bytes_view).cast("B")
    for start in range(0, len(view), 64 * _CHUNK):
        crc = zlib.crc32(view[start:start + 64 * _CHUNK], crc)
    if crc != member.crc:
        raise ValueError(f"member {member.name} fails its CRC check (the archive is damaged); write it again")


def _end_record(archive: FileRef) -> tuple[int, int, int, int]:
    """(offset of the end record, member count, directory size, directory offset), zip64 included."""
    tail_length = min(archive.size, 22 + 65_535)
    tail = archive.read(archive.size - tail_length, tail_length)
    position = tail.rfind(_END)
    if position < 0 or len(tail) - position < 22:
        raise ValueError("not a zip archive (no end-of-directory record); an .npz is written by np.savez")
    end_offset = archive.size - tail_length + position
    disk, start_disk, _, count, size, offset, _ = struct.unpack("<HHHHIIH", tail[position + 4:position + 22])
    if disk != 0 or start_disk != 0:
        raise ValueError("the archive spans several disks, which parity does not read")
    if 0xFFFF in (count,) or 0xFFFFFFFF in (size, offset):
        return _end_record64(archive, end_offset)
    return end_offset, count, size, offset


def _end_record64(archive: FileRef, end_offset: int) -> tuple[int, int, int, int]:
    if end_offset < 20:
        raise ValueError("the archive's zip64 locator is missing")
    locator = archive.read(end_offset - 20, 20)
    if locator[:4] != _END64_LOCATOR:
        raise ValueError("the archive's zip64 locator is missing")
    (record_offset,) = struct.unpack("<Q", locator[8:16])
    if record_offset + 56 > end_offset - 20:
        raise ValueError("the archive's zip64 end record lies outside it")
    record = archive.read(record_offset, 56)
    if record[:4] != _END64:
        raise ValueError("the archive's zip64 end record is damaged")
    disk, start_disk, _, count, size, offset = struct.unpack("<IIQQQQ", record[16:56])
    if disk != 0 or start_disk != 0:
        raise ValueError("the archive spans several disks, which parity does not read")
    return record_offset, count, size, offset


def _central_entry(directory: bytes, position: int, archive: FileRef, directory_offset: int) -> tuple[Member, int]:
    if position + 46 > len(directory) or directory[position:position + 4] != _CENTRAL:
        raise ValueError("the archive's central directory is damaged")
    (flags, method, crc, compressed, size, name_length, extra_length, comment_length, disk,
     local_offset) = struct.unpack("<4xHH4xIIIHHHH6xI", directory[position + 4:position + 46])
    end = position + 46 + name_length + extra_length + comment_length
    if end > len(directory):
        raise ValueError("the archive's central directory is damaged")
    raw_name = directory[position + 46:position + 46 + name_length]
    extra = directory[position + 46 + name_length:position + 46 + name_length + extra_length]
    size, compressed, local_offset = _zip64_sizes(extra, size, compressed, local_offset)
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    if flags & 0x1:
        raise ValueError(f"member {name!r} is encrypted; write the .npz without a password")
    if method not in (_STORED, _DEFLATED):
        raise ValueError(f"member {name!r} uses compression method {method}; parity reads stored and deflate "
                         "(np.savez, np.savez_compressed)")
    if method == _STORED and compressed != size:
        raise ValueError(f"member {name!r} is stored but declares {compressed:,} bytes stored and {size:,} in all")
    if method == _DEFLATED and size > MAX_DEFLATE_RATIO * compressed + 1024:
        raise ValueError(f"member {name!r} declares {size:,} bytes from {compressed:,} compressed, "
                         "more than deflate can produce")
    data_offset = _local_data_offset(archive, local_offset, name)
    if data_offset + compressed > directory_offset:
        raise ValueError(f"member {name!r} runs into the archive's central directory")
    return Member(name, method, crc, compressed, size, data_offset), end


def _zip64_sizes(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[position:position + 4])
        body = extra[position + 4:position + 4 + length]
        if tag == 0x0001:
            values = [struct.unpack("<Q", body[i:i + 8])[0] for i in range(0, len(body) - 7, 8)]
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if compressed == 0xFFFFFFFF and values:
                compressed = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
        position += 4 + length
    return size, compressed, offset


def _local_data_offset(archive: FileRef, offset: int, name: str) -> int:
    if offset + 30 > archive.size:
        raise ValueError(f"member {name!r}'s local header lies outside the archive")
    header = archive.read(offset, 30)
    if header[:4] != _LOCAL:
        raise ValueError(f"member {name!r}'s local header is damaged")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return offset + 30 + name_length + extra_length
