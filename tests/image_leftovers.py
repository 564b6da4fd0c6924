"""What a compiled image still holds that image/rules.py removes or strips: run inside the image by the image tests
(tests/test_compiled.py, tests/test_compiled_tensor.py)."""

from __future__ import annotations

import json
from typing import Any

#: run in an image: the paths a compiled image prunes that are still there, the shared libraries over 200 kB that
#: still carry a symbol table or DWARF sections, and which of the server's key modules are there
LEFTOVERS = r"""
import glob, json, os, struct, sys, sysconfig
sp = sysconfig.get_paths()["purelib"]
pruned = sorted(p[len(sp) + 1:] for g in json.loads(sys.argv[1]) for p in glob.glob(os.path.join(sp, g)))
def sections(path):
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF":
        return set()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * i) for i in range(shnum)]
    names = heads[shstrndx][4]
    return {data[names + h[0]:data.index(b"\0", names + h[0])] for h in heads if h[1]}
unstripped = sorted(p[len(sp) + 1:] for p in glob.glob(sp + "/**/*.so*", recursive=True)
                    if os.path.getsize(p) > 200_000 and {n for n in sections(p)
                                                         if n.startswith(b".debug_") or n == b".symtab"})
keys = {"numpy": "numpy/_core/_multiarray_umath.*.so", "uvloop": "uvloop/loop.*.so", "PIL": "PIL/_imaging.*.so",
        "onnxruntime": "onnxruntime/capi/onnxruntime_pybind11_state.*.so"}
print(json.dumps({"pruned_but_present": pruned, "unstripped": unstripped,
                  "kept": sorted(k for k, g in keys.items() if glob.glob(os.path.join(sp, g)))}))
"""


def image_leftovers(client: Any, tag: str, then: str = "", *args: str) -> tuple[dict[str, list[str]], str]:
    """:data:`LEFTOVERS` run in the image ``tag``, then the code ``then`` (in the same container: its arguments are
    sys.argv[2:]); (the leftovers, the last line ``then`` printed)."""
    from mlship.image.rules import COMPILED_PRUNE

    out = client.containers.run(tag, ["python", "-c", LEFTOVERS + then, json.dumps(COMPILED_PRUNE), *args],
                                remove=True).decode().strip().splitlines()
    return dict(json.loads(out[-2 if then else -1])), out[-1] if then else ""
