"""MATLAB MAT-files: level 5 (numeric arrays, read and write) and 7.3 (HDF5, written with h5py).

NYUv2 ships its labelled set as a v7.3 file (HDF5 with a 512-byte MATLAB header, read with h5py) and its
split and class-mapping files as level-5 files (``splits.mat``, ``classMapping40.mat``), which scipy
reads; GeoSem does not depend on scipy, and these files hold plain numeric arrays, so this module reads
(and, for the synthetic world, writes) that subset of the level-5 format: numeric matrices, optionally
zlib-compressed, data stored in any integer or float type (MATLAB stores e.g. a double index vector as
uint16 to save space). Cells, structs and strings are skipped by the reader.

Layout facts (MathWorks "MAT-File Format", level 5): a 128-byte header (116 bytes of text, 8 bytes of
subsystem offset, version 0x0100, endian mark "IM"), then tagged data elements (type, byte count, data
padded to 8 bytes; elements of at most 4 bytes may be packed into the tag). A matrix is element type 14
holding array flags, dimensions, name and the real part in column-major order; type 15 is a zlib stream
holding one element.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
from scipy.io import loadmat

from geosem.atomic import atomic_write_bytes

_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MI_DTYPES = {
    1: np.int8,
    2: np.uint8,
    3: np.int16,
    4: np.uint16,
    5: np.int32,
    6: np.uint32,
    7: np.float32,
    9: np.float64,
    12: np.int64,
    13: np.uint64,
}
_MI_OF_DTYPE = {np.dtype(v): k for k, v in _MI_DTYPES.items()}
_MX_CLASSES = {
    6: np.float64,
    7: np.float32,
    8: np.int8,
    9: np.uint8,
    10: np.int16,
    11: np.uint16,
    12: np.int32,
    13: np.uint32,
    14: np.int64,
    15: np.uint64,
}
_MX_OF_DTYPE = {np.dtype(v): k for k, v in _MX_CLASSES.items()}
_MATLAB_CLASS_73 = {
    np.dtype(np.float64): "double",
    np.dtype(np.float32): "single",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.int32): "int32",
}


class MatFileError(ValueError):
    """A MAT-file is malformed or holds something this reader does not support."""


def _elements(buffer: bytes, path: Path) -> list[tuple[int, bytes]]:
    """Split a byte buffer into (type, payload) data elements."""
    out = []
    pos = 0
    while pos + 8 <= len(buffer):
        first, second = struct.unpack_from("<II", buffer, pos)
        if first >> 16:  # small element: byte count in the upper half of the first word
            kind, size = first & 0xFFFF, first >> 16
            out.append((kind, buffer[pos + 4 : pos + 4 + size]))
            pos += 8
            continue
        kind, size = first, second
        start = pos + 8
        if start + size > len(buffer):
            raise MatFileError(f"{path}: data element at byte {pos} runs past the end of the file")
        out.append((kind, buffer[start : start + size]))
        pos = start + size if kind == _MI_COMPRESSED else start + ((size + 7) // 8) * 8
    return out


def _matrix(payload: bytes, path: Path) -> tuple[str, np.ndarray] | None:
    parts = _elements(payload, path)
    if len(parts) < 3:
        raise MatFileError(f"{path}: truncated matrix element")
    flags = np.frombuffer(parts[0][1][:4], "<u4")[0]
    mx_class = int(flags & 0xFF)
    name = parts[2][1].decode("ascii", errors="replace")
    if mx_class not in _MX_CLASSES:
        return None  # cell, struct, char, sparse, object: not needed by GeoSem's readers
    dims_kind, dims_raw = parts[1]
    dims = np.frombuffer(dims_raw, _MI_DTYPES.get(dims_kind, np.int32)).astype(int).tolist()
    if len(parts) < 4:
        raise MatFileError(f"{path}: variable {name!r} has no data")
    data_kind, data_raw = parts[3]
    if data_kind not in _MI_DTYPES:
        raise MatFileError(f"{path}: variable {name!r} has data type {data_kind}, not a numeric type")
    values = np.frombuffer(data_raw, np.dtype(_MI_DTYPES[data_kind]).newbyteorder("<"))
    if values.size != int(np.prod(dims)):
        raise MatFileError(f"{path}: variable {name!r} holds {values.size} values for dims {dims}")
    return name, values.astype(_MX_CLASSES[mx_class]).reshape(dims, order="F")


def read_mat5(path: Path) -> dict[str, np.ndarray]:
    """Numeric variables of a level-5 MAT-file (arrays in MATLAB's shape, e.g. (795, 1))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAT-file {path} is missing")
    data = path.read_bytes()
    if data[:6] != b"MATLAB" or len(data) < 128:
        raise MatFileError(f"{path} is not a MAT-file (no MATLAB header)")
    if data[126:128] != b"IM":
        raise MatFileError(f"{path}: big-endian or unknown MAT-file (endian mark {data[126:128]!r})")
    if data[:10] == b"MATLAB 7.3":
        raise MatFileError(f"{path} is a v7.3 (HDF5) MAT-file: read it with h5py")
    out = {}
    for kind, payload in _elements(data[128:], path):
        if kind == _MI_COMPRESSED:
            inner = _elements(zlib.decompress(payload), path)
            if not inner:
                continue
            kind, payload = inner[0]
        if kind == _MI_MATRIX:
            parsed = _matrix(payload, path)
            if parsed is not None:
                out[parsed[0]] = parsed[1]
    return out


def _element(kind: int, payload: bytes) -> bytes:
    padded = payload + b"\0" * (-len(payload) % 8)
    return struct.pack("<II", kind, len(payload)) + padded


def write_mat5(path: Path, variables: dict[str, np.ndarray]) -> None:
    """Write numeric arrays as a compressed level-5 MAT-file (2-D at least, as MATLAB sees them)."""
    body = b""
    for name, value in variables.items():
        array = np.atleast_2d(np.asarray(value))
        if array.dtype not in _MX_OF_DTYPE:
            raise TypeError(f"variable {name!r}: dtype {array.dtype} is not a MATLAB numeric class")
        flags = struct.pack("<II", _MX_OF_DTYPE[array.dtype], 0)
        matrix = (
            _element(6, flags)
            + _element(5, np.asarray(array.shape, "<i4").tobytes())
            + _element(1, name.encode("ascii"))
            + _element(
                _MI_OF_DTYPE[array.dtype], array.astype(array.dtype.newbyteorder("<")).tobytes(order="F")
            )
        )
        # A compressed element is not padded: the next element starts right after the zlib stream.
        packed = zlib.compress(_element(_MI_MATRIX, matrix), 6)
        body += struct.pack("<II", _MI_COMPRESSED, len(packed)) + packed
    header = (
        b"MATLAB 5.0 MAT-file, written by GeoSem".ljust(116, b" ")
        + b"\0" * 8
        + struct.pack("<H", 0x0100)
        + b"IM"
    )
    atomic_write_bytes(Path(path), header + body)


def mat73_header() -> bytes:
    """The 128 bytes MATLAB writes at the start of a v7.3 file's 512-byte user block."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: GeoSem HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0200) + b"IM"


def create_mat73(path: Path) -> h5py.File:
    """An HDF5 file with MATLAB's 512-byte user block; call :func:`finish_mat73` after closing it."""
    return h5py.File(path, "w", userblock_size=512, track_order=False)


def finish_mat73(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.write(mat73_header())


def add_mat73_array(handle: h5py.File, name: str, array: np.ndarray, compression: bool = False) -> None:
    """An array exactly as h5py will show it (MATLAB's axis order reversed: the caller transposes)."""
    kwargs = (
        {"compression": "gzip", "compression_opts": 4, "chunks": (1, *array.shape[1:])} if compression else {}
    )
    dataset = handle.create_dataset(name, data=array, track_times=False, **kwargs)
    dataset.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASS_73[array.dtype])


def add_mat73_strings(handle: h5py.File, name: str, strings: list[str]) -> None:
    """A 1 x K cell array of strings: object references into ``#refs#`` (uint16 chars, as MATLAB)."""
    refs_group = handle.require_group("#refs#")
    cell = handle.create_dataset(name, shape=(1, len(strings)), dtype=h5py.ref_dtype, track_times=False)
    cell.attrs["MATLAB_class"] = np.bytes_("cell")
    for k, text in enumerate(strings):
        chars = np.frombuffer(text.encode("utf-16-le"), "<u2").reshape(-1, 1)
        item = refs_group.create_dataset(f"{name}_{k}", data=chars, track_times=False)
        item.attrs["MATLAB_class"] = np.bytes_("char")
        item.attrs["MATLAB_int_decode"] = np.int32(2)
        cell[0, k] = item.ref


def read_mat73_strings(handle: h5py.File, name: str) -> list[str]:
    """A cell array of strings written by MATLAB (or :func:`add_mat73_strings`)."""
    cell = handle[name]
    out = []
    for ref in np.asarray(cell).reshape(-1):
        chars = np.asarray(handle[ref]).reshape(-1)
        out.append(chars.astype("<u2").tobytes().decode("utf-16-le"))
    return out


def load_mat(path: Path) -> dict[str, object]:
    """``scipy.io.loadmat`` with errors that name the file: scipy answers a truncated or foreign file
    with a bare IndexError or ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAT-file {path} is missing")
    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as error:
        raise ValueError(
            f"cannot read MAT-file {path} ({type(error).__name__}: {error}): it is damaged "
            "or not a MAT-file; restore it from the dataset's archive"
        ) from None
