#!/usr/bin/env python3
"""OSDP peripheral devices (readers) on a simulated RS-485 bus, for the end-to-end tests.

The PDs are LibOSDP's own implementation (PyPI package `libosdp`), i.e. independent of the
agent's Rust control panel. The bus is a pseudo-terminal: this process holds the master side and
points a symlink (a stand-in for /dev/serial/by-id/...) at the slave side, which the agent opens
like a USB RS-485 adapter. Every byte the agent writes reaches every PD (multi-drop), and every
PD's reply goes back on the one line.

Control: JSON lines on stdin, JSON lines on stdout.

  {"op": "card", "addr": 1, "bits": "1011..."}      osdp_RAW (raw Wiegand bits, MSB first)
  {"op": "card_ascii", "addr": 1, "text": "1234"}   card data in ASCII format
  {"op": "keys", "addr": 1, "keys": "1234#"}        osdp_KEYPAD
  {"op": "status", "addr": 1, "tamper": 1, "power": 0}   osdp_LSTATR
  {"op": "state", "addr": 1}                        -> {"ev": "state", "online": .., "sc": ..}
  {"op": "unplug", "addr": 1} / {"op": "plug", ...}  the PD's cable is cut / reconnected
  {"op": "quit"}

Output events: {"ev": "ready"}, {"ev": "plugged", "tty": ...}, {"ev": "command", "addr": ..,
"cmd": {...}} for every command the CP sent that reaches the application (LED, BUZ, KEYSET, ...),
{"ev": "ok", "op": ...} after each op, {"ev": "error", ...} on a bad op.
"""

import argparse
import json
import os
import sys
import termios
import threading
import time
import tty

import osdp
from osdp import (Capability, CardFormat, Channel, Event, LibFlag, LogLevel, PDCapabilities,
                  PDInfo, PeripheralDevice, StatusReportType)

OUT_LOCK = threading.Lock()


def _plain(o):
    return o.hex() if isinstance(o, (bytes, bytearray)) else str(o)


def emit(obj):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(obj, default=_plain) + "\n")
        sys.stdout.flush()


class Bus:
    """The pty master plus a pump fanning received bytes out to every PD's channel."""

    def __init__(self, link):
        self.link = link
        self.lock = threading.Lock()
        self.master = None
        self.slave = None
        self.channels = []
        self.stop = threading.Event()
        self.pump = threading.Thread(target=self._pump, daemon=True)

    def plug(self):
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        tmp = self.link + ".tmp-link"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(path, tmp)
        os.rename(tmp, self.link)
        with self.lock:
            self.master, self.slave = master, slave
        for ch in self.channels:
            ch.clear()
        emit({"ev": "plugged", "tty": path})

    def unplug(self):
        with self.lock:
            master, slave = self.master, self.slave
            self.master = self.slave = None
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)

    def write(self, buf):
        with self.lock:
            if self.master is None:
                return len(buf)  # unplugged: the bytes go nowhere
            try:
                return os.write(self.master, buf)
            except (BlockingIOError, OSError):
                return len(buf)

    def _pump(self):
        while not self.stop.is_set():
            with self.lock:
                fd = self.master
            data = b""
            if fd is not None:
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, OSError):
                    data = b""
            if data:
                for ch in self.channels:
                    ch.push(data)
            else:
                time.sleep(0.002)


class BusChannel(Channel):
    def __init__(self, bus):
        super().__init__()
        self.bus = bus
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.muted = False

    def push(self, data):
        if self.muted:
            return
        with self.lock:
            self.buf.extend(data)

    def clear(self):
        with self.lock:
            self.buf.clear()

    def read(self, max_bytes):
        with self.lock:
            out = bytes(self.buf[:max_bytes])
            del self.buf[:max_bytes]
            return out

    def write(self, buf):
        if self.muted:
            return len(buf)
        return self.bus.write(bytes(buf))

    def flush(self):
        pass


def bits_to_bytes(bits):
    n = len(bits)
    padded = bits + "0" * ((8 - n % 8) % 8)
    return bytes(int(padded[i:i + 8], 2) for i in range(0, len(padded), 8)), n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True, help="symlink to point at the pty slave")
    ap.add_argument("--pds", required=True,
                    help='JSON list: [{"addr": 1, "scbk": "hex"|null, "install": false, '
                         '"secure_capable": true}]')
    args = ap.parse_args()
    specs = json.loads(args.pds)

    bus = Bus(args.link)
    pds = {}
    channels = {}
    for spec in specs:
        addr = spec["addr"]
        ch = BusChannel(bus)
        bus.channels.append(ch)
        channels[addr] = ch
        flags = []
        scbk = bytes.fromhex(spec["scbk"]) if spec.get("scbk") else None
        if spec.get("install"):
            flags.append(LibFlag.InstallMode)
        elif scbk is not None and spec.get("enforce", True):
            flags.append(LibFlag.EnforceSecure)
        caps = [
            (Capability.OutputControl, 1, 1),
            (Capability.LEDControl, 1, 1),
            (Capability.AudibleControl, 1, 1),
            (Capability.TextOutput, 1, 1),
            (Capability.CheckCharacter, 1, 0),
            (Capability.Readers, 1, 0),
        ]
        if spec.get("secure_capable", True):
            caps.append((Capability.CommunicationSecurity, 1, 1))
        info = PDInfo(addr, ch, scbk=scbk, flags=flags, name=f"pd{addr}",
                      id=osdp.PdId(2, 7, 0x00A0B1C2, 0x1000 + addr, 0x010203))

        def handler(cmd, addr=addr):
            emit({"ev": "command", "addr": addr, "cmd": cmd})
            return 0, None

        pd = PeripheralDevice(info, PDCapabilities(caps), log_level=LogLevel.Warning,
                              command_handler=handler)
        pds[addr] = pd

    bus.plug()
    bus.pump.start()
    for pd in pds.values():
        pd.start()
    emit({"ev": "ready"})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "quit":
                break
            if op in ("unplug", "plug"):
                ch = channels[req["addr"]]
                ch.clear()
                ch.muted = op == "unplug"
            else:
                pd = pds[req["addr"]]
                if op == "card":
                    data, n = bits_to_bytes(req["bits"])
                    pd.submit_event({"event": Event.CardRead, "reader_no": 0, "direction": 0,
                                     "format": CardFormat.Wiegand, "length": n, "data": data})
                elif op == "card_ascii":
                    data = req["text"].encode()
                    pd.submit_event({"event": Event.CardRead, "reader_no": 0, "direction": 0,
                                     "format": CardFormat.ASCII, "length": len(data),
                                     "data": data})
                elif op == "keys":
                    data = req["keys"].replace("*", "\x7f").replace("#", "\r").encode()
                    pd.submit_event({"event": Event.KeyPress, "reader_no": 0, "data": data})
                elif op == "status":
                    pd.submit_event({"event": Event.Status, "type": StatusReportType.Local,
                                     "report": bytes([req.get("tamper", 0), req.get("power", 0)])})
                elif op == "state":
                    emit({"ev": "state", "addr": req["addr"], "online": pd.is_online(),
                          "sc": pd.is_sc_active()})
                else:
                    raise ValueError(f"unknown op {op}")
            emit({"ev": "ok", "op": op})
        except Exception as e:  # report, keep serving
            emit({"ev": "error", "line": line, "error": repr(e)})

    bus.stop.set()
    for pd in pds.values():
        pd.stop()
    bus.unplug()


if __name__ == "__main__":
    main()
