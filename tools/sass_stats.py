#!/usr/bin/env python3
"""Machine-code statistics of a kernels-cu source without a GPU: compiles it with NVRTC (the
library scripts/nvrtc-env.sh fetches: MSLT_NVRTC_LIB), assembles the PTX with ptxas (MSLT_PTXAS)
and disassembles the cubin with nvdisasm, then prints per entry point the instruction count and
its main loop: the backward branch whose body holds the most tensor-core instructions (HMMA /
HGMMA), its length and its most frequent opcodes. This is how the loop counts in
docs/gpu-results.md were made, e.g.

    source scripts/nvrtc-env.sh .assets/nvrtc
    python3 -m pip download -q --no-deps --only-binary=:all: -d /tmp/nvd "nvidia-cuda-nvdisasm==13.2.51"
    python3 -m zipfile -e /tmp/nvd/nvidia_cuda_nvdisasm-*.whl /tmp/nvd/x
    python3 tools/sass_stats.py --nvdisasm /tmp/nvd/x/nvidia/cu13/bin/nvdisasm --arch sm_90 \\
        kernels-cu/attention.cu attention_fwd_bf16_d64_fa2_v3

(chmod +x the nvdisasm binary first). --arch sm_90a for the wgmma kernels; --sass FILE keeps the
disassembly (e.g. to compare two versions instruction by instruction).
"""
import argparse
import collections
import ctypes
import os
import re
import subprocess
import sys
import tempfile


def compile_ptx(src_path, arch):
    lib = ctypes.CDLL(os.environ["MSLT_NVRTC_LIB"])
    src = open(src_path, "rb").read()
    prog = ctypes.c_void_p()
    name = os.path.basename(src_path).encode()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src, name, 0, None, None) != 0:
        sys.exit("nvrtcCreateProgram failed")
    opts = (ctypes.c_char_p * 1)(f"--gpu-architecture={arch}".encode())
    if lib.nvrtcCompileProgram(prog, 1, opts) != 0:
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit(log.value.decode())
    n = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    ptx = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value


def functions(sass):
    """entry point -> [(label or None, instruction)] in order."""
    funcs, cur = {}, None
    for line in sass.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            cur.append((m.group(1), None))
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if m:
            cur.append((None, m.group(1).strip()))
    return funcs


def stats(items):
    labels, ins = {}, []
    for label, i in items:
        if label:
            labels[label] = len(ins)
        else:
            ins.append(i)
    tensor = lambda xs: sum(("HMMA" in x) or ("HGMMA" in x) for x in xs)
    best = None
    for k, i in enumerate(ins):
        m = re.search(r"BRA.*`\((\.L_x_\d+)\)", i)
        if m and m.group(1) in labels and labels[m.group(1)] < k:
            a = labels[m.group(1)]
            t = tensor(ins[a:k + 1])
            if best is None or t > best[2] or (t == best[2] and k - a > best[1] - best[0]):
                best = (a, k, t)
    out = f"{len(ins)} instructions"
    if best:
        a, k, t = best
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for x in ins[a:k + 1])
        top = ", ".join(f"{o} {c}" for o, c in ops.most_common(10))
        out += f"; main loop {k - a + 1} instructions, {t} HMMA/HGMMA; {top}"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("entries", nargs="*", help="entry points (default: all)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--nvdisasm", required=True)
    ap.add_argument("--sass", help="also write the disassembly here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        open(ptx, "wb").write(compile_ptx(a.source, a.arch))
        subprocess.run([os.environ["MSLT_PTXAS"], f"-arch={a.arch}", "-o", cubin, ptx], check=True)
        sass = subprocess.run([a.nvdisasm, "-c", cubin], capture_output=True, text=True, check=True).stdout
    if a.sass:
        open(a.sass, "w").write(sass)
    funcs = functions(sass)
    for e in a.entries or sorted(funcs):
        if e not in funcs:
            sys.exit(f"{e}: no such entry point in {a.source} for {a.arch}")
        print(f"{e} ({a.arch}): {stats(funcs[e])}")


if __name__ == "__main__":
    main()
