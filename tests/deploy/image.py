"""The image's runtime stage holds every shared library the binaries link.

Usage: image.py DOCKERFILE BIN_DIR

The Dockerfile states what its runtime base provides, as Debian packages, on a line
`# runtime-packages: ...`. Each library `ldd` resolves for each binary the image copies is
mapped to its Debian package with `dpkg -S` (the build stage is Debian 12, as is the
runtime base), and must be one of those packages.
"""
import os
import re
import subprocess
import sys


def package_of(path):
    candidates = {path, os.path.realpath(path)}
    for p in list(candidates):
        # Debian 12 is usr-merged: dpkg may know a library by either path.
        if p.startswith("/usr/lib/"):
            candidates.add(p[len("/usr"):])
        elif p.startswith("/lib/"):
            candidates.add("/usr" + p)
    for p in candidates:
        out = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0].strip()
    return None


def main():
    dockerfile, bin_dir = sys.argv[1:3]
    text = open(dockerfile).read()
    declared = re.search(r"^# runtime-packages: (.+)$", text, re.M)
    if not declared:
        sys.exit(f"{dockerfile}: no '# runtime-packages:' line")
    provided = set(declared.group(1).split())
    binaries = re.findall(r"target/release/(sluice-[a-z-]+)", text)
    if sorted(set(binaries)) != ["sluice-capture", "sluice-ingest", "sluice-plugin"]:
        sys.exit(f"{dockerfile}: copies {binaries}, not the three binaries")
    problems = []
    for name in sorted(set(binaries)):
        out = subprocess.run(["ldd", os.path.join(bin_dir, name)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\S+)(?: => (\S+))? \(0x", line)
            if not m or m.group(1).startswith("linux-vdso"):
                continue
            path = m.group(2) or m.group(1)
            package = package_of(path)
            status = "ok" if package in provided else "MISSING from the runtime stage"
            print(f"image: {name}: {m.group(1)} ({package}) {status}")
            if package not in provided:
                problems.append(f"{name} links {m.group(1)} from {package}, which the runtime stage does not have")
    for p in problems:
        print(f"image: FAIL {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
