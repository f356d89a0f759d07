#!/usr/bin/env python3
"""Writes the seed inputs of the hub fuzz targets to fuzz/seeds/hub_mqtt_connection/ and
fuzz/seeds/hub_rest_request/ (committed; the growing corpus in fuzz/corpus/ is not).

Byte 0 of an input is the harness's form flag (see azsim_emulator::fuzzing): for
hub_mqtt_connection odd = the harness's valid CONNECT goes first; for hub_rest_request odd =
`METHOD PATH\\n` + body sent with the owner's token, even = raw HTTP/1.1 bytes.

Run from the repository root: python3 fuzz/hub_seeds.py
"""
import hashlib
import pathlib
import struct

root = pathlib.Path(__file__).resolve().parent
DEV = "fuzz-device"


def rlen(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + rlen(len(body)) + body


def connect(client_id, user=None, password=None, will=None, level=4, clean=True):
    flags = 0x02 if clean else 0
    payload = s(client_id)
    if will:
        flags |= 0x04 | (0x08 if will[2] else 0)
        payload += s(will[0]) + s(will[1])
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    return packet(0x10, s("MQTT") + bytes([level, flags]) + struct.pack(">H", 60) + payload)


def publish(topic, payload=b"{}", qos=0, pkid=1, retain=False, dup=False):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = s(topic) + (struct.pack(">H", pkid) if qos else b"") + payload
    return packet(first, body)


def subscribe(pkid, *filters):
    body = struct.pack(">H", pkid) + b"".join(s(f) + bytes([q]) for f, q in filters)
    return packet(0x82, body)


def unsubscribe(pkid, *filters):
    return packet(0xA2, struct.pack(">H", pkid) + b"".join(s(f) for f in filters))


def puback(pkid):
    return packet(0x40, struct.pack(">H", pkid))


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
AUTHED, RAW = b"\x01", b"\x00"
ev = f"devices/{DEV}/messages/events/"

mqtt = [
    AUTHED
    + subscribe(1, ("$iothub/twin/res/#", 0), ("$iothub/methods/POST/#", 0))
    + subscribe(2, (f"devices/{DEV}/messages/devicebound/#", 1), ("$iothub/twin/PATCH/properties/desired/#", 0))
    + publish(ev + "%24.mid=m1&%24.ct=application%2Fjson&temp=21", b'{"t":21}', 1, 10)
    + publish("$iothub/twin/GET/?$rid=1", b"", 1, 11)
    + publish(ev, b"x" * 64, 1, 12)
    + publish("$iothub/twin/PATCH/properties/reported/?$rid=2", b'{"fw":"1.0"}', 0)
    + publish("$iothub/methods/res/200/?$rid=7", b'{"ok":true}', 1, 13)
    + PINGREQ
    + puback(1)
    + unsubscribe(3, "$iothub/methods/POST/#"),
    AUTHED + publish(ev + "?a=1&b", b"\xff\x00", 0, retain=True) + publish(ev, b"", 1, 1, dup=True) + publish(ev, b"", 1, 1),
    AUTHED + publish("devices/other/messages/events/", b"x", 1, 1),
    AUTHED + subscribe(1, (f"devices/{DEV}+/messages/devicebound/#", 1)),
    AUTHED + subscribe(1, ("#", 1)),
    AUTHED + publish(ev, b"x", 2, 5),
    AUTHED + publish(ev + "%ZZ=1", b"x", 1, 1),
    AUTHED + connect(DEV),
    AUTHED + DISCONNECT + PINGREQ,
    RAW + connect(DEV, f"localhost/{DEV}/?api-version=2021-04-12", "SharedAccessSignature sr=localhost%2Fdevices%2Ffuzz-device&sig=eA%3D%3D&se=4102444800", will=(ev, b"bye", False)),
    RAW + connect(DEV, level=5),
    RAW + connect("", "localhost//?api-version=2021-04-12", ""),
    RAW + PINGREQ,
    RAW + b"\x10\xff\xff\xff\x7f",
    RAW + b"GET / HTTP/1.1\r\n\r\n",
]

AUTH = "Authorization: SharedAccessSignature sr=localhost%3A8443&sig=eA%3D%3D&se=4102444800&skn=iothubowner\r\n"
rest = [
    b"\x00GET /devices?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    (b"\x00PUT /devices/d1?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\n" + AUTH.encode()
     + b"Content-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"deviceId\":\"d1\"}"),
    (b"\x00POST /twins/d1/methods?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n0\r\n\r\n"),
    b"\x00GET /devices/d1/messages/deviceBound?api-version=2020-03-13 HTTP/1.1\r\nHost: l\r\nAuthorization: SharedAccessSignature sr=localhost%2Fdevices%2Fd1&sig=x&se=1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"\x00GET /%ZZ HTTP/1.1\r\nHost: \xff\r\n\r\n",
    b"\x01GET /devices?api-version=2021-04-12\n",
    b"\x01GET /devices/fuzz-device?api-version=2021-04-12\n",
    b'\x01PUT /devices/d2?api-version=2021-04-12\n{"deviceId":"d2","status":"disabled"}',
    b'\x01PUT /devices/fuzz-device/modules/m1?api-version=2021-04-12\n{"deviceId":"fuzz-device","moduleId":"m1"}',
    b'\x01PATCH /twins/fuzz-device?api-version=2021-04-12\n{"properties":{"desired":{"interval":5,"nested":{"a":null}}},"tags":{"x":1}}',
    b'\x01PUT /twins/fuzz-device/modules/m1?api-version=2021-04-12\n{"properties":{"desired":{"a":1}}}',
    b"\x01POST /emulator/devices/fuzz-device/c2d?api-version=2021-04-12\nhello",
    b"\x01GET /devices/fuzz-device/messages/deviceBound?api-version=2020-03-13\n",
    b"\x01DELETE /devices/fuzz-device/messages/deviceBound/x?api-version=2020-03-13&reject\n",
    b"\x01DELETE /devices/fuzz-device/commands?api-version=2021-04-12\n",
    b"\x01GET /messages/serviceBound/feedback?api-version=2021-04-12\n",
    b"\x01GET /emulator/events/recent?deviceId=fuzz-device&limit=5\n",
    b"\x01DELETE /devices/d2?api-version=2021-04-12\n",
]


def write(target, inputs):
    d = root / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for data in inputs:
        (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
    print(f"{target}: {len(inputs)} seeds in {d.relative_to(root.parent)}")


write("hub_mqtt_connection", mqtt)
write("hub_rest_request", rest)
