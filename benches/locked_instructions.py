#!/usr/bin/env python3
"""Locked (atomic read-modify-write) instructions the gateway executes per
request, by function, from a callgrind profile taken with --dump-instr=yes
(`BENCH_LOCKS=1 bash benches/instructions.sh` takes one and runs this).

callgrind counts a `lock`-prefixed instruction as one instruction like any
other, but each one waits for the core's store buffer to drain (a few
nanoseconds here even when nothing else touches the line), so their number
is worth knowing apart from the instruction count: reference counts,
tokio's task states and wakers, the limits' counters and the metrics.

Usage: locked_instructions.py CALLGRIND_OUT REQUESTS [TOP]
"""

import collections
import re
import subprocess
import sys

NAME = re.compile(r"\((\d+)\)(?: (.*))?")


def compressed(table, text):
    """callgrind names each object and function once, then by number."""
    match = NAME.match(text)
    if not match:
        return text
    number, name = match.groups()
    if name is not None:
        table[number] = name
    return table.get(number, "?")


def self_costs(path):
    """Instructions executed at each (object, address), calls excluded."""
    objects, functions = {}, {}
    cost = collections.Counter()
    function_at = {}
    obj = function = None
    address = 0
    call_line = False
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith("ob="):
                obj = compressed(objects, line[3:].strip())
            elif line.startswith("cob="):
                compressed(objects, line[4:].strip())
            elif line.startswith("fn="):
                function = compressed(functions, line[3:].strip())
            elif line.startswith("cfn="):
                compressed(functions, line[4:].strip())
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                call_line = True
            elif line[:1] in ("+", "-", "*", "0"):
                fields = line.split()
                position = fields[0]
                if position == "*":
                    pass
                elif position[0] in "+-":
                    address += int(position, 0)
                else:
                    address = int(position, 16)
                if call_line:
                    call_line = False
                elif len(fields) >= 3:
                    cost[(obj, address)] += int(fields[2])
                    function_at[(obj, address)] = function
    return cost, function_at


def locked_addresses(obj):
    """Addresses of lock-prefixed instructions (and xchg with memory,
    which is locked without the prefix) in an object file."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", obj],
        capture_output=True, text=True, check=False,
    ).stdout
    found = set()
    for line in listing.splitlines():
        match = re.match(r"\s*([0-9a-f]+):\s+(\S.*)", line)
        if not match:
            continue
        instruction = match.group(2)
        if instruction.startswith("lock ") or (
            instruction.startswith("xchg") and "(" in instruction
        ):
            found.add(int(match.group(1), 16))
    return found


def main():
    path, requests = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    cost, function_at = self_costs(path)
    locked = {}
    for obj in {obj for obj, _ in cost}:
        if obj and obj.startswith("/"):
            locked[obj] = locked_addresses(obj)
    by_function = collections.Counter()
    for (obj, address), count in cost.items():
        if address in locked.get(obj, ()):
            by_function[function_at[(obj, address)]] += count
    total = sum(by_function.values())
    print(f"locked instructions per request: {total / requests:.1f}")
    for function, count in by_function.most_common(top):
        print(f"{count / requests:7.2f}  {function[:140]}")


if __name__ == "__main__":
    main()
