"""A tiny authoritative DNS responder on loopback that tells Caddy where a service's replicas are.

Caddy's ``reverse_proxy`` re-reads dynamic upstreams (``dynamic srv``) on every proxy-loop
iteration, so pointing it at this responder lets replica changes take effect without a
config reload — a reload would end the requests that are held waiting for a replica.

It answers exactly two kinds of question, both under :data:`ZONE`:

* ``SRV _<service>._tcp.replicas.<ZONE>``: one record per ready replica, the target being
  the replica's address encoded as a name (see :func:`address_name`);
* ``A``/``AAAA <encoded address>.ip.<ZONE>``: the address itself, so Caddy's transport
  (configured with this responder as its resolver) can dial it.

Everything else gets NXDOMAIN (inside the zone) or REFUSED (outside it). Names are matched
case-insensitively, answers carry TTL 0: Caddy caches by its own ``refresh`` setting.
The responder speaks UDP and TCP (truncated UDP answers make resolvers retry over TCP).
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Callable, Sequence

__all__ = ["ZONE", "DnsResponder", "address_name", "srv_name"]

ZONE = "serveform.internal"
_TYPE_A, _TYPE_AAAA, _TYPE_SRV, _TYPE_OPT = 1, 28, 33, 41
_CLASS_IN = 1
_RCODE_NXDOMAIN, _RCODE_REFUSED, _RCODE_FORMERR = 3, 5, 1
_UDP_PLAIN_LIMIT_BYTES = 512

Lookup = Callable[[str], Sequence[tuple[str, int]]]
"""Service name -> the ``(ip, port)`` pairs of its ready replicas."""


def srv_name(service: str) -> str:
    """The SRV name Caddy looks up for ``service`` (without the trailing dot)."""
    return f"_{service}._tcp.replicas.{ZONE}"


def address_name(ip: str) -> str:
    """An IP address as a DNS name under the zone: ``127-0-0-1.ip.<ZONE>``.

    IPv6 colons become ``x`` (``::1`` -> ``xx1``), a form no IPv4 name can take.
    """
    return f"{ip.replace('.', '-').replace(':', 'x')}.ip.{ZONE}"


def _ip_from_name(label: str) -> str | None:
    text = label.replace("x", ":") if "x" in label else label.replace("-", ".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def _parse_question(packet: bytes) -> tuple[int, int, str, int, int, int, int] | None:
    """(id, flags, qname, qtype, qclass, end offset, udp payload size) or None if malformed."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount, _an, _ns, arcount = struct.unpack("!6H", packet[:12])
    if qdcount != 1:
        return None
    labels: list[str] = []
    pos = 12
    while True:
        if pos >= len(packet):
            return None
        length = packet[pos]
        pos += 1
        if length == 0:
            break
        if length > 63 or pos + length > len(packet):
            return None
        labels.append(packet[pos : pos + length].decode("ascii", "replace"))
        pos += length
    if pos + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[pos : pos + 4])
    end = pos + 4
    payload = _UDP_PLAIN_LIMIT_BYTES
    # An EDNS0 OPT record in the additional section advertises a larger UDP payload size.
    if arcount and end + 11 <= len(packet) and packet[end] == 0:
        opt_type, size = struct.unpack("!HH", packet[end + 1 : end + 5])
        if opt_type == _TYPE_OPT:
            payload = max(size, _UDP_PLAIN_LIMIT_BYTES)
    return ident, flags, ".".join(labels).lower(), qtype, qclass, end, payload


class DnsResponder:
    """Answers SRV/A/AAAA questions from ``lookup`` on a loopback UDP+TCP port.

    ``lookup`` is called on every question, so answers always reflect the current ready set.
    """

    def __init__(self, lookup: Lookup, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lookup = lookup
        self._host = host
        self._port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the same for UDP and TCP)."""
        return self._port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        responder = self

        class _Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = responder.answer(data, udp=True)
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        # Bind UDP first (port 0 picks one), then TCP on the same number; retry if TCP's is taken.
        for _attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(self._host, self._port))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self._host, port)
            except OSError:
                transport.close()
                if self._port:
                    raise
                continue
            self._udp = transport  # type: ignore[assignment]
            self._port = port
            return
        raise OSError("could not bind the DNS responder on a common UDP/TCP port")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = self.answer(await reader.readexactly(size), udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def answer(self, packet: bytes, *, udp: bool) -> bytes | None:
        """The reply to one query packet, or None when the packet is not worth answering."""
        parsed = _parse_question(packet)
        if parsed is None:
            if len(packet) >= 2:
                return packet[:2] + struct.pack("!5H", 0x8000 | _RCODE_FORMERR, 0, 0, 0, 0)
            return None
        ident, flags, qname, qtype, qclass, end, payload = parsed
        question = packet[12:end]
        records, rcode = self._records(qname, qtype, qclass)
        # Response, authoritative, copy the RD bit; RA stays clear (we do not recurse).
        out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode
        body = b"".join(records)
        reply = struct.pack("!6H", ident, out_flags, 1, len(records), 0, 0) + question + body
        if udp and len(reply) > payload:
            # Truncated: the client retries over TCP and gets the whole answer there.
            reply = struct.pack("!6H", ident, out_flags | 0x0200, 1, 0, 0, 0) + question
        return reply

    def _records(self, qname: str, qtype: int, qclass: int) -> tuple[list[bytes], int]:
        zone = ZONE.lower()
        if qclass != _CLASS_IN or not (qname == zone or qname.endswith("." + zone)):
            return [], _RCODE_REFUSED
        pointer = b"\xc0\x0c"  # the question's name
        labels = qname[: -len(zone) - 1].split(".") if qname != zone else []
        if len(labels) == 3 and labels[1] == "_tcp" and labels[2] == "replicas" and labels[0].startswith("_"):
            service = labels[0][1:]
            replicas = list(self._lookup(service))
            if not replicas:
                return [], _RCODE_NXDOMAIN
            if qtype != _TYPE_SRV:
                return [], 0
            out = []
            for ip, port in replicas:
                rdata = struct.pack("!3H", 0, 1, port) + _encode_name(address_name(ip))
                out.append(pointer + struct.pack("!HHIH", _TYPE_SRV, _CLASS_IN, 0, len(rdata)) + rdata)
            return out, 0
        if len(labels) == 2 and labels[1] == "ip":
            ip = _ip_from_name(labels[0])
            if ip is None:
                return [], _RCODE_NXDOMAIN
            version = ipaddress.ip_address(ip).version
            if (qtype, version) == (_TYPE_A, 4) or (qtype, version) == (_TYPE_AAAA, 6):
                rdata = ipaddress.ip_address(ip).packed
                return [pointer + struct.pack("!HHIH", qtype, _CLASS_IN, 0, len(rdata)) + rdata], 0
            return [], 0
        return [], _RCODE_NXDOMAIN
