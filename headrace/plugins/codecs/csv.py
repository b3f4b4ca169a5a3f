"""CSV: one record is one CSV row -> a list of strings, or a dict when ``header`` names the columns.

Encoding writes a cell that is a list or a mapping as JSON text, and ``bytes`` as the
``json`` codec writes them (their text when valid UTF-8, else ``{"base64": ...}`` as JSON).
With ``with_meta: true`` the row gets one more column, last: the meta as JSON.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from pydantic import Field

from headrace.contract.codec import Codec, DecodeError
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.plugins.codecs.json import text_or_base64, to_json


class CsvConfig(PluginConfig):
    delimiter: str = Field(",", min_length=1, max_length=1, description="field separator")
    quotechar: str = Field('"', min_length=1, max_length=1, description="quote character")
    header: list[str] | None = Field(
        None, min_length=1, description="column names: rows decode to dicts and must have exactly this many fields"
    )


class CsvCodec(Codec):
    name = "csv"
    Config = CsvConfig
    summary = "one CSV row per record -> list of strings (dict with header); bad quoting or a wrong field count go to err"

    def __init__(self, config: CsvConfig | None = None, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        cfg: CsvConfig = self.config  # type: ignore[assignment]
        self.header = cfg.header
        self.dialect = {"delimiter": cfg.delimiter, "quotechar": cfg.quotechar, "strict": True}

    def decode(self, data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
        try:
            rows = list(csv.reader(io.StringIO(text, newline=""), **self.dialect))  # type: ignore[arg-type]
        except csv.Error as exc:
            raise DecodeError(f"invalid CSV: {exc}") from None
        if len(rows) != 1:
            raise DecodeError(f"a record must be one CSV row, got {len(rows)}")
        row = rows[0]
        if self.header is None:
            return row
        if len(row) != len(self.header):
            raise DecodeError(f"expected {len(self.header)} fields ({', '.join(self.header)}), got {len(row)}")
        return dict(zip(self.header, row, strict=True))

    def encode(self, value: Any) -> bytes:
        return self._write(self._row(value))

    def encode_with_meta(self, value: Any, meta: dict[str, Any]) -> bytes:
        return self._write([*self._row(value), meta])

    def _row(self, value: Any) -> list[Any]:
        if isinstance(value, dict):
            if self.header is None:
                raise ValueError("csv: encoding a dict needs a header (the column order)")
            extra = set(value) - set(self.header)
            if extra:
                raise ValueError(f"csv: keys not in the header: {', '.join(sorted(map(str, extra)))}")
            row = [value.get(k) for k in self.header]
        elif isinstance(value, (list, tuple)):
            row = list(value)
        else:
            row = [value]
        return row

    def _write(self, row: list[Any]) -> bytes:
        buf = io.StringIO()
        # "\r\n" as terminator makes the writer quote fields holding line breaks; it is cut off after
        csv.writer(buf, lineterminator="\r\n", **self.dialect).writerow([_cell(v) for v in row])  # type: ignore[arg-type]
        return buf.getvalue()[:-2].encode("utf-8")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = text_or_base64(v)
    if isinstance(v, (dict, list, tuple)):
        return to_json(v).decode("utf-8")  # not Python's repr: a reader can parse it
    return v
