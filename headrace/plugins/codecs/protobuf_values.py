"""Protocol Buffers messages <-> plain values (the shapes the ``protobuf`` codec's page describes)."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def to_value(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            vf = mt.fields_by_name["value"]
            out[f.name] = {k: _scalar_out(vf, v[k]) for k in v}
        elif f.is_repeated:
            out[f.name] = [_scalar_out(f, x) for x in v]
        elif mt is not None:
            out[f.name] = to_value(v) if msg.HasField(f.name) else None
        else:
            out[f.name] = _scalar_out(f, v)
    return out


def _scalar_out(f: FieldDescriptor, v: Any) -> Any:
    if f.message_type is not None:
        return to_value(v)
    if f.enum_type is not None:
        ev = f.enum_type.values_by_number.get(v)
        return ev.name if ev is not None else v
    return v


def fill(msg: Message, value: Any) -> None:
    desc = msg.DESCRIPTOR
    if not isinstance(value, dict):
        raise TypeError(f"{desc.full_name}: a message is written from a mapping, not {type(value).__name__}")
    msg.SetInParent()
    fields = desc.fields_by_name
    for k, v in value.items():
        f = fields.get(k)
        if f is None:
            raise ValueError(f"{desc.full_name} has no field {k!r}")
        if v is None:
            continue
        mt = f.message_type
        target = getattr(msg, k) if (f.is_repeated or mt is not None) else None
        if mt is not None and mt.GetOptions().map_entry:
            vf = mt.fields_by_name["value"]
            for mk, mv in v.items():
                if vf.message_type is not None:
                    fill(target[mk], mv)  # type: ignore[index]
                else:
                    target[mk] = _scalar_in(vf, mv)  # type: ignore[index]
        elif f.is_repeated:
            if not isinstance(v, (list, tuple)):
                raise TypeError(f"{desc.full_name}.{k}: a repeated field is written from a list, not {type(v).__name__}")
            for x in v:
                if mt is not None:
                    fill(target.add(), x)  # type: ignore[union-attr]
                else:
                    target.append(_scalar_in(f, x))  # type: ignore[union-attr]
        elif mt is not None:
            fill(target, v)
        else:
            try:
                setattr(msg, k, _scalar_in(f, v))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{desc.full_name}.{k}: {exc}") from None


def _scalar_in(f: FieldDescriptor, v: Any) -> Any:
    if f.enum_type is not None and isinstance(v, str):
        ev = f.enum_type.values_by_name.get(v)
        if ev is None:
            raise ValueError(f"{f.full_name}: {v!r} is not a value of {f.enum_type.full_name}")
        return ev.number
    if f.type == FieldDescriptor.TYPE_BYTES and isinstance(v, str):
        return v.encode("utf-8")
    return v
