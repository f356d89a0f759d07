#!/usr/bin/env bash
# Prints the firmware's flash and static RAM use from its ELF, and the shared core's share of
# the flash (symbols of azsim_proto and azsim_mqtt), against the budget of issue 3:
#   image <= 1 MiB, static RAM <= 200 KiB (fails above either), core <= 16 KiB (reported).
#
# usage: firmware/esp32c3/size.sh [path/to/azsim-firmware.elf]
# default: target/fw/riscv32imc-unknown-none-elf/firmware/azsim-firmware (the .ci/run build)
#
# Needs only python3: the ELF section and symbol tables are read directly (no llvm-size).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
elf="${1:-$root/target/fw/riscv32imc-unknown-none-elf/firmware/azsim-firmware}"
if [[ ! -f "$elf" ]]; then
    echo "error: $elf: no such ELF; build it first:" >&2
    echo "  CARGO_TARGET_DIR=target/fw cargo build -p azsim-firmware --target riscv32imc-unknown-none-elf --profile firmware" >&2
    exit 2
fi
exec python3 - "$elf" <<'PY'
import re
import struct
import sys

FLASH_BUDGET = 1024 * 1024
RAM_BUDGET = 200 * 1024
CORE_GOAL = 16 * 1024

path = sys.argv[1]
data = open(path, "rb").read()
if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
    sys.exit(f"error: {path}: not a 32-bit little-endian ELF")

shoff, = struct.unpack_from("<I", data, 0x20)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
sections = []
for i in range(shnum):
    name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from(
        "<10I", data, shoff + i * shentsize)
    sections.append(dict(name=name, type=typ, flags=flags, addr=addr, off=off, size=size,
                         link=link, entsize=entsize))
strtab = sections[shstrndx]
def cstr(table, idx):
    start = table["off"] + idx
    return data[start:data.index(b"\0", start)].decode("utf-8", "replace")
for s in sections:
    s["name"] = cstr(strtab, s["name"])

SHF_ALLOC, SHT_PROGBITS, SHT_NOBITS, SHT_SYMTAB = 0x2, 1, 8, 2
# ESP32-C3 SRAM, seen through its data bus (DRAM) and instruction bus (IRAM).
def in_dram(a): return 0x3FC80000 <= a < 0x3FCE0000
def in_iram(a): return 0x4037C000 <= a < 0x403E0000
# Placeholders the linker script uses to keep the flash mappings apart: no bytes of their own.
def placeholder(s): return s["name"].endswith("_dummy")

alloc = [s for s in sections if s["flags"] & SHF_ALLOC and s["size"] and not placeholder(s)]
# What espflash writes: every allocated section with contents (code and read-only data
# mapped from flash, plus the initial values of RAM sections copied at boot).
flash = sum(s["size"] for s in alloc if s["type"] == SHT_PROGBITS)
# RAM reserved at link time. `.stack` (the rest of SRAM, given to the main stack) and
# `.dram2_uninit` (the bootloader's RAM, reclaimed as heap once the app runs) are excluded.
runtime = {".stack", ".dram2_uninit"}
ram_secs = [s for s in alloc if (in_dram(s["addr"]) or in_iram(s["addr"])) and s["name"] not in runtime]
dram = sum(s["size"] for s in ram_secs if in_dram(s["addr"]))
iram = sum(s["size"] for s in ram_secs if in_iram(s["addr"]))
ram = dram + iram

def kib(n): return f"{n / 1024:7.1f} KiB"

print(f"firmware: {path}")
print("  section                 size      where")
for s in sorted(alloc, key=lambda s: s["addr"]):
    where = ("flash" if s["type"] == SHT_PROGBITS and not (in_dram(s["addr"]) or in_iram(s["addr"]))
             else "flash+ram" if s["type"] == SHT_PROGBITS else "ram")
    if s["name"] in runtime:
        where = "ram (runtime: stack/heap)"
    print(f"  {s['name']:<20} {kib(s['size'])}  {where}")

# Symbols, attributed to a crate by their (legacy-mangled) path.
symtab = next((s for s in sections if s["type"] == SHT_SYMTAB), None)
def crate_of(raw):
    if not raw.startswith("_ZN"):
        return "C (mbedtls, Wi-Fi blobs, libc)"
    m = re.match(r"_ZN(\d+)", raw)
    if not m:
        return "other"
    n = int(m.group(1))
    first = raw[m.end():m.end() + n]
    if first.startswith("_$LT$"):
        # `<Type as Trait>::f`: the implementing type's crate.
        inner = first[5:]
        inner = re.sub(r"^(\$RF\$|mut\$u20\$|\$BP\$)+", "", inner)
        first = inner
    c = first.split("..")[0].split("$")[0]
    return "(generic impls)" if len(c) <= 1 else c

by_crate = {}
core_syms = []
heap = 0
if symtab:
    strs = sections[symtab["link"]]
    for i in range(symtab["size"] // 16):
        name, value, size, info, other, shndx = struct.unpack_from(
            "<IIIBBH", data, symtab["off"] + i * 16)
        if size == 0 or shndx == 0 or shndx >= len(sections):
            continue
        sec = sections[shndx]
        if not sec["flags"] & SHF_ALLOC or sec["type"] != SHT_PROGBITS:
            # RAM-only symbols: note the heap block, count nothing against flash.
            raw = cstr(strs, name)
            if "HEAP" in raw and in_dram(value) and sec["name"] not in runtime:
                heap += size
            continue
        if in_dram(value) or in_iram(value):
            continue
        raw = cstr(strs, name)
        crate = crate_of(raw)
        by_crate[crate] = by_crate.get(crate, 0) + size
        if crate in ("azsim_proto", "azsim_mqtt"):
            core_syms.append((size, raw))

core = by_crate.get("azsim_proto", 0) + by_crate.get("azsim_mqtt", 0)
print()
print("  largest contributors to flash (symbol sizes by crate):")
for crate, size in sorted(by_crate.items(), key=lambda kv: -kv[1])[:12]:
    print(f"    {crate:<34} {kib(size)}")
print()
print(f"flash image      {kib(flash)}  (budget {kib(FLASH_BUDGET).strip()})  {'ok' if flash <= FLASH_BUDGET else 'OVER BUDGET'}")
print(f"static RAM       {kib(ram)}  (budget {kib(RAM_BUDGET).strip()})  {'ok' if ram <= RAM_BUDGET else 'OVER BUDGET'}"
      f"  [DRAM {kib(dram).strip()} incl. {kib(heap).strip()} heap block, IRAM code {kib(iram).strip()}]")
print(f"shared core      {kib(core)}  (goal {kib(CORE_GOAL).strip()})  {'ok' if core <= CORE_GOAL else 'above goal'}"
      f"  [azsim_proto {kib(by_crate.get('azsim_proto', 0)).strip()}, azsim_mqtt {kib(by_crate.get('azsim_mqtt', 0)).strip()},"
      f" mqttrs codec {kib(by_crate.get('mqttrs', 0)).strip()} not counted]")
if core_syms:
    print("  largest core symbols:")
    for size, raw in sorted(core_syms, reverse=True)[:5]:
        short = re.sub(r"17h[0-9a-f]{16}E$", "", raw)
        print(f"    {kib(size)}  {short[:110]}")
sys.exit(0 if flash <= FLASH_BUDGET and ram <= RAM_BUDGET else 1)
PY
