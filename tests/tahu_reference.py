"""Eclipse Tahu's reference Sparkplug B schema, taken from its release on Maven Central.

``org.eclipse.tahu:tahu-core`` ships protoc's Java output for Tahu's ``sparkplug_b.proto``;
the ``descriptorData`` string literals in ``SparkplugBProto.java`` are that file's serialized
``FileDescriptorProto``. Tests use it to prove our own schema is the same wire contract, and
to encode payloads exactly as an edge node built on Tahu would.

The jar is fetched once (pinned by version and SHA-256) into the stack's cache directory.
"""

from __future__ import annotations

import hashlib
import re
import urllib.request
import zipfile
from functools import cache
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from carbonflow.config import StackSettings

TAHU_VERSION: Final = "1.0.21"
_JAR: Final = f"tahu-core-{TAHU_VERSION}-sources.jar"
_URL: Final = f"https://repo1.maven.org/maven2/org/eclipse/tahu/tahu-core/{TAHU_VERSION}/{_JAR}"
_SHA256: Final = "73a265b130da47707dd2c0d1b4b79b590b46a01e9519f0d826db6234d5e192cf"
_SOURCE: Final = "org/eclipse/tahu/protobuf/SparkplugBProto.java"
PACKAGE: Final = "org.eclipse.tahu.protobuf"

_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|[0-3][0-7]{0,2}|[4-7][0-7]?|.)")
_SIMPLE_ESCAPES: Final = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}


def _jar_path() -> Path:
    path = StackSettings().cache_dir / "tahu" / _JAR
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != _SHA256:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(_URL, timeout=60) as response:
            data = response.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != _SHA256:
            raise RuntimeError(f"{_URL}: SHA-256 {digest}, expected {_SHA256}")
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def _unescape_java(literal: str) -> str:
    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "u":
            return chr(int(code[1:], 16))
        if code[0].isdigit():
            return chr(int(code, 8))
        return _SIMPLE_ESCAPES.get(code, code)

    return _ESCAPE.sub(replace, literal)


@cache
def reference_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Tahu's ``sparkplug_b.proto`` as a FileDescriptorProto."""
    with zipfile.ZipFile(_jar_path()) as jar:
        java = jar.read(_SOURCE).decode("utf-8")
    start = java.index("descriptorData = {")
    block = java[start : java.index("};", start)]
    # protobuf-java stores the descriptor's bytes as ISO-8859-1 characters.
    data = "".join(_unescape_java(text) for text in _LITERAL.findall(block)).encode("latin-1")
    return descriptor_pb2.FileDescriptorProto.FromString(data)


@cache
def reference_payload_class() -> Any:
    """The ``Payload`` message class built from Tahu's descriptor, in a private pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(reference_file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


@cache
def reference_datatypes() -> dict[str, int]:
    """Tahu's ``DataType`` enum: name -> number."""
    (enum,) = (e for e in reference_file_descriptor().enum_type if e.name == "DataType")
    return {value.name: value.number for value in enum.value}
